//! The optional binary encoding of the frames that carry messages, negotiated per
//! connection with the WebSocket subprotocol [`BINARY_SUBPROTOCOL`].
//!
//! Only `publish` and `ack` requests and `deliver` and `confirm` frames have a binary form;
//! every other frame stays a JSON text frame on the same connection. One binary WebSocket
//! message holds one or more records back to back. A record is a kind byte, the length of
//! the rest (u32) and fixed little-endian fields; byte strings are length-prefixed, and the
//! rare message headers and properties travel as a JSON blob (empty when default). The
//! decoders produce exactly the [`Request`] and [`ServerFrame`] values the JSON parsers
//! produce for the same frames. `docs/protocol.md` ("Binary frames") is the reference.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Delivery, ErrorCode, Op, ParseError, Publish, Request, RequestId, ServerFrame};
use crate::message::{Headers, Message, Properties};

/// The `Sec-WebSocket-Protocol` value that selects the binary encoding.
pub const BINARY_SUBPROTOCOL: &str = "broker-binary.v1";

/// Writers pack consecutive records into one WebSocket message up to about this size.
pub const BINARY_BATCH_BYTES: usize = 64 * 1024;

/// Record kinds (the first byte of a record).
pub const KIND_PUBLISH: u8 = 0x01;
pub const KIND_ACK: u8 = 0x02;
pub const KIND_DELIVER: u8 = 0x03;
pub const KIND_CONFIRM: u8 = 0x04;

/// Kind byte and payload length.
pub const RECORD_HEADER_BYTES: usize = 5;

const ID_NUM: u8 = 0;
const ID_STR: u8 = 1;

/// `publish` flags.
const MANDATORY: u8 = 0x01;
/// `ack` flags.
const MULTIPLE: u8 = 0x01;
/// `deliver` flags.
const REDELIVERED: u8 = 0x01;
/// Message flags.
const PERSISTENT: u8 = 0x01;
const HAS_TIMESTAMP: u8 = 0x02;

/// How a connection encodes the frames that carry messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    /// JSON text frames only: the default and the documented baseline.
    #[default]
    Json,
    /// Binary records for `publish`, `ack`, `deliver` and `confirm` ([`BINARY_SUBPROTOCOL`]).
    Binary,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Binary => "binary",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoding

/// Appends the record of a `publish` or `ack` request; `false` (nothing written) for any
/// other operation, which goes as a JSON text frame.
pub fn write_request_record(out: &mut Vec<u8>, request: &Request) -> bool {
    match &request.op {
        Op::Publish(publish) => record(out, KIND_PUBLISH, |out| {
            put_id(out, &request.id);
            out.push(if publish.mandatory { MANDATORY } else { 0 });
            put_message(out, &publish.message);
        }),
        Op::Ack {
            delivery_tag,
            multiple,
        } => record(out, KIND_ACK, |out| {
            put_id(out, &request.id);
            out.push(if *multiple { MULTIPLE } else { 0 });
            out.extend_from_slice(&delivery_tag.to_le_bytes());
        }),
        _ => return false,
    }
    true
}

/// Appends the record of a `deliver` or `confirm` frame; `false` (nothing written) for any
/// other frame, which goes as a JSON text frame.
pub fn write_server_record(out: &mut Vec<u8>, frame: &ServerFrame) -> bool {
    match frame {
        ServerFrame::Deliver(d) => record(out, KIND_DELIVER, |out| {
            out.extend_from_slice(&d.delivery_tag.to_le_bytes());
            out.extend_from_slice(&d.delivery_count.to_le_bytes());
            out.push(if d.redelivered { REDELIVERED } else { 0 });
            put_bytes(out, d.consumer_tag.as_bytes());
            put_bytes(out, d.queue.as_bytes());
            put_message(out, &d.message);
        }),
        ServerFrame::Confirm { id } => record(out, KIND_CONFIRM, |out| put_id(out, id)),
        _ => return false,
    }
    true
}

/// Writes kind, a length placeholder, the payload, then the payload's length.
fn record(out: &mut Vec<u8>, kind: u8, payload: impl FnOnce(&mut Vec<u8>)) {
    out.push(kind);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    payload(out);
    patch_len(out, at);
}

/// Stores the length of what follows the 4 bytes at `at` into them.
fn patch_len(out: &mut [u8], at: usize) {
    // A record is bounded by the frame limit, far below 4 GiB.
    let len = u32::try_from(out.len() - at - 4).expect("a record is smaller than 4 GiB");
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("a field is smaller than 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_id(out: &mut Vec<u8>, id: &RequestId) {
    match id {
        RequestId::Num(n) => {
            out.push(ID_NUM);
            out.extend_from_slice(&n.to_le_bytes());
        }
        RequestId::Str(s) => {
            out.push(ID_STR);
            put_bytes(out, s.as_bytes());
        }
    }
}

/// The headers and the properties other than `persistent` and `timestamp`, as JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    #[serde(default)]
    headers: Headers,
    #[serde(default)]
    properties: Properties,
}

/// [`Meta`] borrowed, for writing.
#[derive(Serialize)]
struct MetaRef<'a> {
    #[serde(skip_serializing_if = "Headers::is_empty")]
    headers: &'a Headers,
    #[serde(skip_serializing_if = "is_default")]
    properties: &'a Properties,
}

fn is_default(properties: &Properties) -> bool {
    *properties == Properties::default()
}

fn put_message(out: &mut Vec<u8>, m: &Message) {
    let p = &m.properties;
    let mut flags = 0;
    if p.persistent {
        flags |= PERSISTENT;
    }
    if p.timestamp.is_some() {
        flags |= HAS_TIMESTAMP;
    }
    out.push(flags);
    if let Some(timestamp) = p.timestamp {
        out.extend_from_slice(&timestamp.to_le_bytes());
    }
    put_bytes(out, m.exchange.as_bytes());
    put_bytes(out, m.routing_key.as_bytes());
    // Cloning properties whose strings are all `None` allocates nothing.
    let rest = Properties {
        persistent: false,
        timestamp: None,
        ..p.clone()
    };
    if m.headers.is_empty() && is_default(&rest) {
        out.extend_from_slice(&0u32.to_le_bytes());
    } else {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        let meta = MetaRef {
            headers: &m.headers,
            properties: &rest,
        };
        serde_json::to_writer(&mut *out, &meta).expect("meta serializes to JSON");
        patch_len(out, at);
    }
    put_bytes(out, &m.body);
}

// ---------------------------------------------------------------------------------------
// Decoding

/// Why a record could not be read (the id is added by the caller when it was readable).
#[derive(Debug)]
struct Fault {
    code: ErrorCode,
    message: String,
}

fn malformed(message: impl Into<String>) -> Fault {
    Fault {
        code: ErrorCode::MalformedBinary,
        message: message.into(),
    }
}

fn invalid(message: impl Into<String>) -> Fault {
    Fault {
        code: ErrorCode::InvalidField,
        message: message.into(),
    }
}

/// Reads fields off a record's payload; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], Fault> {
        if self.buf.len() < n {
            return Err(malformed(format!(
                "record truncated: `{field}` needs {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &str) -> Result<u8, Fault> {
        Ok(self.take(1, field)?[0])
    }

    fn u32(&mut self, field: &str) -> Result<u32, Fault> {
        let bytes = self.take(4, field)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, field: &str) -> Result<u64, Fault> {
        let bytes = self.take(8, field)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self, field: &str) -> Result<&'a [u8], Fault> {
        let len = self.u32(field)? as usize;
        self.take(len, field)
    }

    fn str(&mut self, field: &str) -> Result<&'a str, Fault> {
        std::str::from_utf8(self.bytes(field)?)
            .map_err(|_| invalid(format!("`{field}` is not valid UTF-8")))
    }

    /// A flags byte whose bits outside `known` must be clear.
    fn flags(&mut self, field: &str, known: u8) -> Result<u8, Fault> {
        let flags = self.u8(field)?;
        if flags & !known != 0 {
            return Err(invalid(format!(
                "`{field}` has reserved bits set: {flags:#04x}"
            )));
        }
        Ok(flags)
    }

    fn id(&mut self) -> Result<RequestId, Fault> {
        match self.u8("id")? {
            ID_NUM => Ok(RequestId::Num(self.u64("id")?)),
            ID_STR => Ok(RequestId::Str(self.str("id")?.to_owned())),
            tag => Err(invalid(format!(
                "`id` tag must be 0 (number) or 1 (string), not {tag}"
            ))),
        }
    }

    fn message(&mut self) -> Result<Message, Fault> {
        let flags = self.flags("message_flags", PERSISTENT | HAS_TIMESTAMP)?;
        let timestamp = match flags & HAS_TIMESTAMP {
            0 => None,
            _ => Some(self.u64("timestamp")?),
        };
        let exchange = self.str("exchange")?.to_owned();
        let routing_key = self.str("routing_key")?.to_owned();
        let meta = self.bytes("meta")?;
        let body = Bytes::copy_from_slice(self.bytes("body")?);
        let Meta {
            headers,
            mut properties,
        } = match meta {
            [] => Meta {
                headers: Headers::new(),
                properties: Properties::default(),
            },
            json => serde_json::from_slice(json).map_err(|e| invalid(format!("`meta`: {e}")))?,
        };
        if properties.persistent || properties.timestamp.is_some() {
            return Err(invalid(
                "`meta` must not set `persistent` or `timestamp` (they are record fields)",
            ));
        }
        properties.persistent = flags & PERSISTENT != 0;
        properties.timestamp = timestamp;
        Ok(Message {
            exchange,
            routing_key,
            headers,
            properties,
            body,
        })
    }

    fn end(&self) -> Result<(), Fault> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(malformed(format!(
                "record has {n} bytes after its last field"
            ))),
        }
    }
}

fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        KIND_PUBLISH => "publish",
        KIND_ACK => "ack",
        KIND_DELIVER => "deliver",
        KIND_CONFIRM => "confirm",
        _ => return None,
    })
}

/// Splits the next record (kind, payload) off `rest`.
fn next_record<'a>(rest: &mut &'a [u8]) -> Result<(u8, &'a [u8]), Fault> {
    let mut r = Reader { buf: rest };
    let kind = r.u8("kind")?;
    let len = r.u32("length")? as usize;
    if r.buf.len() < len {
        return Err(malformed(format!(
            "record truncated: length says {len} bytes, {} left in the message",
            r.buf.len()
        )));
    }
    let (payload, after) = r.buf.split_at(len);
    *rest = after;
    Ok((kind, payload))
}

/// The request records of one binary WebSocket message, in order. Yields each record's
/// request, or the error of the first bad record and then nothing more: records after a
/// bad one are not read (their boundaries can no longer be trusted).
pub fn decode_requests(message: &[u8], max_record_bytes: usize) -> RequestRecords<'_> {
    RequestRecords {
        rest: message,
        max_record_bytes,
        empty: message.is_empty(),
    }
}

/// See [`decode_requests`].
pub struct RequestRecords<'a> {
    rest: &'a [u8],
    max_record_bytes: usize,
    /// An empty message is itself an error.
    empty: bool,
}

impl Iterator for RequestRecords<'_> {
    type Item = Result<Request, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if std::mem::take(&mut self.empty) {
            return Some(Err(no_id(malformed(
                "an empty binary message: it must hold at least one record",
            ))));
        }
        if self.rest.is_empty() {
            return None;
        }
        let result = self.read_one();
        if result.is_err() {
            self.rest = &[];
        }
        Some(result)
    }
}

impl RequestRecords<'_> {
    fn read_one(&mut self) -> Result<Request, ParseError> {
        let mut head = Reader { buf: self.rest };
        let kind = head.u8("kind").map_err(no_id)?;
        if let Ok(len) = head.u32("length") {
            let size = RECORD_HEADER_BYTES + len as usize;
            if size > self.max_record_bytes {
                // Answered with the id when the record's first bytes carry one.
                let id = (kind == KIND_PUBLISH || kind == KIND_ACK)
                    .then(|| Reader { buf: head.buf }.id().ok())
                    .flatten();
                return Err(ParseError {
                    id,
                    code: ErrorCode::FrameTooLarge,
                    message: format!(
                        "record of {size} bytes exceeds the limit of {} bytes",
                        self.max_record_bytes
                    ),
                });
            }
        }
        let (kind, payload) = next_record(&mut self.rest).map_err(no_id)?;
        match kind {
            KIND_PUBLISH | KIND_ACK => {}
            KIND_DELIVER | KIND_CONFIRM => {
                return Err(no_id(malformed(format!(
                    "record kind {kind} ({}) is sent by the broker, not to it",
                    kind_name(kind).unwrap_or("?")
                ))));
            }
            _ => return Err(no_id(malformed(format!("unknown record kind {kind}")))),
        }
        let mut r = Reader { buf: payload };
        let id = r.id().map_err(no_id)?;
        let op = read_request_op(kind, &mut r).map_err(|f| ParseError {
            id: Some(id.clone()),
            code: f.code,
            message: f.message,
        })?;
        Ok(Request { id, op })
    }
}

fn read_request_op(kind: u8, r: &mut Reader) -> Result<Op, Fault> {
    let op = if kind == KIND_PUBLISH {
        let flags = r.flags("flags", MANDATORY)?;
        Op::Publish(Publish {
            message: r.message()?,
            mandatory: flags & MANDATORY != 0,
        })
    } else {
        let flags = r.flags("flags", MULTIPLE)?;
        Op::Ack {
            delivery_tag: r.u64("delivery_tag")?,
            multiple: flags & MULTIPLE != 0,
        }
    };
    r.end()?;
    Ok(op)
}

fn no_id(fault: Fault) -> ParseError {
    ParseError {
        id: None,
        code: fault.code,
        message: fault.message,
    }
}

/// The broker's records in one binary WebSocket message, in order; stops after the first
/// bad record (yielding its error).
pub fn decode_server_frames(message: &[u8]) -> ServerRecords<'_> {
    ServerRecords { rest: message }
}

/// See [`decode_server_frames`].
pub struct ServerRecords<'a> {
    rest: &'a [u8],
}

impl Iterator for ServerRecords<'_> {
    type Item = Result<ServerFrame, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result =
            read_server_record(&mut self.rest).map_err(|f| format!("{}: {}", f.code, f.message));
        if result.is_err() {
            self.rest = &[];
        }
        Some(result)
    }
}

fn read_server_record(rest: &mut &[u8]) -> Result<ServerFrame, Fault> {
    let (kind, payload) = next_record(rest)?;
    let mut r = Reader { buf: payload };
    let frame = match kind {
        KIND_DELIVER => {
            let delivery_tag = r.u64("delivery_tag")?;
            let delivery_count = r.u32("delivery_count")?;
            let flags = r.flags("flags", REDELIVERED)?;
            ServerFrame::Deliver(Delivery {
                consumer_tag: Arc::from(r.str("consumer_tag")?),
                delivery_tag,
                redelivered: flags & REDELIVERED != 0,
                delivery_count,
                queue: Arc::from(r.str("queue")?),
                message: Arc::new(r.message()?),
            })
        }
        KIND_CONFIRM => ServerFrame::Confirm { id: r.id()? },
        _ => return Err(malformed(format!("unexpected record kind {kind}"))),
    };
    r.end()?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_request, encode_server_frame, parse_request, parse_server_frame};

    const LIMIT: usize = 1 << 20;

    fn messages() -> Vec<Message> {
        let mut full = Message::text("a.\"b\"\n", "line\nbreak \\ é");
        full.exchange = "x".into();
        full.headers
            .insert("h".into(), serde_json::json!({"n": [1, "two"]}));
        full.properties = Properties {
            persistent: true,
            message_id: Some("m\"1".into()),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            content_type: Some("text/plain".into()),
            priority: Some(4),
            expiration_ms: Some(10),
            timestamp: Some(1_795_466_186_762),
            delay_ms: Some(5),
        };
        let mut headers_only = Message::text("k", "h");
        headers_only
            .headers
            .insert("tenant".into(), serde_json::json!("acme"));
        let mut stamped = Message::text("k", "t");
        stamped.properties.timestamp = Some(0);
        let mut binary = Message::text("k", "");
        binary.body = Bytes::from_static(&[0xff, 0, 1, 0x80]);
        vec![
            Message::text("k", "plain"),
            Message::default(),
            full,
            headers_only,
            stamped,
            binary,
        ]
    }

    fn ids() -> [RequestId; 3] {
        [
            RequestId::Num(0),
            RequestId::Num(u64::MAX),
            RequestId::Str("p-1 é".into()),
        ]
    }

    fn requests() -> Vec<Request> {
        let mut all = Vec::new();
        for id in ids() {
            for message in messages() {
                for mandatory in [false, true] {
                    all.push(Request {
                        id: id.clone(),
                        op: Op::Publish(Publish {
                            message: message.clone(),
                            mandatory,
                        }),
                    });
                }
            }
            for (delivery_tag, multiple) in [(1, false), (u64::MAX, true)] {
                all.push(Request {
                    id: id.clone(),
                    op: Op::Ack {
                        delivery_tag,
                        multiple,
                    },
                });
            }
        }
        all
    }

    fn server_frames() -> Vec<ServerFrame> {
        let mut all: Vec<ServerFrame> = ids()
            .into_iter()
            .map(|id| ServerFrame::Confirm { id })
            .collect();
        for message in messages() {
            for (redelivered, delivery_count) in [(false, 1), (true, u32::MAX)] {
                all.push(ServerFrame::Deliver(Delivery {
                    consumer_tag: "ctag-1".into(),
                    delivery_tag: u64::MAX,
                    redelivered,
                    delivery_count,
                    queue: "q é".into(),
                    message: Arc::new(message.clone()),
                }));
            }
        }
        all
    }

    fn one_request(bytes: &[u8]) -> Result<Request, ParseError> {
        let mut records = decode_requests(bytes, LIMIT);
        let first = records.next().expect("one record");
        assert!(records.next().is_none(), "exactly one record");
        first
    }

    /// Each request decodes to the value it was encoded from, and to what the JSON parser
    /// makes of the same request's JSON frame.
    #[test]
    fn request_records_round_trip_like_json() {
        for request in requests() {
            let mut bytes = Vec::new();
            assert!(write_request_record(&mut bytes, &request));
            let decoded = one_request(&bytes).unwrap();
            assert_eq!(format!("{decoded:?}"), format!("{request:?}"));
            let from_json = parse_request(&encode_request(&request)).unwrap();
            assert_eq!(format!("{decoded:?}"), format!("{from_json:?}"));
        }
    }

    #[test]
    fn server_records_round_trip_like_json() {
        for frame in server_frames() {
            let mut bytes = Vec::new();
            assert!(write_server_record(&mut bytes, &frame));
            let decoded: Vec<_> = decode_server_frames(&bytes).collect();
            assert_eq!(decoded.len(), 1);
            let decoded = decoded.into_iter().next().unwrap().unwrap();
            assert_eq!(format!("{decoded:?}"), format!("{frame:?}"));
            let from_json = parse_server_frame(&encode_server_frame(&frame)).unwrap();
            assert_eq!(format!("{decoded:?}"), format!("{from_json:?}"));
        }
    }

    #[test]
    fn records_pack_back_to_back() {
        let mut bytes = Vec::new();
        for request in requests() {
            write_request_record(&mut bytes, &request);
        }
        let decoded: Vec<_> = decode_requests(&bytes, LIMIT)
            .map(|r| format!("{:?}", r.unwrap()))
            .collect();
        let expected: Vec<_> = requests().iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(decoded, expected);

        let mut bytes = Vec::new();
        for frame in server_frames() {
            write_server_record(&mut bytes, &frame);
        }
        assert_eq!(
            decode_server_frames(&bytes).filter(Result::is_ok).count(),
            server_frames().len()
        );
    }

    #[test]
    fn only_the_message_frames_have_records() {
        let mut bytes = Vec::new();
        let declare = Request {
            id: 1.into(),
            op: Op::ConfirmSelect,
        };
        assert!(!write_request_record(&mut bytes, &declare));
        let nack = Request {
            id: 1.into(),
            op: Op::Reject {
                delivery_tag: 1,
                requeue: false,
            },
        };
        assert!(!write_request_record(&mut bytes, &nack));
        assert!(!write_server_record(&mut bytes, &ServerFrame::ok(1.into())));
        let error = ServerFrame::error(Some(1.into()), ErrorCode::QueueFull, "full");
        assert!(!write_server_record(&mut bytes, &error));
        assert!(bytes.is_empty());
    }

    /// The fixed layout, byte for byte, as docs/protocol.md shows it.
    #[test]
    fn layout_matches_the_documentation() {
        let ack = Request {
            id: 7.into(),
            op: Op::Ack {
                delivery_tag: 5,
                multiple: true,
            },
        };
        let mut bytes = Vec::new();
        write_request_record(&mut bytes, &ack);
        assert_eq!(
            bytes,
            [
                2, 18, 0, 0, 0, // kind ack, payload length 18
                0, 7, 0, 0, 0, 0, 0, 0, 0, // id: number 7
                1, // flags: multiple
                5, 0, 0, 0, 0, 0, 0, 0, // delivery_tag
            ]
        );
        let mut persistent = Message::text("q", "hi");
        persistent.properties.persistent = true;
        let publish = Request {
            id: RequestId::Str("p".into()),
            op: Op::Publish(Publish {
                message: persistent,
                mandatory: false,
            }),
        };
        let mut bytes = Vec::new();
        write_request_record(&mut bytes, &publish);
        assert_eq!(
            bytes,
            [
                1, 27, 0, 0, 0, // kind publish, payload length 27
                1, 1, 0, 0, 0, b'p', // id: string "p"
                0,    // flags
                1,    // message flags: persistent, no timestamp
                0, 0, 0, 0, // exchange ""
                1, 0, 0, 0, b'q', // routing_key "q"
                0, 0, 0, 0, // meta: empty
                2, 0, 0, 0, b'h', b'i', // body
            ]
        );
        let mut bytes = Vec::new();
        write_server_record(&mut bytes, &ServerFrame::Confirm { id: 3.into() });
        assert_eq!(bytes, [4, 9, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
    }

    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn ack_payload(id: u64, flags: u8, tag: u64) -> Vec<u8> {
        let mut p = vec![ID_NUM];
        p.extend_from_slice(&id.to_le_bytes());
        p.push(flags);
        p.extend_from_slice(&tag.to_le_bytes());
        p
    }

    /// A publish payload (numeric id 9) with the given message flags and meta.
    fn publish_payload(message_flags: u8, routing_key: &[u8], meta: &[u8]) -> Vec<u8> {
        let mut p = vec![ID_NUM];
        p.extend_from_slice(&9u64.to_le_bytes());
        p.push(0);
        p.push(message_flags);
        put_bytes(&mut p, b"");
        put_bytes(&mut p, routing_key);
        put_bytes(&mut p, meta);
        put_bytes(&mut p, b"body");
        p
    }

    fn error_of(bytes: &[u8]) -> (Option<RequestId>, ErrorCode) {
        let errors: Vec<_> = decode_requests(bytes, LIMIT)
            .filter_map(Result::err)
            .collect();
        assert_eq!(errors.len(), 1, "one error for {bytes:?}");
        (errors[0].id.clone(), errors[0].code)
    }

    #[test]
    fn malformed_records_get_typed_errors() {
        let n9 = Some(RequestId::Num(9));
        let cases: Vec<(&str, Vec<u8>, Option<RequestId>, ErrorCode)> = vec![
            ("empty message", vec![], None, ErrorCode::MalformedBinary),
            (
                "kind only",
                vec![KIND_ACK],
                None,
                ErrorCode::MalformedBinary,
            ),
            (
                "half a length",
                vec![KIND_ACK, 1, 0],
                None,
                ErrorCode::MalformedBinary,
            ),
            (
                "length past the end",
                record(KIND_ACK, &ack_payload(9, 0, 1))[..10].to_vec(),
                None,
                ErrorCode::MalformedBinary,
            ),
            (
                "unknown kind",
                record(0x7f, &ack_payload(9, 0, 1)),
                None,
                ErrorCode::MalformedBinary,
            ),
            (
                "broker-to-client kind",
                record(KIND_CONFIRM, &ack_payload(9, 0, 1)[..9]),
                None,
                ErrorCode::MalformedBinary,
            ),
            (
                "field past the payload",
                record(KIND_ACK, &ack_payload(9, 0, 1)[..12]),
                n9.clone(),
                ErrorCode::MalformedBinary,
            ),
            (
                "truncated id",
                record(KIND_ACK, &ack_payload(9, 0, 1)[..4]),
                None,
                ErrorCode::MalformedBinary,
            ),
            (
                "bytes after the last field",
                record(KIND_ACK, &[ack_payload(9, 0, 1), vec![0]].concat()),
                n9.clone(),
                ErrorCode::MalformedBinary,
            ),
            (
                "string length past the payload",
                record(KIND_PUBLISH, &publish_payload(0, b"q", b"")[..20]),
                n9.clone(),
                ErrorCode::MalformedBinary,
            ),
            (
                "bad id tag",
                record(KIND_ACK, &[&[2u8][..], &ack_payload(9, 0, 1)[1..]].concat()),
                None,
                ErrorCode::InvalidField,
            ),
            (
                "string id not UTF-8",
                record(
                    KIND_ACK,
                    &[ID_STR, 1, 0, 0, 0, 0xff, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                ),
                None,
                ErrorCode::InvalidField,
            ),
            (
                "reserved ack flag",
                record(KIND_ACK, &ack_payload(9, 0x80, 1)),
                n9.clone(),
                ErrorCode::InvalidField,
            ),
            (
                "reserved message flag",
                record(KIND_PUBLISH, &publish_payload(0x04, b"q", b"")),
                n9.clone(),
                ErrorCode::InvalidField,
            ),
            (
                "routing key not UTF-8",
                record(KIND_PUBLISH, &publish_payload(0, &[0xc3], b"")),
                n9.clone(),
                ErrorCode::InvalidField,
            ),
            (
                "meta not JSON",
                record(KIND_PUBLISH, &publish_payload(0, b"q", b"{")),
                n9.clone(),
                ErrorCode::InvalidField,
            ),
            (
                "meta not an object",
                record(KIND_PUBLISH, &publish_payload(0, b"q", b"[1]")),
                n9.clone(),
                ErrorCode::InvalidField,
            ),
            (
                "unknown meta key",
                record(KIND_PUBLISH, &publish_payload(0, b"q", br#"{"body":"x"}"#)),
                n9.clone(),
                ErrorCode::InvalidField,
            ),
            (
                "unknown property",
                record(
                    KIND_PUBLISH,
                    &publish_payload(0, b"q", br#"{"properties":{"colour":1}}"#),
                ),
                n9.clone(),
                ErrorCode::InvalidField,
            ),
            (
                "persistent in meta",
                record(
                    KIND_PUBLISH,
                    &publish_payload(0, b"q", br#"{"properties":{"persistent":true}}"#),
                ),
                n9.clone(),
                ErrorCode::InvalidField,
            ),
            (
                "timestamp in meta",
                record(
                    KIND_PUBLISH,
                    &publish_payload(0, b"q", br#"{"properties":{"timestamp":1}}"#),
                ),
                n9.clone(),
                ErrorCode::InvalidField,
            ),
        ];
        for (name, bytes, id, code) in cases {
            assert_eq!(error_of(&bytes), (id, code), "{name}");
        }
        // Meta that is fine: headers and another property.
        let fine = record(
            KIND_PUBLISH,
            &publish_payload(
                1,
                b"q",
                br#"{"headers":{"a":1},"properties":{"priority":2}}"#,
            ),
        );
        let Op::Publish(publish) = one_request(&fine).unwrap().op else {
            panic!("a publish");
        };
        assert!(publish.message.properties.persistent);
        assert_eq!(publish.message.properties.priority, Some(2));
        assert_eq!(publish.message.headers["a"], 1);
    }

    #[test]
    fn records_over_the_limit_are_too_large() {
        let bytes = record(KIND_ACK, &ack_payload(9, 0, 1));
        let errors: Vec<_> = decode_requests(&bytes, bytes.len() - 1).collect();
        let err = errors[0].as_ref().unwrap_err();
        assert_eq!(
            (err.id.clone(), err.code),
            (Some(RequestId::Num(9)), ErrorCode::FrameTooLarge)
        );
        assert!(decode_requests(&bytes, bytes.len()).all(|r| r.is_ok()));
    }

    /// Records before a bad one are decoded; nothing after it is.
    #[test]
    fn decoding_stops_at_the_first_bad_record() {
        let good = record(KIND_ACK, &ack_payload(1, 0, 1));
        let bad = record(0x7f, b"");
        let bytes = [good.clone(), good.clone(), bad, good].concat();
        let results: Vec<_> = decode_requests(&bytes, LIMIT).collect();
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[1].is_ok());
        assert_eq!(
            results[2].as_ref().unwrap_err().code,
            ErrorCode::MalformedBinary
        );

        let mut frames = Vec::new();
        write_server_record(&mut frames, &ServerFrame::Confirm { id: 1.into() });
        frames.extend_from_slice(&record(KIND_PUBLISH, b""));
        write_server_record(&mut frames, &ServerFrame::Confirm { id: 2.into() });
        let results: Vec<_> = decode_server_frames(&frames).collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert!(results[1].as_ref().unwrap_err().contains("kind 1"));
        assert!(decode_server_frames(&[KIND_CONFIRM, 9]).all(|r| r.is_err()));
    }

    /// Every truncation and every single-byte corruption of valid records decodes to
    /// values or errors, never a panic.
    #[test]
    fn corrupt_input_never_panics() {
        let mut publishes = Vec::new();
        for request in requests().iter().step_by(3) {
            write_request_record(&mut publishes, request);
        }
        let mut frames = Vec::new();
        for frame in server_frames().iter().step_by(2) {
            write_server_record(&mut frames, frame);
        }
        for bytes in [&publishes, &frames] {
            for cut in 0..bytes.len() {
                decode_requests(&bytes[..cut], LIMIT).for_each(drop);
                decode_server_frames(&bytes[..cut]).for_each(drop);
            }
            for at in 0..bytes.len().min(4096) {
                for value in [0x00, 0x01, 0x7f, 0xff] {
                    let mut corrupt = bytes.clone();
                    corrupt[at] = value;
                    decode_requests(&corrupt, LIMIT).for_each(drop);
                    decode_server_frames(&corrupt).for_each(drop);
                }
            }
        }
    }
}
