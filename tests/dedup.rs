//! Idempotent publish (`dedup_window`, docs/protocol.md §3): a publish repeating a
//! message id the queue took within its window is confirmed but stored once, also after
//! the first was consumed and across a restart; the window ends; publishes without a
//! message id are never deduplicated; the count reaches `queue_info` and the metrics.

mod common;
#[path = "support/prometheus.rs"]
mod prometheus;

use broker::{Message, QueueOptions};
use common::{HttpBroker, TestBroker, next};
use serde_json::json;

fn with_window(window: serde_json::Value) -> QueueOptions {
    QueueOptions {
        durable: true,
        arguments: json!({ "dedup_window": window })
            .as_object()
            .cloned()
            .unwrap(),
        ..Default::default()
    }
}

fn message(queue: &str, id: Option<&str>, body: &str) -> Message {
    let mut m = Message::text(queue, body);
    m.properties.persistent = true;
    m.properties.message_id = id.map(str::to_owned);
    m
}

#[tokio::test]
async fn a_repeated_message_id_is_confirmed_and_stored_once_even_after_a_restart() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("orders", with_window(json!("1h")))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    // Pipelined: the repeat arrives before the first is committed, and is confirmed too.
    let sent = [
        c.publish(message("orders", Some("m-1"), "first"), false),
        c.publish(message("orders", Some("m-1"), "retried"), false),
        c.publish(message("orders", Some("m-2"), "other"), false),
        c.publish(message("orders", None, "no id"), false),
        c.publish(message("orders", None, "no id"), false),
    ];
    for confirmed in sent {
        confirmed.await.unwrap();
    }
    let info = c.queue_info("orders").await.unwrap();
    assert_eq!((info.ready, info.deduplicated), (4, 1));
    let bodies: Vec<String> = c
        .peek_queue("orders", 10)
        .await
        .unwrap()
        .iter()
        .map(|d| String::from_utf8(d.message.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, ["first", "other", "no id", "no id"]);

    // Consumed and acked, the id is still taken.
    let mut sub = c.consume("orders", 10).await.unwrap();
    for _ in 0..4 {
        let d = next(&mut sub).await;
        c.ack(d.delivery_tag, false).unwrap();
    }
    drop(sub);
    c.publish(message("orders", Some("m-1"), "again"), false)
        .await
        .unwrap();
    let info = c.queue_info("orders").await.unwrap();
    assert_eq!((info.ready, info.unacked, info.deduplicated), (0, 0, 2));

    // After a restart the window still holds both ids.
    c.close().await;
    b.restart().await;
    let c = b.client().await;
    c.confirm_select().await.unwrap();
    c.publish(message("orders", Some("m-2"), "after restart"), false)
        .await
        .unwrap();
    c.publish(message("orders", Some("m-3"), "new"), false)
        .await
        .unwrap();
    let info = c.queue_info("orders").await.unwrap();
    assert_eq!((info.ready, info.deduplicated), (1, 1));
}

#[tokio::test]
async fn an_id_is_taken_again_once_its_window_has_passed() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("short", with_window(json!("200ms")))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    c.publish(message("short", Some("x"), "1"), false)
        .await
        .unwrap();
    c.publish(message("short", Some("x"), "2"), false)
        .await
        .unwrap();
    assert_eq!(c.queue_info("short").await.unwrap().ready, 1);
    // Repeats are dropped until the window ends; then one is taken.
    common::wait_for(|| async {
        c.publish(message("short", Some("x"), "later"), false)
            .await
            .unwrap();
        (c.queue_info("short").await.unwrap().ready == 2).then_some(())
    })
    .await;
    let bodies: Vec<String> = c
        .peek_queue("short", 10)
        .await
        .unwrap()
        .iter()
        .map(|d| String::from_utf8(d.message.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, ["1", "later"]);
}

#[tokio::test]
async fn deduplicated_publishes_are_counted_in_the_metrics() {
    let b = HttpBroker::start().await;
    let c = b.client().await;
    c.declare_queue("q", with_window(json!(60_000)))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    for _ in 0..3 {
        c.publish(message("q", Some("same"), "x"), false)
            .await
            .unwrap();
    }
    let scrape = prometheus::parse_prometheus(&b.get("/metrics").await.body);
    let count = prometheus::value(
        &scrape,
        "broker_queue_deduplicated_total",
        &[("queue", "q")],
    );
    assert_eq!(count, 2.0);
}

#[tokio::test]
async fn a_bad_window_is_refused() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    for bad in [json!(0), json!("soon"), json!(-5)] {
        let err = c
            .declare_queue("q", with_window(bad.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(broker::protocol::ErrorCode::InvalidField),
            "{bad}: {err}"
        );
    }
}
