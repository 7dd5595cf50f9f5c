//! What one queue shard hands another: a message for a queue that lives there (a dead
//! letter, a publish routed by an alternate exchange, a requeued dead letter), and a
//! queue's removal for the home shard, which owns the bindings and handlers.
//!
//! A message moved between shards is stored by the target's commit. Forwards leave after
//! the source's turn has submitted its batch, so the target's batch is committed with it
//! or after it. A message with one copy on another shard takes its removal from the
//! source along (a dead letter, a requeued one): one commit stores the copy and removes
//! the original, as on one shard. With copies on several other shards, the removal (or a
//! publisher's confirm) waits on a [`Countdown`] for all their commits: a crash in between
//! keeps the message in both places (delivered twice, never lost).

use std::sync::Arc;

use super::enqueue::QueueFull;
use super::gather::{Countdown, Unstored};
use super::{Command, DeathReason, Outbound, Reply, Router};
use crate::message::Message;
use crate::protocol::{ErrorCode, RequestId, ServerFrame};
use crate::queue::ConnId;
use crate::store::StoreOp;

/// A message for a queue on another shard.
pub struct Forwarded {
    /// The queue (or, with `dlq_of`, the `.dlq` queue of that source, made if missing).
    pub queue: Arc<str>,
    pub dlq_of: Option<Arc<str>>,
    pub message: Arc<Message>,
    /// Its removal from the queue it left (a handler's output: the ack of the delivery
    /// that made it), stored with it.
    pub removal: Vec<StoreOp>,
    /// Counted down once the target's commit stored it (or it was refused).
    pub stored: Option<Arc<Countdown>>,
    /// What a refusal by the target queue (`reject_publish`) does.
    pub refused: OnRefusal,
    /// A dead letter: how many the event that made it has caused so far (see
    /// `dead_letter.rs`, `MAX_DEAD_LETTER_CHAIN`).
    pub chain: usize,
}

/// What happens to a forwarded message its queue refuses (full, `reject_publish`).
pub enum OnRefusal {
    /// Dropped, and counted on the queue (a dead letter, an alternate route's copy).
    Drop,
    /// Back to this queue, its removal with it: a requeued dead letter stays a dead letter.
    BackTo(Arc<str>),
    /// A handler's outputs: those of one delivery for this shard (consecutive, sharing
    /// `stored`) are enqueued all together or none, and a refusal fails the delivery.
    FailDelivery,
    /// A publish's copy for its alternate exchange's queue: refused as on one shard (the
    /// publisher gets `queue_full`; `reject_publish_dlx` dead-letters it).
    FailPublish,
}

impl Router {
    /// Whether this is the home shard (shard 0), which also owns the topology, plugins,
    /// handlers, users and vhosts.
    pub(super) fn is_home(&self) -> bool {
        self.queues.shard() == 0
    }

    /// Hands `forwarded` to the shard its queue lives on, once this turn's batch is
    /// submitted.
    pub(super) fn forward(&mut self, forwarded: Forwarded) {
        let shard = match &forwarded.dlq_of {
            Some(source) => self.queues.shard_of(&format!("{source}.dlq")),
            None => self.queues.shard_of(&forwarded.queue),
        };
        self.turn.forwards.push((shard, forwarded));
    }

    /// Sends the turn's forwards (after its batch was submitted), one command per shard:
    /// the target applies them in one turn, so they are stored in one commit.
    pub(super) fn send_forwards(&mut self) {
        if self.turn.forwards.is_empty() {
            return;
        }
        let mut by_shard: Vec<Vec<Forwarded>> = (0..self.peers.len()).map(|_| Vec::new()).collect();
        for (shard, forwarded) in self.turn.forwards.drain(..) {
            by_shard[shard].push(forwarded);
        }
        for (shard, forwards) in by_shard.into_iter().enumerate() {
            if !forwards.is_empty() && self.peers[shard].send(Command::Enqueue(forwards)).is_err() {
                tracing::warn!(shard, "queue shard stopped; messages not forwarded");
            }
        }
    }

    /// Messages another shard forwarded, into their queues here. A delivery's handler
    /// outputs are checked together first: none is enqueued if a queue would refuse one.
    pub(super) fn enqueue_forwards(&mut self, forwards: Vec<Forwarded>) {
        let mut forwards = forwards.into_iter().peekable();
        while let Some(first) = forwards.next() {
            if !matches!(first.refused, OnRefusal::FailDelivery) {
                self.enqueue_forwarded(first);
                continue;
            }
            let delivery = first.stored.as_ref().map(Arc::as_ptr);
            let mut outputs = vec![first];
            while let Some(next) = forwards.next_if(|f| {
                matches!(f.refused, OnRefusal::FailDelivery)
                    && f.stored.as_ref().map(Arc::as_ptr) == delivery
            }) {
                outputs.push(next);
            }
            let shares = outputs
                .iter()
                .map(|o| (&*o.queue, o.message.body_len() as u64));
            if self.refusing_queue(shares).is_some() {
                // Nothing stored, not even the ack riding along: the delivery fails.
                for output in outputs {
                    if let Some(countdown) = output.stored {
                        countdown.refused(output.queue);
                    }
                }
                continue;
            }
            for output in outputs {
                self.enqueue_forwarded(output);
            }
        }
    }

    /// A message another shard forwarded, into its queue here.
    fn enqueue_forwarded(&mut self, forwarded: Forwarded) {
        let now = self.turn.now_ms();
        let Forwarded {
            queue,
            dlq_of,
            message,
            removal,
            stored,
            refused: on_refusal,
            chain,
        } = forwarded;
        let target = match &dlq_of {
            Some(source) => Some(self.ensure_dlq(source)),
            None => self.queues.existing(&queue),
        };
        let refused = match &target {
            Some(name) => match self.push_into(name, &message, now) {
                Ok((_, evicted)) => {
                    for entry in evicted {
                        self.dead_letter_chain(name, entry, DeathReason::MaxLength, now, chain);
                    }
                    false
                }
                Err(QueueFull) => true,
            },
            // Deleted since: nothing to keep.
            None => false,
        };
        match (refused, on_refusal) {
            // Back where it came from, its removal with it: still one commit.
            (true, OnRefusal::BackTo(back)) => {
                return self.forward(Forwarded {
                    queue: back,
                    dlq_of: None,
                    message,
                    removal,
                    stored,
                    refused: OnRefusal::Drop,
                    chain,
                });
            }
            (true, OnRefusal::FailPublish) => {
                let queue = target.expect("a refusal comes from a queue");
                self.dead_letter_refused(&queue, &message, now);
                if let Some(countdown) = stored {
                    countdown.refused(queue);
                }
                return;
            }
            (true, _) => {
                if let Some(queue) = target.as_ref().and_then(|t| self.queues.get_mut(t)) {
                    queue.counters.dropped += 1;
                }
            }
            (false, _) => {}
        }
        for op in removal {
            self.turn.store(op);
        }
        if let Some(countdown) = stored {
            self.turn.on_commit(Box::new(move |result| {
                countdown.part(result.is_ok());
            }));
        }
    }

    /// Store operations a shard deferred until messages it forwarded were stored.
    pub(super) fn store_deferred(&mut self, ops: Vec<StoreOp>) {
        for op in ops {
            self.turn.store(op);
        }
    }

    /// Sends `ops` back to this shard once every one of `parts` forwarded messages is
    /// stored; not at all if one failed (the message then stays where it was, stored).
    pub(super) fn defer_until_stored(&self, parts: usize, ops: Vec<StoreOp>) -> Arc<Countdown> {
        let own = self.peers[self.queues.shard()].clone();
        Arc::new(Countdown::new(parts, move |stored| {
            if stored.is_ok() {
                let _ = own.send(Command::Store(ops));
            }
        }))
    }

    /// A publish whose (alternate) destinations include queues of other shards: they are
    /// forwarded, and its confirm waits for their commits and this shard's.
    pub(super) fn publish_elsewhere(
        &mut self,
        conn: ConnId,
        id: &RequestId,
        elsewhere: Vec<Arc<str>>,
        message: Arc<Message>,
        confirms: bool,
    ) -> Reply {
        let confirm = match (confirms, self.conns.get(&conn)) {
            (true, Some(c)) => {
                let (tx, id) = (c.tx.clone(), id.clone());
                let countdown = Countdown::new(elsewhere.len() + 1, move |stored| {
                    let frame = match stored {
                        Ok(()) => ServerFrame::Confirm { id },
                        // As a full queue on this shard refuses it (`publish.rs`).
                        Err(Unstored::Refused(full)) => {
                            let refused = super::publish::queue_full(&full);
                            ServerFrame::error(Some(id), refused.code, refused.message)
                        }
                        Err(Unstored::Failed) => {
                            let message = "a queue of the alternate route did not store it";
                            ServerFrame::error(Some(id), ErrorCode::StoreError, message)
                        }
                    };
                    let _ = tx.send(Outbound::Frame(frame));
                });
                Some(Arc::new(countdown))
            }
            _ => None,
        };
        for queue in elsewhere {
            self.forward(Forwarded {
                queue,
                dlq_of: None,
                message: message.clone(),
                removal: Vec::new(),
                stored: confirm.clone(),
                refused: OnRefusal::FailPublish,
                chain: 0,
            });
        }
        if let Some(countdown) = confirm {
            self.turn.on_commit(Box::new(move |result| {
                countdown.part(result.is_ok());
            }));
        }
        Reply::Silent
    }

    /// Queue `name` was removed on another shard: its bindings go.
    pub(super) fn queue_removed(&mut self, name: &str) {
        self.remove_bindings_to(name);
    }

    /// A queue of this shard was removed: home drops its bindings.
    pub(super) fn tell_home_removed(&mut self, name: &str) {
        if self.is_home() {
            return self.queue_removed(name);
        }
        let removed = Command::QueueRemoved { name: name.into() };
        let _ = self.peers[0].send(removed);
    }
}
