//! The message path's own frame reading and writing (`broker/src/amqp/hot.rs`): publishes
//! and deliveries of every shape a client sends — bodies across several frames, empty
//! bodies, properties with and without headers — arrive exactly as sent, through both the
//! fixed-layout and the generic codec, and acks, nacks and rejects settle as they say.

#[path = "support/amqp.rs"]
mod amqp;

use amqp::{AmqpBroker, next_delivery, within};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// A lapin connection that negotiates the smallest frame_max AMQP allows, so bodies
/// above ~4 KiB span several body frames both ways.
async fn connect_small_frames(broker: &AmqpBroker) -> Connection {
    let uri = format!("{}?frame_max=4096", broker.uri("guest", "guest"));
    within(Connection::connect(&uri, ConnectionProperties::default()))
        .await
        .expect("lapin connects")
}

async fn consumer(channel: &Channel, queue: &str) -> lapin::Consumer {
    amqp::declare_queue(channel, queue).await;
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
}

/// Publishes in confirm mode and waits for the broker's ack.
async fn publish_confirmed(channel: &Channel, key: &str, body: &[u8], props: BasicProperties) {
    let confirm = channel
        .basic_publish(
            "".into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap();
    assert!(within(confirm).await.unwrap().is_ack(), "publish confirmed");
}

/// Every property but headers (so the fixed-layout header writer serves it).
fn properties_without_headers() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_content_encoding("gzip".into())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("m-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("app".into())
        .with_cluster_id("cluster".into())
}

#[tokio::test]
async fn bodies_of_every_size_arrive_whole_across_frames() {
    let broker = AmqpBroker::start().await;
    let conn = connect_small_frames(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut deliveries = consumer(&ch, "sizes").await;
    // Empty (no body frame at all), one byte, exactly one frame's worth, several frames.
    let sizes = [0usize, 1, 4088, 4089, 10_000, 65_537];
    for size in sizes {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        publish_confirmed(&ch, "sizes", &body, BasicProperties::default()).await;
        let delivery = next_delivery(&mut deliveries).await;
        assert_eq!(delivery.data.len(), size);
        assert_eq!(delivery.data, body, "body of {size} bytes");
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
}

#[tokio::test]
async fn properties_with_and_without_headers_come_back_as_sent() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut deliveries = consumer(&ch, "props").await;

    let plain = properties_without_headers();
    publish_confirmed(&ch, "props", b"no headers", plain.clone()).await;
    let got = next_delivery(&mut deliveries).await;
    assert_eq!(got.properties, plain);
    assert_eq!(got.data, b"no headers");
    assert_eq!(got.routing_key.as_str(), "props");

    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("n"), AMQPValue::LongLongInt(42));
    let with_headers = properties_without_headers().with_headers(headers);
    publish_confirmed(&ch, "props", b"headers", with_headers.clone()).await;
    let got = next_delivery(&mut deliveries).await;
    assert_eq!(got.properties, with_headers);
    assert_eq!(got.data, b"headers");

    // None at all: the broker adds only the publish time, as for JSON publishes.
    publish_confirmed(&ch, "props", b"bare", BasicProperties::default()).await;
    let got = next_delivery(&mut deliveries).await;
    assert!(got.properties.timestamp().is_some());
    assert_eq!(got.properties.delivery_mode(), &None);
    assert_eq!(got.properties.headers(), &None);
}

#[tokio::test]
async fn acks_nacks_and_rejects_settle_as_they_say() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut deliveries = consumer(&ch, "settle").await;
    for body in [b"a", b"b", b"c", b"d"] {
        publish_confirmed(&ch, "settle", body, BasicProperties::default()).await;
    }
    let mut tags = Vec::new();
    for body in [b"a", b"b", b"c", b"d"] {
        let d = next_delivery(&mut deliveries).await;
        assert_eq!(d.data, body);
        assert!(!d.redelivered);
        tags.push(d.delivery_tag);
    }
    // `b` rejected with requeue, `c` nacked with requeue, `a` and `d` acked (`d` alone).
    ch.basic_reject(tags[1], BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    ch.basic_nack(
        tags[2],
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    )
    .await
    .unwrap();
    ch.basic_ack(tags[0], BasicAckOptions::default())
        .await
        .unwrap();
    ch.basic_ack(tags[3], BasicAckOptions::default())
        .await
        .unwrap();
    let mut again = Vec::new();
    for _ in 0..2 {
        let d = next_delivery(&mut deliveries).await;
        assert!(d.redelivered, "requeued messages come back redelivered");
        again.push(d.data.clone());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    again.sort();
    assert_eq!(again, vec![b"b".to_vec(), b"c".to_vec()]);
    // All four are settled: closing the channel returns nothing to the queue.
    ch.close(200, "done".into()).await.unwrap();
    let other = conn.create_channel().await.unwrap();
    let left = other
        .basic_get("settle".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(left.is_none(), "every delivery was settled");
}
