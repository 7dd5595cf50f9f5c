//! One queue's state machine: ready messages by priority then arrival, delayed messages
//! by due time, unacked messages per consumer, consumers served round-robin within their
//! prefetch windows, and the failure rules of its [`QueuePolicy`].
//!
//! Logic with time passed in: the router applies the results (frames, store operations,
//! dead letters). The one I/O is paging: a stored queue deeper than its
//! `max_in_memory_length` keeps the bodies of the rest only in the store and reads them
//! back in runs before it delivers them (see [`Queue::enable_paging`]).

mod consumers;
mod dedup;
mod entry;
mod expiry;
mod packing;
mod paging;
mod parked;
mod policy;
pub mod rabbitmq_arguments;

use consumers::Unacked;
pub use consumers::{Consumer, Dispatch, Next, Retried, Retry};
pub use dedup::DedupWindow;
pub use entry::Entry;
use paging::{PAGE_IN_RUN, Paging};
use parked::{Held, NEVER, Parked};
pub use policy::{
    DEFAULT_MAX_IN_MEMORY_LENGTH, DeadLetterTarget, MAX_PRIORITY, Overflow, QueuePolicy,
    duration_ms,
};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::fast_map::FastMap;
use std::sync::Arc;

use crate::message::{Headers, Message};

/// Identifies a client connection.
pub type ConnId = u64;

/// Ready order: highest priority first, then oldest first.
type ReadyKey = (Reverse<u8>, u64);

/// Where a message being placed comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Origin {
    /// Published, retried or due now: a stored one may not have committed yet.
    Live,
    /// Read from the store at startup.
    Recovered,
}

/// A message taken out without its body (purge, queue deletion): what the store needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Removed {
    pub seq: u64,
    pub stored: bool,
    pub state_stored: bool,
}

/// The result of offering a new message.
#[derive(Debug)]
pub enum Push {
    Accepted {
        seq: u64,
        /// Older messages pushed out by `max_length` with `drop_head`: dead-letter them.
        evicted: Vec<Entry>,
    },
    /// `max_length` with `reject_publish`: the queue refuses the message.
    Rejected,
}

/// Declared properties of a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: Headers,
}

impl QueueSpec {
    /// Whether a declaration of `other` may name this existing queue (RabbitMQ's
    /// equivalence check: a difference is a `precondition_failed`). The dead-letter
    /// default is not compared: AMQP declarations without `x-dead-letter-exchange` imply
    /// `dead_letter: false` (RabbitMQ drops such dead letters), the native protocol's
    /// default is `<queue>.dlq`, and a queue made by one is declared again by the other
    /// (the README's tour: the CLI, then a pika program). The queue keeps its own policy.
    pub fn redeclared_as(&self, other: &QueueSpec) -> bool {
        fn compared(arguments: &Headers) -> Headers {
            let mut compared = arguments.clone();
            if compared.get("dead_letter") == Some(&serde_json::Value::Bool(false)) {
                compared.remove("dead_letter");
            }
            compared
        }
        self.durable == other.durable
            && self.exclusive_owner == other.exclusive_owner
            && self.auto_delete == other.auto_delete
            && compared(&self.arguments) == compared(&other.arguments)
    }
}

/// What went through the queue since the broker started (not stored: counters restart
/// at zero, as Prometheus counters may).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub dead_lettered: u64,
    /// Dead letters dropped (the queue has `dead_letter: false`, or no route).
    pub dropped: u64,
    pub expired: u64,
    /// Messages accepted into the queue.
    pub published: u64,
    /// Deliveries to consumers, redeliveries included.
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    /// Publishes confirmed but not enqueued: their message id was in the dedup window.
    pub deduplicated: u64,
}

#[derive(Debug)]
pub struct Queue {
    pub name: Arc<str>,
    /// The queue's key prefix in the store.
    pub id: u64,
    pub spec: QueueSpec,
    pub policy: QueuePolicy,
    /// The user whose connection declared it (for its `max_queues`); `None`: the broker
    /// (dead-letter queues, the HTTP API) or a queue stored before this was recorded.
    pub declared_by: Option<Arc<str>>,
    pub counters: Counters,
    /// The earliest time the router has a wake-up scheduled for this queue.
    pub wakeup: Option<u64>,
    next_seq: u64,
    ready: BTreeMap<ReadyKey, Parked>,
    /// Messages waiting for a delay (delayed publish, retry backoff), by (due, seq).
    delayed: BTreeMap<(u64, u64), Entry>,
    /// (expires_at, ready key) of ready messages with a TTL.
    expiring: BTreeSet<(u64, ReadyKey)>,
    /// Body bytes of ready and delayed messages, for `max_length_bytes`.
    queued_bytes: u64,
    unacked: FastMap<u64, Unacked>,
    consumers: Vec<Consumer>,
    /// Index of the consumer to try first on the next dispatch (round-robin).
    next_consumer: usize,
    /// Reused to pack messages.
    pack_buf: Vec<u8>,
    /// Set for stored queues: bodies past the in-memory limit live in the store.
    paging: Option<Paging>,
    /// Ready messages whose body is only in the store.
    paged_out: usize,
    /// Message ids taken within `policy.dedup_window_ms` (empty without one).
    pub dedup: DedupWindow,
    /// When the queue was last used, for `expires` (see `expiry.rs`).
    last_used: u64,
}

impl Queue {
    pub fn new(name: Arc<str>, id: u64, spec: QueueSpec, policy: QueuePolicy) -> Self {
        Queue {
            name,
            id,
            spec,
            policy,
            declared_by: None,
            counters: Counters::default(),
            wakeup: None,
            next_seq: 1,
            ready: BTreeMap::new(),
            delayed: BTreeMap::new(),
            expiring: BTreeSet::new(),
            queued_bytes: 0,
            unacked: FastMap::default(),
            consumers: Vec::new(),
            next_consumer: 0,
            pack_buf: Vec::new(),
            paging: None,
            paged_out: 0,
            dedup: DedupWindow::default(),
            last_used: 0,
        }
    }

    /// Offers a new message published at `now`; `stored` says it is persisted here.
    pub fn push(&mut self, message: Arc<Message>, stored: bool, now: u64) -> Push {
        if self.refuses(1, message.body_len() as u64) {
            return Push::Rejected;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.place(Entry::new(seq, message, stored), now, None, Origin::Live);
        let mut evicted = Vec::new();
        while self.over_limits(0, 0) {
            match self.pop_oldest() {
                Some(e) => evicted.push(e),
                None => break,
            }
        }
        Push::Accepted { seq, evicted }
    }

    /// Whether `overflow: reject_publish` (or `reject_publish_dlx`) refuses `messages`
    /// more messages of `bytes`.
    pub fn refuses(&self, messages: u64, bytes: u64) -> bool {
        self.policy.overflow != Overflow::DropHead && self.over_limits(messages, bytes)
    }

    /// Whether the queue with `messages` more of `bytes` exceeds its length limits.
    fn over_limits(&self, messages: u64, bytes: u64) -> bool {
        let len = (self.ready.len() + self.delayed.len()) as u64 + messages;
        let bytes = self.queued_bytes + bytes;
        self.policy.max_length.is_some_and(|max| len > max)
            || self.policy.max_length_bytes.is_some_and(|max| bytes > max)
    }

    /// Places a message that entered the queue at `enqueued_at` (now for a new one, earlier
    /// for one recovered from the store): its priority, expiry and visibility follow from
    /// its properties and the policy; a pending retry's `not_before` overrides its delay.
    ///
    /// Past the in-memory limit a restored message's body is dropped at once (it is in the
    /// store) instead of packed: packing would double the work of a recovery, whose time to
    /// first delivery matters more.
    pub fn restore(&mut self, entry: Entry, enqueued_at: u64, not_before: Option<u64>) {
        self.place(entry, enqueued_at, not_before, Origin::Recovered);
    }

    /// When a message that entered at `enqueued_at` expires, from its own and the queue's
    /// TTL (the smaller wins).
    fn expires_at(&self, expiration_ms: Option<u64>, enqueued_at: u64) -> Option<u64> {
        let ttl = [expiration_ms, self.policy.message_ttl_ms]
            .into_iter()
            .flatten()
            .min();
        // Below `NEVER`, which marks "no expiry" in a parked message.
        ttl.map(|ttl| enqueued_at.saturating_add(ttl).min(NEVER - 1))
    }

    fn place(
        &mut self,
        mut entry: Entry,
        enqueued_at: u64,
        not_before: Option<u64>,
        origin: Origin,
    ) {
        self.next_seq = self.next_seq.max(entry.seq + 1);
        let props = &entry.message.properties;
        entry.priority = self.policy.effective_priority(props.priority);
        entry.expires_at = self.expires_at(props.expiration_ms, enqueued_at);
        let delayed_until = props
            .delay_ms
            .filter(|d| *d > 0)
            .map(|d| enqueued_at.saturating_add(d));
        self.enqueue(entry, not_before.or(delayed_until), origin);
    }

    fn enqueue(&mut self, entry: Entry, not_before: Option<u64>, origin: Origin) {
        self.queued_bytes += entry.message.body_len() as u64;
        match not_before {
            Some(due) => {
                self.delayed.insert((due, entry.seq), entry);
            }
            None => self.insert_ready(entry, origin),
        }
    }

    fn insert_ready(&mut self, entry: Entry, origin: Origin) {
        let key = entry.ready_key();
        if let Some(at) = entry.expires_at {
            self.expiring.insert((at, key));
        }
        let deep = self.ready.len() >= self.policy.max_in_memory_length;
        if deep {
            self.page_out_committed();
        }
        let held = match (&mut self.paging, deep && entry.stored, origin) {
            (Some(_), true, Origin::Recovered) => {
                self.paged_out += 1;
                Held::OnDisk {
                    body_len: entry.message.body_len() as u64,
                }
            }
            (Some(paging), true, Origin::Live) if !paging.reader.has_failed() => {
                paging
                    .pending
                    .push_back((paging.reader.current_batch(), key));
                Held::Shared(entry.message)
            }
            // Packing a message another queue also holds would only add a copy. Besides
            // this queue, the caller may hold one reference (it drops it soon).
            _ if deep && origin == Origin::Live && Arc::strong_count(&entry.message) <= 2 => {
                self.pack_buf.clear();
                packing::pack(&entry.message, &mut self.pack_buf);
                Held::Packed(Box::from(self.pack_buf.as_slice()))
            }
            _ => Held::Shared(entry.message),
        };
        let parked = Parked {
            held,
            delivery_count: entry.delivery_count,
            stored: entry.stored,
            state_stored: entry.state_stored,
            expires_at: entry.expires_at.unwrap_or(NEVER),
        };
        self.ready.insert(key, parked);
    }

    /// Takes a ready message, reading its body back first if it was paged out (`None` if
    /// it cannot be read now).
    fn take_ready(&mut self, key: ReadyKey) -> Option<Entry> {
        if self.ready.get(&key)?.held.on_disk() && !self.page_in(key) {
            return None;
        }
        let entry = self.ready.remove(&key)?.unpark(key);
        if let Some(at) = entry.expires_at {
            self.expiring.remove(&(at, key));
        }
        self.queued_bytes -= entry.message.body_len() as u64;
        Some(entry)
    }

    /// The oldest waiting message, ready or delayed (for `drop_head`).
    fn pop_oldest(&mut self) -> Option<Entry> {
        let oldest_ready = self.ready.keys().map(|(_, seq)| *seq).min();
        let oldest_delayed = self.delayed.values().map(|e| e.seq).min();
        match (oldest_ready, oldest_delayed) {
            (Some(r), Some(d)) if d < r => self.take_delayed(d),
            (Some(_), _) => {
                let key = *self.ready.keys().min_by_key(|(_, seq)| *seq)?;
                self.take_ready(key)
            }
            (None, Some(d)) => self.take_delayed(d),
            (None, None) => None,
        }
    }

    fn take_delayed(&mut self, seq: u64) -> Option<Entry> {
        let key = *self.delayed.iter().find(|(_, e)| e.seq == seq)?.0;
        let entry = self.delayed.remove(&key)?;
        self.queued_bytes -= entry.message.body_len() as u64;
        Some(entry)
    }

    /// Whether this queue lives in the store: durable and not exclusive (an exclusive
    /// queue dies with its connection, so it is never recovered).
    pub fn is_stored(&self) -> bool {
        self.spec.durable && self.spec.exclusive_owner.is_none()
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub fn delayed_len(&self) -> usize {
        self.delayed.len()
    }

    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// The earliest time something changes by itself (a delay ends, a message expires,
    /// the queue expires unused).
    pub fn next_deadline(&self) -> Option<u64> {
        let delayed = self.delayed.keys().next().map(|(due, _)| *due);
        let expiring = self.expiring.iter().next().map(|(at, _)| *at);
        [delayed, expiring, self.unused_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Moves due delayed messages to ready and takes out expired ready ones.
    pub fn tick(&mut self, now: u64) -> Vec<Entry> {
        while let Some(entry) = self
            .delayed
            .first_key_value()
            .filter(|((due, _), _)| *due <= now)
        {
            let key = *entry.0;
            let entry = self.delayed.remove(&key).expect("present");
            self.insert_ready(entry, Origin::Live);
        }
        let mut expired = Vec::new();
        while let Some(&(at, key)) = self.expiring.first().filter(|(at, _)| *at <= now) {
            self.expiring.remove(&(at, key));
            expired.extend(self.take_ready(key));
        }
        expired
    }

    /// Removes every waiting message, ready and delayed (unacked ones stay), without
    /// reading their bodies.
    pub fn purge(&mut self) -> Vec<Removed> {
        self.expiring.clear();
        self.queued_bytes = 0;
        self.paged_out = 0;
        if let Some(paging) = &mut self.paging {
            paging.pending.clear();
        }
        let mut all: Vec<Removed> = std::mem::take(&mut self.ready)
            .iter()
            .map(|(key, parked)| parked.removed(*key))
            .collect();
        all.extend(
            std::mem::take(&mut self.delayed)
                .into_values()
                .map(|e| e.removed()),
        );
        all
    }

    /// Every message, waiting and unacked, for deletion of the whole queue.
    pub fn drain_all(&mut self) -> Vec<Removed> {
        let mut all = self.purge();
        all.extend(self.unacked.drain().map(|(_, u)| u.entry.removed()));
        all
    }

    /// Copies of the first `limit` ready messages in delivery order, without taking them
    /// (paged-out ones read back; any that cannot be are left out).
    pub fn peek(&self, limit: usize) -> Vec<Entry> {
        let head: Vec<(&ReadyKey, &Parked)> = self.ready.iter().take(limit).collect();
        let mut read = self.read_back(
            head.iter()
                .filter(|(_, p)| p.held.on_disk())
                .map(|(k, _)| **k),
        );
        head.into_iter()
            .filter_map(|(key, parked)| {
                let message = if parked.held.on_disk() {
                    Some(read.remove(key)?)
                } else {
                    None
                };
                Some(parked.copy(message).unpark(*key))
            })
            .collect()
    }

    /// Takes the ready messages `select` picks, in delivery order (paged-out ones are read
    /// back a run at a time to be looked at).
    pub fn take_ready_where(&mut self, mut select: impl FnMut(&Entry) -> bool) -> Vec<Entry> {
        let mut keys = Vec::new();
        let mut on_disk = Vec::new();
        for (key, parked) in &self.ready {
            if parked.held.on_disk() {
                on_disk.push(*key);
            } else if select(&parked.copy(None).unpark(*key)) {
                keys.push(*key);
            }
        }
        for run in on_disk.chunks(PAGE_IN_RUN) {
            for (key, message) in self.read_back(run.iter().copied()) {
                if select(&self.ready[&key].copy(Some(message)).unpark(key)) {
                    keys.push(key);
                }
            }
        }
        keys.sort_unstable();
        keys.into_iter()
            .filter_map(|k| self.take_ready(k))
            .collect()
    }
}

#[cfg(test)]
mod tests;
