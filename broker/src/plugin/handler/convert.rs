//! Message fields to and from the handler world's WIT types (`handler-types`, separate
//! from the exchange world's types in the v1 ABI, hence separate from `plugin::convert`).

use serde_json::Value as Json;

use super::wit;
use crate::message::{Headers, Properties};

pub(super) fn to_wit_value(json: &Json) -> wit::Value {
    match json {
        Json::Null => wit::Value::Null,
        Json::Bool(b) => wit::Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => wit::Value::Integer(i),
            None if n.is_u64() => wit::Value::Json(n.to_string()),
            None => n
                .as_f64()
                .map_or_else(|| wit::Value::Json(n.to_string()), wit::Value::Float),
        },
        Json::String(s) => wit::Value::Text(s.clone()),
        Json::Array(_) | Json::Object(_) => wit::Value::Json(json.to_string()),
    }
}

pub(super) fn from_wit_value(value: wit::Value) -> Json {
    match value {
        wit::Value::Null => Json::Null,
        wit::Value::Boolean(b) => Json::Bool(b),
        wit::Value::Integer(i) => Json::from(i),
        wit::Value::Float(f) => Json::from(f),
        wit::Value::Text(s) => Json::String(s),
        // Text that is not JSON stays text rather than failing the whole call.
        wit::Value::Json(s) => serde_json::from_str(&s).unwrap_or(Json::String(s)),
    }
}

pub(super) fn to_wit_headers(headers: &Headers) -> Vec<wit::Header> {
    headers
        .iter()
        .map(|(name, v)| wit::Header {
            name: name.clone(),
            value: to_wit_value(v),
        })
        .collect()
}

pub(super) fn from_wit_headers(headers: Vec<wit::Header>) -> Headers {
    headers
        .into_iter()
        .map(|h| (h.name, from_wit_value(h.value)))
        .collect()
}

pub(super) fn to_wit_properties(p: &Properties) -> wit::Properties {
    wit::Properties {
        persistent: p.persistent,
        message_id: p.message_id.clone(),
        correlation_id: p.correlation_id.clone(),
        reply_to: p.reply_to.clone(),
        content_type: p.content_type.clone(),
        priority: p.priority,
        expiration_ms: p.expiration_ms,
        timestamp: p.timestamp,
    }
}

pub(super) fn from_wit_properties(p: wit::Properties) -> Properties {
    Properties {
        persistent: p.persistent,
        message_id: p.message_id,
        correlation_id: p.correlation_id,
        reply_to: p.reply_to,
        content_type: p.content_type,
        priority: p.priority,
        expiration_ms: p.expiration_ms,
        timestamp: p.timestamp,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_values_round_trip() {
        let mut headers = Headers::new();
        for (k, v) in [
            ("n", json!(null)),
            ("b", json!(true)),
            ("i", json!(-3)),
            ("f", json!(1.5)),
            ("s", json!("x")),
            ("big", json!(u64::MAX)),
            ("obj", json!({"a": [1, 2]})),
        ] {
            headers.insert(k.into(), v);
        }
        assert_eq!(from_wit_headers(to_wit_headers(&headers)), headers);
    }
}
