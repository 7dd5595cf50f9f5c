//! A handler's outputs: routed to their queues all at once (stored together, or none when
//! one cannot be), in the same commit as the delivery's ack; outputs for queues of other
//! shards are forwarded, the ack riding along when they all go to one shard.

use std::collections::HashMap;
use std::sync::Arc;

use super::super::{OpError, Router};
use super::Published;
use crate::clock::now_ms;
use crate::message::Message;
use crate::protocol::ErrorCode;
use crate::store::StoreOp;

impl Router {
    /// Forwards a handler's outputs for queues of other shards, `ack` (the delivery's
    /// settling) with them.
    pub(super) fn forward_outputs(
        &mut self,
        outputs: Vec<(Arc<Message>, Arc<str>)>,
        ack: Vec<StoreOp>,
    ) {
        let mut shards: Vec<usize> = outputs
            .iter()
            .map(|(_, queue)| self.queues.shard_of(queue))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        let (mut rides, mut stored) = (Vec::new(), None);
        match (shards.len(), ack.is_empty()) {
            (_, true) => {}
            (1, false) => rides = ack,
            (_, false) => stored = Some(self.defer_until_stored(outputs.len(), ack)),
        }
        for (message, queue) in outputs {
            self.forward(super::super::forward::Forwarded {
                queue,
                dlq_of: None,
                message,
                removal: std::mem::take(&mut rides),
                stored: stored.clone(),
                refused_back_to: None,
                chain: 0,
            });
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
        // What the outputs add to each destination, to check its limits all at once.
        let mut adds: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
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
            for name in &destinations {
                let add = adds.entry(name.clone()).or_default();
                *add = (add.0 + 1, add.1 + message.body_len() as u64);
            }
            routed.push((Arc::new(message), destinations));
        }
        for (name, (messages, bytes)) in adds {
            if self
                .queues
                .get(&name)
                .is_some_and(|q| q.refuses(messages, bytes))
            {
                let text = format!(
                    "queue `{}` is full (overflow: reject_publish): it would refuse an output",
                    crate::vhost::local(&name)
                );
                return Err(OpError::new(ErrorCode::QueueFull, text));
            }
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
}
