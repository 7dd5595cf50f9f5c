//! Broker types -> the plugin ABI's types.

use serde_json::Value as Json;

use super::bindings::wit;
use super::loader::Capabilities;
use crate::message::{Headers, Message, Properties};

pub fn value(json: &Json) -> wit::Value {
    match json {
        Json::Null => wit::Value::Null,
        Json::Bool(b) => wit::Value::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => wit::Value::Integer(i),
            // u64 above i64::MAX would lose precision as a float.
            (None, _) if n.is_u64() => wit::Value::Json(n.to_string()),
            (None, Some(f)) => wit::Value::Float(f),
            (None, None) => wit::Value::Json(n.to_string()),
        },
        Json::String(s) => wit::Value::Text(s.clone()),
        Json::Array(_) | Json::Object(_) => wit::Value::Json(json.to_string()),
    }
}

pub fn headers(headers: &Headers) -> Vec<wit::Header> {
    headers
        .iter()
        .map(|(name, v)| wit::Header {
            name: name.clone(),
            value: value(v),
        })
        .collect()
}

fn properties(p: &Properties) -> wit::Properties {
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

/// The plugin's view of `msg`: headers only for plugins that read them; for key-only
/// plugins the routing key alone (no headers, default properties, body size 0), so their
/// results, cached by routing key, cannot depend on anything else.
pub fn message(msg: &Message, capabilities: Capabilities) -> wit::Message {
    if capabilities.key_only {
        return wit::Message {
            routing_key: msg.routing_key.clone(),
            headers: Vec::new(),
            properties: properties(&Properties::default()),
            body_size: 0,
        };
    }
    wit::Message {
        routing_key: msg.routing_key.clone(),
        headers: if capabilities.reads_headers {
            headers(&msg.headers)
        } else {
            Vec::new()
        },
        properties: properties(&msg.properties),
        body_size: msg.body.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A key-only plugin sees the routing key alone: what it returns is cached by key.
    #[test]
    fn key_only_view_is_the_routing_key_alone() {
        let mut msg = Message::text("k", "body");
        msg.headers.insert("h".into(), json!(1));
        msg.properties.content_type = Some("text/plain".into());
        let caps = |key_only, reads_headers, reads_body| Capabilities {
            key_only,
            reads_headers,
            reads_body,
        };
        let view = message(&msg, caps(true, false, false));
        assert_eq!(view.routing_key, "k");
        assert!(view.headers.is_empty());
        assert_eq!(view.properties.content_type, None);
        assert_eq!(view.body_size, 0);
        let view = message(&msg, caps(false, true, true));
        assert_eq!(view.headers.len(), 1);
        assert_eq!(view.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(view.body_size, 4);
        assert!(message(&msg, caps(false, false, true)).headers.is_empty());
    }

    #[test]
    fn json_values_map_to_abi_values() {
        assert_eq!(value(&json!(null)), wit::Value::Null);
        assert_eq!(value(&json!(true)), wit::Value::Boolean(true));
        assert_eq!(value(&json!(-3)), wit::Value::Integer(-3));
        assert_eq!(value(&json!(1.5)), wit::Value::Float(1.5));
        assert_eq!(
            value(&json!(u64::MAX)),
            wit::Value::Json(u64::MAX.to_string())
        );
        assert_eq!(value(&json!("s")), wit::Value::Text("s".into()));
        assert_eq!(
            value(&json!([1, {"a": 2}])),
            wit::Value::Json(r#"[1,{"a":2}]"#.into())
        );
    }
}
