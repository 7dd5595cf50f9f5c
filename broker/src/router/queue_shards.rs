//! The queues, partitioned into shards: each queue lives on exactly one shard, placed by
//! its name, with its delay and expiry timers; a delivery's tag names the shard of its
//! queue, so an ack finds its shard without a lookup. All shards are still applied by the
//! one router task (`--shards`, default 1); each is the part a shard thread of its own
//! will own (see docs/architecture.md, "Next steps").

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::fast_map::FastMap;
use crate::queue::Queue;

/// Every queue, each on the shard its name hashes to.
pub(super) struct QueueShards {
    shards: Vec<QueueShard>,
    /// Seeded at random per run, as the maps are: clients choose queue names, and a fixed
    /// hash would let them pile every queue onto one shard.
    placement: foldhash::fast::RandomState,
    tags: DeliveryTags,
    /// Queue ids are stored keys: unique across shards and runs.
    pub next_queue_id: u64,
}

/// The queues of one shard and their timers.
struct QueueShard {
    queues: FastMap<Arc<str>, Queue>,
    /// (time, queue) wake-ups for delays and expiry, earliest first; stale ones are
    /// harmless (a tick with nothing due).
    timers: BinaryHeap<Reverse<(u64, Arc<str>)>>,
}

impl QueueShards {
    pub fn new(shards: usize) -> Self {
        let shards = shards.max(1);
        QueueShards {
            shards: (0..shards)
                .map(|_| QueueShard {
                    queues: FastMap::default(),
                    timers: BinaryHeap::new(),
                })
                .collect(),
            placement: Default::default(),
            tags: DeliveryTags {
                bits: usize::BITS - (shards - 1).leading_zeros(),
                shards,
            },
            next_queue_id: 1,
        }
    }

    /// The shard queue `name` lives on.
    pub fn shard_of(&self, name: &str) -> usize {
        match self.shards.len() {
            1 => 0,
            n => (self.placement.hash_one(name) % n as u64) as usize,
        }
    }

    /// How delivery tags name these shards.
    pub fn tags(&self) -> DeliveryTags {
        self.tags
    }

    fn home(&self, name: &str) -> &QueueShard {
        &self.shards[self.shard_of(name)]
    }

    fn home_mut(&mut self, name: &str) -> &mut QueueShard {
        let shard = self.shard_of(name);
        &mut self.shards[shard]
    }

    pub fn get(&self, name: &str) -> Option<&Queue> {
        self.home(name).queues.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Queue> {
        self.home_mut(name).queues.get_mut(name)
    }

    pub fn get_key_value(&self, name: &str) -> Option<(&Arc<str>, &Queue)> {
        self.home(name).queues.get_key_value(name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.home(name).queues.contains_key(name)
    }

    pub fn insert(&mut self, name: Arc<str>, queue: Queue) {
        self.home_mut(&name).queues.insert(name, queue);
    }

    pub fn remove(&mut self, name: &str) -> Option<Queue> {
        self.home_mut(name).queues.remove(name)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.queues.len()).sum()
    }

    /// Every queue, shard by shard.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Queue)> {
        self.shards.iter().flat_map(|s| s.queues.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &Queue> {
        self.iter().map(|(_, queue)| queue)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.iter().map(|(name, _)| name)
    }

    /// Makes sure queue `name`'s shard wakes up for its next deadline.
    pub fn schedule(&mut self, name: &Arc<str>) {
        let shard = self.home_mut(name);
        let Some(queue) = shard.queues.get_mut(name) else {
            return;
        };
        if let Some(deadline) = queue.next_deadline()
            && queue.wakeup.is_none_or(|w| deadline < w)
        {
            queue.wakeup = Some(deadline);
            shard.timers.push(Reverse((deadline, name.clone())));
        }
    }

    /// The earliest wake-up of any shard, in ms since the epoch.
    pub fn next_wakeup(&self) -> Option<u64> {
        self.shards
            .iter()
            .filter_map(|s| s.timers.peek().map(|Reverse((due, _))| *due))
            .min()
    }

    /// A queue whose wake-up is due at `now` (its wake-up cleared), if any.
    pub fn pop_due(&mut self, now: u64) -> Option<Arc<str>> {
        self.shards.iter_mut().find_map(|shard| shard.pop_due(now))
    }
}

/// How a delivery tag names the shard of the queue it came from: a connection's delivery
/// sequence shifted left, the shard's index in the low bits. Tags still grow with each
/// delivery of the connection, whichever shard made it, so an ack with `multiple`
/// ("every tag up to this one") keeps its meaning.
#[derive(Debug, Clone, Copy)]
pub(super) struct DeliveryTags {
    /// Low bits that name the shard (0 with one shard: tags are then the sequence itself,
    /// 1, 2, 3, ...).
    bits: u32,
    shards: usize,
}

impl DeliveryTags {
    /// The tag of a connection's `seq`-th delivery, from a queue on `shard`.
    pub fn tag(self, seq: u64, shard: usize) -> u64 {
        (seq << self.bits) | shard as u64
    }

    /// The shard whose queue delivered `tag` (any number: a client may ack anything).
    pub fn shard_of(self, tag: u64) -> usize {
        let shard = (tag & ((1u64 << self.bits) - 1)) as usize;
        shard.min(self.shards - 1)
    }

    pub fn shards(self) -> usize {
        self.shards
    }
}

impl QueueShard {
    fn pop_due(&mut self, now: u64) -> Option<Arc<str>> {
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
    use super::QueueShards;

    #[test]
    fn a_tag_names_its_shard_and_tags_grow_with_the_sequence() {
        let one = QueueShards::new(1).tags();
        assert_eq!(one.tag(7, 0), 7, "one shard: the sequence itself");
        assert_eq!(one.shard_of(7), 0);
        for shards in [2, 3, 4, 5, 8] {
            let many = QueueShards::new(shards).tags();
            for shard in 0..shards {
                let tag = many.tag(41, shard);
                assert_eq!(many.shard_of(tag), shard);
                assert!(many.tag(42, 0) > tag, "a later delivery has a larger tag");
            }
            // A made-up tag still names some shard.
            assert!(many.shard_of(u64::MAX) < shards);
        }
    }

    #[test]
    fn every_name_has_one_shard() {
        let shards = QueueShards::new(4);
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
