//! Virtual hosts: namespaces of queues, exchanges, bindings and handler attachments.
//!
//! Inside the broker a resource of vhost `V` is named `V` + [`SEPARATOR`] + its name; in
//! the default vhost `/` it keeps its bare name. Names cannot contain control characters
//! (see `check_name`), so a client can never spell another vhost's names, and data
//! written before vhosts existed is the default vhost's as it stands. Front ends qualify
//! the names of a request ([`qualify_op`]) after authorizing it; what goes back to a
//! client is made local again ([`local`], [`LocalNames`]).

use std::sync::Arc;

use crate::message::Message;
use crate::protocol::{Op, ServerFrame};

/// The default virtual host, as in RabbitMQ.
pub const DEFAULT_VHOST: &str = "/";

/// Between a vhost and a resource name inside the broker (a control character: never
/// part of a client's name).
pub const SEPARATOR: char = '\u{1f}';

/// Longest vhost name, in bytes.
pub const MAX_VHOST_LEN: usize = 255;

/// The broker's name for resource `name` of vhost `vhost`.
pub fn qualify(vhost: &str, name: &str) -> String {
    if vhost == DEFAULT_VHOST {
        name.to_string()
    } else {
        format!("{vhost}{SEPARATOR}{name}")
    }
}

/// (vhost, local name) of a broker name.
pub fn split(name: &str) -> (&str, &str) {
    match name.split_once(SEPARATOR) {
        Some((vhost, local)) => (vhost, local),
        None => (DEFAULT_VHOST, name),
    }
}

/// The vhost of a broker name.
pub fn of(name: &str) -> &str {
    split(name).0
}

/// The name a client of the resource's vhost knows.
pub fn local(name: &str) -> &str {
    split(name).1
}

/// A vhost name: 1–255 bytes, no control characters.
pub fn check_vhost_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_VHOST_LEN || name.chars().any(char::is_control) {
        return Err(format!(
            "vhost name must be 1 to {MAX_VHOST_LEN} bytes without control characters"
        ));
    }
    Ok(())
}

/// Rewrites the resource names of a request from vhost `vhost`'s view to the broker's,
/// refusing names that could spell another vhost's (they hold [`SEPARATOR`]).
pub fn qualify_op(vhost: &str, op: &mut Op) -> Result<(), String> {
    for name in resource_names(op).into_iter().flatten() {
        if name.contains(SEPARATOR) {
            return Err("names may not contain control characters".into());
        }
        if vhost != DEFAULT_VHOST {
            *name = qualify(vhost, name);
        }
    }
    Ok(())
}

/// The queue and exchange names a request refers to (at most two; an array, so that
/// admitting a publish allocates nothing).
fn resource_names(op: &mut Op) -> [Option<&mut String>; 2] {
    match op {
        // An empty name asks the broker to choose one (in the connection's vhost).
        Op::DeclareQueue(declare) if declare.queue.is_empty() => [None, None],
        Op::DeclareQueue(declare) => [Some(&mut declare.queue), None],
        Op::DeleteQueue { queue, .. }
        | Op::PurgeQueue { queue }
        | Op::Get { queue, .. }
        | Op::QueueInfo { queue }
        | Op::PeekQueue { queue, .. }
        | Op::RequeueDeadLetters { queue, .. }
        | Op::DetachHandler { queue, .. } => [Some(queue), None],
        Op::AttachHandler(attach) => [Some(&mut attach.queue), None],
        Op::Subscribe(subscribe) => [Some(&mut subscribe.queue), None],
        Op::DeclareExchange(declare) => [Some(&mut declare.exchange), None],
        Op::DeleteExchange { exchange, .. } => [Some(exchange), None],
        Op::Bind(binding) | Op::Unbind(binding) => {
            [Some(&mut binding.exchange), Some(&mut binding.queue)]
        }
        Op::BindExchange(binding) | Op::UnbindExchange(binding) => {
            [Some(&mut binding.source), Some(&mut binding.destination)]
        }
        Op::Publish(publish) => [Some(&mut publish.message.exchange), None],
        Op::Route(message) => [Some(&mut message.exchange), None],
        Op::ConfirmSelect
        | Op::ListQueues
        | Op::Cancel { .. }
        | Op::Ack { .. }
        | Op::Nack { .. }
        | Op::Reject { .. }
        | Op::DeployPlugin { .. }
        | Op::RollbackPlugin { .. }
        | Op::PromotePlugin { .. }
        | Op::PluginShadow { .. }
        | Op::ResetPlugin { .. }
        | Op::PrunePlugin { .. }
        | Op::DeletePlugin { .. }
        | Op::ListPlugins
        | Op::PluginHistory { .. }
        | Op::PluginLogs { .. }
        | Op::ListExchanges
        | Op::ListBindings
        | Op::ListConnections
        | Op::ListHandlers
        | Op::Authenticate { .. }
        | Op::AddUser { .. }
        | Op::DeleteUser { .. }
        | Op::ChangePassword { .. }
        | Op::ListUsers
        | Op::SetUserLimits { .. }
        | Op::AddVhost { .. }
        | Op::DeleteVhost { .. }
        | Op::ListVhosts
        | Op::SetPermissions(_)
        | Op::ClearPermissions { .. }
        | Op::ListPermissions => [None, None],
    }
}

/// Makes what the broker sends a client of a vhost other than `/` speak that vhost's
/// names: deliveries' and returns' queue and exchange, and every string of a JSON result.
#[derive(Debug, Clone)]
pub struct LocalNames {
    prefix: Option<Arc<str>>,
}

impl LocalNames {
    pub fn new(vhost: &str) -> Self {
        LocalNames {
            prefix: (vhost != DEFAULT_VHOST).then(|| format!("{vhost}{SEPARATOR}").into()),
        }
    }

    /// The frame with local names (unchanged, and free, in the default vhost).
    pub fn frame(&self, frame: ServerFrame) -> ServerFrame {
        let Some(prefix) = &self.prefix else {
            return frame;
        };
        match frame {
            ServerFrame::Deliver(mut delivery) => {
                if let Some(local) = delivery.queue.strip_prefix(&**prefix) {
                    delivery.queue = local.into();
                }
                delivery.message = self.message(delivery.message);
                ServerFrame::Deliver(delivery)
            }
            ServerFrame::Return {
                id,
                reason,
                message,
            } => ServerFrame::Return {
                id,
                reason,
                message: self.message(message),
            },
            ServerFrame::Ok { id, mut result } => {
                strip_json(prefix, &mut result);
                ServerFrame::Ok { id, result }
            }
            ServerFrame::Error { id, code, message } => ServerFrame::Error {
                id,
                code,
                message: message.replace(&**prefix, ""),
            },
            other => other,
        }
    }

    fn message(&self, message: Arc<Message>) -> Arc<Message> {
        match &self.prefix {
            Some(prefix) if message.exchange.starts_with(&**prefix) => {
                let mut local = (*message).clone();
                local.exchange.drain(..prefix.len());
                Arc::new(local)
            }
            _ => message,
        }
    }
}

/// Strips `prefix` from every string in `value` that starts with it.
fn strip_json(prefix: &str, value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) if text.starts_with(prefix) => {
            text.drain(..prefix.len());
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| strip_json(prefix, v)),
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(|v| strip_json(prefix, v))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_vhost_keeps_bare_names() {
        assert_eq!(qualify("/", "orders"), "orders");
        assert_eq!(split("orders"), ("/", "orders"));
    }

    #[test]
    fn other_vhosts_prefix_and_split_back() {
        let name = qualify("prod", "orders");
        assert_ne!(name, "orders");
        assert_eq!(split(&name), ("prod", "orders"));
        assert_eq!(local(&name), "orders");
        assert_eq!(of(&qualify("prod", "")), "prod");
    }

    #[test]
    fn results_lose_the_prefix() {
        let names = LocalNames::new("prod");
        let frame = ServerFrame::Ok {
            id: crate::protocol::RequestId::Num(1),
            result: serde_json::json!({"queues": [{"queue": qualify("prod", "a")}]}),
        };
        let ServerFrame::Ok { result, .. } = names.frame(frame) else {
            panic!("an ok frame")
        };
        assert_eq!(result, serde_json::json!({"queues": [{"queue": "a"}]}));
    }
}
