//! Which consumer gets a message. Single active consumer (`single_active_consumer`, AMQP
//! `x-single-active-consumer`): one at a time receives, the oldest; the next takes over
//! when it goes, with its predecessor's unacked messages in queue order. Consumer
//! priorities (`priority`, AMQP `x-priority`): those of the highest priority with room
//! receive first.

#[path = "support/amqp.rs"]
mod amqp;
mod common;

use std::collections::BTreeMap;

use amqp::{AmqpBroker, next_delivery, reply_code};
use broker::protocol::ErrorCode;
use broker::protocol::Subscribe;
use broker::{ClientError, QueueOptions};
use common::{TestBroker, body, next, persistent};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde_json::json;

fn single_active() -> FieldTable {
    let map: BTreeMap<ShortString, AMQPValue> = [(
        ShortString::from("x-single-active-consumer"),
        AMQPValue::Boolean(true),
    )]
    .into_iter()
    .collect();
    FieldTable::from(map)
}

async fn publish(channel: &Channel, queue: &str, body: &str) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn consumer(channel: &Channel, queue: &str, tag: &str) -> lapin::Consumer {
    channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
}

/// Takes `bodies` from `consumer` in that order, acking each.
async fn receive_in_order(consumer: &mut lapin::Consumer, bodies: impl Iterator<Item = String>) {
    for body in bodies {
        let delivery = next_delivery(consumer).await;
        assert_eq!(delivery.data, body.as_bytes());
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
}

/// A confirm-mode channel on `conn`, with `queue` declared with `arguments`.
async fn confirming_with_queue(
    conn: &lapin::Connection,
    queue: &str,
    arguments: FieldTable,
) -> Channel {
    let setup = conn.create_channel().await.unwrap();
    setup.confirm_select(Default::default()).await.unwrap();
    setup
        .queue_declare(queue.into(), QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    setup
}

#[tokio::test]
async fn only_the_oldest_consumer_receives_until_it_is_cancelled() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let setup = confirming_with_queue(&conn, "ordered", single_active()).await;
    let (first_ch, second_ch) = (
        conn.create_channel().await.unwrap(),
        conn.create_channel().await.unwrap(),
    );
    let mut first = consumer(&first_ch, "ordered", "first").await;
    let mut second = consumer(&second_ch, "ordered", "second").await;
    for i in 0..10 {
        publish(&setup, "ordered", &format!("m{i}")).await;
    }
    // Round robin would give the second consumer half: the first gets all ten, in order.
    receive_in_order(&mut first, (0..10).map(|i| format!("m{i}"))).await;
    first_ch
        .basic_cancel("first".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    for i in 10..15 {
        publish(&setup, "ordered", &format!("m{i}")).await;
    }
    // The next takes over.
    receive_in_order(&mut second, (10..15).map(|i| format!("m{i}"))).await;
}

#[tokio::test]
async fn a_malformed_flag_is_refused() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let map: BTreeMap<ShortString, AMQPValue> = [(
        ShortString::from("x-single-active-consumer"),
        AMQPValue::LongString("yes".into()),
    )]
    .into_iter()
    .collect();
    let refused = ch
        .queue_declare(
            "bad".into(),
            QueueDeclareOptions::default(),
            FieldTable::from(map),
        )
        .await;
    assert_eq!(reply_code(&refused.unwrap_err()), Some(406));

    let c = broker.json_client().await;
    let options = QueueOptions {
        arguments: json!({"single_active_consumer": 1})
            .as_object()
            .unwrap()
            .clone(),
        ..Default::default()
    };
    match c.declare_queue("bad", options).await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::InvalidField);
            assert!(message.contains("single_active_consumer"), "{message}");
        }
        other => panic!("expected invalid_field, got {other:?}"),
    }
}

/// The active consumer's connection closes with messages unacked: they come back to the
/// queue and reach the next consumer first, in queue order, then the rest.
#[tokio::test]
async fn the_next_consumer_gets_the_unacked_messages_back_in_order() {
    let b = TestBroker::start().await;
    let publisher = b.client().await;
    let options = QueueOptions {
        durable: true,
        arguments: json!({"single_active_consumer": true})
            .as_object()
            .unwrap()
            .clone(),
        ..Default::default()
    };
    publisher.declare_queue("jobs", options).await.unwrap();
    publisher.confirm_select().await.unwrap();
    let active = b.client().await;
    let mut first = active.consume("jobs", 3).await.unwrap();
    let waiting = b.client().await;
    let mut second = waiting.consume("jobs", 10).await.unwrap();
    for i in 0..6 {
        publisher
            .publish(persistent("jobs", &format!("j{i}")), false)
            .await
            .unwrap();
    }
    // Its prefetch holds three out; the other three wait for it, not for `second`.
    for i in 0..3 {
        assert_eq!(body(&next(&mut first).await), format!("j{i}"));
    }
    drop(first);
    active.close().await;
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(body(&next(&mut second).await));
    }
    assert_eq!(order, ["j0", "j1", "j2", "j3", "j4", "j5"]);
}

fn subscribe(queue: &str, prefetch: u32, priority: i32) -> Subscribe {
    Subscribe {
        queue: queue.into(),
        prefetch,
        auto_ack: false,
        consumer_tag: None,
        filter: None,
        exclusive: false,
        priority,
        consumer_timeout_ms: None,
    }
}

#[tokio::test]
async fn a_higher_priority_consumer_receives_while_it_has_room() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("work", QueueOptions::durable())
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    // The low one subscribes first: round robin would start with it.
    let mut low = c.subscribe(subscribe("work", 100, 0)).await.unwrap();
    let mut high = c.subscribe(subscribe("work", 2, 5)).await.unwrap();
    for i in 0..6 {
        c.publish(persistent("work", &format!("w{i}")), false)
            .await
            .unwrap();
    }
    let first = [next(&mut high).await, next(&mut high).await];
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["w0", "w1"]);
    // Its prefetch full, the lower one gets the rest.
    for i in 2..6 {
        assert_eq!(body(&next(&mut low).await), format!("w{i}"));
    }
    for d in &first {
        c.ack(d.delivery_tag, false).unwrap();
    }
    c.publish(persistent("work", "w6"), false).await.unwrap();
    assert_eq!(
        body(&next(&mut high).await),
        "w6",
        "room again: the higher one"
    );
}

#[tokio::test]
async fn amqp_x_priority_orders_consumers() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let setup = confirming_with_queue(&conn, "ranked", FieldTable::default()).await;
    let low_ch = conn.create_channel().await.unwrap();
    let mut low = consumer(&low_ch, "ranked", "low").await;
    let high_ch = conn.create_channel().await.unwrap();
    let priority: BTreeMap<ShortString, AMQPValue> =
        [(ShortString::from("x-priority"), AMQPValue::LongInt(10))]
            .into_iter()
            .collect();
    let mut high = high_ch
        .basic_consume(
            "ranked".into(),
            "high".into(),
            BasicConsumeOptions::default(),
            FieldTable::from(priority),
        )
        .await
        .unwrap();
    for i in 0..5 {
        publish(&setup, "ranked", &format!("r{i}")).await;
    }
    // The high one has room for them all (its channel's prefetch is unlimited).
    receive_in_order(&mut high, (0..5).map(|i| format!("r{i}"))).await;
    high_ch
        .basic_cancel("high".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish(&setup, "ranked", "r5").await;
    assert_eq!(next_delivery(&mut low).await.data, b"r5");
}
