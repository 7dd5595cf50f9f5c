//! End-to-end tests of the broker core over real WebSocket connections, with a real redb
//! store in a temporary directory.

mod common;

use std::collections::HashSet;

use broker::protocol::{ErrorCode, Subscribe};
use broker::{Message, Properties, QueueOptions};
use common::{TestBroker, assert_quiet, body, next, persistent};

#[tokio::test]
async fn round_trip_keeps_body_headers_and_properties() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("q", QueueOptions::durable()).await.unwrap();
    c.confirm_select().await.unwrap();
    let mut sent = Message::text("q", "");
    sent.body = vec![0u8, 159, 146, 150, 255].into(); // not UTF-8: travels as base64
    sent.headers
        .insert("tenant".into(), serde_json::json!({"id": 7}));
    sent.properties = Properties {
        persistent: true,
        message_id: Some("m-1".into()),
        correlation_id: Some("c-1".into()),
        reply_to: Some("replies".into()),
        content_type: Some("application/octet-stream".into()),
        priority: Some(4),
        expiration_ms: Some(60_000),
        timestamp: Some(1234),
        delay_ms: None,
        content_encoding: Some("identity".into()),
        kind: Some("order".into()),
        user_id: Some("guest".into()),
        app_id: Some("core-test".into()),
        cluster_id: Some("c".into()),
    };
    c.publish(sent.clone(), false).await.unwrap();
    c.publish(Message::text("q", "héllo"), false).await.unwrap();

    let mut sub = c.consume("q", 10).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(*d.message, sent);
    assert_eq!(
        (d.redelivered, d.delivery_count, &*d.queue),
        (false, 1, "q")
    );
    let d2 = next(&mut sub).await;
    assert_eq!(body(&d2), "héllo");
    assert!(
        d2.message.properties.timestamp.is_some(),
        "broker stamps the time"
    );
    c.ack(d2.delivery_tag, true).unwrap();
    assert_eq!(
        c.queue_info("q").await.unwrap().unacked,
        0,
        "multiple ack settled both"
    );
}

#[tokio::test]
async fn confirms_arrive_for_every_publish_and_messages_are_stored() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("orders", QueueOptions::durable())
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    let confirms: Vec<_> = (0..500)
        .map(|i| c.publish(persistent("orders", &i.to_string()), false))
        .collect();
    for confirm in confirms {
        confirm.await.unwrap();
    }
    assert_eq!(c.queue_info("orders").await.unwrap().ready, 500);
    drop(c);
    b.restart().await;
    let c = b.client().await;
    let mut sub = c.consume("orders", 0).await.unwrap();
    for i in 0..500 {
        assert_eq!(
            body(&next(&mut sub).await),
            i.to_string(),
            "FIFO after restart"
        );
    }
}

#[tokio::test]
async fn competing_consumers_share_the_queue_round_robin() {
    let b = TestBroker::start().await;
    let (c1, c2, p) = (b.client().await, b.client().await, b.client().await);
    p.declare_queue("work", QueueOptions::default())
        .await
        .unwrap();
    let mut s1 = c1.consume("work", 1).await.unwrap();
    let mut s2 = c2.consume("work", 1).await.unwrap();
    p.confirm_select().await.unwrap();
    for i in 0..10 {
        p.publish(Message::text("work", i.to_string()), false)
            .await
            .unwrap();
    }
    let (mut got1, mut got2) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let d = next(&mut s1).await;
        got1.push(body(&d));
        c1.ack(d.delivery_tag, false).unwrap();
        let d = next(&mut s2).await;
        got2.push(body(&d));
        c2.ack(d.delivery_tag, false).unwrap();
    }
    assert_eq!(got1.len(), 5);
    assert_eq!(got2.len(), 5);
    let all: HashSet<_> = got1.iter().chain(&got2).cloned().collect();
    assert_eq!(all.len(), 10, "each message to exactly one consumer");
}

#[tokio::test]
async fn prefetch_bounds_unacked_deliveries() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("q", QueueOptions::default()).await.unwrap();
    c.confirm_select().await.unwrap();
    for i in 0..10 {
        c.publish(Message::text("q", i.to_string()), false)
            .await
            .unwrap();
    }
    let mut sub = c.consume("q", 3).await.unwrap();
    let first: Vec<_> = [
        next(&mut sub).await,
        next(&mut sub).await,
        next(&mut sub).await,
    ]
    .into();
    assert_quiet(&mut sub).await;
    let info = c.queue_info("q").await.unwrap();
    assert_eq!((info.ready, info.unacked, info.consumers), (7, 3, 1));
    c.ack(first[0].delivery_tag, false).unwrap();
    assert_eq!(body(&next(&mut sub).await), "3");
    assert_quiet(&mut sub).await;
}

#[tokio::test]
async fn nack_requeues_to_the_head_and_reject_drops() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("q", QueueOptions::default()).await.unwrap();
    c.confirm_select().await.unwrap();
    for t in ["a", "b"] {
        c.publish(Message::text("q", t), false).await.unwrap();
    }
    let mut sub = c.consume("q", 1).await.unwrap();
    let a = next(&mut sub).await;
    c.nack(a.delivery_tag, false, true).unwrap();
    let again = next(&mut sub).await;
    assert_eq!(body(&again), "a", "requeued message returns to the head");
    assert!(again.redelivered);
    assert_eq!(again.delivery_count, 2);
    c.reject(again.delivery_tag, false).unwrap();
    let b_msg = next(&mut sub).await;
    assert_eq!(body(&b_msg), "b");
    c.ack(b_msg.delivery_tag, false).unwrap();
    assert_quiet(&mut sub).await;
    let info = c.queue_info("q").await.unwrap();
    assert_eq!(
        (info.ready, info.unacked),
        (0, 0),
        "rejected message is gone"
    );
}

#[tokio::test]
async fn disconnect_returns_unacked_messages_marked_redelivered() {
    let b = TestBroker::start().await;
    let p = b.client().await;
    p.declare_queue("q", QueueOptions::default()).await.unwrap();
    p.confirm_select().await.unwrap();
    for t in ["a", "b", "c"] {
        p.publish(Message::text("q", t), false).await.unwrap();
    }
    let c1 = b.client().await;
    let mut s1 = c1.consume("q", 2).await.unwrap();
    assert_eq!(body(&next(&mut s1).await), "a");
    assert_eq!(body(&next(&mut s1).await), "b");
    c1.close().await;

    let c2 = b.client().await;
    let mut s2 = c2.consume("q", 0).await.unwrap();
    let got: Vec<_> = [
        next(&mut s2).await,
        next(&mut s2).await,
        next(&mut s2).await,
    ]
    .into();
    let bodies: Vec<_> = got.iter().map(body).collect();
    assert_eq!(bodies, ["a", "b", "c"], "returned to the head, in order");
    assert!(got[0].redelivered && got[1].redelivered && !got[2].redelivered);
}

#[tokio::test]
async fn exclusive_queue_is_private_and_dies_with_its_connection() {
    let b = TestBroker::start().await;
    let owner = b.client().await;
    let other = b.client().await;
    let options = QueueOptions {
        exclusive: true,
        ..Default::default()
    };
    let info = owner.declare_queue("", options).await.unwrap();
    assert!(
        info.queue.starts_with("gen-"),
        "broker-named: {}",
        info.queue
    );
    let err = other.consume(&info.queue, 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ResourceLocked));
    other.confirm_select().await.unwrap();
    other
        .publish(Message::text(&info.queue, "reply"), false)
        .await
        .unwrap();
    let mut sub = owner.consume(&info.queue, 1).await.unwrap();
    assert_eq!(
        body(&next(&mut sub).await),
        "reply",
        "anyone may publish to it"
    );
    owner.close().await;
    // The close is processed asynchronously; poll briefly.
    for _ in 0..50 {
        if other.queue_info(&info.queue).await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("exclusive queue outlived its connection");
}

#[tokio::test]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    let options = QueueOptions {
        auto_delete: true,
        ..Default::default()
    };
    c.declare_queue("tmp", options).await.unwrap();
    let s1 = c.consume("tmp", 1).await.unwrap();
    let s2 = c.consume("tmp", 1).await.unwrap();
    c.cancel(&s1.consumer_tag).await.unwrap();
    assert_eq!(c.queue_info("tmp").await.unwrap().consumers, 1);
    c.cancel(&s2.consumer_tag).await.unwrap();
    let err = c.queue_info("tmp").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::QueueNotFound));
}

#[tokio::test]
async fn mandatory_unroutable_message_is_returned() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.confirm_select().await.unwrap();
    c.publish(Message::text("nowhere", "lost?"), true)
        .await
        .unwrap();
    let returned = tokio::time::timeout(common::WAIT, c.next_return())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(returned.reason, ErrorCode::Unroutable);
    assert_eq!(&returned.message.body[..], b"lost?");
    // Without `mandatory` an unroutable message is confirmed and dropped silently: the
    // next return is that of a later mandatory publish, not this one.
    c.publish(Message::text("nowhere", "dropped"), false)
        .await
        .unwrap();
    c.publish(Message::text("nowhere", "marker"), true)
        .await
        .unwrap();
    let next = tokio::time::timeout(common::WAIT, c.next_return())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&next.message.body[..], b"marker", "no return for `dropped`");
}

#[tokio::test]
async fn queue_admin_operations() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("a", QueueOptions::durable()).await.unwrap();
    let err = c
        .declare_queue("a", QueueOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PreconditionFailed));
    c.confirm_select().await.unwrap();
    for i in 0..4 {
        c.publish(Message::text("a", i.to_string()), false)
            .await
            .unwrap();
    }
    assert_eq!(c.purge_queue("a").await.unwrap(), 4);
    c.publish(Message::text("a", "x"), false).await.unwrap();
    let names = common::queue_names(&c).await;
    assert_eq!(names, ["a"]);
    assert_eq!(c.delete_queue("a").await.unwrap(), 1);
    let err = c.delete_queue("a").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::QueueNotFound));
}

#[tokio::test]
async fn cancelled_subscription_gets_no_more_messages_and_keeps_unacked() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("q", QueueOptions::default()).await.unwrap();
    c.confirm_select().await.unwrap();
    c.publish(Message::text("q", "1"), false).await.unwrap();
    let mut sub = c
        .subscribe(Subscribe {
            queue: "q".into(),
            prefetch: 0,
            auto_ack: false,
            filter: None,
            exclusive: false,
            priority: 0,
            consumer_tag: Some("mine".into()),
            consumer_timeout_ms: None,
        })
        .await
        .unwrap();
    assert_eq!(sub.consumer_tag, "mine");
    let d = next(&mut sub).await;
    c.cancel("mine").await.unwrap();
    c.publish(Message::text("q", "2"), false).await.unwrap();
    let info = c.queue_info("q").await.unwrap();
    assert_eq!((info.ready, info.unacked, info.consumers), (1, 1, 0));
    c.ack(d.delivery_tag, false).unwrap();
    let err = c.cancel("mine").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownConsumer));
}

#[tokio::test]
async fn auto_ack_consumer_settles_on_write() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("q", QueueOptions::default()).await.unwrap();
    c.confirm_select().await.unwrap();
    for i in 0..50 {
        c.publish(Message::text("q", i.to_string()), false)
            .await
            .unwrap();
    }
    let mut sub = c
        .subscribe(Subscribe {
            queue: "q".into(),
            prefetch: 5,
            auto_ack: true,
            consumer_tag: None,
            filter: None,
            exclusive: false,
            priority: 0,
            consumer_timeout_ms: None,
        })
        .await
        .unwrap();
    for i in 0..50 {
        assert_eq!(body(&next(&mut sub).await), i.to_string());
    }
    // Settled without any ack from us.
    for _ in 0..50 {
        if c.queue_info("q").await.unwrap().unacked == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("auto-ack deliveries stayed unacked");
}

#[tokio::test]
async fn named_exchange_of_unknown_type_is_a_clear_error() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    let err = c
        .declare_exchange("ex", "no-such-type", true, Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownExchangeType));
    let err = c.delete_exchange("").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AccessRefused));
}
