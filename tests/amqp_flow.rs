//! Flow control over AMQP, shared with the WebSocket connections: the unconfirmed-publish
//! credit stops reading a publisher, and the memory alarm blocks publishers
//! (`connection.blocked`) while consumers are still served.

#[path = "support/amqp.rs"]
mod amqp;

use std::time::Duration;

use amqp::{AmqpBroker, next_delivery, within};
use broker::server::MemoryWatermark;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};

#[tokio::test]
async fn a_publisher_out_of_credit_is_not_read_until_confirms_go_out() {
    let broker = AmqpBroker::start_with(|c| c.max_unconfirmed = 1).await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("slow".into(), durable, FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // The disk stalls: the first persistent publish holds the connection's only credit.
    broker.broker().hold_commits(true);
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let mut confirms = Vec::new();
    for body in [b"1", b"2"] {
        let confirm = ch
            .basic_publish(
                "".into(),
                "slow".into(),
                BasicPublishOptions::default(),
                body,
                persistent.clone(),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    // The second publish waits for credit, so the connection reads nothing behind it.
    let other = conn.create_channel();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), other)
            .await
            .is_err(),
        "a channel.open behind a publish without credit is not read"
    );
    broker.broker().hold_commits(false);
    for confirm in confirms {
        assert_eq!(within(confirm).await.unwrap(), Confirmation::Ack(None));
    }
    within(conn.create_channel()).await.unwrap();
}

#[tokio::test]
async fn the_memory_alarm_blocks_publishers_and_serves_consumers() {
    // A watermark below any process's footprint: the alarm is raised at once.
    let broker =
        AmqpBroker::start_with(|c| c.memory_high_watermark = MemoryWatermark::Bytes(1)).await;
    let consumer_conn = broker.connect().await;
    let cch = consumer_conn.create_channel().await.unwrap();
    cch.queue_declare(
        "flow".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = cch
        .basic_consume(
            "flow".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publisher = broker.connect().await;
    let mut events = Box::pin(publisher.events_listener());
    let pch = publisher.create_channel().await.unwrap();
    pch.basic_publish(
        "".into(),
        "flow".into(),
        BasicPublishOptions::default(),
        b"first",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    // Told it is blocked...
    let reason = within(async {
        loop {
            if let Some(lapin::Event::ConnectionBlocked(reason)) = events.next().await {
                break reason;
            }
        }
    })
    .await;
    assert!(reason.contains("memory"), "{reason}");
    // ...its first message was delivered, the consumer's connection still served...
    assert_eq!(next_delivery(&mut consumer).await.data, b"first");
    // ...and what it sends next is not read (lapin itself may hold it back while blocked).
    let publishing = tokio::spawn(async move {
        pch.basic_publish(
            "".into(),
            "flow".into(),
            BasicPublishOptions::default(),
            b"second",
            BasicProperties::default(),
        )
        .await
        .map(drop)
    });
    let nothing = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(
        nothing.is_err(),
        "a blocked publisher's message was read: {nothing:?}"
    );
    cch.queue_declare(
        "still-served".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publishing.abort();
}
