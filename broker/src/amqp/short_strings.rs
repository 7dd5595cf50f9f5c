//! Making a message from another protocol fit AMQP 0-9-1's short strings (at most 255
//! bytes) before it is written to an AMQP client: the JSON, STOMP and HTTP front ends
//! allow longer routing keys, properties and header names, and writing one as a short
//! string would corrupt the frame.
//!
//! - A property that does not fit travels as a header of the same name with an `x-`
//!   prefix (`x-correlation-id`, `x-message-id`, ...), a long string, as RabbitMQ 4 does
//!   when it converts AMQP 1.0 ids longer than 255 bytes.
//! - A routing key that does not fit is cut at 255 bytes (at a character boundary) in
//!   `basic.deliver` / `get-ok` / `return`, and travels whole as header `x-routing-key`.
//! - A header name that does not fit cannot be written at all: it is left out, and the
//!   names left out are listed in header `x-dropped-headers`.

use crate::message::{Headers, Message};

const SHORT_MAX: usize = 255;

/// `message` adjusted as above, or `None` when it fits as it is (nearly always).
pub fn fit_for_amqp(message: &Message) -> Option<Message> {
    let p = &message.properties;
    let long = |v: &Option<String>| v.as_ref().is_some_and(|s| s.len() > SHORT_MAX);
    let fits = message.routing_key.len() <= SHORT_MAX
        && !long(&p.content_type)
        && !long(&p.content_encoding)
        && !long(&p.correlation_id)
        && !long(&p.reply_to)
        && !long(&p.message_id)
        && !long(&p.kind)
        && !long(&p.user_id)
        && !long(&p.app_id)
        && !long(&p.cluster_id)
        && headers_fit(&message.headers);
    if fits {
        return None;
    }
    let mut fitted = message.clone();
    let mut dropped = Vec::new();
    fitted.headers = fit_headers(&message.headers, &mut dropped);
    if !dropped.is_empty() {
        fitted
            .headers
            .insert("x-dropped-headers".into(), dropped.into());
    }
    if message.routing_key.len() > SHORT_MAX {
        fitted
            .headers
            .insert("x-routing-key".into(), message.routing_key.clone().into());
        fitted.routing_key = cut(&message.routing_key).to_owned();
    }
    let props = &mut fitted.properties;
    let headers = &mut fitted.headers;
    for (name, value) in [
        ("x-content-type", &mut props.content_type),
        ("x-content-encoding", &mut props.content_encoding),
        ("x-correlation-id", &mut props.correlation_id),
        ("x-reply-to", &mut props.reply_to),
        ("x-message-id", &mut props.message_id),
        ("x-type", &mut props.kind),
        ("x-user-id", &mut props.user_id),
        ("x-app-id", &mut props.app_id),
        ("x-cluster-id", &mut props.cluster_id),
    ] {
        if value.as_ref().is_some_and(|s| s.len() > SHORT_MAX) {
            headers.insert(name.into(), value.take().expect("checked").into());
        }
    }
    Some(fitted)
}

fn headers_fit(headers: &Headers) -> bool {
    headers.iter().all(|(name, value)| {
        name.len() <= SHORT_MAX
            && match value {
                serde_json::Value::Object(map) => headers_fit(map),
                _ => true,
            }
    })
}

/// `headers` without the names that do not fit (nested tables too); those are added to
/// `dropped`.
fn fit_headers(headers: &Headers, dropped: &mut Vec<serde_json::Value>) -> Headers {
    let mut fitted = Headers::new();
    for (name, value) in headers {
        if name.len() > SHORT_MAX {
            dropped.push(cut(name).into());
            continue;
        }
        let value = match value {
            serde_json::Value::Object(map) => serde_json::Value::Object(fit_headers(map, dropped)),
            other => other.clone(),
        };
        fitted.insert(name.clone(), value);
    }
    fitted
}

/// `s`'s longest prefix of at most 255 bytes that ends at a character boundary.
fn cut(s: &str) -> &str {
    let mut end = SHORT_MAX.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::mapping::properties_to_amqp;
    use serde_json::json;

    #[test]
    fn a_message_that_fits_is_left_alone() {
        let mut m = Message::text("key", "body");
        m.properties.correlation_id = Some("c".repeat(255));
        m.headers.insert("h".repeat(255), json!(1));
        assert!(fit_for_amqp(&m).is_none());
    }

    #[test]
    fn long_properties_routing_keys_and_header_names_are_carried_or_listed() {
        let key = format!("{}é", "k".repeat(254)); // 256 bytes, 'é' across byte 255
        let mut m = Message::text(&key, "body");
        m.properties.correlation_id = Some("c".repeat(300));
        m.properties.message_id = Some("short".into());
        m.headers.insert("n".repeat(256), json!(1));
        m.headers
            .insert("nested".into(), json!({ "o".repeat(300): 2, "ok": 3 }));
        let fitted = fit_for_amqp(&m).expect("does not fit");
        assert_eq!(fitted.routing_key, "k".repeat(254));
        assert_eq!(fitted.headers["x-routing-key"], json!(key));
        assert_eq!(fitted.properties.correlation_id, None);
        assert_eq!(fitted.headers["x-correlation-id"], json!("c".repeat(300)));
        assert_eq!(fitted.properties.message_id.as_deref(), Some("short"));
        assert_eq!(fitted.headers["nested"], json!({ "ok": 3 }));
        assert_eq!(
            fitted.headers["x-dropped-headers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert!(fit_for_amqp(&fitted).is_none(), "fits after one pass");
        // And it encodes: every short string within bounds.
        let props = properties_to_amqp(&fitted);
        assert!(props.correlation_id().is_none());
    }
}
