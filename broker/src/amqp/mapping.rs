//! AMQP's data ↔ the core's: field tables ↔ JSON headers, basic properties ↔
//! [`Properties`], `x-` queue arguments ↔ queue policy arguments, and RabbitMQ's
//! `x-death` shape on the way out.
//!
//! Field values map to their natural JSON form. The values JSON has no form for travel as
//! one-key tagged objects, so they come back to AMQP clients with their type:
//! `{"$bytes": base64}` (byte arrays, and long strings that are not UTF-8),
//! `{"$timestamp": seconds}`, `{"$decimal": {"scale": s, "value": v}}`. What does not
//! round-trip exactly is said in docs/amqp.md: integer widths (every integer comes back as a
//! signed 64-bit `l`), `f` floats (come back as `d`). Short strings (`s`) cannot be sent
//! in a table at all: like RabbitMQ, `amq-protocol` reads `s` as a 16-bit integer.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Number, Value, json};

use super::errors::{AmqpError, code};
use crate::message::{Headers, Message, Properties};
use crate::queue::rabbitmq_arguments;
use crate::router::DEATH_HEADER;

const BYTES_TAG: &str = "$bytes";
const TIMESTAMP_TAG: &str = "$timestamp";
const DECIMAL_TAG: &str = "$decimal";

/// A field table as JSON headers.
pub fn table_to_json(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), value_to_json(v)))
        .collect()
}

/// JSON headers as a field table.
pub fn json_to_table(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(k.as_str().into(), json_to_value(v));
    }
    table
}

fn tagged(tag: &str, value: Value) -> Value {
    let mut map = Map::new();
    map.insert(tag.into(), value);
    Value::Object(map)
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

pub fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => {
            tagged(DECIMAL_TAG, json!({"scale": d.scale, "value": d.value}))
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Value::String(text.to_string()),
            Err(_) => tagged(BYTES_TAG, Value::String(BASE64.encode(s.as_bytes()))),
        },
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(value_to_json).collect())
        }
        AMQPValue::Timestamp(t) => tagged(TIMESTAMP_TAG, json!(t)),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::ByteArray(b) => tagged(BYTES_TAG, Value::String(BASE64.encode(b.as_slice()))),
        AMQPValue::Void => Value::Null,
    }
}

pub fn json_to_value(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(json_to_value).collect::<Vec<_>>(),
        )),
        Value::Object(map) => {
            tagged_value(map).unwrap_or_else(|| AMQPValue::FieldTable(json_to_table(map)))
        }
    }
}

/// The AMQP value of a one-key tagged object (see the module's documentation).
fn tagged_value(map: &Map<String, Value>) -> Option<AMQPValue> {
    if map.len() != 1 {
        return None;
    }
    let (tag, inner) = map.iter().next()?;
    match tag.as_str() {
        BYTES_TAG => {
            let bytes = BASE64.decode(inner.as_str()?).ok()?;
            Some(AMQPValue::ByteArray(ByteArray::from(bytes)))
        }
        TIMESTAMP_TAG => Some(AMQPValue::Timestamp(inner.as_u64()?)),
        DECIMAL_TAG => Some(AMQPValue::DecimalValue(DecimalValue {
            scale: u8::try_from(inner.get("scale")?.as_u64()?).ok()?,
            value: u32::try_from(inner.get("value")?.as_u64()?).ok()?,
        })),
        _ => None,
    }
}

/// A published message from its `basic.publish` and content header. `user` is who the
/// connection logged in as: a `user-id` property must name it (as RabbitMQ checks).
pub fn message_from_amqp(
    exchange: &str,
    routing_key: &str,
    props: &BasicProperties,
    body: bytes::Bytes,
    user: &str,
) -> Result<Message, AmqpError> {
    let text =
        |s: &Option<amq_protocol::types::ShortString>| s.as_ref().map(|s| s.as_str().to_string());
    let expiration_ms = match props.expiration() {
        None => None,
        Some(e) => Some(e.as_str().parse::<u64>().map_err(|_| {
            AmqpError::channel(
                code::PRECONDITION_FAILED,
                "PRECONDITION_FAILED",
                format_args!(
                    "invalid expiration `{}`: not a number of milliseconds",
                    e.as_str()
                ),
            )
        })?),
    };
    if let Some(claimed) = props.user_id()
        && claimed.as_str() != user
    {
        return Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            "PRECONDITION_FAILED",
            format_args!(
                "user_id property set to `{}` but authenticated user was `{user}`",
                claimed.as_str()
            ),
        ));
    }
    let properties = Properties {
        persistent: *props.delivery_mode() == Some(2),
        message_id: text(props.message_id()),
        correlation_id: text(props.correlation_id()),
        reply_to: text(props.reply_to()),
        content_type: text(props.content_type()),
        priority: *props.priority(),
        expiration_ms,
        // AMQP timestamps are seconds; ours milliseconds.
        timestamp: props.timestamp().map(|s| s.saturating_mul(1000)),
        delay_ms: None,
        content_encoding: text(props.content_encoding()),
        kind: text(props.kind()),
        user_id: text(props.user_id()),
        app_id: text(props.app_id()),
        cluster_id: text(props.cluster_id()),
    };
    Ok(Message {
        exchange: exchange.to_string(),
        routing_key: routing_key.to_string(),
        headers: props
            .headers()
            .as_ref()
            .map(table_to_json)
            .unwrap_or_default(),
        properties,
        body,
    })
}

/// The basic properties of a message delivered or returned to an AMQP client.
pub fn properties_to_amqp(message: &Message) -> BasicProperties {
    let p = &message.properties;
    let mut props = BasicProperties::default();
    let short = |s: &str| amq_protocol::types::ShortString::from(s.to_string());
    if let Some(v) = &p.content_type {
        props = props.with_content_type(short(v));
    }
    if let Some(v) = &p.content_encoding {
        props = props.with_content_encoding(short(v));
    }
    if !message.headers.is_empty() {
        props = props.with_headers(json_to_table(&rabbitmq_death_records(&message.headers)));
    }
    if p.persistent {
        props = props.with_delivery_mode(2);
    }
    if let Some(v) = p.priority {
        props = props.with_priority(v);
    }
    if let Some(v) = &p.correlation_id {
        props = props.with_correlation_id(short(v));
    }
    if let Some(v) = &p.reply_to {
        props = props.with_reply_to(short(v));
    }
    if let Some(v) = p.expiration_ms {
        props = props.with_expiration(short(&v.to_string()));
    }
    if let Some(v) = &p.message_id {
        props = props.with_message_id(short(v));
    }
    if let Some(v) = p.timestamp {
        props = props.with_timestamp(v / 1000);
    }
    if let Some(v) = &p.kind {
        props = props.with_type(short(v));
    }
    if let Some(v) = &p.user_id {
        props = props.with_user_id(short(v));
    }
    if let Some(v) = &p.app_id {
        props = props.with_app_id(short(v));
    }
    if let Some(v) = &p.cluster_id {
        props = props.with_cluster_id(short(v));
    }
    props
}

/// Headers with the core's death records (`x-death`) in RabbitMQ's shape: `count`,
/// `reason` (`rejected`, `expired`, `maxlen`, `delivery_limit`), `queue`, `exchange`,
/// `routing-keys`, `time` (a timestamp in seconds) and `original-expiration`.
fn rabbitmq_death_records(headers: &Headers) -> std::borrow::Cow<'_, Headers> {
    let Some(Value::Array(records)) = headers.get(DEATH_HEADER) else {
        return std::borrow::Cow::Borrowed(headers);
    };
    let converted = records
        .iter()
        .map(|r| {
            let reason = match r["reason"].as_str() {
                Some("max_length") => "maxlen",
                Some(other) => other,
                None => "rejected",
            };
            let mut record = json!({
                "count": r["count"],
                "reason": reason,
                "queue": r["queue"],
                "exchange": r["exchange"],
                "routing-keys": [r["routing_key"]],
                "time": tagged(TIMESTAMP_TAG, json!(r["time"].as_u64().unwrap_or(0) / 1000)),
            });
            if let Some(ms) = r.get("original_expiration_ms") {
                record["original-expiration"] = Value::String(ms.to_string());
            }
            record
        })
        .collect();
    let mut headers = headers.clone();
    headers.insert(DEATH_HEADER.into(), Value::Array(converted));
    std::borrow::Cow::Owned(headers)
}

/// `exchange.declare`'s type and arguments as the core's (see
/// [`crate::exchange::rabbitmq_arguments`]).
pub fn exchange_declaration(
    kind: &str,
    table: &FieldTable,
) -> Result<(String, Headers), AmqpError> {
    crate::exchange::rabbitmq_arguments::exchange_declaration(kind, table_to_json(table))
        .map_err(|text| AmqpError::channel(code::PRECONDITION_FAILED, "PRECONDITION_FAILED", text))
}

/// A consumer's priority from `basic.consume`'s `x-priority` (0 without it); its other
/// arguments are ignored.
pub fn consumer_priority(table: &FieldTable) -> Result<i32, AmqpError> {
    let Some(value) = table.inner().get("x-priority") else {
        return Ok(0);
    };
    value_to_json(value)
        .as_i64()
        .and_then(|n| i32::try_from(n).ok())
        .ok_or_else(|| {
            AmqpError::channel(
                code::PRECONDITION_FAILED,
                "PRECONDITION_FAILED",
                format!("invalid arg 'x-priority': {value:?} is not an integer"),
            )
        })
}

/// A consumer's `x-consumer-timeout` argument (milliseconds, positive), as RabbitMQ reads
/// it: its deliveries may stay unacked this long, whatever the queue's or the broker's
/// timeout.
pub fn consumer_timeout(table: &FieldTable) -> Result<Option<u64>, AmqpError> {
    let Some(value) = table.inner().get("x-consumer-timeout") else {
        return Ok(None);
    };
    match value_to_json(value).as_u64().filter(|ms| *ms > 0) {
        Some(ms) => Ok(Some(ms)),
        None => Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            "PRECONDITION_FAILED",
            format!("invalid arg 'x-consumer-timeout': {value:?} is not a positive integer"),
        )),
    }
}

/// `queue.declare` arguments as core queue arguments: RabbitMQ's `x-` arguments become the
/// policy's names (`queue/rabbitmq_arguments.rs`), and dead letters are dropped unless a
/// dead-letter exchange is named, as in RabbitMQ.
pub fn queue_arguments(table: &FieldTable) -> Result<Headers, AmqpError> {
    let refuse =
        |text: String| AmqpError::channel(code::PRECONDITION_FAILED, "PRECONDITION_FAILED", text);
    let arguments = table
        .inner()
        .iter()
        .map(|(key, value)| (key.as_str(), value_to_json(value)));
    let mut core = rabbitmq_arguments::core_arguments(arguments).map_err(refuse)?;
    rabbitmq_arguments::drop_dead_letters_by_default(&mut core).map_err(refuse)?;
    Ok(core)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_type_maps_and_the_json_ones_round_trip() {
        let mut inner = FieldTable::default();
        inner.insert("deep".into(), AMQPValue::Boolean(true));
        let values = [
            AMQPValue::Boolean(false),
            AMQPValue::LongLongInt(-5),
            AMQPValue::Double(1.5),
            AMQPValue::LongString("text".into()),
            AMQPValue::LongString(vec![0xff, 0].into()),
            AMQPValue::FieldArray(vec![AMQPValue::LongLongInt(1), AMQPValue::Void].into()),
            AMQPValue::FieldTable(inner),
            AMQPValue::Timestamp(1_700_000_000),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345,
            }),
            AMQPValue::ByteArray(vec![1, 2, 3].into()),
            AMQPValue::Void,
        ];
        for value in values {
            let back = json_to_value(&value_to_json(&value));
            let expected = match &value {
                // Not UTF-8: travels as bytes.
                AMQPValue::LongString(s) if std::str::from_utf8(s.as_bytes()).is_err() => {
                    AMQPValue::ByteArray(s.as_bytes().to_vec().into())
                }
                other => other.clone(),
            };
            assert_eq!(back, expected, "{value:?}");
        }
        // Widths: the value survives, the type becomes `l`.
        assert_eq!(
            json_to_value(&value_to_json(&AMQPValue::ShortInt(-3))),
            AMQPValue::LongLongInt(-3)
        );
        assert_eq!(
            json_to_value(&value_to_json(&AMQPValue::LongUInt(7))),
            AMQPValue::LongLongInt(7)
        );
    }

    #[test]
    fn x_arguments_become_policy_arguments() {
        let mut table = FieldTable::default();
        table.insert("x-message-ttl".into(), AMQPValue::LongInt(500));
        table.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        table.insert("x-delivery-limit".into(), AMQPValue::LongInt(2));
        table.insert("x-expires".into(), AMQPValue::LongInt(60_000));
        table.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        table.insert("custom".into(), AMQPValue::LongString("kept".into()));
        let args = queue_arguments(&table).unwrap();
        assert_eq!(
            Value::Object(args),
            json!({"message_ttl": 500, "overflow": "reject_publish", "max_deliveries": 3,
                   "expires": 60_000, "custom": "kept", "dead_letter": false})
        );
        table.insert("x-message-ttl".into(), AMQPValue::LongString("soon".into()));
        assert_eq!(queue_arguments(&table).unwrap_err().code(), 406);
        table.insert("x-message-ttl".into(), AMQPValue::LongInt(500));
        table.insert("x-expires".into(), AMQPValue::LongInt(0));
        assert_eq!(queue_arguments(&table).unwrap_err().code(), 406);
    }
}
