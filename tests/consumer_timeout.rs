//! The consumer timeout (`broker serve --consumer-timeout`, RabbitMQ's `consumer_timeout`):
//! a delivery left unacked past it ends its consumer's AMQP channel (406, the connection
//! goes on) or JSON connection, and the message goes back to its queue for others.

#[path = "support/amqp.rs"]
mod amqp;
#[path = "support/amqp_exchange_helpers.rs"]
mod helpers;

use std::time::Duration;

use amqp::{AmqpBroker, within};
use broker::{Message, QueueOptions};
use futures_util::StreamExt;
use helpers::{next_error, no_args, publish_confirmed};
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicGetOptions};

async fn broker() -> AmqpBroker {
    AmqpBroker::start_with(|c| c.consumer_timeout = Some(Duration::from_millis(200))).await
}

#[tokio::test]
async fn an_amqp_channel_that_never_acks_is_closed_and_its_message_goes_to_another() {
    let broker = broker().await;
    let conn = broker.connect().await;
    let stuck = conn.create_channel().await.unwrap();
    amqp::declare_queue(&stuck, "work").await;
    let publisher = helpers::confirm_channel(&conn).await;
    publish_confirmed(&publisher, "", "work", b"job", BasicProperties::default()).await;
    let mut events = Box::pin(conn.events_listener());
    let options = BasicConsumeOptions::default();
    let mut consumer =
        within(stuck.basic_consume("work".into(), "stuck".into(), options, no_args()))
            .await
            .unwrap();
    let first = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(first.data, b"job");
    // Never acked: its channel is closed, not the connection.
    let (code, text) = next_error(&mut events).await;
    assert_eq!(code, 406, "{text}");
    assert!(
        text.contains("delivery acknowledgement timed out"),
        "{text}"
    );
    assert!(conn.status().connected());
    let other = conn.create_channel().await.unwrap();
    let again = within(other.basic_get("work".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the message went back to its queue");
    assert_eq!(again.delivery.data, b"job");
    assert!(again.delivery.redelivered);
}

#[tokio::test]
async fn a_json_consumer_that_never_acks_is_disconnected_and_its_message_goes_to_another() {
    let broker = broker().await;
    let stuck = broker.json_client().await;
    stuck
        .declare_queue("json-work", QueueOptions::default())
        .await
        .unwrap();
    stuck.confirm_select().await.unwrap();
    stuck
        .publish(Message::text("json-work", "job"), false)
        .await
        .unwrap();
    let mut held = stuck.consume("json-work", 10).await.unwrap();
    let first = within(held.next()).await.expect("delivered");
    assert_eq!(&first.message.body[..], b"job");
    // Never acked: the broker closes the connection, which ends the subscription.
    assert!(within(held.next()).await.is_none());
    let other = broker.json_client().await;
    let mut sub = other.consume("json-work", 10).await.unwrap();
    let again = within(sub.next())
        .await
        .expect("the message went back to its queue");
    assert_eq!(&again.message.body[..], b"job");
    assert!(again.redelivered);
}

/// A broker without a default consumer timeout (`--consumer-timeout 0`): only queues and
/// consumers that set one have a limit.
async fn broker_without_default() -> AmqpBroker {
    AmqpBroker::start_with(|c| c.consumer_timeout = None).await
}

fn timeout_table(ms: i64) -> lapin::types::FieldTable {
    let mut table = lapin::types::FieldTable::default();
    table.insert(
        "x-consumer-timeout".into(),
        lapin::types::AMQPValue::LongLongInt(ms),
    );
    table
}

/// Declares `queue` with `arguments`, publishes one message to it and starts consuming
/// it on a new channel of `conn`; returns the channel once the message arrived.
async fn holding_one(
    conn: &lapin::Connection,
    queue: &str,
    arguments: lapin::types::FieldTable,
    consumer_arguments: lapin::types::FieldTable,
) -> (lapin::Channel, lapin::Consumer) {
    let ch = conn.create_channel().await.unwrap();
    let options = lapin::options::QueueDeclareOptions::default();
    within(ch.queue_declare(queue.into(), options, arguments))
        .await
        .unwrap();
    let publisher = helpers::confirm_channel(conn).await;
    publish_confirmed(&publisher, "", queue, b"job", BasicProperties::default()).await;
    let options = BasicConsumeOptions::default();
    let tag = format!("{queue}-consumer");
    let consume = ch.basic_consume(
        queue.into(),
        tag.as_str().into(),
        options,
        consumer_arguments,
    );
    let mut consumer = within(consume).await.unwrap();
    let first = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(first.data, b"job");
    (ch, consumer)
}

#[tokio::test]
async fn a_queue_with_x_consumer_timeout_limits_its_deliveries_only() {
    let broker = broker_without_default().await;
    let conn = broker.connect().await;
    let mut events = Box::pin(conn.events_listener());
    // Another queue without a timeout, its delivery held all along.
    let (patient, _kept) = holding_one(&conn, "patient", no_args(), no_args()).await;
    let (short, _consumer) = holding_one(&conn, "short", timeout_table(200), no_args()).await;
    let (code, text) = next_error(&mut events).await;
    assert_eq!(code, 406, "{text}");
    assert!(text.contains("(200 ms)"), "{text}");
    assert!(
        !short.status().connected(),
        "the short queue's channel is closed"
    );
    // The other channel never had a limit: it is open and still holds its delivery.
    assert!(patient.status().connected());
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let held = within(patient.queue_declare("patient".into(), passive, no_args()))
        .await
        .unwrap();
    assert_eq!(held.message_count(), 0, "still delivered, not requeued");
}

#[tokio::test]
async fn a_consumers_x_consumer_timeout_comes_before_its_queues() {
    let broker = broker_without_default().await;
    let conn = broker.connect().await;
    let mut events = Box::pin(conn.events_listener());
    // The queue allows an hour; the consumer asks for 200 ms.
    let (ch, _consumer) = holding_one(
        &conn,
        "hourly",
        timeout_table(3_600_000),
        timeout_table(200),
    )
    .await;
    let (code, text) = next_error(&mut events).await;
    assert_eq!(code, 406, "{text}");
    assert!(text.contains("(200 ms)"), "{text}");
    assert!(!ch.status().connected());
    let other = conn.create_channel().await.unwrap();
    let again = within(other.basic_get("hourly".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the message went back to its queue");
    assert!(again.delivery.redelivered);
}

#[tokio::test]
async fn an_x_consumer_timeout_that_is_not_a_positive_integer_is_refused() {
    let broker = broker_without_default().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let options = lapin::options::QueueDeclareOptions::default();
    let refused = within(ch.queue_declare("bad".into(), options, timeout_table(0)))
        .await
        .unwrap_err();
    assert_eq!(amqp::reply_code(&refused), Some(406));
    let ch = conn.create_channel().await.unwrap();
    amqp::declare_queue(&ch, "good").await;
    let options = BasicConsumeOptions::default();
    let consume = ch.basic_consume("good".into(), "c".into(), options, timeout_table(-5));
    let refused = within(consume).await.unwrap_err();
    assert_eq!(amqp::reply_code(&refused), Some(406));
}

#[tokio::test]
async fn a_json_queue_with_consumer_timeout_disconnects_a_consumer_that_never_acks() {
    let broker = broker_without_default().await;
    let stuck = broker.json_client().await;
    let mut options = QueueOptions::default();
    options
        .arguments
        .insert("consumer_timeout".into(), serde_json::json!("200ms"));
    stuck.declare_queue("json-short", options).await.unwrap();
    stuck.confirm_select().await.unwrap();
    stuck
        .publish(Message::text("json-short", "job"), false)
        .await
        .unwrap();
    let mut held = stuck.consume("json-short", 10).await.unwrap();
    within(held.next()).await.expect("delivered");
    assert!(within(held.next()).await.is_none(), "disconnected");
    let info = broker
        .json_client()
        .await
        .queue_info("json-short")
        .await
        .unwrap();
    assert_eq!((info.ready, info.unacked), (1, 0), "back in its queue");
}
