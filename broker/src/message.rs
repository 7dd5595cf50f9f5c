//! The message as the broker sees it: routing information, headers, properties and body.
//!
//! One `Message` is shared (`Arc`) by every queue it was routed to; per-queue state
//! (sequence, delivery count) lives in the queue, not here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Application headers: an open JSON map, like AMQP's header table.
pub type Headers = serde_json::Map<String, serde_json::Value>;

/// Standard message properties (AMQP's basic properties, in milliseconds where timed).
/// Read from a JSON object only, in which a property is given or left out, never `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
// The derives are inherent functions; the trait impls below wrap them.
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Properties {
    /// Persistent messages on durable queues are written to disk before they are confirmed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub persistent: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub message_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub correlation_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub reply_to: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub content_type: Option<String>,
    /// 0 (lowest, the default) to 255; queues with `max_priority` order by it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub priority: Option<u8>,
    /// Per-message time to live in milliseconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub expiration_ms: Option<u64>,
    /// Milliseconds since the Unix epoch; set by the broker at publish when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub timestamp: Option<u64>,
    /// Delayed delivery: the message becomes visible this many milliseconds after publish.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub delay_ms: Option<u64>,
    /// e.g. `gzip`: set by the application and carried unchanged (AMQP's `content-encoding`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub content_encoding: Option<String>,
    /// The application's message type name (AMQP's `type`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present",
        rename = "type"
    )]
    pub kind: Option<String>,
    /// The publishing user (AMQP's `user-id`; an AMQP publish must name its own login).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub user_id: Option<String>,
    /// The publishing application (AMQP's `app-id`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub app_id: Option<String>,
    /// AMQP's deprecated `cluster-id`, carried unchanged.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub cluster_id: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Properties::serialize(self, serializer)
    }
}

/// Only an object: the derived visitor alone would also read an array, positionally.
impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Properties;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of message properties")
            }
            fn visit_map<A>(self, map: A) -> Result<Properties, A::Error>
            where
                A: serde::de::MapAccess<'de>,
            {
                Properties::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// An optional field that, when present, has its type: `null` is refused like any other
/// wrong type (`#[serde(default)]` covers its absence).
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// How a body travels inside a JSON frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyEncoding {
    /// The body string is the body's bytes (UTF-8).
    #[default]
    Utf8,
    /// The body string is standard base64 of arbitrary bytes.
    Base64,
}

/// A message: where it was published, its metadata and its body.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub headers: Headers,
    pub properties: Properties,
    pub body: Bytes,
}

/// Routing keys a message is routed with besides its own, kept on the message.
pub const CC_HEADER: &str = "CC";
/// Routing keys a message is routed with besides its own, taken off before delivery.
pub const BCC_HEADER: &str = "BCC";

impl Message {
    /// A message for the default exchange with a text body.
    pub fn text(routing_key: impl Into<String>, body: impl Into<String>) -> Self {
        Message {
            routing_key: routing_key.into(),
            body: Bytes::from(body.into()),
            ..Default::default()
        }
    }

    /// The size counted against frame and queue byte limits.
    /// The routing keys of its `CC` and `BCC` headers (RabbitMQ's sender-selected
    /// distribution: lists of keys it is routed with besides its routing key; text
    /// items only).
    pub fn extra_routing_keys(&self) -> Vec<String> {
        if self.headers.is_empty() {
            return Vec::new();
        }
        [CC_HEADER, BCC_HEADER]
            .iter()
            .filter_map(|name| self.headers.get(*name)?.as_array())
            .flatten()
            .filter_map(|key| key.as_str().map(str::to_owned))
            .collect()
    }

    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

/// Decodes a frame's body string with its declared encoding.
pub fn decode_body(body: String, encoding: BodyEncoding) -> Result<Bytes, base64::DecodeError> {
    match encoding {
        BodyEncoding::Utf8 => Ok(Bytes::from(body)),
        BodyEncoding::Base64 => BASE64.decode(body.as_bytes()).map(Bytes::from),
    }
}

/// The wire (and storage) shape of a message's metadata, borrowed for encoding.
#[derive(Serialize)]
struct MessageRef<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    exchange: &'a str,
    routing_key: &'a str,
    #[serde(skip_serializing_if = "Headers::is_empty")]
    headers: &'a Headers,
    properties: &'a Properties,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

/// The owned wire shape, for decoding. Unknown fields are ignored so a `publish` frame can
/// carry the message's fields inline next to its own (`mandatory`).
#[derive(Deserialize)]
struct MessageOwned {
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
}

/// On the wire a message carries its body as `body` (UTF-8 text) when the bytes are valid
/// UTF-8, otherwise as `body_base64`; exactly one of them is present.
impl Serialize for Message {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (body, body_base64) = match std::str::from_utf8(&self.body) {
            Ok(text) => (Some(text), None),
            Err(_) => (None, Some(BASE64.encode(&self.body))),
        };
        MessageRef {
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            headers: &self.headers,
            properties: &self.properties,
            body,
            body_base64,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = MessageOwned::deserialize(deserializer)?;
        let body = match (wire.body, wire.body_base64) {
            (Some(text), None) => Bytes::from(text),
            (None, Some(b64)) => BASE64
                .decode(b64.as_bytes())
                .map(Bytes::from)
                .map_err(serde::de::Error::custom)?,
            (None, None) => Bytes::new(),
            (Some(_), Some(_)) => {
                return Err(serde::de::Error::custom(
                    "a message has either `body` or `body_base64`, not both",
                ));
            }
        };
        Ok(Message {
            exchange: wire.exchange,
            routing_key: wire.routing_key,
            headers: wire.headers,
            properties: wire.properties,
            body,
        })
    }
}

/// Storage encoding: `[u32 meta length][meta JSON without body][body bytes]`, so bodies are
/// stored raw (no base64) and metadata stays readable and forward compatible.
pub fn encode_stored(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    serde_json::to_writer(
        &mut *out,
        &MessageRef {
            exchange: &msg.exchange,
            routing_key: &msg.routing_key,
            headers: &msg.headers,
            properties: &msg.properties,
            body: None,
            body_base64: None,
        },
    )
    .expect("serializing to a Vec cannot fail");
    let meta_len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(&msg.body);
}

/// What placing a stored message in its queue needs (priority, expiry, delay, size), read
/// from its storage encoding without its body or headers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Placement {
    pub priority: Option<u8>,
    pub expiration_ms: Option<u64>,
    pub delay_ms: Option<u64>,
    pub body_len: u64,
}

/// Reads a [`Placement`] from an [`encode_stored`] encoding: the other fields are skipped
/// unparsed, nothing is allocated.
pub fn decode_placement(bytes: &[u8]) -> Result<Placement, String> {
    #[derive(Deserialize)]
    struct Meta {
        #[serde(default)]
        properties: Props,
    }
    #[derive(Deserialize, Default)]
    struct Props {
        #[serde(default)]
        priority: Option<u8>,
        #[serde(default)]
        expiration_ms: Option<u64>,
        #[serde(default)]
        delay_ms: Option<u64>,
    }
    let (meta, body) = split_stored(bytes)?;
    let meta: Meta = serde_json::from_slice(meta).map_err(|e| e.to_string())?;
    Ok(Placement {
        priority: meta.properties.priority,
        expiration_ms: meta.properties.expiration_ms,
        delay_ms: meta.properties.delay_ms,
        body_len: body.len() as u64,
    })
}

/// An [`encode_stored`] encoding's metadata JSON and body.
fn split_stored(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or("stored message shorter than its header")?;
    let meta_len = u32::from_le_bytes(*len) as usize;
    if rest.len() < meta_len {
        return Err("stored message shorter than its metadata".into());
    }
    Ok(rest.split_at(meta_len))
}

/// Inverse of [`encode_stored`].
pub fn decode_stored(bytes: &[u8]) -> Result<Message, String> {
    let (meta, body) = split_stored(bytes)?;
    let wire: MessageOwned = serde_json::from_slice(meta).map_err(|e| e.to_string())?;
    Ok(Message {
        exchange: wire.exchange,
        routing_key: wire.routing_key,
        headers: wire.headers,
        properties: wire.properties,
        body: Bytes::copy_from_slice(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: &[u8]) -> Message {
        let mut headers = Headers::new();
        headers.insert("x".into(), serde_json::json!({"nested": [1, 2]}));
        Message {
            exchange: "ex".into(),
            routing_key: "a.b".into(),
            headers,
            properties: Properties {
                persistent: true,
                priority: Some(3),
                ..Default::default()
            },
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn wire_round_trip_text_and_binary() {
        for body in [&b"hello"[..], &[0xff, 0x00, 0xfe][..], &b""[..]] {
            let msg = sample(body);
            let json = serde_json::to_string(&msg).unwrap();
            assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), msg);
        }
        let json = serde_json::to_value(sample(&[0xff])).unwrap();
        assert_eq!(json["body_base64"], "/w==");
        assert!(json.get("body").is_none());
    }

    #[test]
    fn storage_round_trip() {
        let msg = sample(&[1, 2, 3, 0xff]);
        let mut buf = Vec::new();
        encode_stored(&msg, &mut buf);
        assert_eq!(decode_stored(&buf).unwrap(), msg);
        assert!(decode_stored(&buf[..3]).is_err());
        assert!(decode_stored(&buf[..10]).is_err());
    }

    #[test]
    fn placement_is_read_without_the_rest() {
        let mut msg = sample(b"four");
        msg.properties.expiration_ms = Some(500);
        msg.properties.delay_ms = Some(20);
        let mut buf = Vec::new();
        encode_stored(&msg, &mut buf);
        let want = Placement {
            priority: Some(3),
            expiration_ms: Some(500),
            delay_ms: Some(20),
            body_len: 4,
        };
        assert_eq!(decode_placement(&buf).unwrap(), want);
        buf.clear();
        encode_stored(&Message::text("k", ""), &mut buf);
        assert_eq!(decode_placement(&buf).unwrap(), Placement::default());
        assert!(decode_placement(&buf[..2]).is_err());
    }
}
