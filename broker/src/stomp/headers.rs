//! STOMP headers and the broker's messages, both ways: a SEND's headers become the
//! message's properties and application headers, a delivery becomes a MESSAGE frame.

use bytes::Bytes;

use super::frame::{Frame, ServerCommand, Version, encode};
use crate::message::{Headers, Properties};
use crate::protocol::Delivery;

/// Headers that say how a frame travels, never copied into a message.
const FRAME_HEADERS: &[&str] = &["destination", "receipt", "transaction", "content-length"];

/// Headers a MESSAGE sets itself: an application header of the same name is not sent.
const MESSAGE_HEADERS: &[&str] = &[
    "subscription",
    "message-id",
    "ack",
    "destination",
    "redelivered",
    "content-length",
    "content-type",
    "persistent",
    "priority",
    "expiration",
    "correlation-id",
    "reply-to",
    "amqp-message-id",
    "timestamp",
    "content-encoding",
    "type",
    "app-id",
    "user-id",
];

/// A SEND header with a value the broker cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("header `{name}` has the invalid value `{value}`: {expected}")]
pub struct HeaderError {
    pub name: String,
    pub value: String,
    pub expected: &'static str,
}

/// A SEND's message properties and application headers.
pub(super) fn message_of(frame: &Frame) -> Result<(Properties, Headers), HeaderError> {
    let mut properties = Properties::default();
    let mut headers = Headers::new();
    let invalid = |name: &str, value: &str, expected| HeaderError {
        name: name.to_string(),
        value: value.to_string(),
        expected,
    };
    let mut seen = std::collections::HashSet::new();
    for (name, value) in &frame.headers {
        // A repeated header's first value counts.
        if !seen.insert(name.as_str()) || FRAME_HEADERS.contains(&name.as_str()) {
            continue;
        }
        match name.as_str() {
            "content-type" => properties.content_type = Some(value.clone()),
            "persistent" => properties.persistent = value == "true",
            "priority" => {
                let priority = value
                    .parse()
                    .map_err(|_| invalid(name, value, "0 to 255"))?;
                properties.priority = Some(priority);
            }
            "expiration" => {
                let ms = value
                    .parse()
                    .map_err(|_| invalid(name, value, "milliseconds"))?;
                properties.expiration_ms = Some(ms);
            }
            "correlation-id" => properties.correlation_id = Some(value.clone()),
            "reply-to" => properties.reply_to = Some(value.clone()),
            // AMQP's properties under RabbitMQ STOMP's names (`user-id` is not taken from
            // a SEND: it would claim another user; it stays an application header).
            "content-encoding" => properties.content_encoding = Some(value.clone()),
            "type" => properties.kind = Some(value.clone()),
            "app-id" => properties.app_id = Some(value.clone()),
            "amqp-message-id" => properties.message_id = Some(value.clone()),
            "message-id" => {
                if properties.message_id.is_none() {
                    properties.message_id = Some(value.clone());
                }
            }
            _ => {
                headers.insert(name.clone(), serde_json::Value::String(value.clone()));
            }
        }
    }
    if frame.header("amqp-message-id").is_some() {
        properties.message_id = frame.header("amqp-message-id").map(str::to_string);
    }
    Ok((properties, headers))
}

/// The `ack` (and `message-id`) of a delivery: its subscription and delivery tag.
pub(super) fn ack_id(subscription: &str, delivery_tag: u64) -> String {
    format!("T_{subscription}@@{delivery_tag}")
}

/// (subscription, delivery tag) of an [`ack_id`].
pub(super) fn parse_ack_id(id: &str) -> Option<(&str, u64)> {
    let (subscription, tag) = id.strip_prefix("T_")?.rsplit_once("@@")?;
    Some((subscription, tag.parse().ok()?))
}

/// The destination a message was published to, as a STOMP client names it.
pub(super) fn destination_of(exchange: &str, routing_key: &str) -> String {
    match exchange {
        "" => format!("/queue/{routing_key}"),
        super::destinations::TOPIC_EXCHANGE => format!("/topic/{routing_key}"),
        exchange => format!("/exchange/{exchange}/{routing_key}"),
    }
}

/// A delivery as a MESSAGE frame (its names already local to the vhost).
pub(super) fn message_frame(delivery: &Delivery, version: Version) -> Bytes {
    let message = &delivery.message;
    let props = &message.properties;
    let ack = ack_id(&delivery.consumer_tag, delivery.delivery_tag);
    let destination = destination_of(&message.exchange, &message.routing_key);
    let numbers: Vec<(&str, String)> = [
        ("priority", props.priority.map(|p| p.to_string())),
        ("expiration", props.expiration_ms.map(|e| e.to_string())),
        ("timestamp", props.timestamp.map(|t| (t / 1000).to_string())),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
    .collect();
    let custom: Vec<(&str, String)> = message
        .headers
        .iter()
        .filter(|(name, _)| !MESSAGE_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| {
            let text = match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (name.as_str(), text)
        })
        .collect();
    let mut headers: Vec<(&str, &str)> = vec![
        ("subscription", &delivery.consumer_tag),
        ("destination", &destination),
        ("message-id", &ack),
        (
            "redelivered",
            if delivery.redelivered {
                "true"
            } else {
                "false"
            },
        ),
    ];
    if version == Version::V1_2 {
        headers.push(("ack", &ack));
    }
    if props.persistent {
        headers.push(("persistent", "true"));
    }
    let optional = [
        ("content-type", &props.content_type),
        ("correlation-id", &props.correlation_id),
        ("reply-to", &props.reply_to),
        ("amqp-message-id", &props.message_id),
        ("content-encoding", &props.content_encoding),
        ("type", &props.kind),
        ("app-id", &props.app_id),
        ("user-id", &props.user_id),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            headers.push((name, value));
        }
    }
    headers.extend(numbers.iter().map(|(n, v)| (*n, v.as_str())));
    headers.extend(custom.iter().map(|(n, v)| (*n, v.as_str())));
    encode(ServerCommand::Message, &headers, &message.body, version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stomp::frame::ClientCommand;

    fn send(headers: &[(&str, &str)]) -> Frame {
        Frame {
            command: ClientCommand::Send,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Bytes::new(),
        }
    }

    #[test]
    fn send_headers_become_properties_and_headers() {
        let frame = send(&[
            ("destination", "/queue/a"),
            ("persistent", "true"),
            ("priority", "7"),
            ("expiration", "5000"),
            ("correlation-id", "c1"),
            ("message-id", "m1"),
            ("x-custom", "v"),
            ("x-custom", "ignored"),
        ]);
        let (props, headers) = message_of(&frame).unwrap();
        assert!(props.persistent);
        assert_eq!(props.priority, Some(7));
        assert_eq!(props.expiration_ms, Some(5000));
        assert_eq!(props.correlation_id.as_deref(), Some("c1"));
        assert_eq!(props.message_id.as_deref(), Some("m1"));
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-custom"], "v");
        let err = message_of(&send(&[("priority", "high")])).unwrap_err();
        assert_eq!(err.name, "priority");
    }

    #[test]
    fn ack_ids_carry_the_subscription() {
        assert_eq!(parse_ack_id(&ack_id("sub@@1", 42)), Some(("sub@@1", 42)));
        assert_eq!(parse_ack_id("42"), None);
    }
}
