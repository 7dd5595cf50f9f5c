//! What a user may do in a vhost, as RabbitMQ's permissions: `configure`, `write` and
//! `read` regular expressions on resource names, plus `plugin` (deploy, roll back and reset
//! plugins, attach and detach handlers), and which of them each request needs.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::protocol::Op;

/// A user's permissions in one vhost, as stored (in the user's record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
    #[serde(default)]
    pub plugin: bool,
}

impl Permissions {
    /// Everything (`.*` three times, and plugins): what `guest` has on `/`.
    pub fn full() -> Self {
        Permissions {
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
            plugin: true,
        }
    }

    /// Checks the patterns (before storing them).
    pub fn compile(&self) -> Result<Grant, String> {
        let pattern = |what: &str, text: &str| -> Result<Option<NamePattern>, String> {
            match text {
                "" => Ok(None),
                // What nearly every grant says; checked on every publish.
                ".*" => Ok(Some(NamePattern::Any)),
                text => Regex::new(text)
                    .map(|regex| Some(NamePattern::Regex(regex)))
                    .map_err(|e| format!("`{what}` is not a valid regular expression: {e}")),
            }
        };
        Ok(Grant {
            configure: pattern("configure", &self.configure)?,
            write: pattern("write", &self.write)?,
            read: pattern("read", &self.read)?,
            plugin: self.plugin,
        })
    }
}

/// What a request needs of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Declare, delete (queues, exchanges), attach handlers to (queues).
    Configure,
    /// Publish to (exchanges), bind to (queues).
    Write,
    /// Consume, purge, peek (queues), bind from (exchanges).
    Read,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// Permissions compiled for checking. An empty pattern matches nothing, as in RabbitMQ;
/// a pattern matches anywhere in the name unless anchored (`^orders$`).
#[derive(Debug, Clone)]
pub struct Grant {
    configure: Option<NamePattern>,
    write: Option<NamePattern>,
    read: Option<NamePattern>,
    plugin: bool,
}

/// A compiled permission pattern: `.*` needs no regular expression.
#[derive(Debug, Clone)]
enum NamePattern {
    Any,
    Regex(Regex),
}

impl NamePattern {
    fn is_match(&self, name: &str) -> bool {
        match self {
            NamePattern::Any => true,
            NamePattern::Regex(regex) => regex.is_match(name),
        }
    }
}

/// The name permissions see for the default exchange (`""`), as in RabbitMQ.
pub const DEFAULT_EXCHANGE_RESOURCE: &str = "amq.default";

/// The name permissions see for a queue the broker names (`queue: ""`).
pub const GENERATED_QUEUE_RESOURCE: &str = "gen-";

impl Grant {
    /// A grant that allows nothing (a user without permissions in the vhost).
    pub fn none() -> Self {
        Grant {
            configure: None,
            write: None,
            read: None,
            plugin: false,
        }
    }

    pub fn allows(&self, access: Access, name: &str) -> bool {
        let pattern = match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        };
        pattern.as_ref().is_some_and(|p| p.is_match(name))
    }

    /// Whether `op` (with the names its client sent) is allowed; the refusal says which
    /// permission on which resource was missing.
    pub fn authorize(&self, op: &Op) -> Result<(), String> {
        let queue = "queue";
        let exchange = "exchange";
        let check = |access: Access, kind: &str, name: &str| {
            if self.allows(access, name) {
                Ok(())
            } else {
                Err(format!(
                    "{} access to {kind} `{name}` refused",
                    access.as_str()
                ))
            }
        };
        let plugin = || {
            if self.plugin {
                Ok(())
            } else {
                Err("plugin permission refused in this vhost".to_string())
            }
        };
        let exchange_name = |name: &str| -> String {
            if name.is_empty() {
                DEFAULT_EXCHANGE_RESOURCE.into()
            } else {
                name.into()
            }
        };
        match op {
            Op::DeclareQueue(declare) => {
                let name = match declare.queue.as_str() {
                    "" => GENERATED_QUEUE_RESOURCE,
                    name => name,
                };
                check(Access::Configure, queue, name)?;
                // Dead letters are published to their exchange with the queue owner's
                // authority: naming one needs the right to write to it.
                if let Some(dlx) = declare
                    .arguments
                    .get("dead_letter_exchange")
                    .and_then(|v| v.as_str())
                {
                    check(Access::Write, exchange, &exchange_name(dlx))?;
                }
                Ok(())
            }
            Op::DeleteQueue { queue: name, .. } => check(Access::Configure, queue, name),
            Op::PurgeQueue { queue: name }
            | Op::Get { queue: name, .. }
            | Op::QueueInfo { queue: name }
            | Op::PeekQueue { queue: name, .. }
            | Op::RequeueDeadLetters { queue: name, .. } => check(Access::Read, queue, name),
            Op::Subscribe(subscribe) => check(Access::Read, queue, &subscribe.queue),
            Op::DeclareExchange(declare) => check(Access::Configure, exchange, &declare.exchange),
            Op::DeleteExchange { exchange: name, .. } => check(Access::Configure, exchange, name),
            Op::Bind(binding) | Op::Unbind(binding) => {
                check(Access::Write, queue, &binding.queue)?;
                check(Access::Read, exchange, &exchange_name(&binding.exchange))
            }
            // As RabbitMQ: `write` on the destination, `read` on the source.
            Op::BindExchange(binding) | Op::UnbindExchange(binding) => {
                check(
                    Access::Write,
                    exchange,
                    &exchange_name(&binding.destination),
                )?;
                check(Access::Read, exchange, &exchange_name(&binding.source))
            }
            Op::Publish(publish) => check(
                Access::Write,
                exchange,
                &exchange_name(&publish.message.exchange),
            ),
            // What a publish would do: asked of who may publish there.
            Op::Route(message) => check(Access::Write, exchange, &exchange_name(&message.exchange)),
            Op::DeployPlugin { .. }
            | Op::RollbackPlugin { .. }
            | Op::PromotePlugin { .. }
            | Op::ResetPlugin { .. }
            | Op::PrunePlugin { .. }
            | Op::DeletePlugin { .. } => plugin(),
            Op::AttachHandler(attach) => {
                plugin()?;
                check(Access::Configure, queue, &attach.queue)
            }
            Op::DetachHandler { queue: name, .. } => {
                plugin()?;
                check(Access::Configure, queue, name)
            }
            // Settling and cancelling concern the connection's own deliveries and
            // consumers; listings show the vhost's resources; user and vhost management
            // needs the administrator tag (checked where it is done).
            Op::ConfirmSelect
            | Op::Cancel { .. }
            | Op::Ack { .. }
            | Op::Nack { .. }
            | Op::Reject { .. }
            | Op::ListQueues
            | Op::ListExchanges
            | Op::ListBindings
            | Op::ListConnections
            | Op::ListHandlers
            | Op::ListPlugins
            | Op::PluginHistory { .. }
            | Op::PluginShadow { .. }
            | Op::PluginLogs { .. }
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
            | Op::ListPermissions => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_request;

    fn op(json: &str) -> Op {
        parse_request(json).expect("a valid request").op
    }

    #[test]
    fn read_only_on_one_queue() {
        let grant = Permissions {
            configure: String::new(),
            write: String::new(),
            read: "^orders$".into(),
            plugin: false,
        }
        .compile()
        .unwrap();
        assert!(
            grant
                .authorize(&op(r#"{"op":"subscribe","id":1,"queue":"orders"}"#))
                .is_ok()
        );
        for refused in [
            r#"{"op":"subscribe","id":1,"queue":"orders2"}"#,
            r#"{"op":"publish","id":1,"exchange":"","routing_key":"orders","body":"x"}"#,
            r#"{"op":"declare_queue","id":1,"queue":"orders"}"#,
            r#"{"op":"deploy_plugin","id":1,"name":"p","wasm_base64":""}"#,
        ] {
            assert!(grant.authorize(&op(refused)).is_err(), "{refused}");
        }
    }

    #[test]
    fn empty_patterns_match_nothing_and_bad_ones_are_refused() {
        assert!(!Grant::none().allows(Access::Read, ""));
        let bad = Permissions {
            configure: "(".into(),
            ..Permissions::full()
        };
        assert!(bad.compile().unwrap_err().contains("configure"));
    }
}
