//! Consumers: subscribe, `get`, cancel, and a connection's consumers and unacked
//! deliveries when it closes. (Handing messages out: `dispatch.rs`; acks: `settle.rs`.)

use std::sync::Arc;

use super::queues::check_access;
use super::{Answer, DeathReason, Held, OpError, Reply, Router, Settle};
use crate::protocol::{Delivery, ErrorCode, Got, Subscribe, Subscribed};
use crate::queue::{ConnId, Consumer, Next, Retry};

impl Router {
    pub(super) fn subscribe(&mut self, conn: ConnId, sub: Subscribe) -> Result<Reply, OpError> {
        check_access(self.queue(&sub.queue)?, self.owner(conn))?;
        if let Some(filter) = &sub.filter {
            self.check_filter(&sub.queue, filter)?;
        }
        if sub.consumer_timeout_ms == Some(0) {
            let message = "`consumer_timeout_ms` must be at least 1";
            return Err(OpError::new(ErrorCode::InvalidField, message));
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
        let tag: Arc<str> = tag.into();
        if !c.take_consumer_tag(&tag) {
            let message = format!("consumer tag `{tag}` is in use on this connection");
            return Err(OpError::new(ErrorCode::ConsumerTagInUse, message));
        }
        let (name, _) = self
            .queues
            .get_key_value(sub.queue.as_str())
            .expect("checked above");
        let name = name.clone();
        c.consumers.push((name.clone(), tag.clone()));
        let queue = self.queues.get_mut(&name).expect("checked above");
        let mut consumer = Consumer::new(conn, tag.clone(), sub.prefetch, sub.auto_ack);
        consumer.exclusive = sub.exclusive;
        consumer.priority = sub.priority;
        consumer.timeout_ms = sub.consumer_timeout_ms;
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
        let (name, _) = self.queues.get_key_value(name).expect("checked above");
        let name = name.clone();
        let now = self.turn.now_ms();
        if let Some(queue) = self.queues.get_mut(&name) {
            queue.touch(now);
        }
        loop {
            let queue = self.queues.get_mut(&name).expect("checked above");
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
            let queue_timeout = queue.policy.consumer_timeout_ms;
            let to_client = c.peer.is_some();
            let timeout_ms = (self.ack_timeout).limit_delivery(to_client, None, queue_timeout, now);
            let held = Held {
                queue: name.clone(),
                queue_id,
                seq: d.seq,
                delivered_at: now,
                timeout_ms,
            };
            let delivery_tag = c.hold(held, |tag, _, _| tag);
            if auto_ack && let Some(held) = c.release(delivery_tag) {
                self.settle_one(held, Settle::Ack, now);
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
        c.free_consumer_tag(&tag);
        self.remove_consumer(&queue, conn, &tag);
        Ok(Reply::Ok(Answer::Done))
    }

    /// Detaches a consumer from its queue; an auto-delete queue goes with its last consumer.
    fn remove_consumer(&mut self, queue_name: &Arc<str>, conn: ConnId, tag: &str) {
        self.forget_filter(conn, tag);
        let Some(queue) = self.queues.get_mut(queue_name) else {
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

    /// A connection closed: its consumers go, its unacked messages return to their queues
    /// (marked redelivered; counted against `max_deliveries`), its exclusive queues are
    /// deleted.
    pub(super) fn close_conn(&mut self, conn: ConnId, broker_stopping: bool) {
        let Some(mut c) = self.conns.remove(&conn) else {
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
        for held in c.release_all() {
            self.settle_one(held, Settle::Retry(how), now);
        }
        let exclusive: Vec<Arc<str>> = self
            .queues
            .values()
            .filter(|q| q.spec.exclusive_owner == Some(conn))
            .map(|q| q.name.clone())
            .collect();
        for name in exclusive {
            self.remove_queue(&name, "exclusive queue's connection closed");
        }
    }
}
