//! Safe deploys end to end: a shadow version compared on live traffic without effect, a
//! canary routing a share of the messages (each by exactly one version) and dropped
//! automatically when it fails, and promotion surviving a restart.
//!
//! Version 1 is the bundled `direct` exchange; the version on trial is the test plugin
//! `upper-key` (a direct exchange on the upper-cased key): with bindings `k` -> q1 and
//! `K` -> q2, a message with key `k` lands in q1 when version 1 routed it and in q2 when
//! the trial version did.

mod common;
#[path = "support/hostile.rs"]
mod hostile;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use broker::plugin::TrialMode;
use broker::protocol::{Binding, ErrorCode};
use broker::{Client, Headers, Message, QueueOptions};
use common::{TestBroker, run_cli};

fn direct() -> &'static [u8] {
    broker::plugin::STANDARD_EXCHANGES
        .iter()
        .find(|(n, _)| *n == "direct")
        .map(|(_, wasm)| *wasm)
        .unwrap()
}

/// Plugin `router` at version 1 (`direct`), exchange `ex` of that type, and each queue
/// bound with its key.
async fn setup(c: &Client, bindings: &[(&str, &str)]) {
    assert_eq!(
        c.deploy_plugin("router", direct()).await.unwrap()["version"],
        1
    );
    c.declare_exchange("ex", "router", true, Headers::new())
        .await
        .unwrap();
    for (queue, key) in bindings {
        c.declare_queue(queue, QueueOptions::durable())
            .await
            .unwrap();
        let binding = Binding {
            exchange: "ex".into(),
            queue: (*queue).into(),
            key: (*key).into(),
            arguments: Headers::new(),
        };
        c.bind(binding).await.unwrap();
    }
    c.confirm_select().await.unwrap();
}

fn to_ex(key: &str, body: String) -> Message {
    let mut m = Message::text(key, body);
    m.exchange = "ex".into();
    m.properties.persistent = true;
    m
}

/// Publishes `(key, body)` pairs with confirms, up to 500 in flight; every result.
async fn publish_all(c: &Client, messages: Vec<(String, String)>) -> Vec<Result<(), ErrorCode>> {
    let mut results = Vec::new();
    let mut in_flight = std::collections::VecDeque::new();
    for (key, body) in messages {
        in_flight.push_back(c.publish(to_ex(&key, body), false));
        if in_flight.len() >= 500 {
            let confirm = in_flight.pop_front().unwrap();
            results.push(confirm.await.map_err(|e| e.code().unwrap()));
        }
    }
    for confirm in in_flight {
        results.push(confirm.await.map_err(|e| e.code().unwrap()));
    }
    results
}

async fn bodies(c: &Client, queue: &str) -> Vec<String> {
    c.peek_queue(queue, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|m| String::from_utf8(m.message.body.to_vec()).unwrap())
        .collect()
}

/// Polls `what` until `check` holds, failing after `common::WAIT`.
async fn wait_until<F, Fut>(
    what: &str,
    mut poll: F,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = serde_json::Value>,
{
    let deadline = Instant::now() + common::WAIT;
    loop {
        let value = poll().await;
        if check(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: {value:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn plugin_entry(list: &serde_json::Value) -> serde_json::Value {
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "router")
        .cloned()
        .unwrap()
}

/// 150 messages routed alike by both versions (key `A`) and 50 that the shadow routes
/// differently (key `b`: `direct` sends it to qb, `upper-key` looks for `B`, unbound).
/// The report says 50, its examples are those messages, and every message landed where
/// version 1 sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_reports_the_differences_and_changes_no_routing() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    setup(&c, &[("qa", "A"), ("qb", "b")]).await;
    let shadow = hostile::plugin("upper-key");
    let deployed = c
        .deploy_plugin_trial("router", &shadow, TrialMode::Shadow)
        .await
        .unwrap();
    assert_eq!(deployed["version"], 2);
    assert_eq!(deployed["active_version"], 1);
    assert_eq!(deployed["trial"]["mode"], "shadow");

    let messages: Vec<(String, String)> = (0..200)
        .map(|i| {
            let key = if i % 4 == 3 { "b" } else { "A" };
            (key.to_owned(), format!("m{i}"))
        })
        .collect();
    let results = publish_all(&c, messages).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    // The shadow runs after the publishers are answered: wait for it to catch up.
    let report = wait_until(
        "all 200 compared",
        || async { c.plugin_shadow("router").await.unwrap() },
        |r| r["compared"] == 200,
    )
    .await;
    assert_eq!(report["differed"], 50, "{report:#}");
    assert_eq!(report["shadow_failures"], 0);
    assert_eq!(
        report["shadow_skipped"], 0,
        "one publisher never puts its exchange behind"
    );
    assert_eq!(report["trial"]["version"], 2);
    let examples = report["examples"].as_array().unwrap();
    assert_eq!(examples.len(), broker::plugin::TRIAL_EXAMPLES);
    for example in examples {
        assert_eq!(example["routing_key"], "b", "{example:#}");
        assert_eq!(example["exchange"], "ex");
        let active = &example["active"]["bindings"];
        assert_eq!(active.as_array().unwrap().len(), 1);
        assert_eq!(active[0]["queue"], "qb");
        assert_eq!(active[0]["key"], "b");
        assert_eq!(example["shadow"]["bindings"], serde_json::json!([]));
    }

    // No routing changed: every message where version 1 sends it.
    let (qa, qb) = (bodies(&c, "qa").await, bodies(&c, "qb").await);
    assert_eq!(qa.len(), 150);
    assert_eq!(qb.len(), 50);
    assert!(qb.iter().all(|m| m[1..].parse::<u32>().unwrap() % 4 == 3));
    // The shadow routed none of them (its calls are counted, its messages are not).
    let entry = plugin_entry(&c.list_plugins().await.unwrap());
    assert_eq!(entry["active_version"], 1);
    assert_eq!(entry["trial"]["mode"], "shadow");
    let v2 = entry["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 2)
        .cloned()
        .unwrap();
    assert_eq!(v2["messages"], 0, "{entry:#}");

    let (ok, out, err) = run_cli(&["plugin", "shadow", "router"], &b.url());
    assert!(ok, "{err}");
    assert!(
        out.contains("compared 200 messages: 50 routed differently"),
        "{out}"
    );
    assert!(out.contains("qb (b)"), "{out}");
}

/// A canary at 10 % over 10,000 messages of one key: between 5 % and 15 % went to q2
/// (routed by the canary), each message is in exactly one queue, and the counts agree
/// with the report and the per-version counters (the key-only route cache is per version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_routes_its_share_and_each_message_by_exactly_one_version() {
    const N: usize = 10_000;
    // The default frame limit: peeking 10,000 messages takes more than the test brokers'.
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker::Config::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let b = broker::Broker::start(config).await.unwrap();
    let c = Client::connect(&b.url()).await.unwrap();
    setup(&c, &[("q1", "k"), ("q2", "K")]).await;
    let canary = hostile::plugin("upper-key");
    let deployed = c
        .deploy_plugin_trial("router", &canary, TrialMode::Canary { percent: 10.0 })
        .await
        .unwrap();
    assert_eq!(deployed["trial"]["percent"], 10.0);

    let messages = (0..N).map(|i| ("k".to_owned(), i.to_string())).collect();
    let results = publish_all(&c, messages).await;
    assert!(results.iter().all(Result::is_ok));

    let (q1, q2) = (bodies(&c, "q1").await, bodies(&c, "q2").await);
    assert_eq!(q1.len() + q2.len(), N, "each message routed once");
    let all: HashSet<&String> = q1.iter().chain(&q2).collect();
    assert_eq!(all.len(), N, "no message in both queues");
    let share = q2.len() as f64 / N as f64 * 100.0;
    assert!((5.0..=15.0).contains(&share), "canary share {share} %");

    let report = c.plugin_shadow("router").await.unwrap();
    assert_eq!(report["canary_messages"], q2.len(), "{report:#}");
    assert_eq!(report["canary_errors"], 0);
    let entry = plugin_entry(&c.list_plugins().await.unwrap());
    let by_version: Vec<(u64, u64)> = entry["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["messages"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by_version,
        [(1, q1.len() as u64), (2, q2.len() as u64)],
        "{entry:#}"
    );

    // `route` shows the active version's decision, never the canary's share (with 10 %
    // drawn at random, 100 routes would all miss the canary one time in ~38,000).
    for _ in 0..100 {
        let mut message = Message::text("k", "which way");
        message.exchange = "ex".into();
        let answer = c.route(message).await.unwrap();
        assert_eq!(answer["plugin_version"], 1, "{answer}");
        assert_eq!(answer["queues"], serde_json::json!(["q1"]), "{answer}");
    }
    b.shutdown().await;
}

/// A canary that fails on every message it gets (`trap` panics on key `boom`; version 1,
/// `spin`, routes it): no publish fails (the active version routes what the canary
/// failed on), the canary is dropped automatically and reported, the active version
/// stays, and the drop is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_automatically_without_a_failed_publish() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    assert_eq!(
        c.deploy_plugin("router", &hostile::plugin("spin"))
            .await
            .unwrap()["version"],
        1
    );
    c.declare_exchange("ex", "router", true, Headers::new())
        .await
        .unwrap();
    c.declare_queue("q", QueueOptions::durable()).await.unwrap();
    let binding = Binding {
        exchange: "ex".into(),
        queue: "q".into(),
        key: "boom".into(),
        arguments: Headers::new(),
    };
    c.bind(binding).await.unwrap();
    c.confirm_select().await.unwrap();
    let canary = hostile::plugin("trap");
    c.deploy_plugin_trial("router", &canary, TrialMode::Canary { percent: 50.0 })
        .await
        .unwrap();

    let mut published = 0;
    let deadline = Instant::now() + common::WAIT;
    let entry = loop {
        let batch = (0..50)
            .map(|i| ("boom".to_owned(), format!("{}", published + i)))
            .collect();
        let results = publish_all(&c, batch).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        published += 50;
        let entry = plugin_entry(&c.list_plugins().await.unwrap());
        if entry["trial"].is_null() {
            break entry;
        }
        assert!(
            Instant::now() < deadline,
            "canary still on trial: {entry:#}"
        );
    };
    let rollback = &entry["last_auto_rollback"];
    assert_eq!(rollback["from"], 2, "{entry:#}");
    assert_eq!(rollback["to"], 1);
    assert!(rollback["errors"].as_u64().unwrap() >= 5, "{entry:#}");
    assert!(
        rollback["canary"].as_str().unwrap().contains("failed"),
        "{entry:#}"
    );
    assert_eq!(entry["active_version"], 1);
    assert_eq!(
        c.queue_info("q").await.unwrap().ready as usize,
        published,
        "every message routed (by version 1 when the canary failed)"
    );
    let (ok, out, err) = run_cli(&["plugin", "list"], &b.url());
    assert!(ok, "{err}");
    assert!(out.contains("canary v2 rolled back automatically"), "{out}");

    b.restart().await;
    let c = b.client().await;
    let entry = plugin_entry(&c.list_plugins().await.unwrap());
    assert!(entry["trial"].is_null(), "the drop was stored: {entry:#}");
    assert_eq!(entry["active_version"], 1);
}

/// A shadow survives a restart as the trial (and compares again); promoting makes it
/// active (stored: still active and routing after a restart); a later shadow is dropped
/// by `rollback` with the active version unchanged, and stays dropped after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_and_its_promotion_survive_a_restart() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    setup(&c, &[("q1", "k"), ("q2", "K")]).await;
    c.deploy_plugin_trial("router", &hostile::plugin("upper-key"), TrialMode::Shadow)
        .await
        .unwrap();

    b.restart().await;
    let c = b.client().await;
    c.confirm_select().await.unwrap();
    let report = c.plugin_shadow("router").await.unwrap();
    assert_eq!(report["trial"]["mode"], "shadow", "{report:#}");
    assert_eq!(report["trial"]["version"], 2);
    publish_all(&c, vec![("k".into(), "before".into())]).await;
    wait_until(
        "the restored shadow compares",
        || async { c.plugin_shadow("router").await.unwrap() },
        |r| r["differed"] == 1,
    )
    .await;

    let (ok, out, err) = run_cli(&["plugin", "promote", "router"], &b.url());
    assert!(ok, "{err}");
    assert!(out.contains("version 2 promoted"), "{out}");
    let entry = plugin_entry(&c.list_plugins().await.unwrap());
    assert_eq!(entry["active_version"], 2);
    assert!(entry["trial"].is_null());
    publish_all(&c, vec![("k".into(), "promoted".into())]).await;
    assert_eq!(bodies(&c, "q2").await, ["promoted"]);

    b.restart().await;
    let c = b.client().await;
    c.confirm_select().await.unwrap();
    let entry = plugin_entry(&c.list_plugins().await.unwrap());
    assert_eq!(entry["active_version"], 2, "{entry:#}");
    assert!(entry["trial"].is_null());
    publish_all(&c, vec![("k".into(), "restarted".into())]).await;
    assert_eq!(bodies(&c, "q2").await, ["promoted", "restarted"]);
    assert_eq!(bodies(&c, "q1").await, ["before"]);

    // A shadow dropped by rollback: the active version stays.
    c.deploy_plugin_trial("router", direct(), TrialMode::Shadow)
        .await
        .unwrap();
    let dropped = c.rollback_plugin("router", None).await.unwrap();
    assert_eq!(dropped["dropped"], 3, "{dropped:#}");
    assert_eq!(dropped["version"], 2);
    let history = c.plugin_history("router").await.unwrap();
    let active: Vec<u64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["active"] == true)
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(active, [2]);
    b.restart().await;
    let c = b.client().await;
    let report = c.plugin_shadow("router").await.unwrap();
    assert!(report["trial"].is_null(), "{report:#}");
}

/// Requests that cannot be carried out get a typed error and change nothing.
#[tokio::test]
async fn bad_trial_requests_are_refused() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    let shadow = hostile::plugin("upper-key");
    let err = c
        .deploy_plugin_trial("router", &shadow, TrialMode::Shadow)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::PluginNotFound),
        "no active version"
    );
    setup(&c, &[("q1", "k")]).await;
    for percent in [0.0, 100.5, f64::NAN] {
        let err = c
            .deploy_plugin_trial("router", &shadow, TrialMode::Canary { percent })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidField), "{percent}");
    }
    let err = c.promote_plugin("router").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PreconditionFailed));
    let err = c.plugin_shadow("nope").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginNotFound));
    let history = c.plugin_history("router").await.unwrap();
    assert_eq!(history["versions"].as_array().unwrap().len(), 1);
}

/// The HTTP endpoints: the report, dropping a trial, promoting one.
#[tokio::test]
async fn http_shadow_rollback_and_promote() {
    let b = common::HttpBroker::start().await;
    let c = b.client().await;
    setup(&c, &[("q1", "k"), ("q2", "K")]).await;
    let upper = hostile::plugin("upper-key");
    c.deploy_plugin_trial("router", &upper, TrialMode::Shadow)
        .await
        .unwrap();

    let report = b.get("/api/plugins/router/shadow").await;
    assert_eq!(report.status, 200, "{}", report.body);
    assert_eq!(report.json()["trial"]["mode"], "shadow");
    assert_eq!(report.json()["compared"], 0);

    let dropped = common::http(b.addr(), "POST", "/api/plugins/router/rollback", None).await;
    assert_eq!(dropped.status, 200, "{}", dropped.body);
    assert_eq!(dropped.json()["dropped"], 2);
    assert!(b.get("/api/plugins/router/shadow").await.json()["trial"].is_null());

    c.deploy_plugin_trial("router", &upper, TrialMode::Canary { percent: 5.0 })
        .await
        .unwrap();
    let promoted = common::http(b.addr(), "POST", "/api/plugins/router/promote", None).await;
    assert_eq!(promoted.status, 200, "{}", promoted.body);
    assert_eq!(promoted.json()["version"], 3);
    assert_eq!(promoted.json()["promoted"], true);
    let entry = plugin_entry(&c.list_plugins().await.unwrap());
    assert_eq!(entry["active_version"], 3);

    let none = common::http(b.addr(), "POST", "/api/plugins/router/promote", None).await;
    assert_eq!(none.status, 409, "{}", none.body);
    assert_eq!(none.json()["error"]["code"], "precondition_failed");
    // Rollback with a version in the body activates that version, as `rollback_plugin`.
    let back = common::http(
        b.addr(),
        "POST",
        "/api/plugins/router/rollback",
        Some(r#"{"version": 1}"#),
    )
    .await;
    assert_eq!(back.status, 200, "{}", back.body);
    assert_eq!(back.json()["version"], 1);
}

/// Pruning keeps the version on trial even when it is neither among the newest nor next
/// to the active one; the trial still runs after it.
#[tokio::test]
async fn pruning_keeps_the_version_on_trial() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    setup(&c, &[("q1", "k")]).await;
    let upper = hostile::plugin("upper-key");
    c.deploy_plugin_trial("router", &upper, TrialMode::Shadow)
        .await
        .unwrap();
    assert_eq!(
        c.deploy_plugin("router", &upper).await.unwrap()["version"],
        3
    );
    assert_eq!(
        c.deploy_plugin("router", direct()).await.unwrap()["version"],
        4
    );
    let pruned = c.prune_plugin("router", 1).await.unwrap();
    assert_eq!(pruned["pruned"], serde_json::json!([1]), "{pruned:#}");
    assert_eq!(pruned["kept"], serde_json::json!([2, 3, 4]));
    let report = c.plugin_shadow("router").await.unwrap();
    assert_eq!(report["trial"]["version"], 2, "{report:#}");
    assert_eq!(report["active_version"], 4);
}
