//! Bad input never hurts the broker: each gets an `error` frame with a stable code, the
//! connection stays usable where the protocol allows, and no stored message is lost.

mod common;

use broker::{Message, QueueOptions};
use common::{RawPeer, TestBroker};
use serde_json::{Value, json};

const LIMIT: usize = common::FRAME_LIMIT;

fn assert_error(frame: &Value, id: Value, code: &str) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["id"], id, "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{frame}"
    );
}

/// The connection still answers a well-formed request.
async fn assert_usable(peer: &mut RawPeer) {
    let reply = peer
        .call(json!({"id": "ping", "op": "queue_info", "queue": "keep"}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["id"], "ping");
}

#[tokio::test]
async fn every_bad_input_gets_its_error_code_and_nothing_is_lost() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("keep", QueueOptions::durable())
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    for i in 0..20 {
        let mut m = Message::text("keep", i.to_string());
        m.properties.persistent = true;
        c.publish(m, false).await.unwrap();
    }

    let mut peer = RawPeer::connect(&b.url()).await;
    let cases: Vec<(String, Value, &str)> = vec![
        ("{not json".into(), Value::Null, "malformed_json"),
        ("[1, 2, 3]".into(), Value::Null, "malformed_json"),
        (
            r#"{"op": "list_queues"}"#.into(),
            Value::Null,
            "invalid_field",
        ),
        (
            r#"{"id": 1, "op": "teleport"}"#.into(),
            json!(1),
            "unknown_op",
        ),
        (
            r#"{"id": 2, "op": "declare_queue"}"#.into(),
            json!(2),
            "invalid_field",
        ),
        (
            r#"{"id": 3, "op": "ack", "delivery_tag": "x"}"#.into(),
            json!(3),
            "invalid_field",
        ),
        (
            r#"{"id": 4, "op": "publish", "routing_key": "keep", "properties": {"priority": 999}}"#
                .into(),
            json!(4),
            "invalid_field",
        ),
        (
            r#"{"id": 5, "op": "publish", "routing_key": "keep", "body_base64": "%%%"}"#.into(),
            json!(5),
            "invalid_field",
        ),
        (
            r#"{"id": 6, "op": "publish", "exchange": "missing", "routing_key": "k"}"#.into(),
            json!(6),
            "exchange_not_found",
        ),
        (
            r#"{"id": 7, "op": "ack", "delivery_tag": 12345}"#.into(),
            json!(7),
            "unknown_delivery_tag",
        ),
        (
            r#"{"id": 8, "op": "subscribe", "queue": "missing"}"#.into(),
            json!(8),
            "queue_not_found",
        ),
        (
            r#"{"id": 9, "op": "declare_queue", "queue": "keep"}"#.into(),
            json!(9),
            "precondition_failed",
        ),
        (
            r#"{"id": 10, "op": "bind", "exchange": "", "queue": "keep"}"#.into(),
            json!(10),
            "access_refused",
        ),
        (
            format!(
                r#"{{"id": 11, "op": "declare_queue", "queue": "{}"}}"#,
                "q".repeat(300)
            ),
            json!(11),
            "invalid_field",
        ),
    ];
    for (frame, id, code) in cases {
        peer.send_text(frame.clone()).await;
        let reply = peer.recv().await;
        assert_error(&reply, id, code);
        assert_usable(&mut peer).await;
    }

    peer.send_binary(vec![1, 2, 3]).await;
    assert_error(&peer.recv().await, Value::Null, "unsupported_frame");
    assert_usable(&mut peer).await;

    // Too large: the id is echoed when the frame starts with it (so a pipelining client
    // fails the right request), `null` when it is further in.
    let body = "x".repeat(LIMIT + 10);
    let big = format!(r#"{{"id": 12, "op": "publish", "routing_key": "keep", "body": "{body}"}}"#);
    peer.send_text(big).await;
    assert_error(&peer.recv().await, json!(12), "frame_too_large");
    assert_usable(&mut peer).await;
    let big = format!(r#"{{"op": "publish", "id": "late", "body": "{body}"}}"#);
    peer.send_text(big).await;
    assert_error(&peer.recv().await, Value::Null, "frame_too_large");
    assert_usable(&mut peer).await;

    // Far beyond the limit the connection is dropped, but the broker serves on.
    let mut rude = RawPeer::connect(&b.url()).await;
    rude.send_text("y".repeat(LIMIT * 3)).await;
    rude.expect_closed().await;
    assert_usable(&mut peer).await;

    // Nothing stored was lost or duplicated, before and after a restart.
    assert_eq!(c.queue_info("keep").await.unwrap().ready, 20);
    c.close().await;
    b.restart().await;
    let c = b.client().await;
    let info = c.queue_info("keep").await.unwrap();
    assert_eq!((info.ready, info.unacked), (20, 0));
    let mut sub = c.consume("keep", 0).await.unwrap();
    for i in 0..20 {
        assert_eq!(common::body(&common::next(&mut sub).await), i.to_string());
    }
    common::assert_quiet(&mut sub).await;
}

#[tokio::test]
async fn string_and_numeric_ids_are_echoed() {
    let b = TestBroker::start().await;
    let mut peer = RawPeer::connect(&b.url()).await;
    let reply = peer
        .call(json!({"id": "abc", "op": "declare_queue", "queue": "q"}))
        .await;
    assert_eq!(
        (reply["type"].as_str(), &reply["id"]),
        (Some("ok"), &json!("abc"))
    );
    assert_eq!(reply["result"]["queue"], "q");
    let reply = peer.call(json!({"id": 42, "op": "confirm_select"})).await;
    assert_eq!(
        (reply["type"].as_str(), &reply["id"]),
        (Some("ok"), &json!(42))
    );
    let reply = peer
        .call(json!({"id": 43, "op": "publish", "routing_key": "q", "body": "hi"}))
        .await;
    assert_eq!(reply, json!({"type": "confirm", "id": 43}));
}

/// Every field has exactly its documented type: the request gets `invalid_field` naming
/// the field, does nothing, and the connection stays open.
#[tokio::test]
async fn fields_of_the_wrong_type_are_refused_and_named() {
    let b = TestBroker::start().await;
    let mut peer = RawPeer::connect(&b.url()).await;
    let reply = peer
        .call(json!({"id": 0, "op": "declare_queue", "queue": "keep"}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    let cases = [
        // An integer `op` used to select an operation by its index (5 is `list_queues`).
        (json!({"id": 1, "op": 5}), "`op`"),
        // `properties` as an array used to be read positionally (`[true]`: persistent).
        (
            json!({"id": 2, "op": "publish", "routing_key": "keep", "properties": [true]}),
            "`properties`",
        ),
        (
            json!({"id": 3, "op": "publish", "routing_key": "keep", "body": null}),
            "`body`",
        ),
        (
            json!({"id": 4, "op": "publish", "routing_key": "keep", "body": "b",
                   "properties": {"priority": null}}),
            "`properties.priority`",
        ),
        (
            json!({"id": 5, "op": "subscribe", "queue": "keep", "consumer_tag": null}),
            "`consumer_tag`",
        ),
    ];
    for (request, field) in cases {
        let id = request["id"].clone();
        let reply = peer.call(request.clone()).await;
        assert_error(&reply, id, "invalid_field");
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains(field), "{request} -> {message}");
        assert_usable(&mut peer).await;
    }
    // None of them published or subscribed anything.
    let reply = peer
        .call(json!({"id": 6, "op": "queue_info", "queue": "keep"}))
        .await;
    assert_eq!(
        (&reply["result"]["ready"], &reply["result"]["consumers"]),
        (&json!(0), &json!(0)),
        "{reply}"
    );
}
