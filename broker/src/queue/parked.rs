//! How a ready message is held: shared with the publisher's other queues, packed in its
//! storage encoding (a deep queue), or only on disk (a deep stored queue, see `paging`).

use std::cmp::Reverse;
use std::sync::Arc;

use super::packing::unpack;
use super::{Entry, ReadyKey, Removed};
use crate::message::Message;

/// A ready message's body and metadata.
#[derive(Debug)]
pub(super) enum Held {
    Shared(Arc<Message>),
    /// Packed (`packing.rs`) in one exact allocation.
    Packed(Box<[u8]>),
    /// Only in the store (a committed message of a deep stored queue).
    OnDisk {
        body_len: u64,
    },
}

/// A ready message as the queue holds it (its seq and priority are its key).
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) held: Held,
    pub(super) delivery_count: u32,
    pub(super) stored: bool,
    pub(super) state_stored: bool,
    /// `NEVER` for none: an `Option` would add 8 bytes to every ready message.
    pub(super) expires_at: u64,
}

pub(super) const NEVER: u64 = u64::MAX;

impl Parked {
    /// A copy holding `message` (for a paged-out one, read back) or its own body.
    pub(super) fn copy(&self, message: Option<Arc<Message>>) -> Parked {
        let held = match (&self.held, message) {
            (_, Some(message)) => Held::Shared(message),
            (Held::Shared(message), None) => Held::Shared(message.clone()),
            (Held::Packed(bytes), None) => Held::Packed(bytes.clone()),
            (Held::OnDisk { body_len }, None) => Held::OnDisk {
                body_len: *body_len,
            },
        };
        Parked { held, ..*self }
    }

    pub(super) fn removed(&self, (_, seq): ReadyKey) -> Removed {
        Removed {
            seq,
            stored: self.stored,
            state_stored: self.state_stored,
        }
    }

    /// The entry of an in-memory message (a paged-out one is read back first).
    pub(super) fn unpark(self, (Reverse(priority), seq): ReadyKey) -> Entry {
        Entry {
            seq,
            message: self.held.message(),
            delivery_count: self.delivery_count,
            stored: self.stored,
            state_stored: self.state_stored,
            priority,
            expires_at: (self.expires_at != NEVER).then_some(self.expires_at),
        }
    }
}

impl Held {
    pub(super) fn message(self) -> Arc<Message> {
        match self {
            Held::Shared(message) => message,
            Held::Packed(bytes) => Arc::new(unpack(&bytes)),
            Held::OnDisk { .. } => unreachable!("paged-out messages are read back first"),
        }
    }

    pub(super) fn on_disk(&self) -> bool {
        matches!(self, Held::OnDisk { .. })
    }
}
