//! AMQP transactions with lapin: a transactional channel's publishes and acks take effect
//! at `tx.commit` (answered once the publishes are stored), and not at all after
//! `tx.rollback`; confirm and tx mode exclude each other, as in RabbitMQ; a transaction
//! that is never committed cannot hold more than its limit.

#[path = "support/amqp.rs"]
mod amqp;

use amqp::{AmqpBroker, declare_queue, next_delivery, reply_code, within};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};

async fn publish(ch: &Channel, queue: &str, body: &str) {
    within(ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        BasicProperties::default().with_delivery_mode(2),
    ))
    .await
    .unwrap();
}

/// Ready messages of `queue`, by a passive declare.
async fn ready(ch: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    within(ch.queue_declare(queue.into(), passive, FieldTable::default()))
        .await
        .unwrap()
        .message_count()
}

#[tokio::test]
async fn publishes_wait_for_the_commit_and_a_rollback_drops_them() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let tx = conn.create_channel().await.unwrap();
    let look = conn.create_channel().await.unwrap();
    declare_queue(&look, "ledger").await;
    within(tx.tx_select()).await.unwrap();
    for body in ["a", "b", "c"] {
        publish(&tx, "ledger", body).await;
    }
    // A round trip on the same channel after the publishes: the broker has read them.
    within(tx.basic_qos(10, BasicQosOptions::default()))
        .await
        .unwrap();
    assert_eq!(ready(&look, "ledger").await, 0, "held until the commit");
    within(tx.tx_commit()).await.unwrap();
    assert_eq!(
        ready(&look, "ledger").await,
        3,
        "stored when commit-ok came"
    );
    publish(&tx, "ledger", "dropped").await;
    within(tx.tx_rollback()).await.unwrap();
    within(tx.tx_commit()).await.unwrap();
    assert_eq!(
        ready(&look, "ledger").await,
        3,
        "the rolled-back publish is gone"
    );
}

#[tokio::test]
async fn acks_in_a_transaction_settle_at_the_commit() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let setup = conn.create_channel().await.unwrap();
    declare_queue(&setup, "jobs").await;
    publish(&setup, "jobs", "j1").await;
    let tx = conn.create_channel().await.unwrap();
    within(tx.tx_select()).await.unwrap();
    let mut consumer = within(tx.basic_consume(
        "jobs".into(),
        "worker".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let delivery = next_delivery(&mut consumer).await;
    within(delivery.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    // Rolled back: the ack never happened; the delivery is still unacked.
    within(tx.tx_rollback()).await.unwrap();
    let json = broker.json_client().await;
    assert_eq!(json.queue_info("jobs").await.unwrap().unacked, 1);
    // (lapin's `Delivery::ack` acks once: the channel's own method acks it again.)
    within(tx.basic_ack(delivery.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    within(tx.tx_commit()).await.unwrap();
    let info = json.queue_info("jobs").await.unwrap();
    assert_eq!((info.unacked, info.ready), (0, 0), "acked by the commit");
}

#[tokio::test]
async fn confirm_and_tx_modes_exclude_each_other() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let confirming = conn.create_channel().await.unwrap();
    within(confirming.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let refused = within(confirming.tx_select()).await.unwrap_err();
    assert_eq!(reply_code(&refused), Some(406), "{refused:?}");
    let tx = conn.create_channel().await.unwrap();
    within(tx.tx_select()).await.unwrap();
    let refused = within(tx.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap_err();
    assert_eq!(reply_code(&refused), Some(406), "{refused:?}");
    let plain = conn.create_channel().await.unwrap();
    let refused = within(plain.tx_commit()).await.unwrap_err();
    assert_eq!(
        reply_code(&refused),
        Some(406),
        "not transactional: {refused:?}"
    );
}

#[tokio::test]
async fn a_transaction_holds_at_most_ten_thousand_publishes() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let tx = conn.create_channel().await.unwrap();
    declare_queue(&tx, "hoard").await;
    within(tx.tx_select()).await.unwrap();
    let mut events = Box::pin(conn.events_listener());
    for i in 0..10_001 {
        // The publish past the limit closes the channel; lapin fails the ones after it.
        if tx
            .basic_publish(
                "".into(),
                "hoard".into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            )
            .await
            .is_err()
        {
            assert!(i >= 10_000, "refused at {i}");
            break;
        }
    }
    assert_eq!(amqp::next_error_code(&mut events).await, 406);
    let look = conn.create_channel().await.unwrap();
    assert_eq!(ready(&look, "hoard").await, 0, "nothing of it was applied");
}
