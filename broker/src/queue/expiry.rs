//! `expires` (RabbitMQ's `x-expires`): a queue unused for that long is deleted, with its
//! messages. Used means: declared or redeclared, read with `get`, or having consumers
//! (the period starts again when the last one leaves). Looking at it (`queue_info`, a
//! passive declare) is no use.

use super::Queue;

impl Queue {
    /// The queue was used at `now`.
    pub fn touch(&mut self, now: u64) {
        self.last_used = now;
    }

    /// When the queue expires if nothing uses it; `None`: it does not (no `expires`, or
    /// it has consumers).
    pub fn unused_deadline(&self) -> Option<u64> {
        let after = self.policy.expires_ms?;
        self.consumers
            .is_empty()
            .then(|| self.last_used.saturating_add(after))
    }

    /// Whether the queue has been unused for its `expires` at `now`.
    pub fn expired_unused(&self, now: u64) -> bool {
        self.unused_deadline().is_some_and(|due| due <= now)
    }
}
