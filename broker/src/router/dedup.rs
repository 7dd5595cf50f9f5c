//! Idempotent publish: a queue with a `dedup_window` takes each message id once within
//! the window. A publish repeating one is confirmed (after the commit that holds the
//! first, if it is still pending) and counted, but not enqueued again. The ids of stored
//! messages are stored too, so the window survives a restart.

use std::sync::Arc;

use super::Router;
use crate::message::Message;
use crate::store::StoreOp;

/// What the dedup window says of a publish to one queue.
pub(super) enum Taken {
    /// Enqueue it (and call [`Router::record_message_id`] once it is).
    New,
    /// Its message id is in the window: not enqueued; `stored` when the queue is durable
    /// (its confirm waits for the commit).
    Duplicate { stored: bool },
}

impl Router {
    /// Whether queue `name` already took `message`'s id within its window.
    pub(super) fn check_message_id(
        &mut self,
        name: &Arc<str>,
        message: &Message,
        now: u64,
    ) -> Taken {
        let Some(queue) = self.queues.get_mut(name) else {
            return Taken::New;
        };
        let (Some(_), Some(id)) = (queue.policy.dedup_window_ms, &message.properties.message_id)
        else {
            return Taken::New;
        };
        if !queue.dedup.is_duplicate(id, now) {
            return Taken::New;
        }
        queue.counters.deduplicated += 1;
        Taken::Duplicate {
            stored: queue.is_stored(),
        }
    }

    /// Remembers the id of `message`, just enqueued into `name`, for the queue's window
    /// (stored with a stored message), and forgets the ids whose window has passed.
    pub(super) fn record_message_id(&mut self, name: &Arc<str>, message: &Message, now: u64) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        let (Some(window), Some(id)) =
            (queue.policy.dedup_window_ms, &message.properties.message_id)
        else {
            return;
        };
        let stored = queue.is_stored();
        for expired in queue.dedup.expire(now) {
            if stored {
                self.turn.store(StoreOp::DeleteDedup {
                    queue: queue.id,
                    message_id: expired,
                });
            }
        }
        let until = now.saturating_add(window);
        queue.dedup.record(id, until);
        if stored && message.properties.persistent {
            self.turn.store(StoreOp::PutDedup {
                queue: queue.id,
                message_id: id.clone(),
                until,
            });
        }
    }

    /// Puts the stored ids back into their queues' windows at startup; the ones whose
    /// window passed while the broker was down are deleted.
    pub(super) fn restore_message_ids(&mut self, ids: Vec<(u64, String, u64)>, now: u64) {
        let by_id: std::collections::HashMap<u64, Arc<str>> = self
            .queues
            .iter()
            .map(|(name, queue)| (queue.id, name.clone()))
            .collect();
        for (queue_id, message_id, until) in ids {
            match by_id
                .get(&queue_id)
                .and_then(|name| self.queues.get_mut(name))
            {
                Some(queue) if until > now && queue.policy.dedup_window_ms.is_some() => {
                    queue.dedup.record(&message_id, until);
                }
                _ => self.turn.store(StoreOp::DeleteDedup {
                    queue: queue_id,
                    message_id,
                }),
            }
        }
    }
}
