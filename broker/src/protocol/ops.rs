//! The operations a client can request, and their results.

use serde::{Deserialize, Serialize};

use crate::message::{Headers, Message, present};

/// A request's operation and its fields.
// Publishes are nearly all requests: boxing the big variant would only add an allocation
// per publish.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Turns on publisher confirms for this connection (like AMQP's `confirm.select`).
    ConfirmSelect,
    DeclareQueue(DeclareQueue),
    DeleteQueue {
        queue: String,
        /// Refuse when the queue has consumers.
        #[serde(default)]
        if_unused: bool,
        /// Refuse when the queue holds messages.
        #[serde(default)]
        if_empty: bool,
    },
    PurgeQueue {
        queue: String,
    },
    QueueInfo {
        queue: String,
    },
    ListQueues,
    DeclareExchange(DeclareExchange),
    DeleteExchange {
        exchange: String,
        /// Refuse when the exchange has bindings.
        #[serde(default)]
        if_unused: bool,
    },
    Bind(Binding),
    Unbind(Binding),
    /// Binds exchange `destination` to exchange `source`: what `source` routes through
    /// this binding is routed again by `destination` (AMQP's `exchange.bind`).
    BindExchange(ExchangeBinding),
    UnbindExchange(ExchangeBinding),
    Publish(Publish),
    /// Shows where a message would go without publishing it: the exchange's type and the
    /// plugin version that decides, the bindings that match and the queues that would
    /// receive it. The message's fields are those of `publish`. Boxed, as in [`Publish`].
    Route(Box<Message>),
    Subscribe(Subscribe),
    Cancel {
        consumer_tag: String,
    },
    /// Takes the queue's next ready message, if any, without a subscription (AMQP's
    /// `basic.get`): unacked until settled like a delivery, unless `auto_ack`.
    Get {
        queue: String,
        #[serde(default)]
        auto_ack: bool,
    },
    Ack {
        delivery_tag: u64,
        /// Also ack every earlier unacked delivery of this connection.
        #[serde(default)]
        multiple: bool,
    },
    Nack {
        delivery_tag: u64,
        #[serde(default)]
        multiple: bool,
        /// Put the message back in its queue (true) or dead-letter it (false).
        #[serde(default = "yes")]
        requeue: bool,
        /// Redeliver after this many milliseconds instead of the queue's `retry_backoff`.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        delay_ms: Option<u64>,
    },
    Reject {
        delivery_tag: u64,
        #[serde(default)]
        requeue: bool,
    },
    /// Deploys a new version of Wasm exchange plugin `name` (an exchange type for
    /// `declare_exchange`): validated, stored, then activated; live exchanges of that type
    /// switch to it at their next message.
    DeployPlugin {
        name: String,
        /// The component's bytes, standard base64.
        wasm_base64: String,
        /// Who deployed it, for the history.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        deployed_by: Option<String>,
        /// Roll back to the version active before this one if this one starts failing.
        #[serde(default)]
        auto_rollback: bool,
        /// Store it and run it next to the active version on live traffic, without
        /// effect on routing (see `plugin_shadow`); `promote_plugin` makes it active.
        #[serde(default)]
        shadow: bool,
        /// Store it and let it route this share (0 < percent <= 100) of the messages,
        /// each message by exactly one version; dropped automatically if it fails.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        canary_percent: Option<f64>,
    },
    /// Makes plugin `name`'s shadow or canary version the active one.
    PromotePlugin {
        name: String,
    },
    /// What plugin `name`'s shadow or canary version has done: messages compared, routed
    /// differently, failures, the newest differences.
    PluginShadow {
        name: String,
    },
    /// Activates an earlier version: `version`, or the one before the active one.
    RollbackPlugin {
        name: String,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        version: Option<u64>,
    },
    /// Lifts quarantine for every exchange of plugin `name`: each starts a fresh instance,
    /// its failure history forgotten, at its next message.
    ResetPlugin {
        name: String,
    },
    /// Deletes the stored versions of plugin `name` but the newest `keep`, the active one,
    /// the one before it (the rollback target) and the one on trial.
    PrunePlugin {
        name: String,
        keep: u64,
    },
    /// Deletes a custom plugin with every stored version, once no exchange is of its type
    /// and no handler attachment runs it.
    DeletePlugin {
        name: String,
    },
    /// Every exchange type with its active version and counters.
    ListPlugins,
    /// Every deployed version of a plugin.
    PluginHistory {
        name: String,
    },
    /// The recent log lines of plugin `name` (exchange type or handler) numbered above
    /// `after`, at most the newest `limit`.
    PluginLogs {
        name: String,
        #[serde(default)]
        after: u64,
        #[serde(default = "default_log_limit")]
        limit: usize,
    },
    /// Lists a queue's ready messages in delivery order without consuming them.
    PeekQueue {
        queue: String,
        #[serde(default = "default_peek_limit")]
        limit: usize,
    },
    /// Moves dead letters from `queue` back to the queue named in their death record:
    /// all of them, or those with `message_id`.
    RequeueDeadLetters {
        queue: String,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        message_id: Option<String>,
    },
    /// Every exchange (the default one included) with its counters.
    ListExchanges,
    /// Every binding of every exchange.
    ListBindings,
    /// Every client connection with its consumers and unacked count.
    ListConnections,
    /// Attaches handler plugin `plugin` to `queue`: an in-broker consumer (`consume`) or a
    /// filter subscribers opt into (`filter`). Stored with a durable queue.
    AttachHandler(AttachHandler),
    DetachHandler {
        queue: String,
        plugin: String,
    },
    /// Every attachment with its plugin version and counters.
    ListHandlers,
    /// Logs the connection in (when its upgrade request carried no credentials): the
    /// only request a connection may send before it is authenticated.
    Authenticate {
        username: String,
        password: String,
    },
    /// Creates or replaces a user (administrators only).
    AddUser {
        user: String,
        /// Its password; or, instead, a hash RabbitMQ exported (`imported`).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        password: Option<String>,
        #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
        imported: Option<Box<ImportedHash>>,
        #[serde(default)]
        tags: Vec<crate::auth::Tag>,
    },
    DeleteUser {
        user: String,
    },
    /// Sets a user's password (administrators; or any user for their own password).
    ChangePassword {
        user: String,
        password: String,
    },
    /// Every user with its tags (administrators only).
    ListUsers,
    /// Sets a user's limits (administrators only); an absent limit is no limit.
    SetUserLimits {
        user: String,
        /// Connections the user may have open at once (over every protocol).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        max_connections: Option<u32>,
        /// Queues the user may have declared and not yet deleted (counted over every
        /// vhost; see docs/protocol.md).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        max_queues: Option<u32>,
    },
    /// Creates a virtual host (administrators only).
    AddVhost {
        vhost: String,
    },
    /// Deletes a virtual host with every queue, exchange and binding in it and closes its
    /// connections (administrators only).
    DeleteVhost {
        vhost: String,
    },
    /// Every virtual host (administrators only).
    ListVhosts,
    /// Sets what a user may do in a vhost (administrators only).
    SetPermissions(SetPermissions),
    /// Takes a user's permissions in a vhost away (administrators only).
    ClearPermissions {
        user: String,
        vhost: String,
    },
    /// Every user's permissions in every vhost (administrators only).
    ListPermissions,
}

/// A user's permissions in a vhost, RabbitMQ style: regular expressions on resource names
/// (an empty one matches nothing), plus whether it may manage plugins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetPermissions {
    pub user: String,
    #[serde(default = "default_vhost")]
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
    /// May deploy, roll back and reset plugins, and attach and detach handlers.
    #[serde(default)]
    pub plugin: bool,
}

pub(super) fn default_vhost() -> String {
    crate::vhost::DEFAULT_VHOST.to_string()
}

fn default_peek_limit() -> usize {
    100
}

fn default_log_limit() -> usize {
    100
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeclareQueue {
    pub queue: String,
    /// Survives a broker restart (with its persistent messages).
    #[serde(default)]
    pub durable: bool,
    /// Owned by this connection and deleted when it closes.
    #[serde(default)]
    pub exclusive: bool,
    /// Deleted when its last consumer cancels.
    #[serde(default)]
    pub auto_delete: bool,
    /// Queue arguments; stored as given.
    #[serde(default)]
    pub arguments: Headers,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeclareExchange {
    pub exchange: String,
    /// The exchange type: the name of a loaded exchange plugin (`direct`, `topic`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub durable: bool,
    /// Clients cannot publish to it; only exchange-to-exchange bindings lead there.
    #[serde(default)]
    pub internal: bool,
    /// Deleted when its last binding (to a queue or an exchange) is removed.
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: Headers,
}

/// A password hash as RabbitMQ exports it in its definitions (`password_hash`,
/// `hashing_algorithm`), for a user moved from RabbitMQ with the password it had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportedHash {
    pub password_hash: String,
    pub hashing_algorithm: String,
}

/// An exchange-to-exchange binding: messages `source` routes through it go on to
/// `destination`, which routes them again with the same routing key and headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeBinding {
    pub source: String,
    pub destination: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub arguments: Headers,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    pub exchange: String,
    pub queue: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub arguments: Headers,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publish {
    /// Boxed: a publish travels through several channels and futures by value, and an
    /// inline message made every `Op` and `Command` hundreds of bytes to copy.
    #[serde(flatten)]
    pub message: Box<Message>,
    /// Return the message to the publisher when no queue accepts it.
    #[serde(default)]
    pub mandatory: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscribe {
    pub queue: String,
    /// Most unacked deliveries in flight to this consumer; 0 means unlimited.
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
    /// The broker acks each delivery itself once it is written to the socket.
    #[serde(default)]
    pub auto_ack: bool,
    /// Chosen by the broker when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub consumer_tag: Option<String>,
    /// A handler attached to the queue in `filter` mode that every delivery passes through.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub filter: Option<String>,
    /// The queue's only consumer: refused (`access_refused`) while it has others, and
    /// others are refused while this one lasts (AMQP's exclusive consumer).
    #[serde(default)]
    pub exclusive: bool,
    /// Among the queue's consumers with room, those of the highest priority receive;
    /// equal ones take turns (RabbitMQ's consumer `x-priority`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// How long a delivery to this consumer may stay unacked before its connection is
    /// closed, overriding the queue's `consumer_timeout` and the broker's default
    /// (RabbitMQ's consumer argument `x-consumer-timeout`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub consumer_timeout_ms: Option<u64>,
}

/// How a handler is attached to its queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerMode {
    /// The handler consumes the queue: its outcome acks, retries or dead-letters.
    #[default]
    Consume,
    /// Subscribers naming it see each delivery through it (drop / transform).
    Filter,
}

/// `attach_handler`'s fields; also the stored record of an attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachHandler {
    pub queue: String,
    /// A handler plugin (bundled, loaded or deployed).
    pub plugin: String,
    #[serde(default, deserialize_with = "mode_name")]
    pub mode: HandlerMode,
    /// Calls in flight at once (1 to 64): one plugin instance each.
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Given to the plugin's `init`.
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, String>,
}

/// A mode is its name: the derived enum would also take `{"filter": null}`.
fn mode_name<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<HandlerMode, D::Error> {
    match String::deserialize(deserializer)?.as_str() {
        "consume" => Ok(HandlerMode::Consume),
        "filter" => Ok(HandlerMode::Filter),
        other => Err(serde::de::Error::unknown_variant(
            other,
            &["consume", "filter"],
        )),
    }
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn one() -> u32 {
    1
}

pub const DEFAULT_PREFETCH: u32 = 100;

fn default_prefetch() -> u32 {
    DEFAULT_PREFETCH
}

/// The protocol a client connection speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireProtocol {
    /// This document's JSON (or binary) frames over WebSocket.
    #[default]
    Json,
    /// AMQP 0-9-1 (docs/amqp.md).
    Amqp,
    /// STOMP 1.0–1.2 over TCP or WebSocket (docs/stomp.md).
    Stomp,
}
