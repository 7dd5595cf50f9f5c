//! A connection as the router knows it: its writer, who it is, its vhost and protocol,
//! and the deliveries it holds. Each queue shard has its own copy ([`Conn`]); what the
//! copies share is in [`ConnLink`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::delivery_tags::DeliveryTags;
use super::{ConnTx, OpenConn};
use crate::auth::Principal;
use crate::queue::ConnId;
use crate::shard_threads::ConnPlace;

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
    /// What its copies on the other shards share.
    link: Arc<ConnLink>,
    /// Delivery tag → every unsettled delivery from this shard's queues.
    unacked: BTreeMap<u64, Held>,
    /// This shard's index.
    shard: usize,
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
    /// The shard `shard`'s copy of a connection opening.
    pub(super) fn new(open: OpenConn, shard: usize) -> Self {
        let OpenConn {
            conn: _,
            tx,
            peer,
            outbound,
            user,
            vhost,
            session,
            protocol,
            link,
        } = open;
        Conn {
            tx,
            peer,
            outbound,
            user,
            vhost,
            opened_at: crate::clock::now_ms(),
            confirms: false,
            link,
            unacked: BTreeMap::new(),
            shard,
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
    pub(super) fn thread(&self) -> Option<usize> {
        self.link.thread()
    }

    pub(super) fn unacked_len(&self) -> usize {
        self.link.unacked.load(Ordering::Relaxed)
    }

    /// Holds a delivery from this shard's queues unsettled and hands its tag to `send`,
    /// under the connection's delivery lock: whichever shard delivers, the client gets
    /// tags in increasing order, so `multiple` never settles a delivery not yet sent.
    pub(super) fn hold<T>(
        &mut self,
        held: Held,
        send: impl FnOnce(u64, &ConnTx, Option<&AtomicUsize>) -> T,
    ) -> T {
        let mut deliveries = self.link.deliveries.lock().expect("delivery lock poisoned");
        let tag = deliveries.next(self.shard);
        self.unacked.insert(tag, held);
        self.link.unacked.fetch_add(1, Ordering::Relaxed);
        send(tag, &self.tx, self.outbound.as_deref())
    }

    /// The unsettled delivery `tag`, taken.
    pub(super) fn release(&mut self, tag: u64) -> Option<Held> {
        let settled = self.unacked.remove(&tag)?;
        self.link.unacked.fetch_sub(1, Ordering::Relaxed);
        Some(settled)
    }

    /// Every unsettled delivery of this shard up to and including `tag`, taken.
    pub(super) fn release_through(&mut self, tag: u64) -> Vec<Held> {
        let rest = match tag.checked_add(1) {
            Some(after) => self.unacked.split_off(&after),
            None => Default::default(),
        };
        let settled: Vec<Held> = std::mem::replace(&mut self.unacked, rest)
            .into_values()
            .collect();
        self.link
            .unacked
            .fetch_sub(settled.len(), Ordering::Relaxed);
        settled
    }

    /// Every unsettled delivery of this shard, with its tag.
    pub(super) fn unacked(&self) -> impl Iterator<Item = (u64, &Held)> {
        self.unacked.iter().map(|(tag, held)| (*tag, held))
    }

    /// Every unsettled delivery of this shard, taken.
    pub(super) fn release_all(&mut self) -> Vec<Held> {
        let all = std::mem::take(&mut self.unacked);
        self.link.unacked.fetch_sub(all.len(), Ordering::Relaxed);
        all.into_values().collect()
    }

    /// Whether delivery `tag` is unsettled (on this shard).
    pub(super) fn holds(&self, tag: u64) -> bool {
        self.unacked.contains_key(&tag)
    }

    /// The delivery it holds under `tag`.
    pub(super) fn held(&self, tag: u64) -> Option<&Held> {
        self.unacked.get(&tag)
    }

    /// Takes consumer tag `tag` for this connection; false if one of its consumers on any
    /// shard has it.
    pub(super) fn take_consumer_tag(&self, tag: &Arc<str>) -> bool {
        let mut tags = self
            .link
            .consumer_tags
            .lock()
            .expect("consumer tags poisoned");
        tags.insert(tag.clone())
    }

    /// Gives consumer tag `tag` back.
    pub(super) fn free_consumer_tag(&self, tag: &str) {
        let mut tags = self
            .link
            .consumer_tags
            .lock()
            .expect("consumer tags poisoned");
        tags.remove(tag);
    }
}

/// What a connection's copies on the queue shards share: its delivery tags (and which
/// shard gave each, see `delivery_tags.rs`), its unsettled deliveries across shards (what
/// the channel-wide prefetch counts), its consumer tags, and, with shard threads, where
/// its tasks run.
#[derive(Debug, Default)]
pub struct ConnLink {
    deliveries: Mutex<DeliveryTags>,
    unacked: AtomicUsize,
    consumer_tags: Mutex<crate::fast_map::FastSet<Arc<str>>>,
    /// The client connection's place among the shard threads (`None`: without them, and
    /// for the broker's own sessions), which its consumes and publishes decide.
    pub(super) place: Option<Arc<ConnPlace>>,
}

impl ConnLink {
    /// A new link for a connection opened by the running task: placed with it.
    pub fn of_this_task() -> Arc<Self> {
        Arc::new(ConnLink {
            place: crate::shard_threads::current_place(),
            ..Default::default()
        })
    }

    /// The shard thread the connection's tasks last ran on, with shard threads.
    pub(super) fn thread(&self) -> Option<usize> {
        self.place.as_ref().map(|place| place.running_on())
    }

    /// The shard that delivered `tag` (see [`DeliveryTags::shard_of`]).
    pub(super) fn shard_of_tag(&self, tag: u64) -> Option<usize> {
        let deliveries = self.deliveries.lock().expect("delivery lock poisoned");
        deliveries.shard_of(tag)
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
