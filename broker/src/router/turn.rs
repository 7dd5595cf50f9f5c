//! What one router turn produces, as one record: the store operations and the replies
//! that wait for their commit (submitted together at the end of the turn), the queues to
//! hand messages out from, and the turn's dead letters to log.
//!
//! The router fills it while it applies a turn's commands; [`Router::end_turn`] empties
//! it. Nothing here outlives a turn.

use std::collections::BTreeMap;

use crate::fast_map::FastSet;
use std::sync::Arc;

use crate::store::{Completion, StoreOp, WriteBatch};

use super::Router;

#[derive(Default)]
pub(super) struct Turn {
    /// Store operations and the waiters for their commit: one batch for the store writer.
    store: WriteBatch,
    /// Queues that may have something to deliver at the end of the turn.
    pub to_dispatch: FastSet<Arc<str>>,
    /// Messages for other shards' queues, sent once the batch is submitted (see
    /// `forward.rs`).
    pub forwards: Vec<(usize, super::forward::Forwarded)>,
    /// Answered once the turn's forwards are sent ([`super::Command::TurnEnded`]).
    pub turn_ended: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Dead letters by (source queue, reason), logged as one line each.
    pub dead_letters: BTreeMap<(Arc<str>, &'static str), u64>,
    /// The wall clock, read once per turn: a turn applies up to a thousand commands in
    /// well under a millisecond, and reading the clock for each publish, delivery and
    /// settle was ~2 % of the broker's CPU.
    clock_ms: Option<u64>,
}

impl Turn {
    /// Adds `op` to the turn's commit.
    pub fn store(&mut self, op: StoreOp) {
        self.store.ops.push(op);
    }

    /// Adds `op`, if any, to the turn's commit.
    pub fn store_some(&mut self, op: Option<StoreOp>) {
        self.store.ops.extend(op);
    }

    /// How many store operations the turn has so far (see [`Self::take_ops_since`]).
    pub fn ops_len(&self) -> usize {
        self.store.ops.len()
    }

    /// The store operations added since the turn had `mark` of them, taken out.
    pub fn take_ops_since(&mut self, mark: usize) -> Vec<StoreOp> {
        self.store.ops.split_off(mark)
    }

    /// Runs `done` with the outcome of the turn's commit (after it, or at once if the
    /// store has stopped).
    pub fn on_commit(&mut self, done: Completion) {
        self.store.completions.push(done);
    }

    /// The time (ms since the epoch) this turn's work happens at.
    pub fn now_ms(&mut self) -> u64 {
        *self.clock_ms.get_or_insert_with(crate::clock::now_ms)
    }

    /// A new turn begins: the clock is read again at its first use.
    pub fn begin(&mut self) {
        self.clock_ms = None;
    }

    /// The turn's store batch, leaving an empty one.
    pub fn take_store(&mut self) -> WriteBatch {
        std::mem::take(&mut self.store)
    }
}

impl Router {
    /// The end of a turn: timers due (consumer timeouts too), deliveries, the commit, the
    /// dead-letter log.
    pub(super) fn end_turn(&mut self) {
        self.turn.begin();
        self.fire_timers();
        let now = self.turn.now_ms();
        self.check_ack_timeouts(now);
        self.dispatch();
        self.flush();
        self.send_forwards();
        for passed in self.turn.turn_ended.drain(..) {
            let _ = passed.send(());
        }
        self.log_dead_letters();
    }
}
