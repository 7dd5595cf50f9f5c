//! Consumers: subscribe, cancel, dispatch, ack / nack / reject, connections closing.

use std::sync::Arc;

use super::queues::check_access;
use super::{OpError, Outbound, Reply, Router, Settle};
use crate::protocol::{Delivery, ErrorCode, ServerFrame, Subscribe, Subscribed};
use crate::queue::{ConnId, Consumer};
use crate::store::StoreOp;

impl Router {
    pub(super) fn subscribe(&mut self, conn: ConnId, sub: Subscribe) -> Result<Reply, OpError> {
        check_access(self.queue(&sub.queue)?, conn)?;
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
            .queues
            .get_key_value(sub.queue.as_str())
            .expect("checked above");
        let (name, tag): (Arc<str>, Arc<str>) = (name.clone(), tag.into());
        c.consumers.push((name.clone(), tag.clone()));
        let queue = self.queues.get_mut(&name).expect("checked above");
        queue.add_consumer(Consumer::new(conn, tag.clone(), sub.prefetch, sub.auto_ack));
        self.dirty.insert(name);
        let result = serde_json::to_value(Subscribed {
            consumer_tag: tag.to_string(),
        })
        .expect("serializable");
        Ok(Reply::Ok(result))
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
        Ok(Reply::Ok(serde_json::Value::Null))
    }

    /// Detaches a consumer from its queue; an auto-delete queue goes with its last consumer.
    fn remove_consumer(&mut self, queue_name: &Arc<str>, conn: ConnId, tag: &str) {
        let Some(queue) = self.queues.get_mut(queue_name) else {
            return;
        };
        queue.remove_consumer(conn, tag);
        if queue.spec.auto_delete && queue.consumer_count() == 0 {
            self.remove_queue(queue_name, "auto-delete queue lost its last consumer");
        } else {
            // Its share of the queue may now go to the others.
            self.dirty.insert(queue_name.clone());
        }
    }

    /// Acks, requeues or discards one delivery, or with `multiple` every delivery of the
    /// connection up to and including `tag`.
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
        let settled: Vec<(Arc<str>, u64)> = if multiple {
            let rest = c.unacked.split_off(&(tag + 1));
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
        for (queue, seq) in settled {
            self.settle_one(&queue, seq, how);
        }
        Ok(Reply::Silent)
    }

    /// Auto-ack deliveries that reached the socket are settled as acked.
    pub(super) fn settle_written(&mut self, conn: ConnId, tags: Vec<u64>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let settled: Vec<_> = tags.iter().filter_map(|t| c.unacked.remove(t)).collect();
        for (queue, seq) in settled {
            self.settle_one(&queue, seq, Settle::Ack);
        }
    }

    fn settle_one(&mut self, queue_name: &Arc<str>, seq: u64, how: Settle) {
        // The queue may have been deleted since the delivery: then there is nothing to do.
        let Some(queue) = self.queues.get_mut(queue_name) else {
            return;
        };
        let queue_id = queue.id;
        match how {
            Settle::Ack | Settle::Discard => {
                if let Some(entry) = queue.ack(seq)
                    && entry.stored
                {
                    self.batch.ops.push(StoreOp::DeleteMessage {
                        queue: queue_id,
                        seq,
                        counted: entry.count_stored,
                    });
                }
            }
            Settle::Requeue => {
                if let Some(entry) = queue.requeue(seq)
                    && entry.stored
                {
                    entry.count_stored = true;
                    self.batch.ops.push(StoreOp::SetDeliveryCount {
                        queue: queue_id,
                        seq,
                        count: entry.delivery_count,
                    });
                }
            }
        }
        self.dirty.insert(queue_name.clone());
    }

    /// A connection closed: its consumers go, its unacked messages return to their queues
    /// (marked redelivered), its exclusive queues are deleted.
    pub(super) fn close_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for (queue, tag) in &c.consumers {
            self.remove_consumer(queue, conn, tag);
        }
        for (queue, seq) in c.unacked.into_values() {
            self.settle_one(&queue, seq, Settle::Requeue);
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

    /// Hands ready messages of the turn's touched queues to their consumers.
    pub(super) fn dispatch(&mut self) {
        for name in std::mem::take(&mut self.dirty) {
            let Some(queue) = self.queues.get_mut(&name) else {
                continue;
            };
            while let Some(d) = queue.next_dispatch() {
                let Some(c) = self.conns.get_mut(&d.conn) else {
                    // Unreachable while consumers and connections stay in step; if not,
                    // the message must not be stranded as unacked.
                    queue.requeue(d.seq);
                    break;
                };
                let delivery_tag = c.next_delivery_tag;
                c.next_delivery_tag += 1;
                c.unacked.insert(delivery_tag, (name.clone(), d.seq));
                let delivery = Delivery {
                    consumer_tag: d.consumer_tag,
                    delivery_tag,
                    redelivered: d.delivery_count > 1,
                    delivery_count: d.delivery_count,
                    queue: name.clone(),
                    message: d.message,
                };
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
}
