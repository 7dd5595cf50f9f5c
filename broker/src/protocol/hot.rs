//! Single-pass parsing of the frames that carry messages (`publish` and `ack` requests,
//! `deliver` and `confirm` frames) and the one frame encoder.
//!
//! The derived parsers of the internally tagged, flattened frame types buffer every field
//! into serde's `Content` before reading it; the profile showed that as the largest
//! per-message cost of the broker (and of the client). These read each field once. A frame
//! they do not accept falls back to the derived parser, so what is accepted, what it means
//! and every error code stay exactly those of the derived types.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Deserialize;

use super::{Delivery, Op, Publish, Request, RequestId, ServerFrame};
use crate::message::{Headers, Message, Properties, present};

/// Every field a `publish` or an `ack` may carry, with the types and defaults of
/// [`Publish`] (and [`Message`]'s wire shape) and [`Op::Ack`]. Fields a derived parser
/// requires are `Option` here, and their absence sends the frame to the derived parser.
#[derive(Deserialize)]
struct HotRequest<'a> {
    id: RequestId,
    #[serde(borrow)]
    op: &'a str,
    #[serde(default)]
    exchange: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    headers: Headers,
    #[serde(default)]
    properties: Properties,
    #[serde(default, deserialize_with = "present")]
    body: Option<String>,
    #[serde(default, deserialize_with = "present")]
    body_base64: Option<String>,
    #[serde(default)]
    mandatory: bool,
    #[serde(default, deserialize_with = "present")]
    delivery_tag: Option<u64>,
    #[serde(default)]
    multiple: bool,
}

/// A `publish` or `ack` request read in one pass; `None` for anything else (other
/// operations, and frames the derived parser may answer with an error).
pub(super) fn parse_hot_request(text: &str) -> Option<Request> {
    // Other operations skip the attempt: it would only be thrown away.
    if !(text.contains("\"publish\"") || text.contains("\"ack\"")) {
        return None;
    }
    let hot: HotRequest = serde_json::from_str(text).ok()?;
    let op = match hot.op {
        "publish" => {
            let body = match (hot.body, hot.body_base64) {
                (Some(text), None) => Bytes::from(text),
                (None, Some(b64)) => Bytes::from(BASE64.decode(b64.as_bytes()).ok()?),
                (None, None) => Bytes::new(),
                (Some(_), Some(_)) => return None,
            };
            Op::Publish(Publish {
                message: Box::new(Message {
                    exchange: hot.exchange,
                    routing_key: hot.routing_key,
                    headers: hot.headers,
                    properties: hot.properties,
                    body,
                }),
                mandatory: hot.mandatory,
            })
        }
        "ack" => Op::Ack {
            delivery_tag: hot.delivery_tag?,
            multiple: hot.multiple,
        },
        _ => return None,
    };
    Some(Request { id: hot.id, op })
}

/// Every field of a `deliver` or `confirm` frame, required ones as `Option`.
#[derive(Deserialize)]
struct HotServerFrame<'a> {
    #[serde(borrow, rename = "type")]
    kind: &'a str,
    #[serde(default)]
    id: Option<RequestId>,
    #[serde(default)]
    consumer_tag: Option<Arc<str>>,
    #[serde(default)]
    delivery_tag: Option<u64>,
    #[serde(default)]
    redelivered: Option<bool>,
    #[serde(default)]
    delivery_count: Option<u32>,
    #[serde(default)]
    queue: Option<Arc<str>>,
    #[serde(default)]
    message: Option<Message>,
}

/// Parses a frame from the broker.
pub fn parse_server_frame(text: &str) -> Result<ServerFrame, serde_json::Error> {
    if let Some(frame) = parse_hot_server_frame(text) {
        return Ok(frame);
    }
    serde_json::from_str(text)
}

fn parse_hot_server_frame(text: &str) -> Option<ServerFrame> {
    let hot: HotServerFrame = serde_json::from_str(text).ok()?;
    match hot.kind {
        "deliver" => Some(ServerFrame::Deliver(Delivery {
            consumer_tag: hot.consumer_tag?,
            delivery_tag: hot.delivery_tag?,
            redelivered: hot.redelivered?,
            delivery_count: hot.delivery_count?,
            queue: hot.queue?,
            message: Arc::new(hot.message?),
        })),
        "confirm" => Some(ServerFrame::Confirm { id: hot.id? }),
        _ => None,
    }
}

/// A broker frame's JSON text; `deliver` frames are written directly.
pub fn encode_server_frame(frame: &ServerFrame) -> String {
    let mut out = Vec::with_capacity(frame.body_len() + 256);
    match frame {
        ServerFrame::Deliver(delivery) => write_deliver(&mut out, delivery),
        other => serde_json::to_writer(&mut out, other).expect("frames serialize to JSON"),
    }
    into_string(out)
}

/// A request's JSON text; `publish` and `ack` requests are written directly.
pub fn encode_request(request: &Request) -> String {
    let body_len = match &request.op {
        Op::Publish(publish) => publish.message.body_len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(body_len + 256);
    match &request.op {
        Op::Publish(publish) => write_publish(&mut out, &request.id, publish),
        Op::Ack {
            delivery_tag,
            multiple,
        } => {
            out.extend_from_slice(b"{\"id\":");
            write_id(&mut out, &request.id);
            out.extend_from_slice(b",\"op\":\"ack\",\"delivery_tag\":");
            write_display(&mut out, delivery_tag);
            out.extend_from_slice(b",\"multiple\":");
            write_display(&mut out, multiple);
            out.push(b'}');
        }
        _ => serde_json::to_writer(&mut out, request).expect("requests serialize to JSON"),
    }
    into_string(out)
}

// The writers below produce exactly the derived serializers' bytes (the tests compare
// them); they skip serde's per-field machinery and its byte-by-byte string escaping.

fn write_deliver(out: &mut Vec<u8>, d: &Delivery) {
    out.extend_from_slice(b"{\"type\":\"deliver\",\"consumer_tag\":");
    write_str(out, &d.consumer_tag);
    out.extend_from_slice(b",\"delivery_tag\":");
    write_display(out, &d.delivery_tag);
    out.extend_from_slice(b",\"redelivered\":");
    write_display(out, &d.redelivered);
    out.extend_from_slice(b",\"delivery_count\":");
    write_display(out, &d.delivery_count);
    out.extend_from_slice(b",\"queue\":");
    write_str(out, &d.queue);
    out.extend_from_slice(b",\"message\":{");
    write_message_fields(out, &d.message);
    out.extend_from_slice(b"}}");
}

fn write_publish(out: &mut Vec<u8>, id: &RequestId, publish: &Publish) {
    out.extend_from_slice(b"{\"id\":");
    write_id(out, id);
    out.extend_from_slice(b",\"op\":\"publish\",");
    write_message_fields(out, &publish.message);
    out.extend_from_slice(b",\"mandatory\":");
    write_display(out, &publish.mandatory);
    out.push(b'}');
}

/// A message's wire fields (see `Message`'s `Serialize`), without the braces.
fn write_message_fields(out: &mut Vec<u8>, m: &Message) {
    if !m.exchange.is_empty() {
        out.extend_from_slice(b"\"exchange\":");
        write_str(out, &m.exchange);
        out.push(b',');
    }
    out.extend_from_slice(b"\"routing_key\":");
    write_str(out, &m.routing_key);
    if !m.headers.is_empty() {
        out.extend_from_slice(b",\"headers\":");
        serde_json::to_writer(&mut *out, &m.headers).expect("headers serialize to JSON");
    }
    out.extend_from_slice(b",\"properties\":");
    if m.properties == Properties::default() {
        out.extend_from_slice(b"{}");
    } else {
        serde_json::to_writer(&mut *out, &m.properties).expect("properties serialize to JSON");
    }
    match std::str::from_utf8(&m.body) {
        Ok(text) => {
            out.extend_from_slice(b",\"body\":");
            write_str(out, text);
        }
        Err(_) => {
            out.extend_from_slice(b",\"body_base64\":\"");
            out.extend_from_slice(BASE64.encode(&m.body).as_bytes());
            out.push(b'"');
        }
    }
}

fn write_id(out: &mut Vec<u8>, id: &RequestId) {
    match id {
        RequestId::Num(n) => write_display(out, n),
        RequestId::Str(s) => write_str(out, s),
    }
}

fn write_display(out: &mut Vec<u8>, value: &impl std::fmt::Display) {
    use std::io::Write as _;
    write!(out, "{value}").expect("writing to a Vec cannot fail");
}

/// A JSON string: copied as is when nothing in it needs escaping (the common case,
/// checked without branching per byte), else escaped by serde_json.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let needs_escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        serde_json::to_writer(&mut *out, s).expect("strings serialize to JSON");
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

fn into_string(out: Vec<u8>) -> String {
    // Only whole UTF-8 strings and ASCII are written.
    String::from_utf8(out).expect("JSON is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_request;

    /// The fast path and the derived parser agree on every frame the fast path takes.
    fn same_as_derived(text: &str) {
        let fast = parse_hot_request(text).expect("taken by the fast path");
        let derived: Request = serde_json::from_str(text).expect("accepted by serde");
        assert_eq!(format!("{fast:?}"), format!("{derived:?}"), "{text}");
    }

    #[test]
    fn hot_requests_parse_like_the_derived_ones() {
        same_as_derived(r#"{"id":1,"op":"publish","routing_key":"q","body":"hi"}"#);
        same_as_derived(
            r#"{"id":"a","op":"publish","exchange":"x","routing_key":"k","body_base64":"/w==",
                "mandatory":true,"headers":{"h":[1]},"properties":{"persistent":true,"priority":3},
                "extra":{"ignored":null}}"#,
        );
        same_as_derived(r#"{"properties":{},"op":"publish","id":3}"#);
        same_as_derived(r#"{"id":4,"op":"ack","delivery_tag":9}"#);
        same_as_derived(r#"{"id":5,"op":"ack","delivery_tag":9,"multiple":true,"x":1}"#);
    }

    #[test]
    fn frames_the_fast_path_refuses_keep_their_errors() {
        for (text, code) in [
            // Both bodies, a null where a string belongs, an unknown property, bad base64.
            (
                r#"{"id":1,"op":"publish","body":"a","body_base64":"YQ=="}"#,
                "invalid_field",
            ),
            (
                r#"{"id":1,"op":"publish","routing_key":null}"#,
                "invalid_field",
            ),
            (
                r#"{"id":1,"op":"publish","properties":{"colour":1}}"#,
                "invalid_field",
            ),
            (
                r#"{"id":1,"op":"publish","body_base64":"!"}"#,
                "invalid_field",
            ),
            // `null` for an optional field, properties as an array: refused, not defaulted.
            (
                r#"{"id":1,"op":"publish","routing_key":"q","body":null}"#,
                "invalid_field",
            ),
            (
                r#"{"id":1,"op":"publish","routing_key":"q","body_base64":null}"#,
                "invalid_field",
            ),
            (
                r#"{"id":1,"op":"publish","properties":{"priority":null}}"#,
                "invalid_field",
            ),
            (
                r#"{"id":1,"op":"publish","properties":[true,"m"]}"#,
                "invalid_field",
            ),
            (r#"{"id":1,"op":"ack"}"#, "invalid_field"),
            (
                r#"{"id":1,"op":"ack","delivery_tag":null}"#,
                "invalid_field",
            ),
            (r#"{"id":-1,"op":"ack","delivery_tag":1}"#, "invalid_field"),
            (
                r#"{"id":1,"op":"ack","delivery_tag":1} x"#,
                "malformed_json",
            ),
        ] {
            assert!(parse_hot_request(text).is_none(), "{text}");
            let err = parse_request(text).unwrap_err();
            assert_eq!(err.code.as_str(), code, "{text}");
        }
        // A publish carrying an ack's field of the wrong type is still a fine publish.
        let text = r#"{"id":1,"op":"publish","body":"a","delivery_tag":"x"}"#;
        assert!(parse_hot_request(text).is_none());
        assert!(matches!(parse_request(text).unwrap().op, Op::Publish(_)));
    }

    fn messages() -> Vec<Message> {
        let mut full = Message::text("a.\"b\"\n", "line\nbreak \\ \u{1} é");
        full.exchange = "x".into();
        full.headers
            .insert("h".into(), serde_json::json!({"n": [1, "two"]}));
        full.properties = Properties {
            persistent: true,
            message_id: Some("m\"1".into()),
            priority: Some(4),
            expiration_ms: Some(10),
            ..Default::default()
        };
        let mut binary = Message::text("k", "");
        binary.body = Bytes::from_static(&[0xff, 0, 1]);
        vec![
            Message::text("k", "plain"),
            Message::default(),
            full,
            binary,
        ]
    }

    /// The direct writers produce the derived serializers' exact bytes.
    #[test]
    fn direct_encoding_matches_serde() {
        for message in messages() {
            let deliver = ServerFrame::Deliver(Delivery {
                consumer_tag: "c\"t".into(),
                delivery_tag: u64::MAX,
                redelivered: false,
                delivery_count: 3,
                queue: "q".into(),
                message: Arc::new(message.clone()),
            });
            let text = encode_server_frame(&deliver);
            assert_eq!(text, serde_json::to_string(&deliver).unwrap());
            assert_eq!(
                format!("{:?}", parse_server_frame(&text).unwrap()),
                format!("{deliver:?}")
            );
            for (id, mandatory) in [
                (RequestId::Num(7), true),
                (RequestId::Str("s\\".into()), false),
            ] {
                let publish = Request {
                    id,
                    op: Op::Publish(Publish {
                        message: Box::new(message.clone()),
                        mandatory,
                    }),
                };
                let text = encode_request(&publish);
                assert_eq!(text, serde_json::to_string(&publish).unwrap());
                assert_eq!(
                    format!("{:?}", parse_request(&text).unwrap()),
                    format!("{publish:?}")
                );
            }
        }
        let ack = Request {
            id: 3.into(),
            op: Op::Ack {
                delivery_tag: 12,
                multiple: true,
            },
        };
        assert_eq!(encode_request(&ack), serde_json::to_string(&ack).unwrap());
    }

    #[test]
    fn server_frames_round_trip() {
        let message = Arc::new(Message::text("k", "body"));
        let frames = [
            ServerFrame::Deliver(Delivery {
                consumer_tag: "c".into(),
                delivery_tag: 7,
                redelivered: true,
                delivery_count: 2,
                queue: "q".into(),
                message: message.clone(),
            }),
            ServerFrame::Confirm { id: 8.into() },
            ServerFrame::Confirm {
                id: RequestId::Str("s".into()),
            },
            ServerFrame::ok(9.into()),
        ];
        for frame in frames {
            let text = encode_server_frame(&frame);
            assert_eq!(text, serde_json::to_string(&frame).unwrap());
            let parsed = parse_server_frame(&text).unwrap();
            assert_eq!(format!("{parsed:?}"), format!("{frame:?}"));
        }
        assert!(parse_hot_server_frame(r#"{"type":"deliver","delivery_tag":1}"#).is_none());
        assert!(parse_server_frame(r#"{"type":"deliver","delivery_tag":1}"#).is_err());
    }
}
