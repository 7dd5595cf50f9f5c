//! The queues, partitioned into shards: each queue lives on exactly one shard, placed by
//! its name, and each shard is owned by its own router task (`--queue-shards N`, default
//! 1; see docs/architecture.md, "Queue shards"). [`QueueShards`] is one shard's queues and
//! timers; [`Placement`], shared by every shard and the [`super::RouterHandle`], says
//! where a queue lives and keeps the directory of every queue's name, so a shard (or the
//! home shard's topology) can tell a queue that exists elsewhere from one that does not.
//! A delivery's tag names the shard of its queue, so an ack finds its shard without a
//! lookup.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::fast_map::FastMap;
use crate::queue::{ConnId, Queue};

/// Where queues live, shared by every shard and the handle.
pub(crate) struct Placement {
    shards: usize,
    /// Seeded at random per run, as the maps are: clients choose queue names, and a fixed
    /// hash would let them pile every queue onto one shard.
    seed: foldhash::fast::RandomState,
    /// Queue ids are stored keys: unique across shards and runs.
    next_queue_id: AtomicU64,
    /// Every queue of every shard: written by the shard that owns it (declare, delete),
    /// read where another shard's queue must be known (binds, dead-letter and alternate
    /// targets, per-user queue limits). Not kept with one shard: its queues are all local.
    directory: RwLock<FastMap<Arc<str>, QueueCard>>,
    /// (queue, handler plugin) of every handler attachment, on every shard: what home
    /// checks before deleting a plugin.
    attachments: std::sync::Mutex<Vec<(Arc<str>, String)>>,
}

/// What other shards know of a queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueCard {
    pub exclusive_owner: Option<ConnId>,
    /// Durable and not exclusive: its bindings and messages are stored.
    pub stored: bool,
    pub declared_by: Option<Arc<str>>,
}

impl Placement {
    pub fn new(shards: usize) -> Self {
        let shards = shards.max(1);
        Placement {
            shards,
            seed: Default::default(),
            next_queue_id: AtomicU64::new(1),
            directory: Default::default(),
            attachments: Default::default(),
        }
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard queue `name` lives on.
    pub fn shard_of(&self, name: &str) -> usize {
        match self.shards {
            1 => 0,
            n => (self.seed.hash_one(name) % n as u64) as usize,
        }
    }

    /// What is known of queue `name`, on whichever shard it lives (with one shard: `None`,
    /// ask the shard).
    pub fn card(&self, name: &str) -> Option<QueueCard> {
        let directory = self
            .directory
            .read()
            .expect("queue directory lock poisoned");
        directory.get(name).cloned()
    }

    /// The directory's own `Arc` of queue `name`, if it exists on any shard.
    pub fn name(&self, name: &str) -> Option<Arc<str>> {
        let directory = self
            .directory
            .read()
            .expect("queue directory lock poisoned");
        directory.get_key_value(name).map(|(name, _)| name.clone())
    }

    /// How many queues `user` declared, on every shard.
    pub fn declared_by(&self, user: &str) -> usize {
        let directory = self
            .directory
            .read()
            .expect("queue directory lock poisoned");
        let mine = |card: &&QueueCard| card.declared_by.as_deref() == Some(user);
        directory.values().filter(mine).count()
    }

    /// Handler `plugin` was attached to `queue` (or, with `attached` false, detached).
    pub fn note_attachment(&self, queue: &Arc<str>, plugin: &str, attached: bool) {
        let mut attachments = self.attachments.lock().expect("attachments lock poisoned");
        attachments.retain(|(q, p)| !(q == queue && p == plugin));
        if attached {
            attachments.push((queue.clone(), plugin.to_owned()));
        }
    }

    /// The queues, on every shard, with an attachment of handler `plugin`.
    pub fn attached_queues(&self, plugin: &str) -> Vec<String> {
        let attachments = self.attachments.lock().expect("attachments lock poisoned");
        let of_plugin = attachments.iter().filter(|(_, p)| p == plugin);
        of_plugin.map(|(queue, _)| queue.to_string()).collect()
    }

    /// Every queue name, on every shard.
    pub fn names(&self) -> Vec<Arc<str>> {
        let directory = self
            .directory
            .read()
            .expect("queue directory lock poisoned");
        directory.keys().cloned().collect()
    }

    fn note(&self, name: &Arc<str>, queue: &Queue) {
        if self.shards == 1 {
            return;
        }
        let card = QueueCard {
            exclusive_owner: queue.spec.exclusive_owner,
            stored: queue.is_stored(),
            declared_by: queue.declared_by.clone(),
        };
        let mut directory = self
            .directory
            .write()
            .expect("queue directory lock poisoned");
        directory.insert(name.clone(), card);
    }

    fn forget(&self, name: &str) {
        if self.shards == 1 {
            return;
        }
        let mut directory = self
            .directory
            .write()
            .expect("queue directory lock poisoned");
        directory.remove(name);
    }

    /// A new queue id, unique across shards.
    fn next_queue_id(&self) -> u64 {
        self.next_queue_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Ids below `id + 1` are taken (a recovered queue's).
    fn recovered_queue_id(&self, id: u64) {
        self.next_queue_id.fetch_max(id + 1, Ordering::Relaxed);
    }
}

/// One shard's queues and their timers.
pub(super) struct QueueShards {
    placement: Arc<Placement>,
    /// The index of this shard.
    shard: usize,
    queues: FastMap<Arc<str>, Queue>,
    /// (time, queue) wake-ups for delays and expiry, earliest first; stale ones are
    /// harmless (a tick with nothing due).
    timers: BinaryHeap<Reverse<(u64, Arc<str>)>>,
}

impl QueueShards {
    pub fn new(placement: Arc<Placement>, shard: usize) -> Self {
        QueueShards {
            placement,
            shard,
            queues: FastMap::default(),
            timers: BinaryHeap::new(),
        }
    }

    pub fn placement(&self) -> &Arc<Placement> {
        &self.placement
    }

    /// The index of this shard (0: the home shard).
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// The shard queue `name` lives on.
    pub fn shard_of(&self, name: &str) -> usize {
        self.placement.shard_of(name)
    }

    /// Whether queue `name` would live here.
    pub fn is_local(&self, name: &str) -> bool {
        self.placement.shard_of(name) == self.shard
    }

    /// Queue `name`, if it lives on any shard: this one's `Arc`, or the directory's.
    pub fn existing(&self, name: &str) -> Option<Arc<str>> {
        match self.queues.get_key_value(name) {
            Some((name, _)) => Some(name.clone()),
            None if self.placement.shards > 1 && !self.is_local(name) => self.placement.name(name),
            None => None,
        }
    }

    /// What is known of queue `name`, here or on another shard.
    pub fn card(&self, name: &str) -> Option<QueueCard> {
        match self.queues.get(name) {
            Some(queue) => Some(QueueCard {
                exclusive_owner: queue.spec.exclusive_owner,
                stored: queue.is_stored(),
                declared_by: queue.declared_by.clone(),
            }),
            None if self.placement.shards > 1 => self.placement.card(name),
            None => None,
        }
    }

    /// A new queue id, unique across shards and runs.
    pub fn next_queue_id(&self) -> u64 {
        self.placement.next_queue_id()
    }

    /// A recovered queue's id is taken.
    pub fn recovered_queue_id(&self, id: u64) {
        self.placement.recovered_queue_id(id)
    }

    pub fn get(&self, name: &str) -> Option<&Queue> {
        self.queues.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Queue> {
        self.queues.get_mut(name)
    }

    pub fn get_key_value(&self, name: &str) -> Option<(&Arc<str>, &Queue)> {
        self.queues.get_key_value(name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.queues.contains_key(name)
    }

    pub fn insert(&mut self, name: Arc<str>, queue: Queue) {
        debug_assert!(self.is_local(&name), "a queue lives on its own shard");
        self.placement.note(&name, &queue);
        self.queues.insert(name, queue);
    }

    pub fn remove(&mut self, name: &str) -> Option<Queue> {
        let removed = self.queues.remove(name);
        if removed.is_some() {
            self.placement.forget(name);
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// This shard's queues.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Queue)> {
        self.queues.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &Queue> {
        self.queues.values()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.queues.keys()
    }

    /// Makes sure queue `name`'s shard wakes up for its next deadline.
    pub fn schedule(&mut self, name: &Arc<str>) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        if let Some(deadline) = queue.next_deadline()
            && queue.wakeup.is_none_or(|w| deadline < w)
        {
            queue.wakeup = Some(deadline);
            self.timers.push(Reverse((deadline, name.clone())));
        }
    }

    /// The earliest wake-up, in ms since the epoch.
    pub fn next_wakeup(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((due, _))| *due)
    }

    /// A queue whose wake-up is due at `now` (its wake-up cleared), if any.
    pub fn pop_due(&mut self, now: u64) -> Option<Arc<str>> {
        while let Some(Reverse((due, _))) = self.timers.peek()
            && *due <= now
        {
            let Reverse((_, name)) = self.timers.pop().expect("peeked");
            if let Some(queue) = self.queues.get_mut(&name) {
                queue.wakeup = None;
                return Some(name);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Placement;

    #[test]
    fn every_name_has_one_shard() {
        let shards = Placement::new(4);
        let mut used = [false; 4];
        for i in 0..64 {
            let name = format!("q{i}");
            let shard = shards.shard_of(&name);
            assert_eq!(shard, shards.shard_of(&name));
            used[shard] = true;
        }
        assert!(used.iter().all(|u| *u), "64 names spread over the 4 shards");
    }
}
