//! A connection's delivery tags: 1, 2, 3, … (per AMQP channel), as clients of RabbitMQ
//! expect, whichever queue shard delivers; and which shard delivered each, so the handle
//! sends a settle to the shard that holds the delivery.

use std::collections::VecDeque;

/// Changes of delivering shard remembered per connection. A settle of a tag older than
/// the oldest goes to every shard, and the one holding it settles it.
const MAX_RUNS: usize = 1024;

/// Taken under the connection's delivery lock (see `conn.rs`), so tags reach the client
/// in the order they were given.
#[derive(Debug, Default)]
pub(super) struct DeliveryTags {
    last: u64,
    /// (first tag, shard) of each run of consecutive deliveries from one shard.
    runs: VecDeque<(u64, usize)>,
}

impl DeliveryTags {
    /// The tag of the connection's next delivery, from a queue on `shard`.
    pub fn next(&mut self, shard: usize) -> u64 {
        self.last += 1;
        if self.runs.back().map(|&(_, s)| s) != Some(shard) {
            if self.runs.len() == MAX_RUNS {
                self.runs.pop_front();
            }
            self.runs.push_back((self.last, shard));
        }
        self.last
    }

    /// The shard that delivered `tag`; `None` for a tag never given (a client may ack
    /// anything) or one older than the runs remembered.
    pub fn shard_of(&self, tag: u64) -> Option<usize> {
        if tag == 0 || tag > self.last {
            return None;
        }
        let after = self.runs.partition_point(|&(first, _)| first <= tag);
        after.checked_sub(1).map(|run| self.runs[run].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_count_up_from_one_and_name_the_shard_that_delivered_each() {
        let mut tags = DeliveryTags::default();
        let given: Vec<(u64, usize)> = [0, 0, 2, 1, 1, 0]
            .into_iter()
            .map(|shard| (tags.next(shard), shard))
            .collect();
        assert_eq!(
            given.iter().map(|g| g.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        for (tag, shard) in given {
            assert_eq!(tags.shard_of(tag), Some(shard), "tag {tag}");
        }
        assert_eq!(tags.shard_of(0), None);
        assert_eq!(tags.shard_of(7), None, "not given yet");
    }

    #[test]
    fn the_oldest_runs_are_forgotten_past_the_limit() {
        let mut tags = DeliveryTags::default();
        for i in 0..MAX_RUNS + 10 {
            tags.next(i % 2);
        }
        assert_eq!(tags.shard_of(1), None, "forgotten: settled on every shard");
        let last = (MAX_RUNS + 10) as u64;
        assert_eq!(tags.shard_of(last), Some((MAX_RUNS + 9) % 2));
        assert_eq!(tags.shard_of(11), Some(0));
    }
}
