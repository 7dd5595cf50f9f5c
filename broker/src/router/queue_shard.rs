//! The queues one router turn owns, with their timers (delays, expiry) and the next
//! queue id. Today one router owns every queue; this is the part a shard thread of its
//! own will own (see docs/architecture.md, "Next steps").

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::fast_map::FastMap;
use std::sync::Arc;

use crate::queue::Queue;

pub(super) struct QueueShard {
    pub queues: FastMap<Arc<str>, Queue>,
    /// (time, queue) wake-ups for delays and expiry, earliest first; stale ones are
    /// harmless (a tick with nothing due).
    timers: BinaryHeap<Reverse<(u64, Arc<str>)>>,
    pub next_queue_id: u64,
}

impl QueueShard {
    pub fn new() -> Self {
        QueueShard {
            queues: FastMap::default(),
            timers: BinaryHeap::new(),
            next_queue_id: 1,
        }
    }

    /// Makes sure the shard wakes up for queue `name`'s next deadline.
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
