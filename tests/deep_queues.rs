//! Deep queues: past `max_in_memory_length` a durable queue keeps message bodies only on
//! disk and reads them back before delivery — through a real broker, across `kill -9`,
//! expiry, dead-lettering and purge.

mod common;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::time::Duration;

use broker::{Client, Message, QueueOptions};
use common::{BrokerProcess, TestBroker, assert_quiet, next};
use serde_json::{Value, json};

fn deep(arguments: Value) -> QueueOptions {
    QueueOptions {
        durable: true,
        arguments: arguments.as_object().unwrap().clone(),
        ..Default::default()
    }
}

/// Message `i`: a body of varying length and bytes, a header and a message id.
fn numbered(queue: &str, i: usize) -> Message {
    let mut m = Message::text(queue, "");
    m.body = (0..i % 300)
        .map(|b| (b * 7 + i) as u8)
        .collect::<Vec<u8>>()
        .into();
    m.properties.persistent = true;
    m.properties.message_id = Some(format!("m{i}"));
    m.headers.insert("n".into(), json!(i));
    m
}

fn assert_same(got: &Message, want: &Message) {
    assert_eq!(got.body, want.body);
    assert_eq!(got.properties.message_id, want.properties.message_id);
    assert_eq!(got.headers.get("n"), want.headers.get("n"));
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bodies past the limit leave memory once committed, come back intact and in order, and
/// a broker killed with SIGKILL restarts with the backlog still on disk only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_queue_keeps_bodies_on_disk_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::spawn(dir.path());
    let c = Client::connect(&process.url).await.unwrap();
    c.declare_queue("deep", deep(json!({"max_in_memory_length": 20})))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    for i in 0..300 {
        c.publish(numbered("deep", i), false).await.unwrap();
    }
    let info = c.queue_info("deep").await.unwrap();
    assert_eq!(info.ready, 300);
    // Each publish pages out what earlier commits made durable; the last may still wait.
    assert!(
        (270..=280).contains(&info.paged_out),
        "paged out: {}",
        info.paged_out
    );
    let addr = process.http_url["http://".len()..]
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let scrape =
        prometheus::parse_prometheus(&common::http(addr, "GET", "/metrics", None).await.body);
    let gauge = prometheus::value(
        &scrape,
        "broker_queue_messages_paged_out",
        &[("queue", "deep")],
    );
    assert_eq!(gauge, info.paged_out as f64);

    let mut sub = c.consume("deep", 10).await.unwrap();
    for i in 0..100 {
        let d = next(&mut sub).await;
        assert_same(&d.message, &numbered("deep", i));
        c.ack(d.delivery_tag, false).unwrap();
    }
    // Commits are ordered: once this confirm arrives, the acks are durable too.
    c.cancel(&sub.consumer_tag).await.unwrap();
    c.publish(numbered("deep", 300), false).await.unwrap();
    process.kill9();

    let process = BrokerProcess::spawn(dir.path());
    let c = Client::connect(&process.url).await.unwrap();
    let info = c.queue_info("deep").await.unwrap();
    // Unacked deliveries at the kill come back too; past the first 20, all start on disk.
    assert_eq!((info.ready, info.paged_out), (201, 181));
    let mut sub = c.consume("deep", 50).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..info.ready {
        let d = next(&mut sub).await;
        c.ack(d.delivery_tag, false).unwrap();
        got.push(d.message);
    }
    assert_quiet(&mut sub).await;
    for (m, i) in got.iter().zip(100..=300) {
        assert_same(m, &numbered("deep", i));
    }
    assert_eq!(c.queue_info("deep").await.unwrap().paged_out, 0);
}

/// Paged-out messages that expire are dead-lettered with their bodies; a purge removes
/// them from disk without reading them.
#[tokio::test]
async fn paged_out_messages_expire_into_dead_letters_and_purge() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("parked", deep(json!({"max_in_memory_length": 5})))
        .await
        .unwrap();
    let to_parked = json!({
        "max_in_memory_length": 5, "message_ttl": "400ms",
        "dead_letter_exchange": "", "dead_letter_routing_key": "parked",
    });
    c.declare_queue("events", deep(to_parked)).await.unwrap();
    c.confirm_select().await.unwrap();
    for i in 0..50 {
        c.publish(numbered("events", i), false).await.unwrap();
    }
    assert!(c.queue_info("events").await.unwrap().paged_out >= 40);
    wait_until("all 50 expired", async || {
        c.queue_info("parked").await.unwrap().ready == 50
    })
    .await;
    let parked = c.peek_queue("parked", 100).await.unwrap();
    assert_eq!(parked.len(), 50);
    for (p, i) in parked.iter().zip(0..) {
        assert_same(&p.message, &numbered("events", i));
        assert_eq!(p.message.headers["x-death"][0]["reason"], "expired");
    }
    c.declare_queue("barrier", QueueOptions::durable())
        .await
        .unwrap();
    wait_until("dead letters paged out", async || {
        // A publish elsewhere commits the batch the last dead letters were stored in (to a
        // queue without a TTL: one to `events` could expire into `parked` meanwhile).
        c.publish(numbered("barrier", 99), false).await.unwrap();
        c.queue_info("parked").await.unwrap().paged_out >= 40
    })
    .await;

    assert_eq!(c.purge_queue("parked").await.unwrap(), 50);
    c.close().await;
    b.restart().await;
    let c = b.client().await;
    let info = c.queue_info("parked").await.unwrap();
    assert_eq!((info.ready, info.paged_out), (0, 0), "purged from disk too");
}

/// After a failed commit nothing more leaves memory (which messages are on disk is no
/// longer known), and what was paged out before is still read back.
#[tokio::test]
async fn after_a_failed_commit_paging_stops_and_paged_out_messages_still_arrive() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("deep", deep(json!({"max_in_memory_length": 5})))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    for i in 0..30 {
        c.publish(numbered("deep", i), false).await.unwrap();
    }
    let before = c.queue_info("deep").await.unwrap().paged_out;
    assert!(before >= 20, "paged out: {before}");

    b.broker.as_ref().unwrap().fail_commits(true);
    let err = c.publish(numbered("deep", 30), false).await.unwrap_err();
    assert_eq!(err.code(), Some(broker::protocol::ErrorCode::StoreError));
    b.broker.as_ref().unwrap().fail_commits(false);
    for i in 31..40 {
        c.publish(numbered("deep", i), false).await.unwrap();
    }
    let info = c.queue_info("deep").await.unwrap();
    // The refused publish stays queued in memory (as after any store_error).
    assert_eq!(info.ready, 40);
    assert!(
        info.paged_out <= before + 1,
        "nothing new paged out after the failure: {} then {}",
        before,
        info.paged_out
    );

    let mut sub = c.consume("deep", 10).await.unwrap();
    for i in 0..40 {
        let d = next(&mut sub).await;
        assert_same(&d.message, &numbered("deep", i));
        c.ack(d.delivery_tag, false).unwrap();
    }
    assert_quiet(&mut sub).await;
}

/// `max_length` with `drop_head` evicts paged-out messages too, into the DLQ with their
/// bodies.
#[tokio::test]
async fn drop_head_dead_letters_paged_out_messages_with_their_bodies() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    let capped = json!({"max_in_memory_length": 3, "max_length": 10});
    c.declare_queue("capped", deep(capped)).await.unwrap();
    c.confirm_select().await.unwrap();
    for i in 0..10 {
        c.publish(numbered("capped", i), false).await.unwrap();
    }
    assert!(c.queue_info("capped").await.unwrap().paged_out >= 5);
    for i in 10..20 {
        c.publish(numbered("capped", i), false).await.unwrap();
    }
    let dead = c.peek_queue("capped.dlq", 100).await.unwrap();
    assert_eq!(dead.len(), 10);
    for (p, i) in dead.iter().zip(0..) {
        assert_same(&p.message, &numbered("capped", i));
        assert_eq!(p.message.headers["x-death"][0]["reason"], "max_length");
    }
    let kept = c.peek_queue("capped", 100).await.unwrap();
    for (p, i) in kept.iter().zip(10..) {
        assert_same(&p.message, &numbered("capped", i));
    }
    assert_eq!(kept.len(), 10);
}
