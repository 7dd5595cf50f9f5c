//! The enqueue stage: the one way a message goes into a queue, for publishes, dead
//! letters, requeued dead letters and what handlers publish alike (its store operation
//! joins the turn's commit).

use std::sync::Arc;

use super::{DeathReason, Router};
use crate::message::Message;
use crate::queue::{Entry, Push};
use crate::store::StoreOp;

/// A queue refused a message (`overflow: reject_publish`).
pub(super) struct QueueFull;

impl Router {
    /// Appends `message` to queue `name` at time `now`, persisting it when both are
    /// durable; messages the queue evicts to make room are dead-lettered. Returns whether
    /// it was persisted.
    pub(super) fn enqueue(
        &mut self,
        name: &Arc<str>,
        message: &Arc<Message>,
        now: u64,
    ) -> Result<bool, QueueFull> {
        let (persisted, evicted) = self.push_into(name, message, now)?;
        for entry in evicted {
            self.dead_letter(name, entry, DeathReason::MaxLength, now);
        }
        Ok(persisted)
    }

    /// The one place a message enters a queue: push, persist, mark for dispatch. Returns
    /// whether it was persisted and what `max_length` evicted (to dead-letter).
    pub(super) fn push_into(
        &mut self,
        name: &Arc<str>,
        message: &Arc<Message>,
        now: u64,
    ) -> Result<(bool, Vec<Entry>), QueueFull> {
        let Some(queue) = self.queues.get_mut(name) else {
            return Ok((false, Vec::new()));
        };
        let persist = message.properties.persistent && queue.is_stored();
        let Push::Accepted { seq, evicted } = queue.push(message.clone(), persist, now) else {
            return Err(QueueFull);
        };
        queue.counters.published += 1;
        if persist {
            self.turn.store(StoreOp::PutMessage {
                queue: queue.id,
                seq,
                enqueued_at: now,
                message: message.clone(),
            });
        }
        self.turn.to_dispatch.insert(name.clone());
        Ok((persist, evicted))
    }
}
