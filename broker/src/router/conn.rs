//! A connection as the router knows it: its writer, who it is, its vhost and protocol,
//! and the deliveries it holds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::ConnTx;
use super::queue_shards::DeliveryTags;
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
    /// Deliveries so far (a delivery's tag is this with its shard, see `queue_shards.rs`).
    pub(super) deliveries: u64,
    /// Per queue shard, delivery tag → every unsettled delivery from its queues.
    unacked_by_shard: Vec<BTreeMap<u64, Held>>,
    tags: DeliveryTags,
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
    #[allow(clippy::too_many_arguments)] // what `Command::Open` says, and the tag layout
    pub(super) fn new(
        tx: ConnTx,
        peer: Option<SocketAddr>,
        outbound: Option<Arc<std::sync::atomic::AtomicUsize>>,
        user: Option<Principal>,
        vhost: Arc<str>,
        session: Option<ConnId>,
        protocol: crate::protocol::WireProtocol,
        tags: DeliveryTags,
    ) -> Self {
        Conn {
            tx,
            peer,
            outbound,
            user,
            vhost,
            opened_at: crate::clock::now_ms(),
            confirms: false,
            deliveries: 0,
            unacked_by_shard: vec![BTreeMap::new(); tags.shards()],
            tags,
            consumers: Vec::new(),
            next_generated: 1,
            session,
            protocol,
            channel_prefetch: 0,
        }
    }

    /// Whether the channel-wide prefetch leaves room for another delivery.
    pub(super) fn within_channel_prefetch(&self) -> bool {
        self.channel_prefetch == 0 || self.unacked_len() < self.channel_prefetch as usize
    }

    /// Its unsettled deliveries, across shards.
    pub(super) fn unacked_len(&self) -> usize {
        self.unacked_by_shard.iter().map(BTreeMap::len).sum()
    }

    /// Holds a delivery from a queue on `shard` unsettled; returns its tag.
    pub(super) fn hold(&mut self, shard: usize, held: Held) -> u64 {
        self.deliveries += 1;
        let tag = self.tags.tag(self.deliveries, shard);
        self.unacked_by_shard[shard].insert(tag, held);
        tag
    }

    /// The unsettled delivery `tag`, taken; with `multiple`, every one up to and
    /// including it, from every shard.
    pub(super) fn release(&mut self, tag: u64, multiple: bool) -> Vec<Held> {
        if !multiple {
            let shard = self.tags.shard_of(tag);
            return self.unacked_by_shard[shard]
                .remove(&tag)
                .into_iter()
                .collect();
        }
        let mut settled = Vec::new();
        for unacked in &mut self.unacked_by_shard {
            let rest = match tag.checked_add(1) {
                Some(after) => unacked.split_off(&after),
                None => Default::default(),
            };
            settled.extend(std::mem::replace(unacked, rest).into_values());
        }
        settled
    }

    /// Every unsettled delivery with its tag, shard by shard.
    pub(super) fn unacked(&self) -> impl Iterator<Item = (u64, &Held)> {
        self.unacked_by_shard
            .iter()
            .flat_map(|u| u.iter().map(|(tag, held)| (*tag, held)))
    }

    /// Every unsettled delivery, taken.
    pub(super) fn release_all(&mut self) -> Vec<Held> {
        let all = self.unacked_by_shard.iter_mut().map(std::mem::take);
        all.flat_map(BTreeMap::into_values).collect()
    }

    /// Whether delivery `tag` is unsettled.
    pub(super) fn holds(&self, tag: u64) -> bool {
        self.unacked_by_shard[self.tags.shard_of(tag)].contains_key(&tag)
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
    /// How long it may stay unacked (see `ack_timeout.rs`); `None`: no limit.
    pub(super) timeout_ms: Option<u64>,
}
