//! Paging: a stored queue deeper than its `max_in_memory_length` keeps the bodies of the
//! rest of its ready messages only in the store. A body leaves memory once the batch that
//! stored it has committed, and comes back a run at a time when the message reaches the
//! head, expires, is evicted, peeked at or taken out; recovery places such messages from
//! their metadata alone.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use super::{Held, NEVER, Parked, Queue, ReadyKey};
use crate::message::{Message, Placement};
use crate::store::StoreReader;

/// Ready messages read back from the store at a time (one read transaction).
pub(super) const PAGE_IN_RUN: usize = 1024;

/// A stored queue's link to the store for paging.
#[derive(Debug)]
pub(super) struct Paging {
    pub(super) reader: StoreReader,
    /// (batch, ready key) of stored messages placed past the in-memory limit, waiting for
    /// the batch that stores them to commit before they leave memory.
    pub(super) pending: std::collections::VecDeque<(u64, ReadyKey)>,
}

impl Queue {
    /// Lets this (stored) queue keep the bodies of ready messages past its
    /// `max_in_memory_length` only in the store, reading them back before delivery.
    pub fn enable_paging(&mut self, reader: StoreReader) {
        self.paging = Some(Paging {
            reader,
            pending: Default::default(),
        });
    }

    /// Ready messages whose body is only in the store.
    pub fn paged_out_len(&self) -> usize {
        self.paged_out
    }

    /// Restores a ready message recovered without its body (it stays on disk; paging must
    /// be enabled): [`Queue::restore`] for the part of a backlog past the in-memory limit.
    pub fn restore_on_disk(
        &mut self,
        seq: u64,
        placement: Placement,
        enqueued_at: u64,
        delivery_count: u32,
    ) {
        debug_assert!(
            self.paging.is_some(),
            "a queue without paging cannot read bodies"
        );
        self.next_seq = self.next_seq.max(seq + 1);
        let key = (
            Reverse(self.policy.effective_priority(placement.priority)),
            seq,
        );
        let expires_at = self.expires_at(placement.expiration_ms, enqueued_at);
        if let Some(at) = expires_at {
            self.expiring.insert((at, key));
        }
        self.queued_bytes += placement.body_len;
        self.paged_out += 1;
        let parked = Parked {
            held: Held::OnDisk {
                body_len: placement.body_len,
            },
            delivery_count,
            stored: true,
            state_stored: delivery_count > 0,
            expires_at: expires_at.unwrap_or(NEVER),
        };
        self.ready.insert(key, parked);
    }

    /// Drops the bodies of waiting stored messages whose batch has committed.
    pub(super) fn page_out_committed(&mut self) {
        let Some(paging) = &mut self.paging else {
            return;
        };
        if paging.reader.has_failed() {
            // Which newer messages are on disk is no longer known: they stay in memory
            // (those paged out before the failure are still read back).
            paging.pending.clear();
            return;
        }
        while let Some(&(batch, key)) = paging.pending.front()
            && paging.reader.is_committed(batch)
        {
            paging.pending.pop_front();
            if let Some(parked) = self.ready.get_mut(&key)
                && let Held::Shared(message) = &parked.held
            {
                let body_len = message.body_len() as u64;
                parked.held = Held::OnDisk { body_len };
                self.paged_out += 1;
            }
        }
    }

    /// Reads the bodies of up to [`PAGE_IN_RUN`] paged-out messages from `from` on (in
    /// delivery order) back into memory. A message missing from the store (it cannot be,
    /// short of outside damage) is logged and taken out. False if the store failed.
    pub(super) fn page_in(&mut self, from: ReadyKey) -> bool {
        let Some(paging) = &self.paging else {
            return false;
        };
        let keys: Vec<ReadyKey> = self
            .ready
            .range(from..)
            .filter(|(_, parked)| parked.held.on_disk())
            .map(|(key, _)| *key)
            .take(PAGE_IN_RUN)
            .collect();
        let Some(messages) = self.read(&paging.reader, &keys) else {
            return false;
        };
        for (key, message) in keys.into_iter().zip(messages) {
            self.paged_out -= 1;
            match message {
                Some(message) => {
                    self.ready.get_mut(&key).expect("listed above").held =
                        Held::Shared(Arc::new(message));
                }
                None => {
                    tracing::error!(queue = %self.name, seq = key.1, "paged-out message missing from the store; dropped");
                    let parked = self.ready.remove(&key).expect("listed above");
                    if parked.expires_at != NEVER {
                        self.expiring.remove(&(parked.expires_at, key));
                    }
                    if let Held::OnDisk { body_len } = parked.held {
                        self.queued_bytes -= body_len;
                    }
                }
            }
        }
        true
    }

    /// Reads the bodies of paged-out messages without changing the queue; failures are
    /// logged and leave messages out.
    pub(super) fn read_back(
        &self,
        keys: impl Iterator<Item = ReadyKey>,
    ) -> HashMap<ReadyKey, Arc<Message>> {
        let keys: Vec<ReadyKey> = keys.collect();
        let (Some(paging), false) = (&self.paging, keys.is_empty()) else {
            return HashMap::new();
        };
        let messages = self.read(&paging.reader, &keys).unwrap_or_default();
        keys.into_iter()
            .zip(messages)
            .filter_map(|(key, m)| Some((key, Arc::new(m?))))
            .collect()
    }

    /// The stored messages of `keys`, in order (`None` for one not in the store); `None`
    /// (logged) if the store cannot be read.
    fn read(&self, reader: &StoreReader, keys: &[ReadyKey]) -> Option<Vec<Option<Message>>> {
        let seqs: Vec<u64> = keys.iter().map(|(_, seq)| *seq).collect();
        reader
            .messages(self.id, &seqs)
            .inspect_err(|e| {
                tracing::error!(queue = %self.name, error = %e, "cannot read paged-out messages");
            })
            .ok()
    }
}
