//! Handler plugins end to end: the bundled handlers attached to queues of a real broker,
//! in consume mode (ack / retry / reject / trap → queue semantics, publishes committed
//! with the ack, persistence across restarts and crashes) and filter mode.

mod common;
#[path = "support/hostile.rs"]
mod hostile;

use std::collections::BTreeMap;
use std::time::Duration;

use broker::plugin::testing::{HandlerHarness, HarnessError};
use broker::plugin::{HandlerError, HandlerOutcome, STANDARD_EXCHANGES, STANDARD_HANDLERS};
use broker::protocol::{AttachHandler, ErrorCode, HandlerMode};
use broker::router::DEATH_HEADER;
use broker::{Client, Headers, Message, QueueOptions};
use common::{BrokerProcess, TestBroker, WAIT, body, next, persistent};
use serde_json::{Value, json};

fn attach(queue: &str, plugin: &str, config: &[(&str, &str)]) -> AttachHandler {
    AttachHandler {
        queue: queue.into(),
        plugin: plugin.into(),
        mode: HandlerMode::Consume,
        concurrency: 1,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn queue_options(arguments: Value) -> QueueOptions {
    QueueOptions {
        durable: true,
        arguments: arguments.as_object().cloned().unwrap_or_default(),
        ..Default::default()
    }
}

/// Polls until `done` holds for the queue's info, or fails after [`WAIT`].
async fn wait_for(c: &Client, queue: &str, done: impl Fn(&broker::protocol::QueueInfo) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = c.queue_info(queue).await.unwrap();
        if done(&info) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue `{queue}` never reached the expected state: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The attachment's row in `list_handlers`.
async fn handler_row(c: &Client, queue: &str, plugin: &str) -> Value {
    let list = c.list_handlers().await.unwrap();
    list["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["queue"] == queue && h["plugin"] == plugin)
        .cloned()
        .unwrap_or_else(|| panic!("no attachment {queue}/{plugin} in {list}"))
}

#[tokio::test]
async fn retries_with_backoff_until_the_handler_acks() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    let args = json!({"retry_backoff": ["30ms"], "max_deliveries": 5});
    c.declare_queue("jobs", queue_options(args)).await.unwrap();
    c.attach_handler(attach("jobs", "flaky", &[("failures", "2")]))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    c.publish(persistent("jobs", "job-1"), false).await.unwrap();
    wait_for(&c, "jobs", |q| q.ready + q.unacked + q.delayed == 0).await;
    let row = handler_row(&c, "jobs", "flaky").await;
    assert_eq!(row["stats"]["handled"], 3, "{row}");
    assert_eq!(row["stats"]["retried"], 2, "{row}");
    assert_eq!(row["stats"]["acked"], 1, "{row}");
    assert_eq!(row["mode"], "consume");
    let info = c.queue_info("jobs").await.unwrap();
    assert_eq!((info.dead_lettered, info.consumers), (0, 1));
}

#[tokio::test]
async fn traps_are_failed_deliveries_dead_lettered_as_plugin_error() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    let args = json!({"retry_backoff": ["10ms"], "max_deliveries": 2});
    c.declare_queue("jobs", queue_options(args)).await.unwrap();
    let crash = [("failures", "100"), ("fail_with", "trap")];
    c.attach_handler(attach("jobs", "flaky", &crash))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    c.publish(persistent("jobs", "doomed"), false)
        .await
        .unwrap();
    wait_for(&c, "jobs", |q| q.dead_lettered == 1).await;
    let dead = c.peek_queue("jobs.dlq", 10).await.unwrap();
    assert_eq!(&dead[0].message.body[..], b"doomed");
    let record = &dead[0].message.headers[DEATH_HEADER][0];
    assert_eq!(record["reason"], "plugin_error", "{record}");
    assert_eq!(record["queue"], "jobs");
    let row = handler_row(&c, "jobs", "flaky").await;
    assert_eq!(row["stats"]["failed"], 2, "{row}");
}

#[tokio::test]
async fn reject_dead_letters_at_once() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("jobs", queue_options(json!({"max_deliveries": 10})))
        .await
        .unwrap();
    let reject = [("failures", "100"), ("fail_with", "reject")];
    c.attach_handler(attach("jobs", "flaky", &reject))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    c.publish(persistent("jobs", "bad"), false).await.unwrap();
    wait_for(&c, "jobs", |q| q.dead_lettered == 1).await;
    let dead = c.peek_queue("jobs.dlq", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].message.headers[DEATH_HEADER][0]["reason"],
        "rejected"
    );
    let row = handler_row(&c, "jobs", "flaky").await;
    assert_eq!(
        row["stats"]["handled"], 1,
        "rejected on the first delivery: {row}"
    );
}

#[tokio::test]
async fn published_outputs_are_stored_with_the_ack_and_unroutable_ones_fail_the_delivery() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_exchange("derived", "topic", true, Headers::new())
        .await
        .unwrap();
    c.declare_queue("orders", QueueOptions::durable())
        .await
        .unwrap();
    c.declare_queue("audit", QueueOptions::durable())
        .await
        .unwrap();
    c.bind(broker::protocol::Binding {
        exchange: "derived".into(),
        queue: "audit".into(),
        key: "#.enriched".into(),
        arguments: Headers::new(),
    })
    .await
    .unwrap();
    c.attach_handler(attach("orders", "enrich", &[("exchange", "derived")]))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    for id in 0..5 {
        c.publish(persistent("orders", &format!(r#"{{"id":{id}}}"#)), false)
            .await
            .unwrap();
    }
    wait_for(&c, "audit", |q| q.ready == 5).await;
    wait_for(&c, "orders", |q| q.ready + q.unacked == 0).await;
    let derived = c.peek_queue("audit", 10).await.unwrap();
    let event: Value = serde_json::from_slice(&derived[0].message.body).unwrap();
    assert_eq!(event["source_queue"], "orders");
    assert_eq!(derived[0].message.routing_key, "orders.enriched");
    assert!(derived[0].message.properties.persistent);

    // An output to an exchange that does not exist: nothing is stored, the delivery fails.
    let args = json!({"retry_backoff": ["10ms"], "max_deliveries": 2});
    c.declare_queue("broken", queue_options(args))
        .await
        .unwrap();
    c.attach_handler(attach("broken", "enrich", &[("exchange", "nowhere")]))
        .await
        .unwrap();
    c.publish(persistent("broken", r#"{"id":9}"#), false)
        .await
        .unwrap();
    wait_for(&c, "broken", |q| q.dead_lettered == 1).await;
    let dead = c.peek_queue("broken.dlq", 10).await.unwrap();
    assert_eq!(
        dead[0].message.headers[DEATH_HEADER][0]["reason"],
        "plugin_error"
    );
    assert_eq!(c.queue_info("audit").await.unwrap().ready, 5);
}

#[tokio::test]
async fn bad_attachments_get_typed_errors() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("q", QueueOptions::default()).await.unwrap();
    let code = |r: Result<(), broker::ClientError>| r.unwrap_err().code();
    assert_eq!(
        code(c.attach_handler(attach("q", "no-such", &[])).await),
        Some(ErrorCode::PluginNotFound)
    );
    assert_eq!(
        code(c.attach_handler(attach("missing", "flaky", &[])).await),
        Some(ErrorCode::QueueNotFound)
    );
    assert_eq!(
        code(c.attach_handler(attach("q", "topic", &[])).await),
        Some(ErrorCode::InvalidField),
        "an exchange type is not a handler"
    );
    let err = c
        .attach_handler(attach("q", "redact", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidField));
    assert!(err.to_string().contains("`fields` is required"), "{err}");
    let mut zero = attach("q", "flaky", &[]);
    zero.concurrency = 0;
    assert_eq!(
        code(c.attach_handler(zero).await),
        Some(ErrorCode::InvalidField)
    );
    assert_eq!(
        code(c.detach_handler("q", "flaky").await),
        Some(ErrorCode::PluginNotFound)
    );
    c.attach_handler(attach("q", "flaky", &[])).await.unwrap();
    c.attach_handler(attach("q", "flaky", &[])).await.unwrap(); // same again: no-op
    assert_eq!(
        code(
            c.attach_handler(attach("q", "flaky", &[("failures", "1")]))
                .await
        ),
        Some(ErrorCode::PreconditionFailed)
    );
    let err = c.consume_filtered("q", 10, "flaky").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidField),
        "consume mode is no filter"
    );
    c.detach_handler("q", "flaky").await.unwrap();
    assert_eq!(c.queue_info("q").await.unwrap().consumers, 0);
}

#[tokio::test]
async fn attachments_survive_a_restart_and_detach_returns_held_messages() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    let args = json!({"retry_backoff": ["1h"]});
    c.declare_queue("slow", queue_options(args)).await.unwrap();
    c.attach_handler(attach("slow", "flaky", &[("failures", "1")]))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    c.publish(persistent("slow", "m"), false).await.unwrap();
    // First attempt fails and waits an hour; a restart keeps both.
    wait_for(&c, "slow", |q| q.delayed == 1).await;
    drop(c);
    b.restart().await;
    let c = b.client().await;
    let row = handler_row(&c, "slow", "flaky").await;
    assert_eq!(row["config"]["failures"], "1");
    assert_eq!(c.queue_info("slow").await.unwrap().consumers, 1);
    c.detach_handler("slow", "flaky").await.unwrap();
    assert!(
        c.list_handlers().await.unwrap()["handlers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    b.restart().await;
    let c = b.client().await;
    assert!(
        c.list_handlers().await.unwrap()["handlers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let info = c.queue_info("slow").await.unwrap();
    assert_eq!((info.delayed, info.consumers), (1, 0), "{info:?}");
}

#[tokio::test]
async fn filter_masks_fields_and_drops_non_json_for_its_subscribers_only() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("users", QueueOptions::default())
        .await
        .unwrap();
    let mut redact = attach("users", "redact", &[("fields", "password,card.number")]);
    redact.mode = HandlerMode::Filter;
    c.attach_handler(redact).await.unwrap();
    assert_eq!(
        c.queue_info("users").await.unwrap().consumers,
        0,
        "a filter is not a consumer"
    );
    let mut sub = c.consume_filtered("users", 10, "redact").await.unwrap();
    c.confirm_select().await.unwrap();
    let secret = r#"{"user":"ann","password":"hunter2","card":{"number":"4111","exp":"1/30"}}"#;
    c.publish(Message::text("users", secret), false)
        .await
        .unwrap();
    c.publish(Message::text("users", "not json"), false)
        .await
        .unwrap();
    c.publish(Message::text("users", r#"{"user":"bob"}"#), false)
        .await
        .unwrap();
    let first = next(&mut sub).await;
    let masked: Value = serde_json::from_slice(&first.message.body).unwrap();
    assert_eq!(masked["password"], "***");
    assert_eq!(masked["card"]["number"], "***");
    assert_eq!(masked["card"]["exp"], "1/30");
    c.ack(first.delivery_tag, false).unwrap();
    let second = next(&mut sub).await;
    assert_eq!(body(&second), r#"{"user":"bob"}"#, "non-JSON was dropped");
    c.ack(second.delivery_tag, false).unwrap();
    wait_for(&c, "users", |q| q.ready + q.unacked == 0).await;
    let row = handler_row(&c, "users", "redact").await;
    assert_eq!(row["stats"]["dropped"], 1, "{row}");
    assert_eq!(row["stats"]["transformed"], 1, "{row}");
    assert_eq!(row["subscribers"], 1);
    let err = c.detach_handler("users", "redact").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PreconditionFailed), "in use");

    // An unfiltered subscriber on the same queue sees the original.
    let other = b.client().await;
    let mut plain = other.consume("users", 10).await.unwrap();
    c.cancel(&sub.consumer_tag).await.unwrap();
    c.publish(Message::text("users", secret), false)
        .await
        .unwrap();
    assert_eq!(body(&next(&mut plain).await), secret);
    c.detach_handler("users", "redact").await.unwrap();
}

/// Kills the real broker (SIGKILL) while a handler is turning orders into derived events:
/// after a restart every order has exactly one derived event — none lost, none doubled,
/// because each output commits in the same transaction as its order's ack.
#[tokio::test]
async fn a_crash_neither_loses_nor_duplicates_handler_outputs() {
    const ORDERS: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::spawn(dir.path());
    let c = Client::connect(&broker.url).await.unwrap();
    c.declare_queue("orders", QueueOptions::durable())
        .await
        .unwrap();
    c.declare_queue("derived", QueueOptions::durable())
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    let publishes: Vec<_> = (0..ORDERS)
        .map(|id| c.publish(persistent("orders", &format!(r#"{{"id":{id}}}"#)), false))
        .collect();
    for p in publishes {
        p.await.unwrap();
    }
    // To the default exchange: routing key = the `derived` queue.
    let config = [("exchange", ""), ("routing_key", "derived")];
    c.attach_handler(attach("orders", "enrich", &config))
        .await
        .unwrap();
    // Let some of them through, then crash mid-stream.
    wait_for(&c, "derived", |q| q.ready >= 20).await;
    broker.kill9();

    let broker = BrokerProcess::spawn(dir.path());
    let c = Client::connect(&broker.url).await.unwrap();
    wait_for(&c, "orders", |q| q.ready + q.unacked == 0).await;
    let derived = c.peek_queue("derived", ORDERS * 2).await.unwrap();
    let mut ids: Vec<u64> = derived
        .iter()
        .map(|m| {
            serde_json::from_slice::<Value>(&m.message.body).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..ORDERS as u64).collect::<Vec<_>>());
}

fn bundled(name: &str) -> &'static [u8] {
    STANDARD_HANDLERS
        .iter()
        .chain(&STANDARD_EXCHANGES)
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
}

#[test]
fn the_harness_runs_a_built_handler_through_the_real_host() {
    let mut enrich =
        HandlerHarness::new(bundled("enrich"), "orders", &[("exchange", "derived")]).unwrap();
    let handled = enrich
        .handle(&Message::text("order.created", r#"{"id":1}"#))
        .unwrap();
    assert_eq!(handled.outcome, HandlerOutcome::Ack);
    assert_eq!(handled.published.len(), 1);
    assert_eq!(handled.published[0].exchange, "derived");
    assert_eq!(handled.published[0].routing_key, "order.created.enriched");

    let mut flaky = HandlerHarness::new(bundled("flaky"), "q", &[("fail_with", "trap")]).unwrap();
    let err = flaky.handle(&Message::text("k", "")).unwrap_err();
    assert!(err.contains("unreachable"), "a panic is a trap: {err}");
    let third = flaky.handle_delivery(&Message::text("k", ""), 3).unwrap();
    assert_eq!(
        third.outcome,
        HandlerOutcome::Ack,
        "a fresh instance after the trap"
    );

    let refused = HandlerHarness::new(bundled("redact"), "q", &[]);
    assert!(matches!(
        refused,
        Err(HarnessError::Handler(HandlerError::Config(_)))
    ));
    let exchange = HandlerHarness::new(bundled("topic"), "q", &[]);
    assert!(matches!(
        exchange,
        Err(HarnessError::Handler(HandlerError::NotAHandler(_)))
    ));
}

#[tokio::test]
async fn a_deployed_handler_is_versioned_and_its_attachments_move_to_a_new_version() {
    // Room for a plugin upload in one frame.
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker::Config::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let b = broker::Broker::start(config).await.unwrap();
    let c = Client::connect(&b.url()).await.unwrap();
    let v1 = c.deploy_plugin("greeter", bundled("flaky")).await.unwrap();
    assert_eq!(v1["version"], 1);
    c.declare_queue("signups", QueueOptions::durable())
        .await
        .unwrap();
    c.attach_handler(attach("signups", "greeter", &[("failures", "0")]))
        .await
        .unwrap();
    c.declare_exchange("events", "direct", true, Headers::new())
        .await
        .unwrap();
    c.bind(broker::protocol::Binding {
        exchange: "events".into(),
        queue: "signups".into(),
        key: "user.signup".into(),
        arguments: Headers::new(),
    })
    .await
    .unwrap();
    c.confirm_select().await.unwrap();
    let signup = || {
        let mut m = persistent("user.signup", "not json");
        m.exchange = "events".into();
        m
    };
    // v1 (flaky, no failures) acks anything.
    c.publish(signup(), false).await.unwrap();
    wait_for(&c, "signups", |q| q.ready + q.unacked == 0).await;
    assert_eq!(
        handler_row(&c, "signups", "greeter").await["plugin_version"],
        1
    );
    assert_eq!(c.queue_info("signups").await.unwrap().dead_lettered, 0);

    // v2 (email-sender) rejects a signup that is not JSON: the attachment runs v2 now.
    c.deploy_plugin("greeter", bundled("email-sender"))
        .await
        .unwrap();
    c.publish(signup(), false).await.unwrap();
    wait_for(&c, "signups", |q| q.dead_lettered == 1).await;
    assert_eq!(
        handler_row(&c, "signups", "greeter").await["plugin_version"],
        2
    );

    // A handler name cannot become an exchange type, and the reverse.
    let err = c
        .deploy_plugin("greeter", bundled("topic"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidPlugin));
    let err = c
        .deploy_plugin("flaky", bundled("flaky"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidPlugin),
        "bundled names are reserved"
    );
    let plugins = c.list_plugins().await.unwrap();
    let greeter = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "greeter")
        .unwrap()
        .clone();
    assert_eq!(greeter["kind"], "handler");
    assert_eq!(greeter["active_version"], 2);
    // Which version handled how many messages (each handled one).
    let handled: Vec<(u64, u64)> = greeter["versions"]
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
    assert_eq!(handled, [(1, 1), (2, 1)]);
}

fn cli(args: &[&str], url: &str) -> (bool, String, String) {
    let out = std::process::Command::new(common::bin())
        .args(args)
        .args(["--server", url])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn cli_attaches_lists_filters_and_detaches() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::spawn(dir.path());
    let url = process.url.clone();
    let (ok, _, err) = cli(&["declare", "queue", "users", "--durable"], &url);
    assert!(ok, "{err}");

    let (ok, _, err) = cli(
        &["handler", "attach", "users", "redact", "--mode", "filter"],
        &url,
    );
    assert!(!ok);
    assert!(
        err.contains("invalid_field") && err.contains("`fields` is required"),
        "{err}"
    );
    let (ok, out, err) = cli(
        &[
            "handler",
            "attach",
            "users",
            "redact",
            "--mode",
            "filter",
            "--config",
            "fields=password",
        ],
        &url,
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "handler redact attached to users (filter mode, concurrency 1)"
    );

    let (ok, _, err) = cli(
        &[
            "publish",
            "users",
            "--persistent",
            "--body",
            r#"{"user":"a","password":"x"}"#,
        ],
        &url,
    );
    assert!(ok, "{err}");
    let (ok, out, err) = cli(
        &["consume", "users", "--filter", "redact", "--count", "1"],
        &url,
    );
    assert!(ok, "{err}");
    let line: Value = serde_json::from_str(out.trim()).unwrap();
    let masked: Value = serde_json::from_str(line["message"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(masked, json!({"user": "a", "password": "***"}));

    let (ok, out, _) = cli(&["handler", "list"], &url);
    assert!(ok);
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["users", "redact", "filter", "1"], "{out}");
    assert_eq!(row.last(), Some(&"fields=password"), "{out}");

    let (ok, out, err) = cli(&["handler", "detach", "users", "redact"], &url);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "handler redact detached from users");
    let (ok, _, err) = cli(&["handler", "detach", "users", "redact"], &url);
    assert!(!ok);
    assert!(err.contains("plugin_not_found"), "{err}");
}

#[test]
fn hostile_handlers_are_contained_by_the_host() {
    let wasm = hostile::plugin("handler");
    let mut h = HandlerHarness::new(&wasm, "q", &[]).unwrap();
    let started = std::time::Instant::now();
    let err = h.handle(&Message::text("spin", "")).unwrap_err();
    assert!(err.contains("CPU budget"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stopped promptly"
    );
    let err = h.handle(&Message::text("alloc", "")).unwrap_err();
    assert!(err.contains("memory limit"), "{err}");
    let flood = h.handle(&Message::text("flood", "")).unwrap();
    assert!(
        matches!(&flood.outcome, HandlerOutcome::Reject(r) if r.contains("at most 100 publishes")),
        "{:?}",
        flood.outcome
    );
    assert_eq!(flood.published.len(), 100, "the publishes within the limit");
    let fine = h.handle(&Message::text("fine", "")).unwrap();
    assert_eq!(fine.outcome, HandlerOutcome::Ack);
}

#[tokio::test]
async fn a_looping_handler_dead_letters_its_message_and_the_rest_flows() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.deploy_plugin("hostile", &hostile::plugin("handler"))
        .await
        .unwrap();
    let args = json!({"max_deliveries": 2, "retry_backoff": ["10ms"]});
    c.declare_queue("jobs", queue_options(args)).await.unwrap();
    c.attach_handler(attach("jobs", "hostile", &[]))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    c.publish(persistent("jobs", "x"), false).await.unwrap(); // routing key `jobs`: acked
    // The default exchange routes by key: the `spin` key goes through a direct exchange.
    c.declare_exchange("in", "direct", false, Headers::new())
        .await
        .unwrap();
    c.bind(broker::protocol::Binding {
        exchange: "in".into(),
        queue: "jobs".into(),
        key: "spin".into(),
        arguments: Headers::new(),
    })
    .await
    .unwrap();
    let mut looping = persistent("spin", "loops");
    looping.exchange = "in".into();
    c.publish(looping, false).await.unwrap();
    c.publish(persistent("jobs", "y"), false).await.unwrap();
    wait_for(&c, "jobs", |q| {
        q.dead_lettered == 1 && q.ready + q.unacked + q.delayed == 0
    })
    .await;
    let dead = c.peek_queue("jobs.dlq", 10).await.unwrap();
    assert_eq!(
        dead[0].message.headers[DEATH_HEADER][0]["reason"],
        "plugin_error"
    );
    let row = handler_row(&c, "jobs", "hostile").await;
    assert_eq!(row["stats"]["acked"], 2, "{row}");
    assert_eq!(row["stats"]["failed"], 2, "{row}");
}

/// A redeployed handler that refuses one attachment's config: `list_handlers` (and the
/// CLI) report that this attachment stays on the old version and why, while another
/// attachment it accepts moves on; the attachment that stayed keeps working on the old
/// version even after its instance fails.
#[tokio::test]
async fn list_handlers_reports_the_version_each_attachment_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker::Config::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let b = broker::Broker::start(config).await.unwrap();
    let c = Client::connect(&b.url()).await.unwrap();
    // v1 (flaky) accepts both configs; v2 (enrich) requires `exchange`.
    c.deploy_plugin("worker", bundled("flaky")).await.unwrap();
    for queue in ["stays", "moves"] {
        c.declare_queue(queue, QueueOptions::durable())
            .await
            .unwrap();
    }
    // `stays`: the first delivery of every message traps on v1, the second acks.
    c.attach_handler(attach(
        "stays",
        "worker",
        &[("failures", "1"), ("fail_with", "trap")],
    ))
    .await
    .unwrap();
    c.attach_handler(attach(
        "moves",
        "worker",
        &[("failures", "0"), ("exchange", "nowhere")],
    ))
    .await
    .unwrap();
    assert_eq!(
        handler_row(&c, "stays", "worker").await["plugin_version"],
        1
    );

    assert_eq!(
        c.deploy_plugin("worker", bundled("enrich")).await.unwrap()["version"],
        2
    );
    c.confirm_select().await.unwrap();
    c.publish(persistent("stays", "job"), false).await.unwrap();
    c.publish(persistent("moves", "not json"), false)
        .await
        .unwrap();
    // v1 trapped on `stays`' message, then a fresh v1 instance acked its redelivery.
    wait_for(&c, "stays", |q| q.ready + q.unacked == 0).await;
    // v2 rejects what is not a JSON object: `moves` runs v2.
    wait_for(&c, "moves", |q| q.dead_lettered == 1).await;
    let stays = handler_row(&c, "stays", "worker").await;
    assert_eq!(stays["plugin_version"], 1, "{stays}");
    assert_eq!(stays["refused"]["version"], 2, "{stays}");
    let reason = stays["refused"]["reason"].as_str().unwrap();
    assert!(reason.contains("`exchange` is required"), "{reason}");
    assert_eq!(stays["stats"]["failed"], 1, "{stays}");
    assert_eq!(stays["stats"]["acked"], 1, "{stays}");
    assert_eq!(c.queue_info("stays").await.unwrap().dead_lettered, 0);
    let moves = handler_row(&c, "moves", "worker").await;
    assert_eq!(moves["plugin_version"], 2, "{moves}");
    assert_eq!(moves["refused"], Value::Null, "{moves}");

    // Off the test's runtime thread, which also runs the broker the CLI talks to.
    let url = b.url();
    let (ok, out, err) = tokio::task::spawn_blocking(move || cli(&["handler", "list"], &url))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(
        out.contains("version 2 refused this attachment, which stays on version 1"),
        "{out}"
    );

    // Back to v1: the refusal no longer applies.
    c.rollback_plugin("worker", Some(1)).await.unwrap();
    c.publish(persistent("stays", "job"), false).await.unwrap();
    wait_for(&c, "stays", |q| q.ready + q.unacked == 0).await;
    let stays = handler_row(&c, "stays", "worker").await;
    assert_eq!(stays["plugin_version"], 1, "{stays}");
    assert_eq!(stays["refused"], Value::Null, "{stays}");
    c.close().await;
    b.shutdown().await;
}
