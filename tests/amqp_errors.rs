//! Bad AMQP input: each malformed frame is answered with the connection exception
//! RabbitMQ sends, the socket is closed, stored messages are intact, and the broker goes on
//! serving other clients.

#[path = "support/amqp.rs"]
mod amqp;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, channel, queue};
use amqp::{AmqpBroker, connection_close_code, frame_bytes, raw_open, within};
use lapin::options::*;
use lapin::types::FieldTable;
use tokio::io::AsyncWriteExt;

fn open_channel_1() -> Vec<u8> {
    frame_bytes(&AMQPFrame::Method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ))
}

/// Each case: bytes after the handshake (and channel 1 open), and the reply code.
fn cases() -> Vec<(&'static str, Vec<u8>, u16)> {
    let mut oversized = vec![1, 0, 1];
    oversized.extend_from_slice(&(200_000u32).to_be_bytes());
    let header_without_publish = frame_bytes(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 1,
            properties: BasicProperties::default(),
        },
    ));
    let declare_on_closed_channel = frame_bytes(&AMQPFrame::Method(
        7,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "q".into(),
            ..Default::default()
        })),
    ));
    vec![
        ("unknown frame type", vec![9, 0, 1, 0, 0, 0, 0, 0xCE], 501),
        ("frame larger than frame_max", oversized, 501),
        (
            "frame end not 0xCE",
            vec![1, 0, 1, 0, 0, 0, 4, 0, 20, 0, 10, 0],
            501,
        ),
        (
            "heartbeat on a channel",
            vec![8, 0, 1, 0, 0, 0, 0, 0xCE],
            501,
        ),
        ("garbage", b"hello, is this HTTP?\r\n\r\n".to_vec(), 501),
        (
            "unknown class",
            vec![1, 0, 1, 0, 0, 0, 4, 0, 99, 0, 10, 0xCE],
            540,
        ),
        (
            "unknown method",
            vec![1, 0, 1, 0, 0, 0, 4, 0, 50, 0, 99, 0xCE],
            540,
        ),
        (
            "truncated arguments",
            vec![1, 0, 1, 0, 0, 0, 5, 0, 50, 0, 10, 0, 0xCE],
            502,
        ),
        (
            "content header without publish",
            header_without_publish,
            505,
        ),
        (
            "method on a channel not open",
            declare_on_closed_channel,
            504,
        ),
    ]
}

/// A method frame around `payload` (class and method ids first), as the bytes arrive.
fn method_frame(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![1];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(0xCE);
    frame
}

/// `basic.publish` to the default exchange with routing key `q` and these bits.
fn publish_payload(bits: u8) -> Vec<u8> {
    vec![0, 60, 0, 40, 0, 0, 0, 1, b'q', bits]
}

/// Malformed publishes and acks: the fixed-layout reader (`amqp/hot.rs`) leaves them to
/// the generic one, whose exceptions they get.
fn hot_path_cases() -> Vec<(&'static str, Vec<u8>, u16)> {
    let ack = [0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let mut publish_then_ack = method_frame(1, &publish_payload(0));
    publish_then_ack.extend(method_frame(1, &ack));
    vec![
        (
            "publish with a byte too many",
            method_frame(1, &[publish_payload(0), vec![0]].concat()),
            502,
        ),
        (
            "publish cut short",
            method_frame(1, &publish_payload(0)[..9]),
            502,
        ),
        (
            "publish with a routing key that is not UTF-8",
            method_frame(1, &[0, 60, 0, 40, 0, 0, 0, 1, 0xFF, 0]),
            502,
        ),
        (
            "publish with a short string past the frame",
            method_frame(1, &[0, 60, 0, 40, 0, 0, 0, 200, b'q', 0]),
            502,
        ),
        ("ack cut short", method_frame(1, &ack[..12]), 502),
        (
            "reject with a byte too many",
            method_frame(1, &[0, 60, 0, 90, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]),
            502,
        ),
        (
            "publish on a channel not open",
            method_frame(7, &publish_payload(0)),
            504,
        ),
        (
            "publish on channel 0",
            method_frame(0, &publish_payload(0)),
            503,
        ),
        (
            "publish with immediate",
            method_frame(1, &publish_payload(2)),
            540,
        ),
        ("ack in the middle of a message", publish_then_ack, 505),
    ]
}

#[tokio::test]
async fn malformed_frames_get_their_connection_exception_and_nothing_is_lost() {
    let broker = AmqpBroker::start().await;
    // A durable queue with a persistent message, to check after the abuse.
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("kept".into(), durable, FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let persistent = lapin::BasicProperties::default().with_delivery_mode(2);
    ch.basic_publish(
        "".into(),
        "kept".into(),
        BasicPublishOptions::default(),
        b"precious",
        persistent,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    for (what, bytes, expected) in cases().into_iter().chain(hot_path_cases()) {
        let mut raw = raw_open(&broker).await;
        raw.write_all(&open_channel_1()).await.unwrap();
        raw.write_all(&bytes).await.unwrap();
        let code = connection_close_code(&mut raw).await;
        assert_eq!(code, expected, "{what}");
        // The lapin connection opened before is unaffected.
        assert!(conn.status().connected(), "{what}");
    }
    // Fresh clients are served, and the stored message is there, whole.
    let fresh = broker.connect().await;
    let ch = fresh.create_channel().await.unwrap();
    let got = within(ch.basic_get("kept".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the message is still queued");
    assert_eq!(got.delivery.data, b"precious");
}

#[tokio::test]
async fn a_message_larger_than_the_limit_closes_its_channel_only() {
    let broker = AmqpBroker::start_with(|c| c.max_frame_bytes = 64 * 1024).await;
    let conn = broker.connect().await;
    let big = conn.create_channel().await.unwrap();
    let mut events = Box::pin(conn.events_listener());
    let _ = big
        .basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions::default(),
            &vec![7u8; 100 * 1024],
            lapin::BasicProperties::default(),
        )
        .await;
    assert_eq!(amqp::next_error_code(&mut events).await, 406);
    let other = conn.create_channel().await.unwrap();
    other
        .queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_peer_that_stops_in_the_handshake_is_let_go() {
    let broker =
        AmqpBroker::start_with(|c| c.handshake_timeout = std::time::Duration::from_millis(300))
            .await;
    let mut socket = tokio::net::TcpStream::connect(broker.amqp_addr())
        .await
        .unwrap();
    socket.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    // No start-ok: the broker closes the socket after its handshake timeout.
    let mut rest = Vec::new();
    within(tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut rest))
        .await
        .unwrap();
    assert!(rest.starts_with(&[1, 0, 0]), "connection.start came first");
}
