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
            message: Box::new(r.message()?),
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
mod tests;
