//! Requests: each operation handed to the part of the router that owns what it touches,
//! and its reply sent now or after the turn's commit.

use tokio::sync::OwnedSemaphorePermit;

use super::{ConnTx, OpError, Outbound, Reply, Routed, Router, Settle, UserChange, trials};
use crate::protocol::{ErrorCode, Op, Request, RequestId, ServerFrame};
use crate::queue::{ConnId, Retry};
use crate::store::CommitError;

impl Router {
    pub(super) fn request(
        &mut self,
        conn: ConnId,
        request: Request,
        routed: Option<Routed>,
        credit: Option<OwnedSemaphorePermit>,
    ) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        let Request { id, op } = request;
        let result = self.apply(conn, &id, op, routed, false);
        self.answer(conn, id, result, credit);
    }

    /// This shard's part of a request several shards apply (see `gather.rs`): its result
    /// goes to the gather, after this turn's commit where the answer waits for one.
    pub(super) fn request_part(&mut self, part: super::Part) {
        let super::Part {
            conn,
            request,
            routed,
            split,
            gather,
        } = part;
        let Some(tx) = self.conns.get(&conn).map(|c| c.tx.clone()) else {
            return;
        };
        let shard = self.queues.shard();
        let result = match request {
            Some(request) => self.apply(conn, &request.id, request.op, routed, split),
            // A sync part: nothing to apply, answered (as nothing) after this turn's
            // commit, which follows everything the connection sent here before.
            None => Ok(Reply::OkAfterCommit(super::Answer::Done)),
        };
        let after_commit = match result {
            Ok(Reply::OkAfterCommit(answer)) => Reply::Ok(answer),
            Ok(Reply::ConfirmAfterCommit) => Reply::Confirm,
            other => return gather.part(shard, other, &tx),
        };
        self.turn
            .on_commit(Box::new(move |result: Result<(), CommitError>| {
                let result = result
                    .map(|()| after_commit)
                    .map_err(|e| OpError::new(ErrorCode::StoreError, e.to_string()));
                gather.part(shard, result, &tx);
            }));
    }

    /// Applies one operation; `part`: a publish split over several shards, this shard's
    /// part of it.
    fn apply(
        &mut self,
        conn: ConnId,
        id: &RequestId,
        op: Op,
        routed: Option<Routed>,
        part: bool,
    ) -> Result<Reply, OpError> {
        match op {
            Op::ConfirmSelect => self.confirm_select(conn),
            Op::DeclareQueue(declare) => self.declare_queue(conn, declare),
            Op::DeleteQueue {
                queue,
                if_unused,
                if_empty,
            } => self.delete_queue(conn, &queue, if_unused, if_empty),
            Op::PurgeQueue { queue } => self.purge_queue(conn, &queue),
            Op::QueueInfo { queue } => self.queue_info(&queue),
            Op::ListQueues => Ok(self.list_queues(conn)),
            Op::DeclareExchange(declare) => self.declare_exchange(declare),
            Op::DeleteExchange {
                exchange,
                if_unused,
            } => self.delete_exchange(&exchange, if_unused),
            Op::Bind(binding) => self.bind(conn, binding),
            Op::Unbind(binding) => self.unbind(conn, binding),
            Op::BindExchange(binding) => self.bind_exchange(binding),
            Op::UnbindExchange(binding) => self.unbind_exchange(binding),
            Op::Publish(publish) => self.publish(conn, id, publish, routed, part),
            Op::Route(message) => self.trace_route(&message, routed),
            Op::Subscribe(subscribe) => self.subscribe(conn, subscribe),
            Op::Cancel { consumer_tag } => self.cancel(conn, &consumer_tag),
            Op::Get { queue, auto_ack } => self.get(conn, &queue, auto_ack),
            Op::Ack {
                delivery_tag,
                multiple,
            } => self.settle(conn, delivery_tag, multiple, Settle::Ack),
            Op::Nack {
                delivery_tag,
                multiple,
                requeue,
                delay_ms,
            } => {
                let how = match (requeue, delay_ms) {
                    (false, _) => Settle::DeadLetter,
                    (true, Some(ms)) => Settle::Retry(Retry::After(ms)),
                    (true, None) => Settle::Retry(Retry::Backoff),
                };
                self.settle(conn, delivery_tag, multiple, how)
            }
            Op::Reject {
                delivery_tag,
                requeue,
            } => {
                let how = match requeue {
                    true => Settle::Retry(Retry::Backoff),
                    false => Settle::DeadLetter,
                };
                self.settle(conn, delivery_tag, false, how)
            }
            Op::PeekQueue { queue, limit } => self.peek_queue(&queue, limit),
            Op::DeployPlugin {
                name,
                wasm_base64,
                deployed_by,
                auto_rollback,
                shadow,
                canary_percent,
            } => trials::requested(shadow, canary_percent, auto_rollback).and_then(|how| {
                self.deploy_plugin(conn, id.clone(), name, &wasm_base64, deployed_by, how)
            }),
            Op::PromotePlugin { name } => self.promote_plugin(conn, id.clone(), &name),
            Op::PluginShadow { name } => self.plugin_shadow(&name),
            Op::RollbackPlugin { name, version } => {
                self.rollback_plugin(conn, id.clone(), &name, version)
            }
            Op::ResetPlugin { name } => self.reset_plugin(&name),
            Op::PrunePlugin { name, keep } => self.prune_plugin(&name, keep),
            Op::DeletePlugin { name } => self.delete_plugin(&name),
            Op::ListPlugins => Ok(self.list_plugins()),
            Op::PluginHistory { name } => self.plugin_history(&name),
            Op::PluginLogs { name, after, limit } => self.plugin_logs(&name, after, limit),
            Op::RequeueDeadLetters { queue, message_id } => {
                self.requeue_dead_letters(conn, &queue, message_id.as_deref())
            }
            Op::ListExchanges => Ok(self.list_exchanges(conn)),
            Op::ListBindings => Ok(self.list_bindings(conn)),
            Op::ListConnections => Ok(self.list_connections(conn)),
            Op::DeleteVhost { vhost } if !self.is_home() => self.delete_vhost_queues(conn, vhost),
            Op::AttachHandler(attach) => self.attach_handler(conn, id.clone(), attach),
            Op::DetachHandler { queue, plugin } => self.detach_handler(&queue, &plugin),
            Op::ListHandlers => Ok(self.list_handlers(conn)),
            Op::DeleteUser { user } => self.store_user_change(conn, UserChange::Delete(user)),
            Op::ListUsers => self.list_users(conn),
            Op::SetUserLimits {
                user,
                max_connections,
                max_queues,
            } => {
                let limits = crate::auth::UserLimits {
                    max_connections,
                    max_queues,
                };
                self.set_user_limits(conn, user, limits)
            }
            Op::AddVhost { vhost } => self.add_vhost(conn, vhost),
            Op::DeleteVhost { vhost } => self.delete_vhost(conn, vhost),
            Op::ListVhosts => self.list_vhosts(conn),
            Op::SetPermissions(set) => self.set_permissions(conn, set),
            Op::ClearPermissions { user, vhost } => self.clear_permissions(conn, user, vhost),
            Op::ListPermissions => self.list_permissions(conn),
            // Answered by the connection itself (they hash or check passwords, which
            // takes tens of milliseconds: never on this task).
            Op::Authenticate { .. } | Op::AddUser { .. } | Op::ChangePassword { .. } => Err(
                OpError::new(ErrorCode::InvalidField, "not available on this connection"),
            ),
        }
    }

    /// Sends the reply (now or after the turn's commit); the publish credit, if any, is
    /// given back once it is sent.
    pub(super) fn answer(
        &mut self,
        conn: ConnId,
        id: RequestId,
        result: Result<Reply, OpError>,
        credit: Option<OwnedSemaphorePermit>,
    ) {
        let Some(tx) = self.conns.get(&conn).map(|c| c.tx.clone()) else {
            return;
        };
        let frame = match result {
            Ok(Reply::OkAfterCommit(answer)) => {
                let result = answer.into_json();
                return self.after_commit(tx, ServerFrame::Ok { id, result }, credit);
            }
            Ok(Reply::ConfirmAfterCommit) => {
                return self.after_commit(tx, ServerFrame::Confirm { id }, credit);
            }
            result => frame_of(id, result),
        };
        if let Some(frame) = frame {
            let _ = tx.send(Outbound::Frame(frame));
        }
    }

    /// Sends `frame` once the current turn's batch commits, or a `store_error` if it fails;
    /// then gives `credit` back.
    pub(super) fn after_commit(
        &mut self,
        tx: ConnTx,
        frame: ServerFrame,
        credit: Option<OwnedSemaphorePermit>,
    ) {
        self.turn
            .on_commit(Box::new(move |result: Result<(), CommitError>| {
                let _credit = credit;
                let frame = match (result, frame) {
                    (Ok(()), frame) => frame,
                    (Err(e), ServerFrame::Ok { id, .. } | ServerFrame::Confirm { id }) => {
                        ServerFrame::error(Some(id), ErrorCode::StoreError, e.to_string())
                    }
                    (Err(_), other) => other,
                };
                let _ = tx.send(Outbound::Frame(frame));
            }));
    }
}

/// The frame that answers request `id` now (`None`: no answer, as for an ack). An answer
/// that waits for a commit is sent as if it had committed: the caller waits.
pub(super) fn frame_of(id: RequestId, result: Result<Reply, OpError>) -> Option<ServerFrame> {
    Some(match result {
        Ok(Reply::Silent) => return None,
        Ok(Reply::Ok(answer) | Reply::OkAfterCommit(answer)) => ServerFrame::Ok {
            id,
            result: answer.into_json(),
        },
        Ok(Reply::Confirm | Reply::ConfirmAfterCommit) => ServerFrame::Confirm { id },
        Err(e) => ServerFrame::error(Some(id), e.code, e.message),
    })
}
