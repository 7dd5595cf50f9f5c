//! What AMQP messages carry, through the core: the 14 basic properties and field tables
//! (AMQP to AMQP, and across to and from the JSON protocol), `x-` queue arguments, per-
//! message expiration, and dead letters with RabbitMQ's `x-death`.

#[path = "support/amqp.rs"]
mod amqp;

use std::collections::BTreeMap;

use amqp::{AmqpBroker, next_delivery, next_error_code, within};
use broker::QueueOptions;
use broker::{Headers, Message, Properties};
use lapin::options::*;
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde_json::json;

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let map: BTreeMap<ShortString, AMQPValue> = entries
        .iter()
        .map(|(k, v)| (ShortString::from(*k), v.clone()))
        .collect();
    FieldTable::from(map)
}

async fn declare(channel: &Channel, queue: &str, arguments: FieldTable) {
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
}

async fn publish(channel: &Channel, key: &str, body: &[u8], properties: BasicProperties) {
    channel
        .basic_publish(
            "".into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap();
}

/// The next message of `queue`, waiting for it to arrive.
async fn get(channel: &Channel, queue: &str) -> lapin::message::Delivery {
    within(async {
        loop {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            match got {
                Some(got) => break got.delivery,
                None => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
    .await
}

/// Field values JSON represents, natively or as tagged objects: these come back exactly.
fn exact_values() -> FieldTable {
    table(&[
        ("bool", AMQPValue::Boolean(true)),
        ("long", AMQPValue::LongLongInt(-42)),
        ("double", AMQPValue::Double(2.5)),
        ("text", AMQPValue::LongString("héllo".into())),
        ("bytes", AMQPValue::ByteArray(vec![0, 255, 7].into())),
        ("time", AMQPValue::Timestamp(1_700_000_000)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 314,
            }),
        ),
        ("void", AMQPValue::Void),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongLongInt(1),
                AMQPValue::LongString("two".into()),
            ])),
        ),
        (
            "table",
            AMQPValue::FieldTable(table(&[("inner", AMQPValue::Boolean(false))])),
        ),
    ])
}

fn all_properties(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_123)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("shop".into())
        .with_cluster_id("c1".into())
}

#[tokio::test]
async fn the_fourteen_properties_and_field_tables_round_trip() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "props", FieldTable::default()).await;
    let sent = all_properties(exact_values());
    publish(&ch, "props", b"{}", sent.clone()).await;
    let got = get(&ch, "props").await;
    assert_eq!(got.properties, sent);
    // Integer widths keep their value and come back as `l`; `f` floats as `d`.
    let widths = table(&[
        ("i32", AMQPValue::LongInt(-7)),
        ("u8", AMQPValue::ShortShortUInt(200)),
        ("float", AMQPValue::Float(0.5)),
    ]);
    publish(
        &ch,
        "props",
        b"",
        BasicProperties::default().with_headers(widths),
    )
    .await;
    let got = get(&ch, "props").await;
    let expected = table(&[
        ("i32", AMQPValue::LongLongInt(-7)),
        ("u8", AMQPValue::LongLongInt(200)),
        ("float", AMQPValue::Double(0.5)),
    ]);
    assert_eq!(got.properties.headers().as_ref(), Some(&expected));
    // A user-id other than the login is refused, as RabbitMQ does.
    let mut events = Box::pin(conn.events_listener());
    let impostor = BasicProperties::default().with_user_id("admin".into());
    publish(&ch, "props", b"", impostor).await;
    assert_eq!(next_error_code(&mut events).await, 406);
}

#[tokio::test]
async fn amqp_messages_reach_json_consumers_and_back() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let json = broker.json_client().await;
    json.declare_queue("to-json", QueueOptions::default())
        .await
        .unwrap();
    json.declare_queue("to-amqp", QueueOptions::default())
        .await
        .unwrap();
    // AMQP → JSON: headers as natural JSON, properties by name.
    let headers = table(&[
        ("tenant", AMQPValue::LongString("acme".into())),
        ("attempt", AMQPValue::LongInt(3)),
        (
            "nested",
            AMQPValue::FieldTable(table(&[("ok", AMQPValue::Boolean(true))])),
        ),
        ("raw", AMQPValue::ByteArray(vec![1, 2].into())),
    ]);
    publish(&ch, "to-json", &[0xff, 0x00], all_properties(headers)).await;
    let mut sub = json.consume("to-json", 10).await.unwrap();
    let delivery = within(sub.next()).await.expect("a delivery");
    let m = &delivery.message;
    assert_eq!(m.body.as_ref(), &[0xff, 0x00]);
    assert_eq!(
        serde_json::Value::Object(m.headers.clone()),
        json!({"tenant": "acme", "attempt": 3, "nested": {"ok": true}, "raw": {"$bytes": "AQI="}})
    );
    let p = &m.properties;
    assert!(p.persistent);
    assert_eq!(p.priority, Some(5));
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.content_encoding.as_deref(), Some("gzip"));
    assert_eq!(p.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(p.reply_to.as_deref(), Some("replies"));
    assert_eq!(p.expiration_ms, Some(60_000));
    assert_eq!(p.message_id.as_deref(), Some("msg-1"));
    assert_eq!(p.timestamp, Some(1_700_000_123_000));
    assert_eq!(p.kind.as_deref(), Some("order.created"));
    assert_eq!(p.user_id.as_deref(), Some("guest"));
    assert_eq!(p.app_id.as_deref(), Some("shop"));
    assert_eq!(p.cluster_id.as_deref(), Some("c1"));
    // JSON → AMQP.
    let mut headers = Headers::new();
    headers.insert("tenant".into(), json!("acme"));
    headers.insert("n".into(), json!(7));
    headers.insert("list".into(), json!([1.5, null, {"k": "v"}]));
    let message = Message {
        exchange: String::new(),
        routing_key: "to-amqp".into(),
        headers,
        properties: Properties {
            persistent: true,
            message_id: Some("j-1".into()),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            content_type: Some("text/plain".into()),
            priority: Some(2),
            expiration_ms: Some(30_000),
            timestamp: Some(1_700_000_000_000),
            kind: Some("t".into()),
            app_id: Some("json-app".into()),
            ..Default::default()
        },
        body: bytes::Bytes::from_static(b"from json"),
    };
    json.confirm_select().await.unwrap();
    within(json.publish(message, false)).await.unwrap();
    let got = get(&ch, "to-amqp").await;
    assert_eq!(got.data, b"from json");
    let expected = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_headers(table(&[
            ("tenant", AMQPValue::LongString("acme".into())),
            ("n", AMQPValue::LongLongInt(7)),
            (
                "list",
                AMQPValue::FieldArray(FieldArray::from(vec![
                    AMQPValue::Double(1.5),
                    AMQPValue::Void,
                    AMQPValue::FieldTable(table(&[("k", AMQPValue::LongString("v".into()))])),
                ])),
            ),
        ]))
        .with_delivery_mode(2)
        .with_priority(2)
        .with_correlation_id("c".into())
        .with_reply_to("r".into())
        .with_expiration("30000".into())
        .with_message_id("j-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("t".into())
        .with_app_id("json-app".into());
    assert_eq!(got.properties, expected);
}

#[tokio::test]
async fn x_arguments_expire_and_dead_letter_with_rabbitmq_x_death() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "dead", FieldTable::default()).await;
    let ttl = table(&[
        ("x-message-ttl", AMQPValue::LongInt(50)),
        ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
        (
            "x-dead-letter-routing-key",
            AMQPValue::LongString("dead".into()),
        ),
        ("x-queue-type", AMQPValue::LongString("classic".into())),
    ]);
    declare(&ch, "short-lived", ttl).await;
    publish(&ch, "short-lived", b"late", BasicProperties::default()).await;
    let dead = get(&ch, "dead").await;
    assert_eq!(dead.data, b"late");
    let headers = dead.properties.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death: {headers:?}");
    };
    let AMQPValue::FieldTable(death) = &deaths.as_slice()[0] else {
        panic!("{deaths:?}");
    };
    let field = |k: &str| death.inner().get(k).cloned();
    assert_eq!(field("count"), Some(AMQPValue::LongLongInt(1)));
    assert_eq!(
        field("reason"),
        Some(AMQPValue::LongString("expired".into()))
    );
    assert_eq!(
        field("queue"),
        Some(AMQPValue::LongString("short-lived".into()))
    );
    assert_eq!(field("exchange"), Some(AMQPValue::LongString("".into())));
    assert_eq!(
        field("routing-keys"),
        Some(AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongString("short-lived".into())
        ])))
    );
    assert!(
        matches!(field("time"), Some(AMQPValue::Timestamp(_))),
        "{death:?}"
    );
    // Per-message expiration, through the same dead-letter route.
    declare(
        &ch,
        "holding",
        table(&[
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString("dead".into()),
            ),
        ]),
    )
    .await;
    publish(
        &ch,
        "holding",
        b"brief",
        BasicProperties::default().with_expiration("30".into()),
    )
    .await;
    let dead = get(&ch, "dead").await;
    assert_eq!(dead.data, b"brief");
    // Without a dead-letter exchange a rejected message is dropped (no `.dlq`), as in
    // RabbitMQ.
    declare(&ch, "plain", FieldTable::default()).await;
    publish(&ch, "plain", b"refused", BasicProperties::default()).await;
    let got = within(async {
        loop {
            let options = BasicGetOptions { no_ack: false };
            if let Some(got) = ch.basic_get("plain".into(), options).await.unwrap() {
                break got;
            }
        }
    })
    .await;
    got.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let json = broker.json_client().await;
    let plain = within(async {
        loop {
            let info = json.queue_info("plain").await.unwrap();
            if info.unacked == 0 {
                break info;
            }
        }
    })
    .await;
    assert_eq!((plain.ready, plain.dropped), (0, 1));
    assert!(json.queue_info("plain.dlq").await.is_err());
    // A malformed expiration is refused with 406.
    let mut events = Box::pin(conn.events_listener());
    publish(
        &ch,
        "holding",
        b"x",
        BasicProperties::default().with_expiration("soon".into()),
    )
    .await;
    assert_eq!(next_error_code(&mut events).await, 406);
}

#[tokio::test]
async fn length_priority_and_delivery_limit_arguments_apply() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    declare(
        &ch,
        "capped",
        table(&[("x-max-length", AMQPValue::LongInt(2))]),
    )
    .await;
    for body in [b"1", b"2", b"3"] {
        publish(&ch, "capped", body, BasicProperties::default()).await;
    }
    assert_eq!(
        get(&ch, "capped").await.data,
        b"2",
        "drop-head dropped the oldest"
    );
    declare(
        &ch,
        "ranked",
        table(&[("x-max-priority", AMQPValue::ShortShortUInt(5))]),
    )
    .await;
    publish(
        &ch,
        "ranked",
        b"low",
        BasicProperties::default().with_priority(1),
    )
    .await;
    publish(
        &ch,
        "ranked",
        b"high",
        BasicProperties::default().with_priority(5),
    )
    .await;
    // Both are in before the first get: a passive declare counts them.
    within(async {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        while ch
            .queue_declare("ranked".into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count()
            < 2
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(get(&ch, "ranked").await.data, b"high");
    // x-delivery-limit 1: one redelivery, then dead-lettered.
    declare(&ch, "limited-dead", FieldTable::default()).await;
    let limited = table(&[
        ("x-delivery-limit", AMQPValue::LongInt(1)),
        ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
        (
            "x-dead-letter-routing-key",
            AMQPValue::LongString("limited-dead".into()),
        ),
    ]);
    declare(&ch, "limited", limited).await;
    publish(&ch, "limited", b"poison", BasicProperties::default()).await;
    let mut consumer = ch
        .basic_consume(
            "limited".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let d = next_delivery(&mut consumer).await;
        d.nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .unwrap();
    }
    assert_eq!(get(&ch, "limited-dead").await.data, b"poison");
}

/// What AMQP cannot carry as a short string (over 255 bytes), from a JSON publisher:
/// the frames stay well formed, the long routing key and properties travel as `x-`
/// headers, a header name that cannot be written is listed, and the connection lives on.
#[tokio::test(flavor = "multi_thread")]
async fn long_keys_properties_and_header_names_from_json_reach_amqp_well_formed() {
    let broker = AmqpBroker::start().await;
    let json = broker.json_client().await;
    json.declare_exchange("wide", "fanout", false, Headers::new())
        .await
        .unwrap();
    json.declare_queue("long", QueueOptions::default())
        .await
        .unwrap();
    json.bind(broker::protocol::Binding {
        exchange: "wide".into(),
        queue: "long".into(),
        key: String::new(),
        arguments: Headers::new(),
    })
    .await
    .unwrap();
    json.confirm_select().await.unwrap();
    let key = "k".repeat(300);
    let mut message = Message::text(&key, "long");
    message.exchange = "wide".into();
    message.properties.correlation_id = Some("c".repeat(400));
    message.properties.app_id = Some("shop".into());
    message.headers.insert("n".repeat(256), json!(1));
    message.headers.insert("tenant".into(), json!("acme"));
    for _ in 0..2 {
        json.publish(message.clone(), false).await.unwrap();
    }

    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let check = |d: &lapin::message::Delivery| {
        assert_eq!(d.routing_key.as_str(), "k".repeat(255));
        assert_eq!(d.data, b"long");
        let p = &d.properties;
        assert_eq!(p.correlation_id(), &None);
        assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("shop"));
        let headers = p.headers().as_ref().expect("headers");
        let text = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(text("x-routing-key"), key);
        assert_eq!(text("x-correlation-id"), "c".repeat(400));
        assert_eq!(text("tenant"), "acme");
        assert!(headers.inner().contains_key("x-dropped-headers"));
        assert!(!headers.inner().keys().any(|k| k.as_str().len() > 255));
    };
    // basic.get, then basic.deliver.
    check(&get(&ch, "long").await);
    let mut consumer = ch
        .basic_consume(
            "long".into(),
            "c1".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    check(&next_delivery(&mut consumer).await);
    // The connection is still whole.
    declare(&ch, "after", FieldTable::default()).await;
    assert!(conn.status().connected());
}
