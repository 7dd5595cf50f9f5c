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
