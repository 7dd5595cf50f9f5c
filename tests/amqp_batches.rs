//! The AMQP reader hands the connection task every frame already whole in its buffer as
//! one batch (`broker/src/amqp/reader.rs`). What a client writes at once — publishes on
//! several channels interleaved frame by frame, bodies over several frames, empty bodies,
//! a frame larger than the read buffer, a malformed frame after good ones — must mean
//! exactly what it meant frame by frame: every message whole on its own queue with its
//! properties, each channel's confirms, and at a bad frame the connection exception with
//! everything before it done and nothing after it.

#[path = "support/amqp.rs"]
mod amqp;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection};
use amqp::{AmqpBroker, connection_close_code, declare_queue, frame_bytes, raw_open, within};
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw client's socket and the bytes read from it not yet parsed.
struct Raw {
    socket: TcpStream,
    read: Vec<u8>,
}

impl Raw {
    async fn open(broker: &AmqpBroker, channels: &[u16]) -> Raw {
        let mut raw = Raw {
            socket: raw_open(broker).await,
            read: Vec::new(),
        };
        for &number in channels {
            raw.write(&[method(
                number,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            )])
            .await;
            raw.until(|f| matches!(f, AMQPFrame::Method(n, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if *n == number))
                .await;
        }
        raw
    }

    /// All of `frames` in one write.
    async fn write(&mut self, frames: &[Vec<u8>]) {
        self.socket.write_all(&frames.concat()).await.unwrap();
    }

    /// The next frame from the broker.
    async fn frame(&mut self) -> AMQPFrame {
        within(async {
            loop {
                if let Ok((rest, frame)) = parse_frame(self.read.as_slice()) {
                    let used = self.read.len() - rest.len();
                    self.read.drain(..used);
                    if let AMQPFrame::Heartbeat = frame {
                        // Answered, so that a slow run is not taken for silence.
                        let beat = frame_bytes(&AMQPFrame::Heartbeat);
                        self.socket.write_all(&beat).await.unwrap();
                    }
                    return frame;
                }
                let mut chunk = [0u8; 4096];
                let n = self.socket.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the broker closed the socket");
                self.read.extend_from_slice(&chunk[..n]);
            }
        })
        .await
    }

    /// The first frame `wanted` accepts, skipping others; a `connection.close` fails.
    async fn until(&mut self, wanted: impl Fn(&AMQPFrame) -> bool) -> AMQPFrame {
        loop {
            let frame = self.frame().await;
            if let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) =
                &frame
            {
                panic!("connection closed: {} {}", c.reply_code, c.reply_text);
            }
            if wanted(&frame) {
                return frame;
            }
        }
    }
}

fn method(channel: u16, class: AMQPClass) -> Vec<u8> {
    frame_bytes(&AMQPFrame::Method(channel, class))
}

/// A message's frames on `channel`: `basic.publish` to the default exchange with routing
/// key `queue`, its content header, and the body cut into pieces of at most `piece` bytes
/// (no body frame for an empty body).
fn publish(
    channel: u16,
    queue: &str,
    props: &BasicProperties,
    body: &[u8],
    piece: usize,
) -> Vec<Vec<u8>> {
    let publish = basic::Publish {
        exchange: "".into(),
        routing_key: queue.into(),
        mandatory: false,
        immediate: false,
    };
    let mut frames = vec![
        method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Publish(publish)),
        ),
        frame_bytes(&AMQPFrame::Header(
            channel,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: props.clone(),
            },
        )),
    ];
    for part in body.chunks(piece) {
        frames.push(frame_bytes(&AMQPFrame::Body(channel, part.to_vec())));
    }
    frames
}

/// Properties with a timestamp (so the broker adds none) and the others given.
fn stamped() -> BasicProperties {
    BasicProperties::default().with_timestamp(1_700_000_000)
}

fn with_table() -> BasicProperties {
    let mut nested = FieldTable::default();
    nested.insert(
        ShortString::from("s"),
        AMQPValue::LongString(LongString::from("deep")),
    );
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("n"), AMQPValue::LongLongInt(-7));
    headers.insert(ShortString::from("t"), AMQPValue::FieldTable(nested));
    stamped()
        .with_content_type("application/octet-stream".into())
        .with_delivery_mode(2)
        .with_priority(3)
        .with_message_id("big".into())
        .with_headers(headers)
}

fn without_table() -> BasicProperties {
    stamped()
        .with_content_type("text/plain".into())
        .with_correlation_id("c-1".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_app_id("batches".into())
}

/// Frames in the order the slices are interleaved: the first frame of each, then the
/// second of each, and so on.
fn interleave(messages: Vec<Vec<Vec<u8>>>) -> Vec<Vec<u8>> {
    let longest = messages.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..longest {
        for frames in &messages {
            if let Some(frame) = frames.get(i) {
                out.push(frame.clone());
            }
        }
    }
    out
}

/// The queue's messages, in order, taken with `basic.get`.
async fn drain(channel: &lapin::Channel, queue: &str) -> Vec<(Vec<u8>, BasicProperties)> {
    let mut got = Vec::new();
    while let Some(message) =
        within(channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap()
    {
        got.push((message.delivery.data, message.delivery.properties));
    }
    got
}

#[tokio::test]
async fn publishes_interleaved_on_two_channels_in_one_write_arrive_whole() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    declare_queue(&ch, "one").await;
    declare_queue(&ch, "two").await;
    let mut raw = Raw::open(&broker, &[1, 2]).await;
    let select = AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
        nowait: false,
    }));
    raw.write(&[method(1, select.clone()), method(2, select)])
        .await;
    for number in [1, 2] {
        raw.until(|f| matches!(f, AMQPFrame::Method(n, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))) if *n == number))
            .await;
    }

    // Channel 1: a body over four frames with a header table, then one larger than the
    // broker's read buffer (two frames of up to 131,072 bytes), then small ones.
    // Channel 2: an empty body (no body frame), then small ones without a header table.
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    let huge: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let mut one = vec![
        (big.clone(), with_table(), 3000),
        (huge.clone(), stamped(), 131_064),
    ];
    let mut two = vec![(Vec::new(), without_table(), 1)];
    for i in 0..20u8 {
        one.push((vec![i; 1 + usize::from(i)], without_table(), 4));
        two.push((vec![100 + i; 3], with_table(), 100));
    }
    let frames_of = |number: u16, queue: &str, messages: &[(Vec<u8>, BasicProperties, usize)]| {
        messages
            .iter()
            .flat_map(|(body, props, piece)| publish(number, queue, props, body, *piece))
            .collect::<Vec<_>>()
    };
    // One frame of each channel in turn, the whole run in one write.
    let frames = interleave(vec![frames_of(1, "one", &one), frames_of(2, "two", &two)]);
    raw.write(&frames).await;

    // Each channel confirms each of its publishes, numbered in its own order.
    let mut confirmed = [0u64; 2];
    let wanted = [one.len() as u64, two.len() as u64];
    while confirmed != wanted {
        match raw.frame().await {
            AMQPFrame::Method(n @ (1 | 2), AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => {
                let seen = &mut confirmed[usize::from(n - 1)];
                let upto = ack.delivery_tag;
                assert!(upto > *seen, "channel {n} confirms in order");
                assert!(
                    ack.multiple || upto == *seen + 1,
                    "one at a time or multiple"
                );
                *seen = upto;
            }
            AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Nack(_))) => {
                panic!("a publish was refused")
            }
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                panic!("connection closed: {} {}", c.reply_code, c.reply_text)
            }
            _ => {}
        }
    }
    for (queue, sent) in [("one", &one), ("two", &two)] {
        let got = drain(&ch, queue).await;
        assert_eq!(got.len(), sent.len(), "messages on {queue}");
        for (i, ((data, props), (body, sent_props, _))) in got.iter().zip(sent.iter()).enumerate() {
            assert_eq!(data, body, "body of message {i} on {queue}");
            assert_eq!(props, sent_props, "properties of message {i} on {queue}");
        }
    }
}

#[tokio::test]
async fn a_malformed_frame_in_a_run_ends_the_connection_after_what_came_before_it() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    declare_queue(&ch, "run").await;
    // (what, the bad frame, its reply code)
    let cases: [(&str, Vec<u8>, u16); 3] = [
        (
            "frame end not 0xCE",
            vec![1, 0, 1, 0, 0, 0, 4, 0, 20, 0, 10, 0],
            501,
        ),
        (
            "unknown method",
            vec![1, 0, 1, 0, 0, 0, 4, 0, 50, 0, 99, 0xCE],
            540,
        ),
        (
            // A content header on channel 2, which is not open.
            "header on a channel not open",
            frame_bytes(&AMQPFrame::Header(
                2,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 1,
                    properties: Default::default(),
                },
            )),
            504,
        ),
    ];
    for (what, bad, expected) in cases {
        let mut raw = Raw::open(&broker, &[1]).await;
        let mut frames = publish(1, "run", &stamped(), b"before", 100);
        frames.extend(publish(1, "run", &stamped(), b"also before", 4));
        frames.push(bad);
        frames.extend(publish(1, "run", &stamped(), b"after", 100));
        raw.write(&frames).await;
        assert_eq!(
            connection_close_code(&mut raw.socket).await,
            expected,
            "{what}"
        );
        let got: Vec<Vec<u8>> = drain(&ch, "run")
            .await
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        assert_eq!(got, [&b"before"[..], b"also before"], "{what}");
    }
    assert!(conn.status().connected());
}
