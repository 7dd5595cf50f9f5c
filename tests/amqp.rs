//! AMQP 0-9-1 with lapin, a real RabbitMQ client, against the in-process broker: the
//! handshake (logins, protocol header, vhost), heartbeats, and the core methods.

#[path = "support/amqp.rs"]
mod amqp;

use amqp::{AmqpBroker, WAIT, next_delivery, raw_open, reply_code, within};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn lapin_connects_publishes_and_consumes() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "work".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.name().as_str(), "work");
    channel
        .basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            b"hello",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            "work".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.data, b"hello");
    assert_eq!(delivery.routing_key.as_str(), "work");
    assert_eq!(delivery.delivery_tag, 1);
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    // The ack reached the router: a passive declare counts nothing left.
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let after = channel
        .queue_declare("work".into(), passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(after.message_count(), 0);
    assert_eq!(after.consumer_count(), 1);
    within(conn.close(200, "bye".into())).await.unwrap();
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_403() {
    let broker = AmqpBroker::start().await;
    let refused = within(Connection::connect(
        &broker.uri("guest", "wrong"),
        ConnectionProperties::default(),
    ))
    .await
    .expect_err("refused");
    assert_eq!(reply_code(&refused), Some(403), "{refused:?}");
    // AMQPLAIN goes through the same authenticator.
    let amqplain = format!("{}?auth_mechanism=amqplain", broker.uri("guest", "guest"));
    let conn = within(Connection::connect(
        &amqplain,
        ConnectionProperties::default(),
    ))
    .await
    .expect("AMQPLAIN login");
    assert!(conn.status().connected());
    let amqplain_wrong = format!("{}?auth_mechanism=amqplain", broker.uri("nobody", "x"));
    let refused = within(Connection::connect(
        &amqplain_wrong,
        ConnectionProperties::default(),
    ))
    .await
    .expect_err("refused");
    assert_eq!(reply_code(&refused), Some(403), "{refused:?}");
}

#[tokio::test]
async fn a_vhost_other_than_slash_is_not_allowed() {
    let broker = AmqpBroker::start().await;
    let uri = format!("amqp://guest:guest@{}/elsewhere", broker.amqp_addr());
    let refused = within(Connection::connect(&uri, ConnectionProperties::default()))
        .await
        .expect_err("refused");
    assert_eq!(reply_code(&refused), Some(530), "{refused:?}");
}

#[tokio::test]
async fn a_wrong_protocol_header_is_answered_with_ours_then_closed() {
    let broker = AmqpBroker::start().await;
    for header in [&b"AMQP\x00\x00\x08\x00"[..], b"GET / HTTP/1.1\r\n\r\n"] {
        let mut socket = tokio::net::TcpStream::connect(broker.amqp_addr())
            .await
            .unwrap();
        socket.write_all(header).await.unwrap();
        let mut answer = Vec::new();
        within(socket.read_to_end(&mut answer)).await.unwrap();
        assert_eq!(answer, b"AMQP\x00\x00\x09\x01");
    }
}

#[tokio::test]
async fn heartbeats_are_sent_and_a_silent_peer_is_dropped() {
    let broker =
        AmqpBroker::start_with(|c| c.heartbeat = Some(std::time::Duration::from_secs(1))).await;
    // lapin sends its own heartbeats: the connection lives past two intervals.
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    channel
        .queue_declare(
            "alive".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("still connected after two heartbeat intervals");
    // A raw peer that completes the handshake and then says nothing is closed.
    let mut raw = raw_open(&broker).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the broker closes a silent peer");
    // Among what it sent before closing: at least one heartbeat frame.
    assert!(
        rest.windows(8).any(|w| w == [8, 0, 0, 0, 0, 0, 0, 0xCE]),
        "{rest:?}"
    );
}
