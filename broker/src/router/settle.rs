//! The settle stage: ack, nack and reject of deliveries (and auto-acks once written),
//! each ending in a removal, a retry (now or after a delay) or a dead letter.

use super::{DeathReason, Held, OpError, Reply, Router, Settle};
use crate::protocol::ErrorCode;
use crate::queue::{ConnId, Retried, Retry};
use crate::store::StoreOp;

impl Router {
    /// Acks, retries or dead-letters one delivery, or with `multiple` every delivery of
    /// the connection up to and including `tag`.
    pub(super) fn settle(
        &mut self,
        conn: ConnId,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> Result<Reply, OpError> {
        let c = self
            .conns
            .get_mut(&conn)
            .expect("requests come from open connections");
        let unknown = || {
            let message = format!("delivery tag {tag} is not unacked on this connection");
            OpError::new(ErrorCode::UnknownDeliveryTag, message)
        };
        let now = self.turn.now_ms();
        if multiple {
            let settled: Vec<Held> = c.release_through(tag);
            if settled.is_empty() {
                return Err(unknown());
            }
            for held in settled {
                self.settle_one(held, how, now);
            }
        } else {
            let held = c.release(tag).ok_or_else(unknown)?;
            self.settle_one(held, how, now);
        }
        self.channel_settled(conn);
        Ok(Reply::Silent)
    }

    /// Auto-ack deliveries that reached the socket are settled as acked.
    pub(super) fn settle_written(&mut self, conn: ConnId, tags: Vec<u64>) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        let now = self.turn.now_ms();
        for tag in tags {
            let held = self.conns.get_mut(&conn).and_then(|c| c.release(tag));
            if let Some(held) = held {
                self.settle_one(held, Settle::Ack, now);
            }
        }
        self.channel_settled(conn);
    }

    pub(super) fn settle_one(&mut self, held: Held, how: Settle, now: u64) {
        // The queue may have been deleted (and maybe re-created) since the delivery: then
        // there is nothing to settle.
        let Some(queue) = self
            .queues
            .get_mut(&held.queue)
            .filter(|q| q.id == held.queue_id)
        else {
            return;
        };
        let queue_id = queue.id;
        let seq = held.seq;
        let dead = match how {
            Settle::Ack => {
                let acked = queue.ack(seq);
                if acked.is_some() {
                    queue.counters.acked += 1;
                }
                if let Some(entry) = acked
                    && entry.stored
                {
                    self.turn.store(StoreOp::DeleteMessage {
                        queue: queue_id,
                        seq,
                        state: entry.state_stored,
                    });
                }
                None
            }
            Settle::DeadLetter => queue.ack(seq).map(|e| (e, DeathReason::Rejected)),
            Settle::Retry(_) | Settle::Failed => match queue.retry(seq, retry_of(how), now) {
                Some(Retried::Requeued {
                    stored: true,
                    delivery_count,
                    not_before,
                }) => {
                    self.turn.store(StoreOp::SetEntryState {
                        queue: queue_id,
                        seq,
                        delivery_count,
                        not_before,
                    });
                    None
                }
                Some(Retried::Requeued { .. }) | None => None,
                Some(Retried::Exhausted(entry)) if how == Settle::Failed => {
                    Some((entry, DeathReason::PluginError))
                }
                Some(Retried::Exhausted(entry)) => Some((entry, DeathReason::DeliveryLimit)),
            },
        };
        if let Some((entry, reason)) = dead {
            self.dead_letter(&held.queue, entry, reason, now);
        }
        self.turn.to_dispatch.insert(held.queue);
    }
}

/// How a failed delivery goes back: a handler failure backs off like a retry.
fn retry_of(how: Settle) -> Retry {
    match how {
        Settle::Retry(retry) => retry,
        _ => Retry::Backoff,
    }
}
