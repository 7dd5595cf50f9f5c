//! Consumers: subscribe, cancel, dispatch, ack / nack / reject, connections closing.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::queues::check_access;
use super::{
    Answer, DeathReason, Held, MAX_OUTBOUND_BYTES, OpError, Outbound, Reply, Router, Settle,
    outbound_cost,
};
use crate::protocol::{Delivery, ErrorCode, Got, ServerFrame, Subscribe, Subscribed};
use crate::queue::{ConnId, Consumer, Next, Retried, Retry};
use crate::store::StoreOp;

impl Router {
    pub(super) fn subscribe(&mut self, conn: ConnId, sub: Subscribe) -> Result<Reply, OpError> {
        check_access(self.queue(&sub.queue)?, self.owner(conn))?;
        if let Some(filter) = &sub.filter {
            self.check_filter(&sub.queue, filter)?;
        }
        let queue = self.queue(&sub.queue)?;
        if queue.consumers().iter().any(|c| c.exclusive)
            || (sub.exclusive && queue.consumer_count() > 0)
        {
            let message = format!("queue `{}` in exclusive use", sub.queue);
            return Err(OpError::new(ErrorCode::AccessRefused, message));
        }
        let tag = match sub.consumer_tag {
            Some(tag) if !tag.is_empty() => tag,
            _ => self.generate_name(conn, "ctag"),
        };
        let c = self
            .conns
            .get_mut(&conn)
            .expect("requests come from open connections");
        if c.consumers.iter().any(|(_, t)| **t == *tag) {
            let message = format!("consumer tag `{tag}` is in use on this connection");
            return Err(OpError::new(ErrorCode::ConsumerTagInUse, message));
        }
        let (name, _) = self
            .shard
            .queues
            .get_key_value(sub.queue.as_str())
            .expect("checked above");
        let (name, tag): (Arc<str>, Arc<str>) = (name.clone(), tag.into());
        c.consumers.push((name.clone(), tag.clone()));
        let queue = self.shard.queues.get_mut(&name).expect("checked above");
        let mut consumer = Consumer::new(conn, tag.clone(), sub.prefetch, sub.auto_ack);
        consumer.exclusive = sub.exclusive;
        queue.add_consumer(consumer);
        if let Some(filter) = &sub.filter {
            self.add_filter(conn, tag.clone(), name.clone(), filter);
        }
        self.turn.to_dispatch.insert(name);
        let subscribed = Subscribed {
            consumer_tag: tag.to_string(),
        };
        Ok(Reply::Ok(subscribed.into()))
    }

    /// `get`: the queue's next ready message to this connection, held unacked like a
    /// delivery (settled at once with `auto_ack`).
    pub(super) fn get(
        &mut self,
        conn: ConnId,
        name: &str,
        auto_ack: bool,
    ) -> Result<Reply, OpError> {
        check_access(self.queue(name)?, self.owner(conn))?;
        let (name, _) = self
            .shard
            .queues
            .get_key_value(name)
            .expect("checked above");
        let name = name.clone();
        let now = self.turn.now_ms();
        if let Some(queue) = self.shard.queues.get_mut(&name) {
            queue.touch(now);
        }
        loop {
            let queue = self.shard.queues.get_mut(&name).expect("checked above");
            let queue_id = queue.id;
            let d = match queue.next_get(now, conn) {
                None => {
                    let got = Got {
                        delivery: None,
                        message_count: queue.ready_len() as u64,
                    };
                    return Ok(Reply::Ok(got.into()));
                }
                Some(Next::Expired(entry)) => {
                    self.dead_letter(&name, entry, DeathReason::Expired, now);
                    continue;
                }
                Some(Next::Deliver(d)) => d,
            };
            queue.counters.delivered += 1;
            if d.delivery_count > 1 {
                queue.counters.redelivered += 1;
            }
            let message_count = queue.ready_len() as u64;
            let c = self
                .conns
                .get_mut(&conn)
                .expect("requests come from open connections");
            let delivery_tag = c.next_delivery_tag;
            c.next_delivery_tag += 1;
            let held = Held {
                queue: name.clone(),
                queue_id,
                seq: d.seq,
            };
            if auto_ack {
                self.settle_one(held, Settle::Ack, now);
            } else {
                c.unacked.insert(delivery_tag, held);
            }
            let got = Got {
                delivery: Some(Delivery {
                    consumer_tag: d.consumer_tag,
                    delivery_tag,
                    redelivered: d.delivery_count > 1,
                    delivery_count: d.delivery_count,
                    queue: name,
                    message: d.message,
                }),
                message_count,
            };
            return Ok(Reply::Ok(got.into()));
        }
    }

    pub(super) fn cancel(&mut self, conn: ConnId, tag: &str) -> Result<Reply, OpError> {
        let c = self
            .conns
            .get_mut(&conn)
            .expect("requests come from open connections");
        let Some(index) = c.consumers.iter().position(|(_, t)| &**t == tag) else {
            let message = format!("no consumer `{tag}` on this connection");
            return Err(OpError::new(ErrorCode::UnknownConsumer, message));
        };
        let (queue, tag) = c.consumers.remove(index);
        self.remove_consumer(&queue, conn, &tag);
        Ok(Reply::Ok(Answer::Done))
    }

    /// Detaches a consumer from its queue; an auto-delete queue goes with its last consumer.
    fn remove_consumer(&mut self, queue_name: &Arc<str>, conn: ConnId, tag: &str) {
        self.forget_filter(conn, tag);
        let Some(queue) = self.shard.queues.get_mut(queue_name) else {
            return;
        };
        queue.remove_consumer(conn, tag);
        // Its `expires` period starts when the last consumer leaves.
        let now = self.turn.now_ms();
        queue.touch(now);
        if queue.spec.auto_delete && queue.consumer_count() == 0 {
            self.remove_queue(queue_name, "auto-delete queue lost its last consumer");
        } else {
            // Its share of the queue may now go to the others.
            self.turn.to_dispatch.insert(queue_name.clone());
        }
    }

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
        let settled: Vec<Held> = if multiple {
            let rest = match tag.checked_add(1) {
                Some(after) => c.unacked.split_off(&after),
                None => Default::default(),
            };
            std::mem::replace(&mut c.unacked, rest)
                .into_values()
                .collect()
        } else {
            c.unacked.remove(&tag).into_iter().collect()
        };
        if settled.is_empty() {
            let message = format!("delivery tag {tag} is not unacked on this connection");
            return Err(OpError::new(ErrorCode::UnknownDeliveryTag, message));
        }
        let now = self.turn.now_ms();
        for held in settled {
            self.settle_one(held, how, now);
        }
        self.channel_settled(conn);
        Ok(Reply::Silent)
    }

    /// Auto-ack deliveries that reached the socket are settled as acked.
    pub(super) fn settle_written(&mut self, conn: ConnId, tags: Vec<u64>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let settled: Vec<_> = tags.iter().filter_map(|t| c.unacked.remove(t)).collect();
        let now = self.turn.now_ms();
        for held in settled {
            self.settle_one(held, Settle::Ack, now);
        }
        self.channel_settled(conn);
    }

    fn settle_one(&mut self, held: Held, how: Settle, now: u64) {
        // The queue may have been deleted (and maybe re-created) since the delivery: then
        // there is nothing to settle.
        let Some(queue) = self
            .shard
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

    /// A connection closed: its consumers go, its unacked messages return to their queues
    /// (marked redelivered; counted against `max_deliveries`), its exclusive queues are
    /// deleted.
    pub(super) fn close_conn(&mut self, conn: ConnId, broker_stopping: bool) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for (queue, tag) in &c.consumers {
            self.remove_consumer(queue, conn, tag);
        }
        let now = self.turn.now_ms();
        let how = if broker_stopping {
            Retry::Release
        } else {
            Retry::Now
        };
        for held in c.unacked.into_values() {
            self.settle_one(held, Settle::Retry(how), now);
        }
        let exclusive: Vec<Arc<str>> = self
            .shard
            .queues
            .values()
            .filter(|q| q.spec.exclusive_owner == Some(conn))
            .map(|q| q.name.clone())
            .collect();
        for name in exclusive {
            self.remove_queue(&name, "exclusive queue's connection closed");
        }
    }

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
                self.shard.schedule(&name);
            }
        }
    }

    fn dispatch_queue(&mut self, name: &Arc<str>, now: u64) {
        let Some(queue) = self.shard.queues.get_mut(name) else {
            return;
        };
        let queue_id = queue.id;
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
            let delivery_tag = c.next_delivery_tag;
            c.next_delivery_tag += 1;
            c.unacked.insert(
                delivery_tag,
                Held {
                    queue: name.clone(),
                    queue_id,
                    seq: d.seq,
                },
            );
            let delivery = Delivery {
                consumer_tag: d.consumer_tag,
                delivery_tag,
                redelivered: d.delivery_count > 1,
                delivery_count: d.delivery_count,
                queue: name.clone(),
                message: d.message,
            };
            if !self.handlers.filters.is_empty()
                && let Some(route) = self
                    .handlers
                    .filters
                    .get(&(d.conn, delivery.consumer_tag.clone()))
            {
                // Through the filter (off this task); it delivers or settles.
                let job =
                    super::handlers::FilterJob::new(delivery, d.auto_ack, d.conn, c.tx.clone());
                let _ = route.tx.send(job);
                continue;
            }
            if let Some(queued) = &c.outbound {
                queued.fetch_add(outbound_cost(&delivery), Ordering::Relaxed);
            }
            let out = if d.auto_ack {
                Outbound::AutoAckDelivery(delivery)
            } else {
                Outbound::Frame(ServerFrame::Deliver(delivery))
            };
            // A send fails only while the connection is closing; its Close requeues.
            let _ = c.tx.send(out);
        }
    }
}

/// How a failed delivery goes back: a handler failure backs off like a retry.
fn retry_of(how: Settle) -> Retry {
    match how {
        Settle::Retry(retry) => retry,
        _ => Retry::Backoff,
    }
}
