//! The wire protocol: JSON text frames over WebSocket, one object per frame.
//!
//! With the [`BINARY_SUBPROTOCOL`] WebSocket subprotocol, the frames that carry messages
//! (`publish`, `ack`, `deliver`, `confirm`) go as binary records instead; everything else
//! stays JSON.
//!
//! Client → broker: a [`Request`] (`{"id": .., "op": "..", ...fields}`).
//! Broker → client: a [`ServerFrame`] tagged by `type`: `ok`, `error`, `confirm`, `deliver`,
//! `return`, `cancelled`. `docs/protocol.md` documents every operation and error code.

mod binary;
mod error;
mod hot;
mod ops;
mod plugin_results;
mod results;

pub use binary::{
    BINARY_BATCH_BYTES, BINARY_SUBPROTOCOL, Encoding, RequestRecords, ServerRecords,
    decode_requests, decode_server_frames, write_request_record, write_server_record,
};
pub use error::{ErrorCode, ParseError, parse_request};
pub use hot::{encode_request, encode_server_frame, parse_server_frame};
pub use ops::*;
pub use plugin_results::*;
pub use results::*;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::message::Message;

/// The WebSocket read buffer of both ends. tungstenite zeroes the free part of it before
/// every read; its 128 KiB default made that a visible share of the profile.
pub const READ_BUFFER_BYTES: usize = 32 * 1024;

/// A client-chosen request id, echoed in the reply: a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum RequestId {
    Num(u64),
    Str(String),
}

/// What `#[serde(untagged)]` accepts, without buffering the value first.
impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RequestId;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a non-negative integer or a string")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RequestId, E> {
                Ok(RequestId::Num(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RequestId, E> {
                u64::try_from(n)
                    .map(RequestId::Num)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RequestId, E> {
                Ok(RequestId::Str(s.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<RequestId, E> {
                Ok(RequestId::Str(s))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl From<u64> for RequestId {
    fn from(n: u64) -> Self {
        RequestId::Num(n)
    }
}

/// One client request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    #[serde(flatten)]
    pub op: Op,
}

/// A frame the broker sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Success reply to request `id`; `result` depends on the operation (absent when empty).
    Ok {
        id: RequestId,
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        result: serde_json::Value,
    },
    /// Failure of request `id` (absent when the frame was too broken to carry one). For a
    /// `publish` on a connection in confirm mode this is the negative confirm.
    Error {
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
    },
    /// A published message is safely stored in every queue it was routed to.
    Confirm { id: RequestId },
    /// A message for one of this connection's consumers.
    Deliver(Delivery),
    /// A `mandatory` message that no queue accepted, handed back to its publisher.
    Return {
        id: RequestId,
        reason: ErrorCode,
        message: Arc<Message>,
    },
    /// The broker ended a subscription (its queue was deleted).
    Cancelled {
        consumer_tag: String,
        reason: String,
    },
    /// The broker stopped reading this connection's requests (memory alarm): publishes
    /// wait in the socket until [`ServerFrame::Unblocked`]. As RabbitMQ's
    /// `connection.blocked`.
    Blocked { reason: String },
    /// The broker reads this connection's requests again.
    Unblocked,
}

/// A message pushed to a consumer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub consumer_tag: Arc<str>,
    /// Connection-scoped tag to `ack` / `nack` / `reject` this delivery with.
    pub delivery_tag: u64,
    /// True when the message was delivered before (to anyone) and not acked.
    pub redelivered: bool,
    /// How many times the message has been delivered, this delivery included.
    pub delivery_count: u32,
    pub queue: Arc<str>,
    pub message: Arc<Message>,
}

impl ServerFrame {
    /// Body bytes the frame carries (to size its encoding buffer).
    pub fn body_len(&self) -> usize {
        match self {
            ServerFrame::Deliver(delivery) => delivery.message.body_len(),
            ServerFrame::Return { message, .. } => message.body_len(),
            _ => 0,
        }
    }

    pub fn ok(id: RequestId) -> Self {
        ServerFrame::Ok {
            id,
            result: serde_json::Value::Null,
        }
    }

    pub fn ok_with(id: RequestId, result: impl Serialize) -> Self {
        ServerFrame::Ok {
            id,
            result: serde_json::to_value(result).expect("results serialize to JSON"),
        }
    }

    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            id,
            code,
            message: message.into(),
        }
    }
}
