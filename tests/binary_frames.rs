//! The binary frame encoding (`broker-binary.v1`): negotiated per connection, used for
//! `publish`, `ack`, `deliver` and `confirm`, with the same meaning as the JSON frames; bad
//! records get typed errors and leave the connection working.

mod common;

use broker::protocol::{
    ErrorCode, Op, Publish, Request, RequestId, ServerFrame, write_request_record,
};
use broker::{Client, Message, Properties, QueueOptions};
use bytes::Bytes;
use common::{Incoming, RawPeer, TestBroker, assert_quiet, next};
use serde_json::{Value, json};

/// Messages that exercise every field: headers, every property, text / binary / empty
/// bodies. Timestamps are set so that the broker keeps them as they are.
fn samples(queue: &str) -> Vec<Message> {
    let mut full = Message::text(queue, "{\"order\": 42, \"note\": \"é\\n\"}");
    full.headers.insert("tenant".into(), json!("acme"));
    full.headers.insert("n".into(), json!([1, {"deep": null}]));
    full.properties = Properties {
        persistent: true,
        message_id: Some("m-1".into()),
        correlation_id: Some("corr".into()),
        reply_to: Some("replies".into()),
        content_type: Some("application/json".into()),
        priority: Some(7),
        expiration_ms: Some(3_600_000),
        timestamp: Some(1_795_466_186_762),
        delay_ms: None,
        content_encoding: Some("gzip".into()),
        kind: Some("event".into()),
        user_id: Some("guest".into()),
        app_id: Some("binary-test".into()),
        cluster_id: Some("c".into()),
    };
    let mut binary = Message::text(queue, "");
    binary.body = Bytes::from_static(&[0, 0xff, 0xfe, b'a', 0x80]);
    binary.properties.timestamp = Some(1);
    let mut empty = Message::text(queue, "");
    empty.properties.timestamp = Some(2);
    let mut plain = Message::text(queue, "plain");
    plain.properties.timestamp = Some(3);
    vec![full, binary, empty, plain]
}

async fn publish_all(client: &Client, messages: &[Message]) {
    client.confirm_select().await.unwrap();
    let confirms: Vec<_> = messages
        .iter()
        .map(|m| client.publish(m.clone(), false))
        .collect();
    for confirm in confirms {
        confirm.await.unwrap();
    }
}

/// Consumes `n` messages (acking each) and returns them.
async fn consume_n(client: &Client, queue: &str, n: usize) -> Vec<Message> {
    let mut sub = client.consume(queue, 100).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..n {
        let d = next(&mut sub).await;
        client.ack(d.delivery_tag, false).unwrap();
        got.push((*d.message).clone());
    }
    client.cancel(&sub.consumer_tag).await.unwrap();
    got
}

#[tokio::test]
async fn binary_client_publishes_with_confirms_and_consumes_with_acks_and_prefetch() {
    let b = TestBroker::start().await;
    let c = b.binary_client().await;
    c.declare_queue("work", QueueOptions::durable())
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    let confirms: Vec<_> = (0..10)
        .map(|i| c.publish(common::persistent("work", &format!("m{i}")), false))
        .collect();
    for confirm in confirms {
        confirm.await.unwrap();
    }
    assert_eq!(c.queue_info("work").await.unwrap().ready, 10);

    let mut sub = c.consume("work", 3).await.unwrap();
    let mut tags = Vec::new();
    for i in 0..3 {
        let d = next(&mut sub).await;
        assert_eq!(common::body(&d), format!("m{i}"));
        assert_eq!((d.redelivered, d.delivery_count), (false, 1));
        assert!(d.message.properties.persistent);
        assert!(d.message.properties.timestamp.is_some());
        assert_eq!(&*d.queue, "work");
        tags.push(d.delivery_tag);
    }
    assert_quiet(&mut sub).await; // prefetch 3
    c.ack(tags[0], false).unwrap();
    let d = next(&mut sub).await;
    assert_eq!(common::body(&d), "m3");
    assert_quiet(&mut sub).await;
    // `multiple` acks everything up to the tag.
    c.ack(d.delivery_tag, true).unwrap();
    for i in 4..10 {
        let d = next(&mut sub).await;
        assert_eq!(common::body(&d), format!("m{i}"));
        c.ack(d.delivery_tag, false).unwrap();
    }
    // Acks get no reply: wait for their effect.
    common::wait_for(|| async {
        let info = c.queue_info("work").await.unwrap();
        ((info.ready, info.unacked) == (0, 0)).then_some(())
    })
    .await;

    // A nack (JSON on a binary connection) redelivers, and the redelivery says so.
    c.publish(common::persistent("work", "again"), false)
        .await
        .unwrap();
    let d = next(&mut sub).await;
    c.nack(d.delivery_tag, false, true).unwrap();
    let d = next(&mut sub).await;
    assert_eq!((d.redelivered, d.delivery_count), (true, 2));
    c.ack(d.delivery_tag, false).unwrap();
}

#[tokio::test]
async fn json_and_binary_clients_see_identical_messages() {
    let b = TestBroker::start().await;
    let json_client = b.client().await;
    let binary_client = b.binary_client().await;
    json_client
        .declare_queue("shared", QueueOptions::durable())
        .await
        .unwrap();
    let sent = samples("shared");

    // JSON in, binary out; binary in, JSON out; binary in, binary out.
    publish_all(&json_client, &sent).await;
    assert_eq!(consume_n(&binary_client, "shared", sent.len()).await, sent);
    publish_all(&binary_client, &sent).await;
    assert_eq!(consume_n(&json_client, "shared", sent.len()).await, sent);
    publish_all(&binary_client, &sent).await;
    assert_eq!(consume_n(&binary_client, "shared", sent.len()).await, sent);

    // What the broker stored is the same either way.
    publish_all(&json_client, &sent[..1]).await;
    publish_all(&binary_client, &sent[..1]).await;
    let peeked = json_client.peek_queue("shared", 10).await.unwrap();
    assert_eq!(peeked.len(), 2);
    assert_eq!(
        serde_json::to_value(&peeked[0]).unwrap(),
        serde_json::to_value(&peeked[1]).unwrap()
    );
}

#[tokio::test]
async fn mandatory_unroutable_publish_is_returned_the_same_way() {
    let b = TestBroker::start().await;
    let mut returned = Vec::new();
    for client in [b.client().await, b.binary_client().await] {
        client.confirm_select().await.unwrap();
        let message = samples("nowhere").remove(0);
        client.publish(message.clone(), true).await.unwrap();
        let r = tokio::time::timeout(common::WAIT, client.next_return())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.reason, ErrorCode::Unroutable);
        assert_eq!(*r.message, message);
        returned.push((r.id, r.message));
        // A negative confirm stays a JSON `error` frame, and means the same.
        let err = client
            .publish(
                Message {
                    exchange: "no-such-exchange".into(),
                    ..Message::text("k", "x")
                },
                false,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::ExchangeNotFound));
    }
    assert_eq!(returned[0], returned[1]);
}

fn publish_record(id: RequestId, queue: &str, body: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    let request = Request {
        id,
        op: Op::Publish(Publish {
            message: Box::new(Message::text(queue, body)),
            mandatory: false,
        }),
    };
    assert!(write_request_record(&mut bytes, &request));
    bytes
}

fn assert_error(frame: &Value, id: Value, code: &str) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["id"], id, "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
    assert!(frame["message"].as_str().is_some_and(|m| !m.is_empty()));
}

async fn ready(peer: &mut RawPeer, queue: &str) -> u64 {
    let reply = peer
        .call(json!({"id": "info", "op": "queue_info", "queue": queue}))
        .await;
    reply["result"]["ready"].as_u64().unwrap()
}

#[tokio::test]
async fn malformed_binary_records_get_typed_errors_and_the_connection_keeps_working() {
    let b = TestBroker::start().await;
    let mut peer = RawPeer::connect_binary(&b.url()).await;
    let reply = peer
        .call(json!({"id": 1, "op": "declare_queue", "queue": "q"}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    let reply = peer.call(json!({"id": 2, "op": "confirm_select"})).await;
    assert_eq!(reply["type"], "ok", "{reply}");

    // A good record is confirmed with a binary `confirm` record.
    peer.send_binary(publish_record(RequestId::Num(3), "q", "a"))
        .await;
    let confirms = peer.recv_records().await;
    assert!(matches!(
        &confirms[..],
        [ServerFrame::Confirm {
            id: RequestId::Num(3)
        }]
    ));

    let ack = |flags: u8| {
        let mut p = vec![0u8];
        p.extend_from_slice(&7u64.to_le_bytes());
        p.push(flags);
        p.extend_from_slice(&1u64.to_le_bytes());
        let mut r = vec![0x02];
        r.extend_from_slice(&(p.len() as u32).to_le_bytes());
        r.extend_from_slice(&p);
        r
    };
    let cases: Vec<(&str, Vec<u8>, Value, &str)> = vec![
        ("empty", vec![], Value::Null, "malformed_binary"),
        (
            "truncated header",
            vec![0x01, 0x10],
            Value::Null,
            "malformed_binary",
        ),
        (
            "truncated record",
            ack(0)[..12].to_vec(),
            Value::Null,
            "malformed_binary",
        ),
        (
            "unknown kind",
            vec![0x42, 0, 0, 0, 0],
            Value::Null,
            "malformed_binary",
        ),
        ("reserved flag", ack(0x02), json!(7), "invalid_field"),
        (
            "truncated field",
            [&[0x02u8, 10, 0, 0, 0][..], &ack(0)[5..15]].concat(),
            json!(7),
            "malformed_binary",
        ),
    ];
    for (name, bytes, id, code) in cases {
        peer.send_binary(bytes).await;
        let reply = peer.recv().await;
        assert_error(&reply, id, code);
        assert_eq!(ready(&mut peer, "q").await, 1, "{name}");
    }

    // Records before the bad one apply; the bad one and the rest of the message do not.
    let message = [
        publish_record(RequestId::Str("b".into()), "q", "b"),
        vec![0x42, 0, 0, 0, 0],
        publish_record(RequestId::Str("c".into()), "q", "c"),
    ]
    .concat();
    peer.send_binary(message).await;
    // The error is sent by the connection, the confirm by the router: either comes first.
    let (mut confirms, mut errors) = (Vec::new(), Vec::new());
    while confirms.is_empty() || errors.is_empty() {
        match peer.recv_incoming().await {
            Incoming::Records(records) => confirms.extend(records),
            Incoming::Json(frame) => errors.push(frame),
        }
    }
    assert!(
        matches!(&confirms[..], [ServerFrame::Confirm { id: RequestId::Str(s) }] if s == "b"),
        "{confirms:?}"
    );
    assert_error(&errors[0], Value::Null, "malformed_binary");
    assert_eq!(ready(&mut peer, "q").await, 2);

    // A record over the frame limit.
    let big = "x".repeat(common::FRAME_LIMIT);
    peer.send_binary(publish_record(RequestId::Num(9), "q", &big))
        .await;
    assert_error(&peer.recv().await, json!(9), "frame_too_large");

    // Several good records in one message: all confirmed, still working.
    let batch: Vec<u8> = (10..20)
        .flat_map(|i| publish_record(RequestId::Num(i), "q", "ok"))
        .collect();
    peer.send_binary(batch).await;
    let mut confirmed = Vec::new();
    while confirmed.len() < 10 {
        for frame in peer.recv_records().await {
            let ServerFrame::Confirm {
                id: RequestId::Num(n),
            } = frame
            else {
                panic!("{frame:?}");
            };
            confirmed.push(n);
        }
    }
    confirmed.sort();
    assert_eq!(confirmed, (10..20).collect::<Vec<_>>());
    assert_eq!(ready(&mut peer, "q").await, 12);
}

#[tokio::test]
async fn binary_frames_on_a_json_connection_are_unsupported() {
    let b = TestBroker::start().await;
    let mut peer = RawPeer::connect(&b.url()).await;
    peer.call(json!({"id": 1, "op": "declare_queue", "queue": "q"}))
        .await;
    peer.send_binary(publish_record(RequestId::Num(2), "q", "a"))
        .await;
    assert_error(&peer.recv().await, Value::Null, "unsupported_frame");
    assert_eq!(ready(&mut peer, "q").await, 0);
}
