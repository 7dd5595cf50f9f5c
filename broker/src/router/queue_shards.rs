//! The queues, partitioned into shards: each queue lives on exactly one shard, the one
//! with the fewest queues when it was declared (or recovered), and each shard is owned by
//! its own router task (`--queue-shards N`, default
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
    /// For a name with no queue and no declare under way (a publish to a queue that does
    /// not exist, a `.dlq` made on first use): a hash of it, seeded at random per run as
    /// the maps are, so clients cannot choose names that pile onto one shard.
    seed: foldhash::fast::RandomState,
    /// Queue ids are stored keys: unique across shards and runs.
    next_queue_id: AtomicU64,
    /// Every queue of every shard, and the new ones being declared. Not kept with one
    /// shard: its queues are all local.
    directory: RwLock<Directory>,
    /// Counts changes to the directory: each thread's [`ShardCache`] is good while it has
    /// not moved. (Every publish asks where its queues live; a read lock taken by every
    /// shard thread each time would move the lock's cache line between their cores.)
    version: AtomicU64,
    /// Tells this placement's cached answers from another's (tests run several brokers).
    id: u64,
    /// (queue, handler plugin) of every handler attachment, on every shard: what home
    /// checks before deleting a plugin.
    attachments: std::sync::Mutex<Vec<(Arc<str>, String)>>,
}

static NEXT_PLACEMENT_ID: AtomicU64 = AtomicU64::new(1);

/// At most this many names in a thread's [`ShardCache`] (then it starts over).
const SHARD_CACHE_NAMES: usize = 4096;

/// A thread's answers of [`Placement::shard_of`], for one placement at one version.
#[derive(Default)]
struct ShardCache {
    placement: u64,
    version: u64,
    shards: FastMap<Box<str>, usize>,
}

thread_local! {
    static SHARD_CACHE: std::cell::RefCell<ShardCache> = std::cell::RefCell::default();
}

#[derive(Default)]
struct Directory {
    /// Written by the shard that owns each queue (declare, delete), read by the handle
    /// (where a command goes) and where another shard's queue must be known (binds,
    /// dead-letter and alternate targets, per-user queue limits).
    cards: FastMap<Arc<str>, QueueCard>,
    /// Names declared (or recovered) and not yet applied by their shard: the shard chosen,
    /// so that every declare of a name goes to one shard until the queue exists.
    declaring: FastMap<Arc<str>, usize>,
    /// Queues and declares under way per shard: a new queue goes where there are fewest.
    counts: Vec<usize>,
}

/// What other shards know of a queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueCard {
    /// The shard it lives on.
    pub shard: usize,
    pub exclusive_owner: Option<ConnId>,
    /// Durable and not exclusive: its bindings and messages are stored.
    pub stored: bool,
    pub declared_by: Option<Arc<str>>,
}

impl QueueCard {
    fn of(queue: &Queue, shard: usize) -> Self {
        QueueCard {
            shard,
            exclusive_owner: queue.spec.exclusive_owner,
            stored: queue.is_stored(),
            declared_by: queue.declared_by.clone(),
        }
    }
}

impl Placement {
    pub fn new(shards: usize) -> Self {
        let shards = shards.max(1);
        Placement {
            shards,
            seed: Default::default(),
            next_queue_id: AtomicU64::new(1),
            directory: RwLock::new(Directory {
                counts: vec![0; shards],
                ..Default::default()
            }),
            attachments: Default::default(),
            version: AtomicU64::new(0),
            id: NEXT_PLACEMENT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard queue `name` lives on (or is being declared on; for a name with
    /// neither, where a `.dlq` of that name would be made).
    pub fn shard_of(&self, name: &str) -> usize {
        if self.shards == 1 {
            return 0;
        }
        let version = self.version.load(Ordering::Acquire);
        let cached = SHARD_CACHE.with(|cache| {
            let cache = cache.borrow();
            let fresh = cache.placement == self.id && cache.version == version;
            fresh.then(|| cache.shards.get(name).copied()).flatten()
        });
        if let Some(shard) = cached {
            return shard;
        }
        let shard = {
            let directory = self.read();
            match directory.cards.get(name) {
                Some(card) => card.shard,
                None => match directory.declaring.get(name) {
                    Some(shard) => *shard,
                    None => self.hashed(name),
                },
            }
        };
        SHARD_CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.placement != self.id
                || cache.version != version
                || cache.shards.len() >= SHARD_CACHE_NAMES
            {
                cache.placement = self.id;
                cache.version = version;
                cache.shards.clear();
            }
            cache.shards.insert(name.into(), shard);
        });
        shard
    }

    fn hashed(&self, name: &str) -> usize {
        (self.seed.hash_one(name) % self.shards as u64) as usize
    }

    /// Where a declare of queue `name` goes: its shard if it exists or is being declared,
    /// else the shard with the fewest queues (ties: from the name's hash on), which it is
    /// then reserved to until that shard has applied a declare of it.
    pub fn place_declare(&self, name: &str) -> usize {
        if self.shards == 1 {
            return 0;
        }
        let known = |directory: &Directory| {
            let card = directory.cards.get(name).map(|card| card.shard);
            card.or_else(|| directory.declaring.get(name).copied())
        };
        if let Some(shard) = known(&self.read()) {
            return shard;
        }
        let mut directory = self.write();
        if let Some(shard) = known(&directory) {
            return shard;
        }
        let start = self.hashed(name);
        let shard = (0..self.shards)
            .map(|i| (start + i) % self.shards)
            .min_by_key(|shard| directory.counts[*shard])
            .expect("at least one shard");
        directory.declaring.insert(name.into(), shard);
        directory.counts[shard] += 1;
        shard
    }

    /// A declare of queue `name` was applied (made, redeclared or refused): it no longer
    /// holds a place (a queue made holds its own, see [`Self::claim`]).
    pub fn declare_applied(&self, name: &str) {
        if self.shards == 1 {
            return;
        }
        let mut directory = self.write();
        if let Some(shard) = directory.declaring.remove(name) {
            directory.counts[shard] -= 1;
        }
    }

    /// Queue `name` is being made on `card.shard`: refused (with the other shard) when a
    /// queue of that name was made on another shard meanwhile (declares racing a refused
    /// one: every other declare goes to the queue's shard).
    pub fn claim(&self, name: &Arc<str>, card: QueueCard) -> Result<(), usize> {
        if self.shards == 1 {
            return Ok(());
        }
        let mut directory = self.write();
        if let Some(other) = directory.cards.get(&**name)
            && other.shard != card.shard
        {
            return Err(other.shard);
        }
        if let Some(shard) = directory.declaring.remove(&**name) {
            directory.counts[shard] -= 1;
        }
        let shard = card.shard;
        if directory.cards.insert(name.clone(), card).is_none() {
            directory.counts[shard] += 1;
        }
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        self.directory
            .read()
            .expect("queue directory lock poisoned")
    }

    /// The directory, to change: cached answers are stale from here on (a reader that
    /// sees the new version takes the read lock after this writer is done).
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Directory> {
        let directory = (self.directory.write()).expect("queue directory lock poisoned");
        self.version.fetch_add(1, Ordering::AcqRel);
        directory
    }

    /// What is known of queue `name`, on whichever shard it lives (with one shard: `None`,
    /// ask the shard).
    pub fn card(&self, name: &str) -> Option<QueueCard> {
        self.read().cards.get(name).cloned()
    }

    /// The directory's own `Arc` of queue `name`, if it exists on any shard.
    pub fn name(&self, name: &str) -> Option<Arc<str>> {
        let directory = self.read();
        directory
            .cards
            .get_key_value(name)
            .map(|(name, _)| name.clone())
    }

    /// How many queues `user` declared, on every shard.
    pub fn declared_by(&self, user: &str) -> usize {
        let mine = |card: &&QueueCard| card.declared_by.as_deref() == Some(user);
        self.read().cards.values().filter(mine).count()
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
        self.read().cards.keys().cloned().collect()
    }

    /// Queue `name` of `shard` is made (or recovered).
    fn note(&self, name: &Arc<str>, queue: &Queue, shard: usize) {
        let card = QueueCard::of(queue, shard);
        // Its shard applies its commands in order: no other shard made it meanwhile.
        let _ = self.claim(name, card);
    }

    fn forget(&self, name: &str) {
        if self.shards == 1 {
            return;
        }
        let mut directory = self.write();
        if let Some(card) = directory.cards.remove(name) {
            directory.counts[card.shard] -= 1;
        }
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
            Some(queue) => Some(QueueCard::of(queue, self.shard)),
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

    /// Queue `name` is being made here (see [`Placement::claim`]).
    pub fn claim(&self, name: &Arc<str>, queue: &Queue) -> Result<(), usize> {
        self.placement.claim(name, QueueCard::of(queue, self.shard))
    }

    pub fn insert(&mut self, name: Arc<str>, queue: Queue) {
        debug_assert!(self.is_local(&name), "a queue lives on its own shard");
        self.placement.note(&name, &queue, self.shard);
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

    #[test]
    fn a_thread_asking_again_after_a_change_gets_the_new_shard_not_its_cached_answer() {
        let placement = Placement::new(2);
        let name: std::sync::Arc<str> = "orders".into();
        // Asked before the queue exists: its hash's shard, now cached on this thread.
        let hashed = placement.shard_of(&name);
        assert_eq!(placement.shard_of(&name), hashed);
        let elsewhere = 1 - hashed;
        let card = super::QueueCard {
            shard: elsewhere,
            exclusive_owner: None,
            stored: true,
            declared_by: None,
        };
        placement.claim(&name, card).unwrap();
        assert_eq!(placement.shard_of(&name), elsewhere);
        // Another placement's answers are its own.
        let other = Placement::new(2);
        assert_eq!(other.shard_of(&name), hashed_by(&other, &name));
        assert_eq!(placement.shard_of(&name), elsewhere);
        placement.forget(&name);
        assert_eq!(placement.shard_of(&name), hashed);
    }

    fn hashed_by(placement: &Placement, name: &str) -> usize {
        placement.hashed(name)
    }

    #[test]
    fn declared_names_go_where_there_are_fewest_queues_and_keep_their_shard_until_applied() {
        let placement = Placement::new(2);
        let shards: Vec<usize> = (0..8)
            .map(|i| placement.place_declare(&format!("q{i}")))
            .collect();
        let on_0 = shards.iter().filter(|s| **s == 0).count();
        assert_eq!(on_0, 4, "8 declares over 2 shards: 4 each, {shards:?}");
        // Declared again before it is applied: the same shard, counted once.
        assert_eq!(placement.place_declare("q0"), shards[0]);
        assert_eq!(placement.shard_of("q0"), shards[0]);
        // Refused by its shard: no longer reserved, nor counted.
        placement.declare_applied("q0");
        assert_eq!(placement.read().counts.iter().sum::<usize>(), 7);
        // Made: it keeps its shard, and a maker on another shard is refused.
        let card = |shard| super::QueueCard {
            shard,
            exclusive_owner: None,
            stored: true,
            declared_by: None,
        };
        let q1: std::sync::Arc<str> = "q1".into();
        placement.claim(&q1, card(shards[1])).unwrap();
        placement.declare_applied("q1");
        assert_eq!(placement.shard_of("q1"), shards[1]);
        assert_eq!(placement.claim(&q1, card(1 - shards[1])), Err(shards[1]));
        placement.forget("q1");
        assert_eq!(placement.read().counts.iter().sum::<usize>(), 6);
    }
}
