//! What operations answer: the `result` of each `ok` frame, one type per answer (see
//! `docs/protocol.md`). The router answers with these (`router/reply.rs`); clients
//! decode them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ops::default_vhost;
use super::{Binding, ExchangeBinding, SetPermissions, WireProtocol};
use crate::message::{Headers, Message};

/// Result of `declare_queue`, `queue_info` and each row of `list_queues`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueInfo {
    pub queue: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    /// Messages ready for delivery.
    pub ready: u64,
    /// Messages delivered and not yet acked.
    pub unacked: u64,
    /// Messages waiting for a delay (delayed publish or retry backoff).
    #[serde(default)]
    pub delayed: u64,
    /// Ready messages whose body is only on disk (past `max_in_memory_length`).
    #[serde(default)]
    pub paged_out: u64,
    pub consumers: u64,
    /// Messages this queue dead-lettered (any reason).
    #[serde(default)]
    pub dead_lettered: u64,
    /// Dead letters dropped because the queue has `dead_letter: false` or no route.
    #[serde(default)]
    pub dropped: u64,
    /// Messages that expired here (also counted as dead-lettered or dropped).
    #[serde(default)]
    pub expired: u64,
    #[serde(default)]
    pub arguments: Headers,
    /// Messages that entered the queue since the broker started (publishes, dead letters,
    /// requeued dead letters).
    #[serde(default)]
    pub published: u64,
    /// Publishes confirmed but not enqueued: their message id was in the queue's
    /// `dedup_window`.
    #[serde(default)]
    pub deduplicated: u64,
    /// Deliveries to consumers since the broker started (redeliveries included).
    #[serde(default)]
    pub delivered: u64,
    /// Deliveries of messages delivered before.
    #[serde(default)]
    pub redelivered: u64,
    /// Messages acked (by consumers, or auto-acked) since the broker started.
    #[serde(default)]
    pub acked: u64,
    /// The queue shard that owns it (`--queue-shards`; always 0 with one).
    #[serde(default)]
    pub shard: u64,
}

/// Result of `list_queues`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueList {
    pub queues: Vec<QueueInfo>,
}

/// Result of `purge_queue` and `delete_queue`: how many messages were removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageCount {
    pub messages: u64,
}

/// Result of `subscribe`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscribed {
    pub consumer_tag: String,
}

/// Result of `get`: the delivery (its `consumer_tag` empty), or none when the queue had
/// no ready message; and how many ready messages remain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Got {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<crate::protocol::Delivery>,
    pub message_count: u64,
}

/// Result of `peek_queue`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeekedMessages {
    pub messages: Vec<PeekedMessage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeekedMessage {
    pub delivery_count: u32,
    pub message: Arc<Message>,
}

/// Result of `requeue_dead_letters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Moved {
    pub moved: u64,
}

/// One row of `list_exchanges`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeInfo {
    pub exchange: String,
    /// The exchange type (plugin name), or `default` for the native default exchange.
    #[serde(rename = "type")]
    pub kind: String,
    pub durable: bool,
    /// Clients cannot publish to it.
    #[serde(default)]
    pub internal: bool,
    /// Deleted when its last binding goes.
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: Headers,
    pub bindings: u64,
    /// Publishes that reached at least one queue, since the broker started.
    pub routed: u64,
    /// Publishes that reached no queue.
    pub unroutable: u64,
    /// Publishes that failed in the exchange (plugin error or quarantine).
    pub failed: u64,
    /// The exchange's plugin is quarantined after repeated failures.
    pub quarantined: bool,
    /// Since when it is quarantined (ms since the Unix epoch) and why.
    #[serde(default)]
    pub quarantined_since: Option<u64>,
    #[serde(default)]
    pub quarantine_reason: Option<String>,
    /// The last automatic rollback of the exchange's plugin type (see `list_plugins`).
    #[serde(default)]
    pub last_auto_rollback: Option<super::AutoRollback>,
}

/// Result of `list_exchanges`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExchangeList {
    pub exchanges: Vec<ExchangeInfo>,
    /// Stored exchanges whose type is not loaded (they return at a start that loads it).
    #[serde(default)]
    pub unrestored: Vec<String>,
}

/// Result of `list_bindings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingList {
    pub bindings: Vec<Binding>,
    /// Exchange-to-exchange bindings, by source then in the order they were made.
    #[serde(default)]
    pub exchange_bindings: Vec<ExchangeBinding>,
}

/// One row of `list_connections`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub conn: u64,
    pub peer: String,
    #[serde(default)]
    pub protocol: WireProtocol,
    /// AMQP channels open on the connection (their consumers and unacked deliveries are
    /// counted in this row).
    #[serde(default)]
    pub channels: u64,
    /// The authenticated user.
    #[serde(default)]
    pub user: String,
    /// The virtual host it is connected to.
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Milliseconds since the epoch.
    pub opened_at: u64,
    pub confirms: bool,
    /// `queue` and `consumer_tag` of each consumer.
    pub consumers: Vec<ConsumerInfo>,
    pub unacked: u64,
    /// With `--shard-threads`: the shard whose thread runs it (where its first consume,
    /// or before that its first publish, took it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<u64>,
}

/// `list_vhosts` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VhostList {
    pub vhosts: Vec<VhostInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VhostInfo {
    pub vhost: String,
}

/// `list_permissions` result: every (user, vhost) pair with permissions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PermissionList {
    pub permissions: Vec<SetPermissions>,
}

/// `list_users` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserList {
    pub users: Vec<UserInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserInfo {
    pub user: String,
    pub tags: Vec<crate::auth::Tag>,
    /// May connect from loopback addresses only.
    pub loopback_only: bool,
    /// Connections it may have open at once; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Queues it may have declared; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queues: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerInfo {
    pub queue: String,
    pub consumer_tag: String,
}

/// Result of `list_connections`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionList {
    pub connections: Vec<ConnectionInfo>,
}
