//! Handler plugins end to end: the bundled handlers attached to queues of a real broker,
//! in consume mode (ack / retry / reject / trap → queue semantics, publishes committed
//! with the ack, persistence across restarts and crashes) and filter mode.

mod common;
#[path = "support/hostile.rs"]
mod hostile;
#[path = "support/handlers.rs"]
mod support;

use std::time::Duration;

use broker::plugin::testing::{HandlerHarness, HarnessError};
use broker::plugin::{HandlerError, HandlerOutcome};
use broker::protocol::{ErrorCode, HandlerMode};
use broker::router::DEATH_HEADER;
use broker::{Client, Headers, Message, QueueOptions};
use common::run_cli as cli;
use common::{BrokerProcess, TestBroker, body, next, persistent};
use serde_json::{Value, json};
use support::{attach, bundled, handler_row, queue_options, wait_for};

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
    c.declare_queue("broken", queue_options(args.clone()))
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

    // An output its exchange routes to no queue, and one a full `reject_publish` queue
    // refuses: the delivery fails each time rather than being acked without its output.
    let full = json!({"max_length": 1, "overflow": "reject_publish"});
    c.declare_queue("full", queue_options(full)).await.unwrap();
    c.publish(persistent("full", "already here"), false)
        .await
        .unwrap();
    for (queue, config) in [
        (
            "unrouted",
            [("exchange", "derived"), ("routing_key", "no.match")],
        ),
        ("refused", [("exchange", ""), ("routing_key", "full")]),
    ] {
        c.declare_queue(queue, queue_options(args.clone()))
            .await
            .unwrap();
        c.attach_handler(attach(queue, "enrich", &config))
            .await
            .unwrap();
        c.publish(persistent(queue, r#"{"id":10}"#), false)
            .await
            .unwrap();
        wait_for(&c, queue, |q| q.dead_lettered == 1).await;
    }
    assert_eq!(c.queue_info("full").await.unwrap().ready, 1);
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
    const ORDERS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::spawn(dir.path());
    let c = Client::connect(&broker.url).await.unwrap();
    c.declare_queue("orders", QueueOptions::durable())
        .await
        .unwrap();
    c.declare_queue("derived", QueueOptions::durable())
        .await
        .unwrap();
    c.declare_queue("barrier", QueueOptions::durable())
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
    // Outputs are queued before their commit; a confirmed persistent publish sent now
    // commits them (docs/protocol.md §4.5), so at least those 20 are on disk at the kill.
    c.publish(persistent("barrier", "after 20 outputs"), false)
        .await
        .unwrap();
    broker.kill9();
    // The kill landed mid-stream: the data directory as it was left holds both handled
    // orders' outputs and orders still to handle.
    let (recovered, writer) = broker::store::open(dir.path(), |_| usize::MAX).unwrap();
    writer.close();
    let stored = |name: &str| {
        let queue = recovered.queues.iter().find(|q| q.record.name == name);
        queue.map_or(0, |q| q.messages.len())
    };
    let (left, derived) = (stored("orders"), stored("derived"));
    assert!(derived >= 20, "{derived} outputs committed before the kill");
    assert!(left > 0, "the handler had finished before the kill");
    assert_eq!(
        left + derived,
        ORDERS,
        "each order or its output, at the kill"
    );

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
    // The SDK's panic hook sends the panic's text; the host reports it as the failure.
    assert!(
        err.starts_with("panicked at plugins/handler-flaky/src/lib.rs:")
            && err.contains("flaky handler crashed on attempt 1"),
        "a panic is a trap with its message: {err}"
    );
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
    // Columns line up with the header (widths computed from the cells).
    let header = out.lines().next().unwrap();
    let first = out.lines().nth(1).unwrap();
    assert_eq!(
        header.find("CONFIG"),
        first.find("fields=password"),
        "{out}"
    );
    assert_eq!(header.find("MODE"), first.find("filter"), "{out}");

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
    // The 16 MiB cap or, first, the time each MiB of growth is charged.
    assert!(
        err.contains("memory limit") || err.contains("memory growth charged"),
        "{err}"
    );
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
