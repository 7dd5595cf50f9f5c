//! The state a client's methods, its connection task ([`super::link`]) and its reader
//! ([`super::incoming`]) share: requests waiting for replies, consumers, flow control,
//! health, what to recover after a reconnect.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

use tokio::sync::{mpsc, oneshot, watch};

use super::topology::Topology;
use super::{ClientError, Health, Reconnect};
use crate::protocol::{Delivery, Request, Subscribe};

pub(super) type ReplyTx = oneshot::Sender<Result<serde_json::Value, ClientError>>;

pub(super) struct Pending {
    pub reply: ReplyTx,
    /// For `subscribe`: the consumer to register once the broker names it.
    pub consumer: Option<NewConsumer>,
    /// For a publish waiting for its confirm on a reconnecting client: the request to
    /// send again (same id) if the connection drops first.
    pub resend: Option<Request>,
}

/// A subscription waiting for the broker's reply.
pub(super) struct NewConsumer {
    /// Where its deliveries go.
    pub deliveries: mpsc::UnboundedSender<Delivery>,
    /// On a reconnecting client: the subscription to make again on a new connection
    /// (recorded when the reply registers the consumer, so no drop falls in between).
    pub resubscribe: Option<Subscribe>,
}

/// The state the client's methods, its connection task and its reader share.
pub(super) struct Shared {
    /// Requests waiting for a reply, by request id. `send` queues a request under this
    /// lock, so the connection task sees each waiting publish either queued or written.
    pub pending: Mutex<HashMap<u64, Pending>>,
    /// Set when the connection is gone for good: requests made after that fail at once.
    pub closed: AtomicBool,
    pub consumers: Mutex<HashMap<String, mpsc::UnboundedSender<Delivery>>>,
    /// The broker's last word on flow control: `Some(reason)` while it blocks this
    /// connection's publishes.
    pub blocked: watch::Sender<Option<String>>,
    pub next_id: AtomicU64,
    /// `publish` and `ack` go as binary records (negotiated at connect).
    pub binary: bool,
    pub confirms: AtomicBool,
    /// Set by [`ConnectOptions::reconnect`](super::ConnectOptions::reconnect).
    pub reconnect: Option<Reconnect>,
    /// Connections lost so far: the current connection's number, in its delivery tags.
    pub generation: AtomicU64,
    pub health: watch::Sender<Health>,
    /// What to declare and subscribe again on a new connection (reconnecting clients).
    pub topology: Mutex<Topology>,
    /// Publishes made since the connection dropped (the breaker's `max_buffered`).
    pub buffered: AtomicUsize,
}
