//! Queue operations: declare, delete, purge, info. (Recovery: `recovery.rs`.)

use std::sync::Arc;

use super::{Answer, OpError, Reply, Router};
use crate::protocol::{DeclareQueue, ErrorCode, MessageCount, QueueInfo, QueueList, ServerFrame};
use crate::queue::{ConnId, Queue, QueuePolicy, QueueSpec};
use crate::store::{QueueRecord, StoreOp};

/// Longest queue or exchange name, in bytes (AMQP's short string).
pub(crate) const MAX_NAME_LEN: usize = 255;

/// Checks the name a client gave (the local part of a broker name, see [`crate::vhost`]).
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), OpError> {
    let name = crate::vhost::local(name);
    if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(OpError::new(
            ErrorCode::InvalidField,
            format!("{what} name must be at most {MAX_NAME_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

impl Router {
    pub(super) fn declare_queue(
        &mut self,
        conn: ConnId,
        declare: DeclareQueue,
    ) -> Result<Reply, OpError> {
        let named = (!declare.queue.is_empty()).then(|| declare.queue.clone());
        let declared = self.make_or_check_queue(conn, declare);
        if let Some(name) = named {
            self.queues.placement().declare_applied(&name);
        }
        declared
    }

    /// A declare: a new queue, or the existing one checked.
    fn make_or_check_queue(
        &mut self,
        conn: ConnId,
        declare: DeclareQueue,
    ) -> Result<Reply, OpError> {
        check_name("queue", &declare.queue)?;
        let name = if declare.queue.is_empty() {
            let name = self.generate_name(conn, "gen");
            crate::vhost::qualify(self.conn_vhost(conn), &name)
        } else {
            declare.queue
        };
        let policy = QueuePolicy::from_arguments(&declare.arguments, declare.exclusive)
            .map_err(|e| OpError::new(ErrorCode::InvalidField, format!("queue argument {e}")))?;
        let spec = QueueSpec {
            durable: declare.durable,
            exclusive_owner: declare.exclusive.then(|| self.owner(conn)),
            auto_delete: declare.auto_delete,
            arguments: declare.arguments,
        };
        let owner = self.owner(conn);
        let shard = self.queues.shard();
        if let Some(queue) = self.queues.get_mut(name.as_str()) {
            check_access(queue, owner)?;
            if !queue.spec.redeclared_as(&spec) {
                return Err(OpError::new(
                    ErrorCode::PreconditionFailed,
                    format!(
                        "queue `{name}` exists with different durable/exclusive/auto_delete/arguments"
                    ),
                ));
            }
            // A redeclare is a use (`expires`).
            queue.touch(crate::clock::now_ms());
            return Ok(Reply::Ok(info(queue, shard).into()));
        }
        let declared_by = self.conn_principal(conn);
        if let Some(user) = &declared_by {
            self.check_queue_limit(user)?;
        }
        let id = self.queues.next_queue_id();
        let name: Arc<str> = name.into();
        let mut queue = self.new_queue(name.clone(), id, spec, policy);
        queue.declared_by = declared_by;
        if let Err(other) = self.queues.claim(&name, &queue) {
            return Err(OpError::new(
                ErrorCode::PreconditionFailed,
                format!(
                    "queue `{name}` was just made on shard {other} by another declare; declare it again"
                ),
            ));
        }
        let result: Answer = info(&queue, shard).into();
        let stored = queue.is_stored();
        if stored {
            self.turn.store(StoreOp::PutQueue(QueueRecord {
                id,
                name: name.to_string(),
                auto_delete: queue.spec.auto_delete,
                arguments: queue.spec.arguments.clone(),
                declared_by: queue.declared_by.as_deref().map(str::to_owned),
            }));
        }
        tracing::debug!(queue = %name, durable = queue.spec.durable, "queue declared");
        // Scheduled at the end of the turn (its `expires`, if any).
        self.turn.to_dispatch.insert(name.clone());
        self.queues.insert(name, queue);
        Ok(if stored {
            Reply::OkAfterCommit(result)
        } else {
            Reply::Ok(result)
        })
    }

    pub(super) fn delete_queue(
        &mut self,
        conn: ConnId,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<Reply, OpError> {
        let queue = self.queue(name)?;
        check_access(queue, self.owner(conn))?;
        if if_unused && queue.consumer_count() > 0 {
            let message = format!("queue `{name}` has consumers");
            return Err(OpError::new(ErrorCode::PreconditionFailed, message));
        }
        if if_empty && queue.ready_len() + queue.delayed_len() + queue.unacked_len() > 0 {
            let message = format!("queue `{name}` is not empty");
            return Err(OpError::new(ErrorCode::PreconditionFailed, message));
        }
        let (messages, stored) = self.remove_queue(name, "queue deleted");
        let result: Answer = MessageCount { messages }.into();
        Ok(if stored {
            Reply::OkAfterCommit(result)
        } else {
            Reply::Ok(result)
        })
    }

    /// Removes a queue with its consumers and bindings; returns how many messages it held
    /// and whether the store was touched.
    pub(super) fn remove_queue(&mut self, name: &str, reason: &str) -> (u64, bool) {
        let Some(mut queue) = self.queues.remove(name) else {
            return (0, false);
        };
        for consumer in queue.consumers().to_vec() {
            if let Some(conn) = self.conns.get_mut(&consumer.conn) {
                conn.consumers
                    .retain(|(q, tag)| !(&**q == name && *tag == consumer.tag));
                conn.free_consumer_tag(&consumer.tag);
                let _ = conn.tx.send(super::Outbound::Frame(ServerFrame::Cancelled {
                    consumer_tag: consumer.tag.to_string(),
                    reason: reason.to_owned(),
                }));
            }
        }
        self.remove_queue_handlers(name);
        self.tell_home_removed(name);
        let messages = queue.drain_all().len() as u64;
        let stored = queue.is_stored();
        if stored {
            self.turn.store(StoreOp::DeleteQueue {
                name: name.to_owned(),
                id: queue.id,
            });
        }
        tracing::debug!(queue = %name, messages, reason, "queue removed");
        (messages, stored)
    }

    /// A new queue; a stored one pages the bodies of a deep backlog out to the store.
    pub(super) fn new_queue(
        &self,
        name: Arc<str>,
        id: u64,
        spec: QueueSpec,
        policy: QueuePolicy,
    ) -> Queue {
        let mut queue = Queue::new(name, id, spec, policy);
        queue.touch(crate::clock::now_ms());
        if let Some(store) = &self.store
            && queue.is_stored()
        {
            queue.enable_paging(store.reader());
        }
        queue
    }

    pub(super) fn purge_queue(&mut self, conn: ConnId, name: &str) -> Result<Reply, OpError> {
        check_access(self.queue(name)?, self.owner(conn))?;
        let queue = self.queues.get_mut(name).expect("checked above");
        let purged = queue.purge();
        let queue_id = queue.id;
        let mut stored = false;
        for entry in &purged {
            if entry.stored {
                stored = true;
                self.turn.store(StoreOp::DeleteMessage {
                    queue: queue_id,
                    seq: entry.seq,
                    state: entry.state_stored,
                });
            }
        }
        let result: Answer = Answer::from(MessageCount {
            messages: purged.len() as u64,
        });
        Ok(if stored {
            Reply::OkAfterCommit(result)
        } else {
            Reply::Ok(result)
        })
    }

    pub(super) fn queue_info(&self, name: &str) -> Result<Reply, OpError> {
        Ok(Reply::Ok(
            info(self.queue(name)?, self.queues.shard()).into(),
        ))
    }

    pub(super) fn list_queues(&self, conn: ConnId) -> Reply {
        let vhost = self.conn_vhost(conn);
        let mut queues: Vec<QueueInfo> = self
            .queues
            .values()
            .filter(|q| crate::vhost::of(&q.name) == vhost)
            .map(|queue| info(queue, self.queues.shard()))
            .collect();
        queues.sort_by(|a, b| a.queue.cmp(&b.queue));
        Reply::Ok(QueueList { queues }.into())
    }

    pub(super) fn queue(&self, name: &str) -> Result<&Queue, OpError> {
        self.queues
            .get(name)
            .ok_or_else(|| OpError::new(ErrorCode::QueueNotFound, format!("no queue `{name}`")))
    }
}

/// An exclusive queue is usable only by the connection that declared it.
pub(super) fn check_access(queue: &Queue, conn: ConnId) -> Result<(), OpError> {
    check_owner(&queue.name, queue.spec.exclusive_owner, conn)
}

/// [`check_access`] for queue `name`, exclusive to `owner` if any.
pub(super) fn check_owner(name: &str, owner: Option<ConnId>, conn: ConnId) -> Result<(), OpError> {
    match owner {
        Some(owner) if owner != conn => Err(OpError::new(
            ErrorCode::ResourceLocked,
            format!("queue `{name}` is exclusive to another connection"),
        )),
        _ => Ok(()),
    }
}

fn info(queue: &Queue, shard: usize) -> QueueInfo {
    QueueInfo {
        shard: shard as u64,
        queue: queue.name.to_string(),
        durable: queue.spec.durable,
        exclusive: queue.spec.exclusive_owner.is_some(),
        auto_delete: queue.spec.auto_delete,
        ready: queue.ready_len() as u64,
        unacked: queue.unacked_len() as u64,
        delayed: queue.delayed_len() as u64,
        paged_out: queue.paged_out_len() as u64,
        consumers: queue.consumer_count() as u64,
        dead_lettered: queue.counters.dead_lettered,
        dropped: queue.counters.dropped,
        expired: queue.counters.expired,
        arguments: queue.spec.arguments.clone(),
        published: queue.counters.published,
        delivered: queue.counters.delivered,
        redelivered: queue.counters.redelivered,
        acked: queue.counters.acked,
        deduplicated: queue.counters.deduplicated,
    }
}
