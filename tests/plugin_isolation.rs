//! End to end, a real broker with real .wasm plugins: a victim exchange keeps being
//! served — every publish confirmed and routed, in order — while hostile exchanges next to
//! it fail (a loop, a memory hog, a million binding ids, a panic), each misbehaving only
//! on one routing key so that it passes deploy validation. The hostile ones end up
//! quarantined (visible in the API, the CLI and the metrics), fail fast without calling
//! their plugin, and `plugin reset` brings one back. Functional assertions only.

mod common;
#[path = "support/hostile.rs"]
mod hostile;

use broker::message::{Headers, Message};
use broker::protocol::{Binding, ErrorCode};
use broker::{Client, QueueOptions};
use common::{HttpBroker, run_cli};

/// (plugin name, test plugin, routing key it fails on, what the failure says).
const HOSTILE: [(&str, &str, &str, &str); 4] = [
    ("h-loop", "spin", "spin", "CPU budget"),
    ("h-hog", "alloc", "alloc", "memory"),
    ("h-huge", "huge-output", "huge", ""),
    ("h-panic", "trap", "boom", "panicked at"),
];

const ROUNDS: usize = 30;

async fn bind(c: &Client, exchange: &str, queue: &str, key: &str) {
    c.bind(Binding {
        exchange: exchange.into(),
        queue: queue.into(),
        key: key.into(),
        arguments: Headers::new(),
    })
    .await
    .unwrap();
}

fn to(exchange: &str, key: &str, body: &str) -> Message {
    let mut m = Message::text(key, body);
    m.exchange = exchange.into();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victim_exchange_is_served_while_hostile_exchanges_fail() {
    let b = HttpBroker::start().await;
    let c = b.client().await;
    c.declare_exchange("victim", "direct", false, Headers::new())
        .await
        .unwrap();
    c.declare_queue("victim-q", QueueOptions::default())
        .await
        .unwrap();
    bind(&c, "victim", "victim-q", "v").await;
    for (plugin, wasm, trigger, _) in HOSTILE {
        c.deploy_plugin(plugin, &hostile::plugin(wasm))
            .await
            .unwrap_or_else(|e| panic!("{plugin} misbehaves only on `{trigger}`: {e}"));
        let (exchange, queue) = (format!("x-{plugin}"), format!("q-{plugin}"));
        c.declare_exchange(&exchange, plugin, false, Headers::new())
            .await
            .unwrap();
        c.declare_queue(&queue, QueueOptions::default())
            .await
            .unwrap();
        bind(&c, &exchange, &queue, "ok").await;
    }
    c.confirm_select().await.unwrap();

    // Each round pipelines, without waiting: a victim publish, then per hostile exchange
    // a failing publish and a good one (consecutive publishes are routed as a batch).
    let mut victim = Vec::new();
    let mut hostile = Vec::new();
    for round in 0..ROUNDS {
        victim.push(c.publish(to("victim", "v", &format!("v{round}")), false));
        for (plugin, _, trigger, _) in HOSTILE {
            let exchange = format!("x-{plugin}");
            let bad = c.publish(to(&exchange, trigger, "bad"), false);
            let good = c.publish(to(&exchange, "ok", "good"), false);
            hostile.push((plugin, bad, good));
        }
    }
    for (round, confirmed) in victim.into_iter().enumerate() {
        confirmed
            .await
            .unwrap_or_else(|e| panic!("victim publish {round}: {e}"));
    }
    for (plugin, bad, good) in hostile {
        let (_, _, _, says) = HOSTILE.iter().find(|h| h.0 == plugin).unwrap();
        let err = bad.await.expect_err("a failing key never routes");
        match err.code() {
            // On a loaded machine any plugin may reach its time budget before its own
            // failure (a panic's message formatting, a hog's page faults).
            Some(ErrorCode::PluginError) => {
                let text = err.to_string();
                assert!(
                    text.contains(says) || text.contains("CPU budget (time"),
                    "{plugin}: {err}"
                )
            }
            Some(ErrorCode::ExchangeUnavailable) => {}
            other => panic!("{plugin}: unexpected {other:?}: {err}"),
        }
        // A good message is routed, or refused fast once the exchange is quarantined:
        // never failed by the plugin.
        if let Err(e) = good.await {
            assert_eq!(
                e.code(),
                Some(ErrorCode::ExchangeUnavailable),
                "{plugin}: {e}"
            );
        }
    }

    // The victim got every message, in order.
    let routed = c.peek_queue("victim-q", 1000).await.unwrap();
    let bodies: Vec<String> = routed
        .iter()
        .map(|d| String::from_utf8(d.message.body.to_vec()).unwrap())
        .collect();
    let expected: Vec<String> = (0..ROUNDS).map(|r| format!("v{r}")).collect();
    assert_eq!(bodies, expected);

    // Every hostile exchange ends up quarantined. A plugin whose failures are slow (a
    // million ids on a loaded machine) can use its failing-time share first and be
    // throttled (refused without a call) before it fails often enough: its failing
    // publishes go on until the allowance refills and the quarantine comes.
    for (plugin, _, trigger, _) in HOSTILE {
        let exchange = format!("x-{plugin}");
        common::wait_for(|| async {
            let _ = c.publish(to(&exchange, trigger, "bad"), false).await;
            let list = c.list_exchanges().await.unwrap();
            let row = list.exchanges.iter().find(|x| x.exchange == exchange);
            row.is_some_and(|x| x.quarantined).then_some(())
        })
        .await;
    }
    // ... with since and why, in the API...
    let list = c.list_exchanges().await.unwrap();
    for x in list
        .exchanges
        .iter()
        .filter(|x| x.exchange.starts_with("x-h-"))
    {
        assert!(x.quarantined, "{}", x.exchange);
        assert!(x.quarantined_since.is_some_and(|t| t > 0), "{}", x.exchange);
        assert!(x.quarantine_reason.is_some(), "{}", x.exchange);
    }
    let victim_row = list.exchanges.iter().find(|x| x.exchange == "victim");
    assert_eq!(
        victim_row.map(|x| (x.quarantined, x.routed)),
        Some((false, 30))
    );
    let api = b.get("/api/exchanges").await.json();
    let row = api["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["exchange"] == "x-h-loop")
        .unwrap()
        .clone();
    assert_eq!(row["quarantined"], true, "{row}");
    assert!(row["quarantined_since"].as_u64().is_some(), "{row}");
    // ...in the metrics...
    let metrics = b.get("/metrics").await.body;
    assert!(
        metrics.contains(r#"broker_exchange_quarantined{exchange="x-h-loop",type="h-loop"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"broker_exchange_quarantined{exchange="victim",type="direct"} 0"#),
        "{metrics}"
    );
    // ...and in the CLI.
    let url = b.broker.url();
    let (ok, out, err) = run_cli(&["exchanges"], &url);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("x-h-hog")).unwrap();
    assert!(line.contains("quarantined"), "{out}");
    let (ok, out, err) = run_cli(&["plugin", "list"], &url);
    assert!(ok, "{err}");
    assert!(out.contains("exchange x-h-panic quarantined"), "{out}");

    // Quarantined: fails fast without calling the plugin.
    let calls = |plugins: serde_json::Value| {
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "h-panic")
            .map(|p| p["calls"].as_u64().unwrap())
            .unwrap()
    };
    let before = calls(c.list_plugins().await.unwrap());
    let err = c
        .publish(to("x-h-panic", "ok", "refused"), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ExchangeUnavailable), "{err}");
    assert!(err.to_string().contains("plugin reset h-panic"), "{err}");
    assert_eq!(calls(c.list_plugins().await.unwrap()), before);

    // `plugin reset` (CLI, protocol, HTTP) lifts it for every exchange of the plugin.
    let (ok, out, err) = run_cli(&["plugin", "reset", "h-panic"], &url);
    assert!(ok, "{err}");
    assert!(out.contains("quarantine lifted for x-h-panic"), "{out}");
    c.publish(to("x-h-panic", "ok", "after reset"), false)
        .await
        .unwrap();
    let routed = c.peek_queue("q-h-panic", 1000).await.unwrap();
    assert_eq!(
        routed.last().map(|d| d.message.body.to_vec()),
        Some(b"after reset".to_vec())
    );
    let reset = c.reset_plugin("h-loop").await.unwrap();
    assert_eq!(reset["reset"], serde_json::json!(["x-h-loop"]));
    let reply = b.post("/api/plugins/h-hog/reset", None).await;
    assert_eq!(
        reply.json()["reset"],
        serde_json::json!(["x-h-hog"]),
        "{}",
        reply.body
    );
    let err = c.reset_plugin("no-such-plugin").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginNotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_that_fail_on_every_message_are_refused_at_deploy() {
    let b = HttpBroker::start().await;
    let c = b.client().await;
    for (plugin, says) in [
        ("always-spin", "CPU budget"),
        ("always-alloc", "memory"),
        ("always-panic", "panicked at"),
        ("always-huge", ""),
        ("always-bad-ids", "not bound"),
        ("always-spin-handler", "CPU budget"),
    ] {
        let err = c
            .deploy_plugin(plugin, &hostile::plugin(plugin))
            .await
            .expect_err(plugin);
        assert_eq!(
            err.code(),
            Some(ErrorCode::InvalidPlugin),
            "{plugin}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("on deploy sample 1 (routing key `sample`"),
            "{text}"
        );
        assert!(text.contains(says), "{plugin}: {text}");
    }
    let plugins = c.list_plugins().await.unwrap();
    assert!(
        !plugins.to_string().contains("always-"),
        "nothing refused is listed: {plugins}"
    );
}

/// The real binary with JSON logs: a failing exchange's lines carry the plugin, its
/// version, the panic's text and how many lines were left out; a failing handler's line
/// names the plugin, its version and the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_logs_name_plugin_version_and_panic_text() {
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("broker.log");
    let (mut child, line) = common::spawn_with_json_log(&data.path().join("db"), &log_path);
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap()
        .to_owned();
    let c = Client::connect(&url).await.unwrap();
    c.confirm_select().await.unwrap();
    c.deploy_plugin("keyed", &hostile::plugin("trap"))
        .await
        .unwrap();
    c.declare_exchange("custom", "keyed", false, Headers::new())
        .await
        .unwrap();
    for _ in 0..3 {
        c.publish(to("custom", "boom", "x"), false)
            .await
            .unwrap_err();
    }
    // A handler that loops on the key `spin`, fed through a direct exchange.
    c.deploy_plugin("looper", &hostile::plugin("handler"))
        .await
        .unwrap();
    c.declare_queue("work", QueueOptions::durable())
        .await
        .unwrap();
    c.attach_handler(broker::protocol::AttachHandler {
        queue: "work".into(),
        plugin: "looper".into(),
        mode: broker::protocol::HandlerMode::Consume,
        concurrency: 1,
        config: Default::default(),
    })
    .await
    .unwrap();
    c.declare_exchange("in", "direct", false, Headers::new())
        .await
        .unwrap();
    bind(&c, "in", "work", "spin").await;
    c.publish(to("in", "spin", "x"), false).await.unwrap();

    let lines = common::wait_for(|| async {
        let text = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let failed = |l: &serde_json::Value| l["fields"]["message"] == "handler call failed";
        lines.iter().any(failed).then_some(lines)
    })
    .await;
    c.close().await;
    let _ = child.kill();
    let _ = child.wait();
    let with = |message: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    };
    // Three failures: at most one line a second, each counting those it left out.
    let trapped = with("plugin call failed");
    let logged: u64 = trapped
        .iter()
        .map(|l| 1 + l["fields"]["suppressed"].as_u64().unwrap())
        .sum();
    assert!(!trapped.is_empty() && logged <= 3, "{lines:?}");
    let first = &trapped[0]["fields"];
    assert_eq!(first["exchange"], "custom");
    assert_eq!(first["plugin"], "keyed");
    assert_eq!(first["version"], 1);
    assert_eq!(first["suppressed"], 0);
    let reason = first["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("panicked at ") && reason.ends_with(": boom"),
        "{reason}"
    );
    let handler = with("handler call failed");
    assert_eq!(handler[0]["fields"]["plugin"], "looper");
    assert_eq!(handler[0]["fields"]["version"], 1);
    assert_eq!(handler[0]["fields"]["queue"], "work");
    assert_eq!(handler[0]["level"], "WARN");
}

/// Exchange routing runs at ingress, off the router's task: while one exchange's plugin
/// is stuck in a long call, a publish from another connection to another queue is
/// confirmed and the stuck publish is still unanswered. (When the router ran the plugin,
/// it waited for the call to end, and the stuck publish was answered first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_call_in_progress_does_not_hold_up_other_publishers() {
    use futures_util::FutureExt as _;
    // A loop that only a 3 s budget stops (fuel is not what stops it).
    let limits = broker::plugin::Limits {
        fuel_per_call: u64::MAX / 4,
        call_deadline: Some(std::time::Duration::from_secs(3)),
        failing_time_per_sec: std::time::Duration::from_secs(10),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker::Config::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.plugins = Some(broker::plugin::PluginHost::new(limits).unwrap());
    let b = broker::Broker::start(config).await.unwrap();
    let hostile = Client::connect(&b.url()).await.unwrap();
    let victim = Client::connect(&b.url()).await.unwrap();
    hostile
        .deploy_plugin("h-loop", &hostile::plugin("spin"))
        .await
        .unwrap();
    hostile
        .declare_exchange("x-loop", "h-loop", false, Headers::new())
        .await
        .unwrap();
    for c in [&hostile, &victim] {
        c.confirm_select().await.unwrap();
    }
    victim
        .declare_queue("victim-q", QueueOptions::durable())
        .await
        .unwrap();

    let routed = |plugins: &serde_json::Value| {
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "h-loop")
            .map(|p| p["stats"]["messages"].as_u64().unwrap())
            .unwrap()
    };
    let before = routed(&victim.list_plugins().await.unwrap());
    let stuck = hostile.publish(to("x-loop", "spin", "stuck"), false);
    // The plugin has the message (its call started).
    common::wait_for(|| async {
        (routed(&victim.list_plugins().await.unwrap()) > before).then_some(())
    })
    .await;
    victim
        .publish(Message::text("victim-q", "served"), false)
        .await
        .unwrap();
    let mut stuck = Box::pin(stuck);
    assert!(
        (&mut stuck).now_or_never().is_none(),
        "the stuck publish was answered before the other connection's confirm"
    );
    let err = stuck.await.expect_err("the loop never routes");
    assert!(err.to_string().contains("CPU budget"), "{err}");
    assert_eq!(victim.peek_queue("victim-q", 10).await.unwrap().len(), 1);
    drop((hostile, victim));
    b.shutdown().await;
}
