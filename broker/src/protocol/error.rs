//! Stable error codes and the parsing of request frames into them.

use serde::{Deserialize, Serialize};

use super::{Request, RequestId};

/// A stable, machine-readable error code; the frame's `message` is for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON (or not a JSON object).
    MalformedJson,
    /// `op` names no operation.
    UnknownOp,
    /// A field is missing, of the wrong type, or out of range.
    InvalidField,
    /// The frame exceeds the broker's frame size limit.
    FrameTooLarge,
    /// A binary frame where the protocol expects text.
    UnsupportedFrame,
    /// A binary record (negotiated binary encoding) that cannot be read: truncated, of an
    /// unknown kind, or with lengths that do not add up.
    MalformedBinary,
    QueueNotFound,
    ExchangeNotFound,
    UnknownExchangeType,
    /// Redeclared with different properties, or `if_unused` / `if_empty` not met.
    PreconditionFailed,
    /// The queue is exclusive to another connection.
    ResourceLocked,
    /// The operation is not allowed on this object (e.g. deleting the default exchange).
    AccessRefused,
    /// `ack` / `nack` / `reject` of a tag this connection does not hold.
    UnknownDeliveryTag,
    UnknownConsumer,
    ConsumerTagInUse,
    /// The exchange refused the binding (e.g. a malformed pattern).
    InvalidBinding,
    /// A `mandatory` message reached no queue (the reason of a `return`).
    Unroutable,
    /// The exchange's plugin is quarantined after repeated failures.
    ExchangeUnavailable,
    /// The exchange's plugin failed while routing this message.
    PluginError,
    /// The store could not commit: the operation is not durable.
    StoreError,
    /// `deploy_plugin` refused the module (not a component, wrong ABI, failed validation...).
    InvalidPlugin,
    /// A queue with `overflow: reject_publish` is full: the negative confirm of a publish.
    QueueFull,
    /// No plugin (or plugin version) of that name.
    PluginNotFound,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        ALL_CODES
            .iter()
            .find(|(code, _)| *code == self)
            .map(|(_, name)| *name)
            .expect("every code is listed in ALL_CODES")
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const ALL_CODES: &[(ErrorCode, &str)] = &[
    (ErrorCode::MalformedJson, "malformed_json"),
    (ErrorCode::UnknownOp, "unknown_op"),
    (ErrorCode::InvalidField, "invalid_field"),
    (ErrorCode::FrameTooLarge, "frame_too_large"),
    (ErrorCode::UnsupportedFrame, "unsupported_frame"),
    (ErrorCode::MalformedBinary, "malformed_binary"),
    (ErrorCode::QueueNotFound, "queue_not_found"),
    (ErrorCode::ExchangeNotFound, "exchange_not_found"),
    (ErrorCode::UnknownExchangeType, "unknown_exchange_type"),
    (ErrorCode::PreconditionFailed, "precondition_failed"),
    (ErrorCode::ResourceLocked, "resource_locked"),
    (ErrorCode::AccessRefused, "access_refused"),
    (ErrorCode::UnknownDeliveryTag, "unknown_delivery_tag"),
    (ErrorCode::UnknownConsumer, "unknown_consumer"),
    (ErrorCode::ConsumerTagInUse, "consumer_tag_in_use"),
    (ErrorCode::InvalidBinding, "invalid_binding"),
    (ErrorCode::Unroutable, "unroutable"),
    (ErrorCode::ExchangeUnavailable, "exchange_unavailable"),
    (ErrorCode::PluginError, "plugin_error"),
    (ErrorCode::StoreError, "store_error"),
    (ErrorCode::QueueFull, "queue_full"),
    (ErrorCode::InvalidPlugin, "invalid_plugin"),
    (ErrorCode::PluginNotFound, "plugin_not_found"),
];

/// The operation names of [`super::Op`], to tell an unknown `op` from a bad field.
const OP_NAMES: &[&str] = &[
    "confirm_select",
    "declare_queue",
    "delete_queue",
    "purge_queue",
    "queue_info",
    "list_queues",
    "declare_exchange",
    "delete_exchange",
    "bind",
    "unbind",
    "publish",
    "subscribe",
    "cancel",
    "ack",
    "nack",
    "reject",
    "peek_queue",
    "requeue_dead_letters",
    "deploy_plugin",
    "rollback_plugin",
    "reset_plugin",
    "list_plugins",
    "plugin_history",
    "list_exchanges",
    "list_bindings",
    "list_connections",
    "attach_handler",
    "detach_handler",
    "list_handlers",
];

/// A request frame that could not be parsed: the id when one could be read, the code, why.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub id: Option<RequestId>,
    pub code: ErrorCode,
    pub message: String,
}

/// Parses a text frame; on failure says as precisely as it can what was wrong, echoing
/// the request id whenever the frame had a readable one.
pub fn parse_request(text: &str) -> Result<Request, ParseError> {
    if let Some(request) = super::hot::parse_hot_request(text) {
        return Ok(request);
    }
    let err = match serde_json::from_str::<Request>(text) {
        Ok(request) => return Ok(request),
        Err(err) => err,
    };
    let fail = |id, code, message: String| ParseError { id, code, message };
    // Only the error path pays for a second, looser parse.
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return Err(fail(None, ErrorCode::MalformedJson, e.to_string())),
    };
    let Some(object) = value.as_object() else {
        return Err(fail(
            None,
            ErrorCode::MalformedJson,
            "a frame must be a JSON object".into(),
        ));
    };
    let id = match object.get("id") {
        None => {
            return Err(fail(
                None,
                ErrorCode::InvalidField,
                "missing field `id`".into(),
            ));
        }
        Some(raw) => match serde_json::from_value::<RequestId>(raw.clone()) {
            Ok(id) => Some(id),
            Err(_) => {
                let message = "`id` must be a non-negative integer or a string".into();
                return Err(fail(None, ErrorCode::InvalidField, message));
            }
        },
    };
    match object.get("op") {
        None => Err(fail(
            id,
            ErrorCode::InvalidField,
            "missing field `op`".into(),
        )),
        Some(serde_json::Value::String(op)) if !OP_NAMES.contains(&op.as_str()) => Err(fail(
            id,
            ErrorCode::UnknownOp,
            format!("unknown operation `{op}`"),
        )),
        Some(serde_json::Value::String(_)) => {
            Err(fail(id, ErrorCode::InvalidField, err.to_string()))
        }
        Some(_) => Err(fail(
            id,
            ErrorCode::InvalidField,
            "`op` must be a string".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> (Option<RequestId>, ErrorCode) {
        let e = parse_request(text).unwrap_err();
        (e.id, e.code)
    }

    #[test]
    fn classifies_bad_frames() {
        assert_eq!(code_of("{not json"), (None, ErrorCode::MalformedJson));
        assert_eq!(code_of("[1,2]"), (None, ErrorCode::MalformedJson));
        assert_eq!(code_of(r#"{"op":"ack"}"#), (None, ErrorCode::InvalidField));
        assert_eq!(
            code_of(r#"{"id":-1,"op":"ack"}"#),
            (None, ErrorCode::InvalidField)
        );
        assert_eq!(
            code_of(r#"{"id":1}"#),
            (Some(1.into()), ErrorCode::InvalidField)
        );
        assert_eq!(
            code_of(r#"{"id":1,"op":"fly"}"#),
            (Some(1.into()), ErrorCode::UnknownOp)
        );
        assert_eq!(
            code_of(r#"{"id":1,"op":7}"#),
            (Some(1.into()), ErrorCode::InvalidField)
        );
        assert_eq!(
            code_of(r#"{"id":"x","op":"ack","delivery_tag":"seven"}"#),
            (Some(RequestId::Str("x".into())), ErrorCode::InvalidField)
        );
        assert_eq!(
            code_of(r#"{"id":2,"op":"declare_queue"}"#),
            (Some(2.into()), ErrorCode::InvalidField)
        );
    }

    #[test]
    fn every_op_name_is_a_real_operation() {
        for name in OP_NAMES {
            let frame = format!(r#"{{"id":1,"op":"{name}","delivery_tag":"bad"}}"#);
            if let Err(e) = parse_request(&frame) {
                assert_eq!(e.code, ErrorCode::InvalidField, "{name}");
            }
        }
    }

    #[test]
    fn codes_have_stable_names() {
        for (code, name) in ALL_CODES {
            assert_eq!(serde_json::to_value(code).unwrap(), *name);
            assert_eq!(code.as_str(), *name);
        }
    }

    #[test]
    fn publish_parses_inline_message() {
        let req = parse_request(
            r#"{"id":9,"op":"publish","routing_key":"q","body":"hi","mandatory":true,
                "properties":{"persistent":true}}"#,
        )
        .unwrap();
        let super::super::Op::Publish(p) = req.op else {
            panic!()
        };
        assert!(p.mandatory);
        assert_eq!(&p.message.body[..], b"hi");
        assert!(p.message.properties.persistent);
    }
}
