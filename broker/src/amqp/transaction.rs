//! AMQP transactions (`tx.select`, `tx.commit`, `tx.rollback`) as RabbitMQ has them: a
//! transactional channel's publishes and settles (ack, nack, reject) are held back until
//! `tx.commit`, which hands them to the router in order and answers `commit-ok` once every
//! held publish is stored; `tx.rollback` drops them (deliveries acked in it stay unacked).
//! The channel's core connection is in confirm mode for this: its confirms are counted
//! here instead of sent to the client.

use amq_protocol::protocol::{AMQPClass, tx};

use super::errors::{AmqpError, code};
use super::methods::Effect;
use crate::protocol::Op;

/// Publishes and settles one transaction holds at most (as a STOMP transaction).
const MAX_HELD: usize = 10_000;
/// Message bytes one transaction holds at most: a client cannot grow the broker's memory
/// without bound by never committing.
const MAX_HELD_BYTES: usize = 64 << 20;

#[derive(Default)]
pub(super) struct Transaction {
    /// What the client sent since the last commit or rollback, in order.
    held: Vec<Effect>,
    /// Their message bytes.
    held_bytes: usize,
    /// Publishes of the commits under way that the router has not answered yet.
    unconfirmed: u64,
    /// A commit waits for `unconfirmed` to reach 0.
    committing: bool,
}

impl Transaction {
    /// Holds a publish or a settle until the commit; nothing happens now. Past the
    /// limits the channel is closed (406), as the transaction cannot be kept.
    pub fn hold(&mut self, effect: Effect) -> Result<Effect, AmqpError> {
        if let Effect::Publish(request) = &effect
            && let Op::Publish(publish) = &request.op
        {
            self.held_bytes += publish.message.body_len();
        }
        if self.held.len() >= MAX_HELD || self.held_bytes > MAX_HELD_BYTES {
            let text = format!(
                "a transaction holds at most {MAX_HELD} publishes and acks and {} MiB; commit sooner",
                MAX_HELD_BYTES >> 20
            );
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                "PRECONDITION_FAILED",
                text,
            ));
        }
        self.held.push(effect);
        Ok(Effect::None)
    }

    /// `tx.commit`: the held effects to apply, in order; `commit-ok` waits for their
    /// publishes (see [`Self::publish_answered`]), or goes at once without any.
    pub fn commit(&mut self) -> Effect {
        let held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        let publishes = held
            .iter()
            .filter(|e| matches!(e, Effect::Publish(_)))
            .count();
        self.unconfirmed += publishes as u64;
        self.committing = true;
        Effect::Commit(held)
    }

    /// `tx.rollback`: the held effects are dropped.
    pub fn rollback(&mut self) -> AMQPClass {
        self.held.clear();
        self.held_bytes = 0;
        AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {}))
    }

    /// A held publish was confirmed or refused: `commit-ok`, when it was the commit's last.
    pub fn publish_answered(&mut self) -> Option<AMQPClass> {
        self.unconfirmed = self.unconfirmed.saturating_sub(1);
        self.commit_done()
    }

    /// `commit-ok`, when the commit under way has nothing left to wait for.
    pub fn commit_done(&mut self) -> Option<AMQPClass> {
        if !self.committing || self.unconfirmed > 0 {
            return None;
        }
        self.committing = false;
        Some(AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})))
    }
}

pub(super) fn select_ok() -> AMQPClass {
    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {}))
}
