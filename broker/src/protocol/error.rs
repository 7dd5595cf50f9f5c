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
    /// No user of that name.
    UserNotFound,
    /// No virtual host of that name.
    VhostNotFound,
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
    (ErrorCode::UserNotFound, "user_not_found"),
    (ErrorCode::VhostNotFound, "vhost_not_found"),
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
    "bind_exchange",
    "unbind_exchange",
    "publish",
    "subscribe",
    "cancel",
    "get",
    "ack",
    "nack",
    "reject",
    "peek_queue",
    "requeue_dead_letters",
    "deploy_plugin",
    "rollback_plugin",
    "promote_plugin",
    "plugin_shadow",
    "reset_plugin",
    "prune_plugin",
    "list_plugins",
    "plugin_history",
    "plugin_logs",
    "list_exchanges",
    "list_bindings",
    "list_connections",
    "attach_handler",
    "detach_handler",
    "list_handlers",
    "add_vhost",
    "delete_vhost",
    "list_vhosts",
    "set_permissions",
    "clear_permissions",
    "list_permissions",
    "authenticate",
    "add_user",
    "delete_user",
    "change_password",
    "list_users",
    "set_user_limits",
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
    // serde reads an internally tagged enum's tag as a variant *index* when it is an
    // integer (`"op":5` would be `list_queues`): only a string names an operation.
    let err = match serde_json::from_str::<Request>(text) {
        Ok(request) if op_is_a_string(text) => return Ok(request),
        Ok(_) => None,
        Err(err) => Some(err),
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
            let err = err.map_or_else(|| "invalid request".to_owned(), |e| e.to_string());
            let message = match bad_field(&value) {
                Some(field) => format!("`{field}`: {err}"),
                None => err,
            };
            Err(fail(id, ErrorCode::InvalidField, message))
        }
        Some(_) => Err(fail(
            id,
            ErrorCode::InvalidField,
            "`op` must be a string".into(),
        )),
    }
}

/// Whether the frame's `op` is a JSON string (a second, skimming read of the frame).
fn op_is_a_string(text: &str) -> bool {
    #[derive(Deserialize)]
    struct OpField<'a> {
        #[serde(borrow)]
        #[allow(dead_code)]
        op: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<OpField>(text).is_ok()
}

/// The field a request's error is about, for the message (errors of serde's derived
/// parsers name the type they expected, not the field): the one top-level field without
/// which the request parses (or lacks only that field); inside `properties`, the property.
/// Only error replies pay for it, and it tries at most [`FIELD_TRIALS`] fields.
fn bad_field(request: &serde_json::Value) -> Option<String> {
    const FIELD_TRIALS: usize = 32;
    let mut trial = request.clone();
    let parses_without = |trial: &mut serde_json::Value, path: &[&str]| {
        let (parent, key) = match path {
            [key] => (&mut *trial, *key),
            [outer, key] => (trial.get_mut(*outer)?, *key),
            _ => return None,
        };
        let removed = parent.as_object_mut()?.remove(key)?;
        let verdict = match Request::deserialize(&*trial) {
            Ok(_) => true,
            Err(e) => e.to_string() == format!("missing field `{}`", path[0]),
        };
        let parent = match path {
            [_] => &mut *trial,
            _ => trial.get_mut(path[0])?,
        };
        parent.as_object_mut()?.insert(key.to_owned(), removed);
        Some(verdict)
    };
    let keys: Vec<String> = request.as_object()?.keys().cloned().collect();
    let field = keys
        .iter()
        .filter(|key| *key != "id" && *key != "op")
        .take(FIELD_TRIALS)
        .find(|key| parses_without(&mut trial, &[key.as_str()]) == Some(true))?;
    if let Some(serde_json::Value::Object(properties)) = request.get(field) {
        let inner: Vec<String> = properties.keys().take(FIELD_TRIALS).cloned().collect();
        for key in inner {
            if parses_without(&mut trial, &[field, &key]) == Some(true) {
                return Some(format!("{field}.{key}"));
            }
        }
    }
    Some(field.clone())
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

    /// Every field has exactly its documented type: no operation by index, no positional
    /// properties, no `null` for an optional field. The error names the field.
    #[test]
    fn fields_have_exactly_their_documented_type() {
        for (text, field) in [
            (r#"{"id":1,"op":5}"#, "`op`"),
            (r#"{"id":1,"op":0,"queue":"q"}"#, "`op`"),
            (
                r#"{"id":1,"op":"publish","routing_key":"q","properties":[true]}"#,
                "`properties`",
            ),
            (
                r#"{"id":1,"op":"publish","routing_key":"q","body":null}"#,
                "`body`",
            ),
            (
                r#"{"id":1,"op":"publish","routing_key":"q","body_base64":null}"#,
                "`body_base64`",
            ),
            (
                r#"{"id":1,"op":"publish","routing_key":"q","properties":{"priority":null}}"#,
                "`properties.priority`",
            ),
            (
                r#"{"id":1,"op":"publish","properties":{"message_id":null},"body":"x"}"#,
                "`properties.message_id`",
            ),
            (
                r#"{"id":1,"op":"subscribe","queue":"q","consumer_tag":null}"#,
                "`consumer_tag`",
            ),
            (
                r#"{"id":1,"op":"subscribe","queue":"q","filter":null}"#,
                "`filter`",
            ),
            (
                r#"{"id":1,"op":"nack","delivery_tag":1,"delay_ms":null}"#,
                "`delay_ms`",
            ),
            (
                r#"{"id":1,"op":"ack","delivery_tag":null}"#,
                "`delivery_tag`",
            ),
            (
                r#"{"id":1,"op":"rollback_plugin","name":"p","version":null}"#,
                "`version`",
            ),
            (
                r#"{"id":1,"op":"requeue_dead_letters","queue":"q","message_id":null}"#,
                "`message_id`",
            ),
            (
                r#"{"id":1,"op":"deploy_plugin","name":"p","wasm_base64":"","deployed_by":null}"#,
                "`deployed_by`",
            ),
            (
                r#"{"id":1,"op":"attach_handler","queue":"q","plugin":"p","mode":{"filter":null}}"#,
                "`mode`",
            ),
            (r#"{"id":1,"op":"declare_queue","queue":7}"#, "`queue`"),
            (
                r#"{"id":1,"op":"delete_queue","queue":"q","if_empty":null}"#,
                "`if_empty`",
            ),
        ] {
            let err = parse_request(text).expect_err(text);
            assert_eq!(
                (err.id, err.code),
                (Some(1.into()), ErrorCode::InvalidField),
                "{text}"
            );
            assert!(err.message.contains(field), "{text}: {}", err.message);
        }
        // Their valid counterparts parse.
        for text in [
            r#"{"id":1,"op":"list_queues"}"#,
            r#"{"id":1,"op":"publish","routing_key":"q","properties":{"priority":3},"body":"x"}"#,
            r#"{"id":1,"op":"subscribe","queue":"q","consumer_tag":"c","filter":"f"}"#,
            r#"{"id":1,"op":"attach_handler","queue":"q","plugin":"p","mode":"filter"}"#,
        ] {
            parse_request(text).expect(text);
        }
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
