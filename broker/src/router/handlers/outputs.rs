//! A handler's outputs: routed to their queues all at once (stored together, or none when
//! one cannot be), in the same commit as the delivery's ack. Outputs for queues of other
//! shards are forwarded and the delivery settled once those shards answer: a full queue
//! there fails it as one here does. The ack rides along when they all go to one shard;
//! otherwise it is stored after them, and a refusal on one shard after another stored its
//! share means those outputs may be published again by the retry (at-least-once).

use std::sync::Arc;

use super::super::forward::{Forwarded, OnRefusal};
use super::super::gather::Countdown;
use super::super::{Command, OpError, Router, Settle};
use super::Published;
use crate::clock::now_ms;
use crate::message::Message;
use crate::protocol::ErrorCode;
use crate::queue::ConnId;
use crate::store::StoreOp;

impl Router {
    /// Forwards a handler's outputs for queues of other shards. The delivery (`conn`,
    /// `tag`) is settled `how` once every one is stored, or fails if a queue there refuses
    /// one (see [`Router::outputs_answered`]). When they all go to one shard, its ack rides
    /// along: stored in the commit that stores them.
    pub(super) fn forward_outputs(
        &mut self,
        (conn, tag): (ConnId, u64),
        how: Settle,
        outputs: Vec<(Arc<Message>, Arc<str>)>,
    ) {
        let mut shards: Vec<usize> = outputs
            .iter()
            .map(|(_, queue)| self.queues.shard_of(queue))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        let ack = match (how, shards.len()) {
            (Settle::Ack, 1) => self.ack_op(conn, tag),
            _ => None,
        };
        let ack_rides = ack.is_some();
        let own = self.peers[self.queues.shard()].clone();
        let answered = Arc::new(Countdown::new(outputs.len(), move |stored| {
            let all_stored = stored.is_ok();
            let _ = own.send(Command::OutputsAnswered {
                conn,
                tag,
                how: if all_stored { how } else { Settle::Failed },
                ack_stored: all_stored && ack_rides,
            });
        }));
        let mut removal: Vec<StoreOp> = ack.into_iter().collect();
        for (message, queue) in outputs {
            self.forward(Forwarded {
                queue,
                dlq_of: None,
                message,
                removal: std::mem::take(&mut removal),
                stored: Some(answered.clone()),
                refused: OnRefusal::FailDelivery,
                chain: 0,
            });
        }
    }

    /// The store operation acking delivery `tag` of `conn` would make (none for a
    /// transient message).
    fn ack_op(&self, conn: ConnId, tag: u64) -> Option<StoreOp> {
        let held = self.conns.get(&conn)?.held(tag)?;
        let queue = self.queues.get(&held.queue)?;
        (queue.id == held.queue_id)
            .then(|| queue.ack_op(held.seq))
            .flatten()
    }

    /// The shards a delivery's outputs went to answered: it is settled now.
    pub(in crate::router) fn outputs_answered(
        &mut self,
        conn: ConnId,
        tag: u64,
        how: Settle,
        ack_stored: bool,
    ) {
        // Requeued meanwhile (a detach, a consumer timeout): redelivered, so its outputs
        // may be published twice (at-least-once), never lost.
        if !self.conns.get(&conn).is_some_and(|c| c.holds(tag)) {
            return;
        }
        if how == Settle::Failed {
            tracing::warn!("a queue on another shard refused a handler output; delivery failed");
        }
        let mark = self.turn.ops_len();
        let _ = self.settle(conn, tag, false, how);
        if ack_stored {
            // Stored already, with the outputs.
            self.turn.take_ops_since(mark);
        }
    }

    /// Maps every message's route to queues first, then enqueues them all: a handler's
    /// outputs are stored all together, or none of them when one is routed nowhere or a
    /// `reject_publish` queue would refuse one (the delivery then fails).
    /// Outputs for queues of other shards are left in `elsewhere`, to forward.
    pub(super) fn publish_outputs(
        &mut self,
        published: Vec<Published>,
        elsewhere: &mut Vec<(Arc<Message>, Arc<str>)>,
    ) -> Result<(), OpError> {
        if published.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut routed = Vec::with_capacity(published.len());
        for Published {
            message,
            routed: ids,
        } in published
        {
            let destinations = match ids {
                Some(route) => self.destinations(&route.map_err(OpError::from)?),
                None => self.route(&message)?,
            };
            if destinations.is_empty() {
                let local = crate::vhost::local(&message.exchange);
                let text = format!(
                    "an output to exchange `{local}` with key `{}` is routed to no queue",
                    message.routing_key
                );
                return Err(OpError::new(ErrorCode::Unroutable, text));
            }
            routed.push((Arc::new(message), destinations));
        }
        let shares = routed.iter().flat_map(|(message, destinations)| {
            let bytes = message.body_len() as u64;
            destinations.iter().map(move |queue| (&**queue, bytes))
        });
        if let Some(full) = self.refusing_queue(shares) {
            let text = format!(
                "queue `{}` is full (overflow: reject_publish): it would refuse an output",
                crate::vhost::local(full)
            );
            return Err(OpError::new(ErrorCode::QueueFull, text));
        }
        for (message, destinations) in routed {
            for name in destinations {
                if !self.queues.is_local(&name) {
                    elsewhere.push((message.clone(), name));
                    continue;
                }
                // Checked above: a queue refuses nothing here.
                let _ = self.enqueue(&name, &message, now);
            }
        }
        Ok(())
    }

    /// The first queue here that would refuse its share of a handler's outputs (each a
    /// queue and a body's bytes), all of them counted together.
    pub(in crate::router) fn refusing_queue<'a>(
        &self,
        outputs: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Option<&'a str> {
        let mut adds: Vec<(&str, u64, u64)> = Vec::new();
        for (queue, bytes) in outputs {
            match adds.iter_mut().find(|(q, ..)| *q == queue) {
                Some((_, messages, total)) => (*messages, *total) = (*messages + 1, *total + bytes),
                None => adds.push((queue, 1, bytes)),
            }
        }
        let refuses = |(queue, messages, bytes): &(&str, u64, u64)| {
            self.queues
                .get(queue)
                .is_some_and(|q| q.refuses(*messages, *bytes))
        };
        adds.iter()
            .find(|add| refuses(add))
            .map(|(queue, ..)| *queue)
    }
}
