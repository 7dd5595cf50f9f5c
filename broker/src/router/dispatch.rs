//! The dispatch stage: at the end of each turn, every queue that may have something to
//! deliver hands messages to its consumers, within their prefetch, the connection's
//! channel-wide prefetch and its outbound buffer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{DeathReason, Held, MAX_OUTBOUND_BYTES, Outbound, Router, outbound_cost};
use crate::protocol::{Delivery, ServerFrame};
use crate::queue::{ConnId, Next, Retry};

impl Router {
    /// The connection's writer drained: its consumers' queues may deliver again.
    pub(super) fn drained(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn) {
            self.turn
                .to_dispatch
                .extend(c.consumers.iter().map(|(queue, _)| queue.clone()));
        }
    }

    /// Hands ready messages of the touched queues to their consumers (dead-lettering
    /// expired ones on the way), then makes sure each wakes up for its next deadline.
    pub(super) fn dispatch(&mut self) {
        let now = self.turn.now_ms();
        // Dead letters can touch further queues (their DLQs): go round until quiet.
        while !self.turn.to_dispatch.is_empty() {
            for name in std::mem::take(&mut self.turn.to_dispatch) {
                self.dispatch_queue(&name, now);
                self.queues.schedule(&name);
            }
        }
    }

    fn dispatch_queue(&mut self, name: &Arc<str>, now: u64) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        let queue_id = queue.id;
        let queue_timeout = queue.policy.consumer_timeout_ms;
        loop {
            // A connection whose socket is not taking deliveries gets no more until it
            // drains.
            let conns = &self.conns;
            let may_receive = |conn: ConnId| {
                conns.get(&conn).is_some_and(|c| {
                    c.within_channel_prefetch()
                        && c.outbound.as_ref().is_none_or(|queued| {
                            queued.load(Ordering::Relaxed) < MAX_OUTBOUND_BYTES
                        })
                })
            };
            let Some(next) = queue.next_dispatch(now, &may_receive) else {
                break;
            };
            let d = match next {
                Next::Deliver(d) => d,
                Next::Expired(entry) => {
                    self.dead_letter(name, entry, DeathReason::Expired, now);
                    self.turn.to_dispatch.remove(name);
                    return self.dispatch_queue(name, now);
                }
            };
            let Some(c) = self.conns.get_mut(&d.conn) else {
                // Unreachable while consumers and connections stay in step; if not, the
                // message must not be stranded as unacked.
                queue.retry(d.seq, Retry::Now, now);
                break;
            };
            queue.counters.delivered += 1;
            if d.delivery_count > 1 {
                queue.counters.redelivered += 1;
            }
            let to_client = c.peer.is_some();
            let timeout_ms =
                (self.ack_timeout).limit_delivery(to_client, d.timeout_ms, queue_timeout, now);
            let held = Held {
                queue: name.clone(),
                queue_id,
                seq: d.seq,
                delivered_at: now,
                timeout_ms,
            };
            let filter = if self.handlers.filters.is_empty() {
                None
            } else {
                self.handlers.filters.get(&(d.conn, d.consumer_tag.clone()))
            };
            c.hold(held, |delivery_tag, tx, outbound| {
                let delivery = Delivery {
                    consumer_tag: d.consumer_tag,
                    delivery_tag,
                    redelivered: d.delivery_count > 1,
                    delivery_count: d.delivery_count,
                    queue: name.clone(),
                    message: d.message,
                };
                if let Some(route) = filter {
                    // Through the filter (off this task); it delivers or settles.
                    let job =
                        super::handlers::FilterJob::new(delivery, d.auto_ack, d.conn, tx.clone());
                    let _ = route.tx.send(job);
                    return;
                }
                if let Some(queued) = outbound {
                    queued.fetch_add(outbound_cost(&delivery), Ordering::Relaxed);
                }
                let out = if d.auto_ack {
                    Outbound::AutoAckDelivery(delivery)
                } else {
                    Outbound::Frame(ServerFrame::Deliver(delivery))
                };
                // A send fails only while the connection is closing; its Close requeues.
                let _ = tx.send(out);
            });
        }
    }
}
