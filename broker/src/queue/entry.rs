//! A message in a queue, with what the queue knows of it.

use std::cmp::Reverse;
use std::sync::Arc;

use super::{ReadyKey, Removed};
use crate::message::Message;

/// A message in a queue.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the queue; also the message's key in the store.
    pub seq: u64,
    pub message: Arc<Message>,
    /// Deliveries so far.
    pub delivery_count: u32,
    /// The message is in the store (persistent message in a durable queue).
    pub stored: bool,
    /// The store also holds its delivery count / schedule.
    pub state_stored: bool,
    /// Its priority in this queue (0 unless the queue has `max_priority`).
    pub priority: u8,
    /// When it expires (ms since the epoch), from its own and the queue's TTL.
    pub expires_at: Option<u64>,
}

impl Entry {
    pub fn new(seq: u64, message: Arc<Message>, stored: bool) -> Self {
        Entry {
            seq,
            message,
            delivery_count: 0,
            stored,
            state_stored: false,
            priority: 0,
            expires_at: None,
        }
    }

    pub(super) fn ready_key(&self) -> ReadyKey {
        (Reverse(self.priority), self.seq)
    }

    pub(super) fn removed(&self) -> Removed {
        Removed {
            seq: self.seq,
            stored: self.stored,
            state_stored: self.state_stored,
        }
    }
}
