//! Failure handling end to end: retries with backoff, delivery limits, dead-letter queues
//! and death records, TTL, overflow, priorities, delayed delivery, DLQ replay — through a
//! real broker, across restarts and `kill -9`.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use broker::protocol::ErrorCode;
use broker::router::DEATH_HEADER;
use broker::{Client, Headers, Message, QueueOptions};
use common::{BrokerProcess, TestBroker, assert_quiet, body, next, persistent};
use serde_json::{Value, json};

fn args(v: Value) -> Headers {
    v.as_object().unwrap().clone()
}

fn durable_with(arguments: Value) -> QueueOptions {
    QueueOptions {
        durable: true,
        arguments: args(arguments),
        ..Default::default()
    }
}

fn death(m: &Message) -> &Value {
    &m.headers[DEATH_HEADER][0]
}

/// Polls until `queue` holds `n` ready messages (for [`common::WAIT`] at most).
async fn wait_ready(c: &Client, queue: &str, n: u64) {
    common::wait_for(|| async {
        c.queue_info(queue)
            .await
            .is_ok_and(|info| info.ready == n)
            .then_some(())
    })
    .await;
}

/// A delay was not cut short: `elapsed` was measured from before the broker started it.
/// (How late it ends is not asserted; waiting for it is bounded by the caller's deadline.)
fn assert_not_early(elapsed: Duration, min_ms: u64, what: &str) {
    let ms = elapsed.as_millis() as u64;
    assert!(
        ms + 5 >= min_ms,
        "{what}: {ms} ms, expected at least {min_ms} ms"
    );
}

#[tokio::test]
async fn always_nacking_consumer_sees_backoff_then_the_dlq() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    let q = durable_with(json!({"max_deliveries": 3, "retry_backoff": ["200ms", "400ms"]}));
    c.declare_queue("orders", q).await.unwrap();
    c.confirm_select().await.unwrap();
    let mut m = persistent("orders", "charge card");
    m.properties.message_id = Some("order-1".into());
    c.publish(m, false).await.unwrap();

    let mut sub = c.consume("orders", 10).await.unwrap();
    let mut times = Vec::new();
    for attempt in 1..=3 {
        let d = next(&mut sub).await;
        times.push(Instant::now());
        assert_eq!(d.delivery_count, attempt);
        c.nack(d.delivery_tag, false, true).unwrap();
    }
    assert_quiet(&mut sub).await;
    assert_not_early(times[1] - times[0], 200, "first backoff");
    assert_not_early(times[2] - times[1], 400, "second backoff");

    wait_ready(&c, "orders.dlq", 1).await;
    let dead = c.peek_queue("orders.dlq", 10).await.unwrap();
    let m = &dead[0].message;
    assert_eq!(body_of(m), "charge card");
    assert_eq!(
        m.properties.message_id.as_deref(),
        Some("order-1"),
        "properties kept"
    );
    assert!(m.properties.persistent);
    let record = death(m);
    assert_eq!(record["reason"], "delivery_limit");
    assert_eq!(record["queue"], "orders");
    assert_eq!(record["exchange"], "");
    assert_eq!(record["routing_key"], "orders");
    assert_eq!(record["count"], 1);
    assert!(record["time"].as_u64().unwrap() > 0);
    let info = c.queue_info("orders").await.unwrap();
    assert_eq!(
        (info.ready, info.unacked, info.delayed, info.dead_lettered),
        (0, 0, 0, 1)
    );
}

fn body_of(m: &Message) -> String {
    String::from_utf8(m.body.to_vec()).unwrap()
}

#[tokio::test]
async fn backoff_survives_a_restart_in_the_middle() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    let q = durable_with(json!({"max_deliveries": 5, "retry_backoff": ["1500ms"]}));
    c.declare_queue("jobs", q).await.unwrap();
    c.confirm_select().await.unwrap();
    c.publish(persistent("jobs", "retry me"), false)
        .await
        .unwrap();
    let mut sub = c.consume("jobs", 1).await.unwrap();
    let d = next(&mut sub).await;
    c.nack(d.delivery_tag, false, true).unwrap();
    let nacked_at = Instant::now();
    // A confirmed publish after the nack: its commit covers the nack's retry schedule.
    c.publish(persistent("other", "barrier"), false)
        .await
        .unwrap();
    c.close().await;
    b.restart().await;

    let c = b.client().await;
    assert_eq!(
        c.queue_info("jobs").await.unwrap().delayed,
        1,
        "still waiting after restart"
    );
    let mut sub = c.consume("jobs", 1).await.unwrap();
    let d = next(&mut sub).await;
    assert_not_early(nacked_at.elapsed(), 1500, "backoff across restart");
    assert_eq!((body(&d).as_str(), d.delivery_count), ("retry me", 2));
}

#[tokio::test]
async fn expired_messages_are_dead_lettered_without_consumers() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("events", durable_with(json!({"message_ttl": "300ms"})))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    c.publish(persistent("events", "queue ttl"), false)
        .await
        .unwrap();
    let mut own = persistent("events", "own shorter ttl");
    own.properties.expiration_ms = Some(50);
    c.publish(own, false).await.unwrap();
    // Expired by the broker's own timers (nothing consumes), within the wait's deadline.
    wait_ready(&c, "events.dlq", 2).await;
    let dead = c.peek_queue("events.dlq", 10).await.unwrap();
    let bodies: Vec<_> = dead.iter().map(|p| body_of(&p.message)).collect();
    assert_eq!(
        bodies,
        ["own shorter ttl", "queue ttl"],
        "the smaller TTL wins"
    );
    assert!(
        dead.iter()
            .all(|p| death(&p.message)["reason"] == "expired")
    );
    let info = c.queue_info("events").await.unwrap();
    assert_eq!((info.ready, info.expired), (0, 2));
    // An expired message is never delivered.
    let mut sub = c.consume("events", 1).await.unwrap();
    assert_quiet(&mut sub).await;
}

#[tokio::test]
async fn overflow_drop_head_and_reject_publish() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("capped", durable_with(json!({"max_length": 2})))
        .await
        .unwrap();
    c.declare_queue(
        "strict",
        durable_with(
            json!({"max_length_bytes": 10, "overflow": "reject_publish", "dead_letter": false}),
        ),
    )
    .await
    .unwrap();
    c.confirm_select().await.unwrap();
    for t in ["a", "b", "c"] {
        c.publish(persistent("capped", t), false).await.unwrap();
    }
    let kept: Vec<_> = c
        .peek_queue("capped", 10)
        .await
        .unwrap()
        .iter()
        .map(|p| body_of(&p.message))
        .collect();
    assert_eq!(kept, ["b", "c"]);
    let dead = c.peek_queue("capped.dlq", 10).await.unwrap();
    assert_eq!(body_of(&dead[0].message), "a");
    assert_eq!(death(&dead[0].message)["reason"], "max_length");

    c.publish(persistent("strict", "12345678"), false)
        .await
        .unwrap();
    let err = c
        .publish(persistent("strict", "123"), false)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::QueueFull),
        "negative confirm: {err}"
    );
    assert_eq!(c.queue_info("strict").await.unwrap().ready, 1);
}

#[tokio::test]
async fn higher_priority_first_fifo_within_a_priority() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("tasks", durable_with(json!({"max_priority": 10})))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    for (text, priority) in [
        ("low-1", 1),
        ("urgent", 9),
        ("mid", 5),
        ("low-2", 1),
        ("none", 0),
    ] {
        let mut m = persistent("tasks", text);
        m.properties.priority = Some(priority);
        c.publish(m, false).await.unwrap();
    }
    let mut sub = c.consume("tasks", 0).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(body(&next(&mut sub).await));
    }
    assert_eq!(order, ["urgent", "mid", "low-1", "low-2", "none"]);
}

#[tokio::test]
async fn delayed_delivery_waits_and_survives_restart() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("later", QueueOptions::durable())
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    let mut m = persistent("later", "after 1.2 s");
    m.properties.delay_ms = Some(1200);
    // The delay counts from when the broker takes the message, before its confirm.
    let published = Instant::now();
    c.publish(m, false).await.unwrap();
    c.publish(persistent("later", "now"), false).await.unwrap();
    let mut sub = c.consume("later", 0).await.unwrap();
    let now = next(&mut sub).await;
    assert_eq!(body(&now), "now");
    c.ack(now.delivery_tag, false).unwrap();
    assert_quiet(&mut sub).await;
    c.close().await;
    b.restart().await;

    let c = b.client().await;
    let mut sub = c.consume("later", 0).await.unwrap();
    assert_eq!(body(&next(&mut sub).await), "after 1.2 s");
    assert_not_early(published.elapsed(), 1200, "delayed delivery");
}

#[tokio::test]
async fn nack_with_delay_overrides_backoff() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("q", durable_with(json!({"retry_backoff": ["1h"]})))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    c.publish(persistent("q", "soon"), false).await.unwrap();
    let mut sub = c.consume("q", 1).await.unwrap();
    let d = next(&mut sub).await;
    c.nack_with_delay(d.delivery_tag, 150).unwrap();
    let nacked = Instant::now();
    let again = next(&mut sub).await;
    assert_not_early(nacked.elapsed(), 150, "explicit nack delay");
    assert_eq!(again.delivery_count, 2);
}

#[tokio::test]
async fn dead_letter_routes_and_opt_out() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("parking", QueueOptions::durable())
        .await
        .unwrap();
    let to_parking = json!({"dead_letter_exchange": "", "dead_letter_routing_key": "parking"});
    c.declare_queue("routed", durable_with(to_parking))
        .await
        .unwrap();
    c.declare_queue("silent", durable_with(json!({"dead_letter": false})))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    c.publish(persistent("routed", "to parking"), false)
        .await
        .unwrap();
    c.publish(persistent("silent", "gone"), false)
        .await
        .unwrap();
    for queue in ["routed", "silent"] {
        let mut sub = c.consume(queue, 1).await.unwrap();
        let d = next(&mut sub).await;
        c.reject(d.delivery_tag, false).unwrap();
    }
    wait_ready(&c, "parking", 1).await;
    let parked = c.peek_queue("parking", 1).await.unwrap();
    assert_eq!(death(&parked[0].message)["reason"], "rejected");
    assert_eq!(death(&parked[0].message)["queue"], "routed");
    let info = c.queue_info("silent").await.unwrap();
    assert_eq!((info.ready, info.unacked, info.dropped), (0, 0, 1));
    let err = c.queue_info("silent.dlq").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::QueueNotFound),
        "no DLQ when opted out"
    );
}

#[tokio::test]
async fn dlq_requeue_moves_dead_letters_back() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("mail", QueueOptions::durable())
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    for id in ["m1", "m2", "m3"] {
        let mut m = persistent("mail", id);
        m.properties.message_id = Some(id.into());
        c.publish(m, false).await.unwrap();
    }
    let mut sub = c.consume("mail", 3).await.unwrap();
    for _ in 0..3 {
        let d = next(&mut sub).await;
        c.reject(d.delivery_tag, false).unwrap();
    }
    c.cancel(&sub.consumer_tag).await.unwrap();
    wait_ready(&c, "mail.dlq", 3).await;

    assert_eq!(
        c.requeue_dead_letters("mail.dlq", Some("m2"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(c.queue_info("mail").await.unwrap().ready, 1);
    assert_eq!(c.requeue_dead_letters("mail.dlq", None).await.unwrap(), 2);
    assert_eq!(c.queue_info("mail.dlq").await.unwrap().ready, 0);
    let back: Vec<_> = c
        .peek_queue("mail", 10)
        .await
        .unwrap()
        .iter()
        .map(|p| body_of(&p.message))
        .collect();
    assert_eq!(back, ["m2", "m1", "m3"]);
}

#[tokio::test]
async fn invalid_queue_arguments_are_refused() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    for bad in [
        json!({"max_deliveries": 0}),
        json!({"retry_backoff": "5s"}),
        json!({"message_ttl": "soon"}),
        json!({"max_priority": 11}),
        json!({"overflow": "drop_tail"}),
    ] {
        let err = c
            .declare_queue("q", durable_with(bad.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidField), "{bad}");
    }
    let err = c.queue_info("q").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::QueueNotFound),
        "nothing declared"
    );
}

/// Rejected messages are dead-lettered while the broker is killed: each message ends up in
/// exactly one of the queue or its DLQ (both moves commit in one transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_dead_lettering_loses_and_duplicates_nothing() {
    const N: usize = 300;
    const BEFORE_BARRIER: usize = N / 4;
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::spawn(dir.path());
    let c = Client::connect(&process.url).await.unwrap();
    for queue in ["work", "barrier"] {
        c.declare_queue(queue, QueueOptions::durable())
            .await
            .unwrap();
    }
    c.confirm_select().await.unwrap();
    let confirms: Vec<_> = (0..N)
        .map(|i| c.publish(persistent("work", &i.to_string()), false))
        .collect();
    for confirm in confirms {
        confirm.await.unwrap();
    }
    let mut sub = c.consume("work", 50).await.unwrap();
    let mut rejected_first = HashSet::new();
    for _ in 0..BEFORE_BARRIER {
        let d = next(&mut sub).await;
        rejected_first.insert(body(&d));
        c.reject(d.delivery_tag, false).unwrap();
    }
    // Rejects get no reply: a confirmed persistent publish sent after them commits them
    // (docs/protocol.md §4.5), so these dead-letterings are on disk before the kill.
    c.publish(persistent("barrier", "after the first rejects"), false)
        .await
        .unwrap();
    // More rejects, fire-and-forget, and the kill while they are in flight.
    for _ in BEFORE_BARRIER..N / 2 {
        let d = next(&mut sub).await;
        c.reject(d.delivery_tag, false).unwrap();
    }
    process.kill9();

    let process = BrokerProcess::spawn(dir.path());
    let c = Client::connect(&process.url).await.unwrap();
    let mut seen = HashSet::new();
    let mut dead = HashSet::new();
    for queue in ["work", "work.dlq"] {
        let info = c.queue_info(queue).await.unwrap();
        let mut sub = c.consume(queue, 0).await.unwrap();
        for _ in 0..info.ready {
            let d = next(&mut sub).await;
            assert!(seen.insert(body(&d)), "duplicate {}", body(&d));
            if queue == "work.dlq" {
                dead.insert(body(&d));
            }
        }
    }
    assert_eq!(seen.len(), N, "every message in exactly one place");
    assert!(
        rejected_first.is_subset(&dead),
        "the rejects committed before the kill are dead letters"
    );
    assert!(
        dead.len() <= N / 2,
        "only rejected messages are dead letters"
    );
}

/// After a restart, expiry and delays fire by themselves, with nobody touching the queue.
#[tokio::test]
async fn timers_fire_after_restart_without_traffic() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("ttl", durable_with(json!({"message_ttl": "600ms"})))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    c.publish(persistent("ttl", "expires while down"), false)
        .await
        .unwrap();
    c.close().await;
    b.restart().await;
    let c = b.client().await;
    // Polls only the DLQ: the expired message must move without activity on `ttl`.
    wait_ready(&c, "ttl.dlq", 1).await;
}
