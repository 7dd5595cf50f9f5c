//! Plugin versions end to end: deploy, a refused upload keeping the active version,
//! rollback, history, and a restart restoring exactly the active version.

mod common;
#[path = "support/hostile.rs"]
mod hostile;

use broker::protocol::{Binding, ErrorCode};
use broker::{Client, Headers, Message, QueueOptions};
use common::{TestBroker, run_cli};

/// Publishes key `boom` to exchange `ex`: v1 (the `trap` plugin) fails on it, v2 (the
/// `spin` plugin, which only misbehaves on `spin`) routes it nowhere.
async fn boom(c: &Client) -> Result<(), ErrorCode> {
    let mut m = Message::text("boom", "x");
    m.exchange = "ex".into();
    c.publish(m, false).await.map_err(|e| e.code().unwrap())
}

fn versions(history: &serde_json::Value) -> Vec<(u64, bool)> {
    history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["active"] == true))
        .collect()
}

#[tokio::test]
async fn deploy_refuse_rollback_and_restore_after_restart() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    let (v1, v2) = (hostile::plugin("trap"), hostile::plugin("spin"));
    let deployed = c.deploy_plugin("router", &v1).await.unwrap();
    assert_eq!(deployed["version"], 1);
    assert_eq!(deployed["hash"].as_str().unwrap().len(), 64, "sha-256 hex");
    c.declare_exchange("ex", "router", true, Headers::new())
        .await
        .unwrap();
    c.declare_queue("q", QueueOptions::durable()).await.unwrap();
    let binding = Binding {
        exchange: "ex".into(),
        queue: "q".into(),
        key: "k".into(),
        arguments: Headers::new(),
    };
    c.bind(binding).await.unwrap();
    c.confirm_select().await.unwrap();
    assert_eq!(
        boom(&c).await,
        Err(ErrorCode::PluginError),
        "v1 traps on boom"
    );

    let err = c
        .deploy_plugin("router", b"half a module")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidPlugin));
    assert_eq!(
        versions(&c.plugin_history("router").await.unwrap()),
        [(1, true)]
    );
    assert_eq!(
        boom(&c).await,
        Err(ErrorCode::PluginError),
        "v1 still active"
    );

    assert_eq!(c.deploy_plugin("router", &v2).await.unwrap()["version"], 2);
    assert_eq!(
        boom(&c).await,
        Ok(()),
        "v2 routes the live exchange at once"
    );

    assert_eq!(
        c.rollback_plugin("router", None).await.unwrap()["version"],
        1
    );
    assert_eq!(
        boom(&c).await,
        Err(ErrorCode::PluginError),
        "rolled back to v1"
    );
    let history = c.plugin_history("router").await.unwrap();
    assert_eq!(versions(&history), [(1, true), (2, false)]);
    let err = c.rollback_plugin("router", Some(9)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginNotFound));

    let list = c.list_plugins().await.unwrap();
    let entry = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "router")
        .unwrap();
    assert_eq!(entry["active_version"], 1);
    assert!(entry["stats"]["traps"].as_u64().unwrap() >= 2);
    assert!(
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "topic")
    );

    c.close().await;
    b.restart().await;
    let c = b.client().await;
    c.confirm_select().await.unwrap();
    assert_eq!(
        versions(&c.plugin_history("router").await.unwrap()),
        [(1, true), (2, false)]
    );
    assert_eq!(
        boom(&c).await,
        Err(ErrorCode::PluginError),
        "v1 restored, exchange too"
    );
    assert_eq!(
        c.rollback_plugin("router", Some(2)).await.unwrap()["version"],
        2
    );
    assert_eq!(boom(&c).await, Ok(()));
}

fn bundled(name: &str) -> &'static [u8] {
    broker::plugin::STANDARD_EXCHANGES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, wasm)| *wasm)
        .unwrap()
}

/// A redeploy while several connections publish at full speed: every confirmed message is
/// routed entirely by one version (v1 = direct: `q1` only; v2 = fanout: `q1` and `q2`),
/// none is lost or duplicated, and each connection sees the switch once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_routes_each_message_by_exactly_one_version() {
    const PUBLISHERS: usize = 3;
    const MIN_AFTER_DEPLOY: usize = 300;
    // The default frame limit: the test brokers' 64 KiB is below a module's size.
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker::Config::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let b = broker::Broker::start(config).await.unwrap();
    let admin = Client::connect(&b.url()).await.unwrap();
    admin
        .deploy_plugin("flip", bundled("direct"))
        .await
        .unwrap();
    admin
        .declare_exchange("ex", "flip", false, Headers::new())
        .await
        .unwrap();
    for (queue, key) in [("q1", "k"), ("q2", "other")] {
        admin
            .declare_queue(queue, QueueOptions::default())
            .await
            .unwrap();
        let binding = Binding {
            exchange: "ex".into(),
            queue: queue.into(),
            key: key.into(),
            arguments: Headers::new(),
        };
        admin.bind(binding).await.unwrap();
    }

    let url = b.url();
    let deployed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (url, deployed) = (url.clone(), deployed.clone());
            tokio::spawn(async move {
                let c = Client::connect(&url).await.unwrap();
                c.confirm_select().await.unwrap();
                let mut in_flight = std::collections::VecDeque::new();
                let mut after_deploy = 0;
                let mut sent = 0;
                // Full speed (200 in flight) until well after the deploy.
                while after_deploy < MIN_AFTER_DEPLOY {
                    let mut m = Message::text("k", format!("{p}:{sent}"));
                    m.exchange = "ex".into();
                    in_flight.push_back(c.publish(m, false));
                    sent += 1;
                    if deployed.load(std::sync::atomic::Ordering::Acquire) {
                        after_deploy += 1;
                    }
                    if in_flight.len() >= 200 {
                        let confirm = in_flight.pop_front().unwrap();
                        tokio::time::timeout(common::WAIT, confirm)
                            .await
                            .unwrap()
                            .unwrap();
                    }
                }
                for confirm in in_flight {
                    tokio::time::timeout(common::WAIT, confirm)
                        .await
                        .unwrap()
                        .unwrap();
                }
                sent
            })
        })
        .collect();
    // Deploy mid-stream: once version 1 has routed some of every publisher's messages.
    common::wait_for(|| async {
        let q1 = admin.peek_queue("q1", 100_000).await.unwrap();
        let started = (0..PUBLISHERS).all(|p| {
            let prefix = format!("{p}:");
            q1.iter()
                .any(|m| m.message.body.starts_with(prefix.as_bytes()))
        });
        started.then_some(())
    })
    .await;
    let deploy = admin.deploy_plugin("flip", bundled("fanout"));
    let v2 = tokio::time::timeout(common::WAIT, deploy)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v2["version"], 2);
    deployed.store(true, std::sync::atomic::Ordering::Release);
    let mut sent = Vec::new();
    for p in publishers {
        sent.push(p.await.unwrap());
    }

    let all = |queue: &'static str| {
        let admin = &admin;
        async move {
            admin
                .peek_queue(queue, 100_000)
                .await
                .unwrap()
                .iter()
                .map(|m| String::from_utf8(m.message.body.to_vec()).unwrap())
                .collect::<Vec<_>>()
        }
    };
    let (q1, q2) = (all("q1").await, all("q2").await);
    assert_eq!(
        q1.len(),
        sent.iter().sum::<usize>(),
        "every message routed once to q1"
    );
    let unique: std::collections::HashSet<_> = q1.iter().collect();
    assert_eq!(unique.len(), q1.len(), "no duplicates");
    // Per publisher, the messages in q2 (routed by v2) are exactly a suffix of its stream.
    for (p, &sent) in sent.iter().enumerate() {
        let in_q2: Vec<usize> = q2
            .iter()
            .filter_map(|m| m.strip_prefix(&format!("{p}:")))
            .map(|i| i.parse().unwrap())
            .collect();
        // Each publisher sent some messages before the deploy and many after it.
        let first = *in_q2
            .first()
            .unwrap_or_else(|| panic!("publisher {p}: nothing routed by version 2"));
        assert!(first > 0, "publisher {p}: nothing routed by version 1");
        let expected: Vec<usize> = (first..sent).collect();
        assert_eq!(in_q2, expected, "publisher {p} switched once, in order");
    }
    assert!(
        q2.len() >= PUBLISHERS * MIN_AFTER_DEPLOY,
        "v2 routed those after the deploy"
    );
    assert!(
        q2.len() < q1.len(),
        "the old version routed those before it"
    );
}

fn plugin<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or(&serde_json::Value::Null)
}

/// Messages routed by each version of `name`, by version.
fn messages_by_version(list: &serde_json::Value, name: &str) -> Vec<(u64, u64)> {
    plugin(list, name)["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["messages"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn publish_n(c: &Client, key: &str, n: usize) -> Vec<Result<(), ErrorCode>> {
    let confirms: Vec<_> = (0..n)
        .map(|i| {
            let mut m = Message::text(key, i.to_string());
            m.exchange = "ex".into();
            c.publish(m, false)
        })
        .collect();
    let mut results = Vec::new();
    for confirm in confirms {
        results.push(confirm.await.map_err(|e| e.code().unwrap()));
    }
    results
}

/// Waits until `check` holds for `list_plugins`, or fails after 10 s.
async fn wait_for_list(c: &Client, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let list = c.list_plugins().await.unwrap();
        if check(&list) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {list:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Each version's messages are counted apart; a restart takes compiled code from the
/// artifact cache; a version deployed with auto-rollback that keeps failing is replaced by
/// the previous one and reported.
#[tokio::test]
async fn versions_are_counted_cached_and_rolled_back_automatically() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    let v1 = c.deploy_plugin("router", bundled("direct")).await.unwrap();
    assert_eq!(v1["version"], 1);
    c.declare_exchange("ex", "router", true, Headers::new())
        .await
        .unwrap();
    c.declare_queue("q", QueueOptions::durable()).await.unwrap();
    let binding = Binding {
        exchange: "ex".into(),
        queue: "q".into(),
        key: "k".into(),
        arguments: Headers::new(),
    };
    c.bind(binding).await.unwrap();
    c.confirm_select().await.unwrap();
    assert!(publish_n(&c, "k", 10).await.iter().all(Result::is_ok));
    c.deploy_plugin("router", bundled("fanout")).await.unwrap();
    assert!(publish_n(&c, "other", 5).await.iter().all(Result::is_ok));
    let list = c.list_plugins().await.unwrap();
    assert_eq!(messages_by_version(&list, "router"), [(1, 10), (2, 5)]);
    assert_eq!(plugin(&list, "router")["active_version"], 2);
    assert_eq!(
        plugin(&list, "router")["from_cache"],
        true,
        "the bundled fanout's bytes: compiled at startup"
    );
    assert!(plugin(&list, "router")["p99_call_us"].as_f64().unwrap() > 0.0);
    assert_eq!(c.queue_info("q").await.unwrap().ready, 15);
    let v3 = c
        .deploy_plugin("router", &hostile::plugin("spin"))
        .await
        .unwrap();
    assert_eq!(v3["version"], 3);
    let list = c.list_plugins().await.unwrap();
    assert_eq!(plugin(&list, "router")["from_cache"], false, "new bytes");
    c.close().await;

    b.restart().await;
    let c = b.client().await;
    let list = c.list_plugins().await.unwrap();
    assert_eq!(plugin(&list, "router")["active_version"], 3);
    assert_eq!(
        plugin(&list, "router")["from_cache"],
        true,
        "restored from the compiled artifact"
    );

    c.confirm_select().await.unwrap();
    let v4 = c
        .deploy_plugin_with("router", &hostile::plugin("trap"), true)
        .await
        .unwrap();
    assert_eq!(
        (&v4["version"], &v4["auto_rollback"]),
        (&4.into(), &true.into())
    );
    // A version that keeps failing: publish until it is replaced. Once; not enough on a
    // loaded machine, where a few slow failing calls use the exchange's failing-time
    // share and the rest are refused unrun (throttled) until the next second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut failed = false;
    loop {
        let results = publish_n(&c, "boom", 10).await;
        failed |= results.contains(&Err(ErrorCode::PluginError));
        let list = c.list_plugins().await.unwrap();
        if plugin(&list, "router")["active_version"] == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rolled back to version 3: {list:#}"
        );
    }
    assert!(failed, "version 4 failed publishes before it was replaced");
    let list = c.list_plugins().await.unwrap();
    let rollback = &plugin(&list, "router")["last_auto_rollback"];
    assert_eq!((&rollback["from"], &rollback["to"]), (&4.into(), &3.into()));
    // Also next to the exchange, in the API and both CLI listings.
    let exchanges = c.list_exchanges().await.unwrap();
    let row = exchanges.exchanges.iter().find(|x| x.exchange == "ex");
    let rollback = row.and_then(|x| x.last_auto_rollback.clone()).unwrap();
    assert_eq!((rollback.from, rollback.to), (4, 3));
    let url = b.url();
    let printed = tokio::task::spawn_blocking(move || {
        let (_, exchanges, _) = run_cli(&["exchanges"], &url);
        let (_, plugins, _) = run_cli(&["plugin", "list"], &url);
        exchanges + &plugins
    })
    .await
    .unwrap();
    assert_eq!(
        printed.matches("auto-rolled back v4 -> v3").count(),
        2,
        "{printed}"
    );
    assert!(publish_n(&c, "boom", 3).await.iter().all(Result::is_ok));
    let history = c.plugin_history("router").await.unwrap();
    assert_eq!(
        versions(&history),
        [(1, false), (2, false), (3, true), (4, false)]
    );
}

/// `--watch`: a half-written file is refused (never active), a complete one becomes a
/// new version, dot-files (temporaries of atomic writers) are ignored until renamed.
#[tokio::test]
async fn watched_directory_deploys_complete_files_only() {
    let plugins = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = broker::Config::new(data.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.plugins_dir = Some(plugins.path().to_owned());
    config.watch_plugins = true;
    let b = broker::Broker::start(config).await.unwrap();
    let c = Client::connect(&b.url()).await.unwrap();
    let file = plugins.path().join("router.wasm");

    // The watcher tries files in name order, so once `zz-marker*.wasm`, written after the
    // file under test, is deployed, the file under test has been tried too.
    let marker = |n: u32, bytes: &[u8]| {
        std::fs::write(plugins.path().join(format!("zz-marker{n}.wasm")), bytes).unwrap();
        let c = &c;
        async move {
            wait_for_list(c, "marker deployed", |list| {
                plugin(list, &format!("zz-marker{n}"))["active_version"] == 1
            })
            .await
        }
    };
    let direct = bundled("direct");
    std::fs::write(&file, &direct[..direct.len() / 2]).unwrap();
    marker(1, bundled("fanout")).await;
    let list = c.list_plugins().await.unwrap();
    assert!(plugin(&list, "router").is_null(), "half a file: {list:#}");

    std::fs::write(&file, direct).unwrap();
    wait_for_list(&c, "complete file deployed", |list| {
        plugin(list, "router")["active_version"] == 1
    })
    .await;

    let temp = plugins.path().join(".router.wasm.tmp");
    std::fs::write(&temp, bundled("fanout")).unwrap();
    marker(2, bundled("topic")).await;
    let list = c.list_plugins().await.unwrap();
    assert_eq!(plugin(&list, "router")["active_version"], 1, "temp ignored");
    std::fs::rename(&temp, &file).unwrap();
    wait_for_list(&c, "renamed file deployed", |list| {
        plugin(list, "router")["active_version"] == 2
    })
    .await;
    let history = c.plugin_history("router").await.unwrap();
    assert_eq!(versions(&history), [(1, false), (2, true)]);
    let by = history["versions"][1]["deployed_by"].as_str().unwrap();
    assert!(by.starts_with("plugins directory ("), "{by}");
    c.close().await;
    b.shutdown().await;
}

/// Deploys of one plugin take effect in the order they were sent, even when a later one
/// compiles faster (here: from the compiled-artifact cache the bundled `fanout` is in).
#[tokio::test]
async fn pipelined_deploys_take_effect_in_order() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.deploy_plugin("router", &hostile::plugin("trap"))
        .await
        .unwrap();
    let spin = hostile::plugin("spin");
    let (slow, fast) = tokio::join!(
        c.deploy_plugin("router", &spin),
        c.deploy_plugin("router", bundled("fanout")),
    );
    assert_eq!(slow.unwrap()["version"], 2);
    assert_eq!(fast.unwrap()["version"], 3);
    let list = c.list_plugins().await.unwrap();
    assert_eq!(plugin(&list, "router")["active_version"], 3, "{list:#}");
    let (again, back) = tokio::join!(
        c.deploy_plugin("router", &spin),
        c.deploy_plugin("router", bundled("fanout")),
    );
    assert_eq!(again.unwrap()["version"], 4);
    assert_eq!(
        back.unwrap()["version"],
        5,
        "the active bytes behind a queued deploy are a new version"
    );
}

/// The `router` entry of `list_plugins`.
async fn router_entry(c: &Client) -> serde_json::Value {
    let list = c.list_plugins().await.unwrap();
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "router")
        .cloned()
        .unwrap()
}

/// A deploy or rollback whose commit fails gets `store_error` and changes nothing anyone
/// can see: the previous version keeps running and stays the one `list_plugins`,
/// `plugin_history`, the HTTP API and the metrics show; the failed deploy's number goes to
/// the next deploy, and a restart shows exactly what was listed before it.
#[tokio::test]
async fn a_failed_commit_lists_no_new_version_and_keeps_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = TestBroker {
        broker: Some(common::start_with_http(dir.path()).await),
        dir,
    };
    let http_addr = b.broker.as_ref().unwrap().http_addr().unwrap();
    let c = b.client().await;
    let (v1, v2) = (hostile::plugin("trap"), hostile::plugin("spin"));
    c.deploy_plugin("router", &v1).await.unwrap();
    let active = c.deploy_plugin("router", &v2).await.unwrap();
    assert_eq!(active["version"], 2);
    c.declare_exchange("ex", "router", true, Headers::new())
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    assert_eq!(boom(&c).await, Ok(()), "v2 routes boom nowhere");

    b.broker.as_ref().unwrap().fail_commits(true);
    let err = c.deploy_plugin("router", &v1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StoreError), "{err}");
    let err = c.rollback_plugin("router", Some(1)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StoreError), "{err}");
    b.broker.as_ref().unwrap().fail_commits(false);

    assert_eq!(boom(&c).await, Ok(()), "v2 still runs");
    let entry = router_entry(&c).await;
    assert_eq!(entry["active_version"], 2, "{entry}");
    assert_eq!(entry["hash"], active["hash"], "{entry}");
    let ran: Vec<u64> = entry["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert!(!ran.contains(&3), "{entry}");
    assert_eq!(
        versions(&c.plugin_history("router").await.unwrap()),
        [(1, false), (2, true)]
    );
    let api = common::http(http_addr, "GET", "/api/plugins", None)
        .await
        .json();
    let listed = api["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "router")
        .unwrap();
    assert_eq!(listed["active_version"], 2, "{listed}");
    let metrics = common::http(http_addr, "GET", "/metrics", None).await.body;
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("plugin=\"router\"") && l.contains("version=\"3\"")),
        "no samples for a version never stored"
    );
    let ready = common::http(http_addr, "GET", "/readyz", None).await;
    assert_eq!(ready.status, 503, "the last commit failed: {}", ready.body);

    // The failed deploy's number is the next deploy's.
    let deployed = c.deploy_plugin("router", &v1).await.unwrap();
    assert_eq!(deployed["version"], 3);
    assert_eq!(
        boom(&c).await,
        Err(ErrorCode::PluginError),
        "v3 (trap) runs"
    );
    let listed = versions(&c.plugin_history("router").await.unwrap());
    assert_eq!(listed, [(1, false), (2, false), (3, true)]);
    assert_eq!(router_entry(&c).await["active_version"], 3);

    c.close().await;
    b.restart().await;
    let c = b.client().await;
    assert_eq!(
        versions(&c.plugin_history("router").await.unwrap()),
        listed,
        "the store agrees with what was listed"
    );
    assert_eq!(router_entry(&c).await["active_version"], 3);
}
