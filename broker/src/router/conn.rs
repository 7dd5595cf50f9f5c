//! A connection as the router knows it: its writer, who it is, its vhost and protocol,
//! and the deliveries it holds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::ConnTx;
use crate::auth::Principal;
use crate::queue::ConnId;

/// A connection as the router knows it.
pub(super) struct Conn {
    pub(super) tx: ConnTx,
    pub(super) peer: Option<SocketAddr>,
    /// Delivery bytes queued for its writer (see [`super::MAX_OUTBOUND_BYTES`]); `None` for
    /// in-broker consumers, bounded by their prefetch alone.
    pub(super) outbound: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// Who authenticated; `None` for the broker's own sessions and in-broker consumers.
    pub(super) user: Option<Principal>,
    pub(super) vhost: Arc<str>,
    /// Milliseconds since the epoch.
    pub(super) opened_at: u64,
    pub(super) confirms: bool,
    pub(super) next_delivery_tag: u64,
    /// Delivery tag → every unsettled delivery.
    pub(super) unacked: BTreeMap<u64, Held>,
    /// (queue, consumer tag) of each of its consumers.
    pub(super) consumers: Vec<(Arc<str>, Arc<str>)>,
    /// For broker-chosen consumer tags and queue names.
    pub(super) next_generated: u64,
    /// The connection this one is a channel of.
    pub(super) session: Option<ConnId>,
    pub(super) protocol: crate::protocol::WireProtocol,
    /// Unsettled deliveries allowed across its consumers (see `prefetch.rs`); 0: no limit.
    pub(super) channel_prefetch: u32,
}

impl Conn {
    pub(super) fn new(
        tx: ConnTx,
        peer: Option<SocketAddr>,
        outbound: Option<Arc<std::sync::atomic::AtomicUsize>>,
        user: Option<Principal>,
        vhost: Arc<str>,
        session: Option<ConnId>,
        protocol: crate::protocol::WireProtocol,
    ) -> Self {
        Conn {
            tx,
            peer,
            outbound,
            user,
            vhost,
            opened_at: crate::clock::now_ms(),
            confirms: false,
            next_delivery_tag: 1,
            unacked: BTreeMap::new(),
            consumers: Vec::new(),
            next_generated: 1,
            session,
            protocol,
            channel_prefetch: 0,
        }
    }

    /// Whether the channel-wide prefetch leaves room for another delivery.
    pub(super) fn within_channel_prefetch(&self) -> bool {
        self.channel_prefetch == 0 || self.unacked.len() < self.channel_prefetch as usize
    }
}

/// A delivery a connection holds. The queue id tells a queue from a later one of the same
/// name (ids are never reused while the broker runs).
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) queue: Arc<str>,
    pub(super) queue_id: u64,
    pub(super) seq: u64,
    /// When it was delivered, ms since the epoch (for the consumer timeout).
    pub(super) delivered_at: u64,
}
