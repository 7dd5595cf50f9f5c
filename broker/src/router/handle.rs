//! The router's handle: what connections and the broker's own work send commands
//! through, to the shard that owns what each touches (`shard_routing.rs`), waiting where a
//! command must be applied before the next (barriers) or the router is behind.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Command, conn_sends, ingress, queue_shards, shard_routing};
use crate::conn_ids::ConnIds;
use crate::protocol::Op;

/// The channels to one queue shard's router.
#[derive(Clone)]
pub(super) struct ShardTx {
    pub requests: mpsc::Sender<Command>,
    pub control: mpsc::UnboundedSender<Command>,
}

/// Cheap, cloneable sender of commands to the router's shards: per shard, a bounded
/// channel for client connections (each connection sends all its commands there, in
/// order) and an unbounded one for the broker's own work (plugins, handlers, the
/// management session), which must never wait on clients.
#[derive(Clone)]
pub struct RouterHandle {
    pub(super) shards: Arc<[ShardTx]>,
    pub(super) placement: Arc<queue_shards::Placement>,
    /// Each connection's commands across shards (with more than one).
    pub(super) sends: Arc<conn_sends::ConnSends>,
    pub(super) ingress: Arc<ingress::Ingress>,
    pub(super) conn_ids: ConnIds,
}

impl std::fmt::Debug for RouterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterHandle").finish_non_exhaustive()
    }
}

impl RouterHandle {
    /// Where every connection id comes from (see `conn_ids.rs`).
    pub fn conn_ids(&self) -> &ConnIds {
        &self.conn_ids
    }

    /// Sends a broker-internal command; false when the router has stopped.
    pub fn send(&self, command: Command) -> bool {
        let (target, sent) = self.plan(&command);
        let all_sent = match target {
            Some(shard) => self.shards[shard].control.send(command).is_ok(),
            None => (self.split(command).into_iter())
                .all(|(shard, command)| self.shards[shard].control.send(command).is_ok()),
        };
        self.sends.sent(sent);
        all_sent
    }

    /// Sends a client connection's command, waiting while the router is behind; false
    /// when the router has stopped. A publish is routed first (ingress); after a change
    /// of routing this waits until the router has applied it.
    pub async fn send_request(&self, command: Command) -> bool {
        match self.try_send_request(command) {
            Ok(sent) => sent,
            // Boxed: the waiting path's futures are hundreds of bytes, and every caller's
            // future would otherwise hold them, built and moved for every request
            // (memmove was 12 % of the broker's CPU at full speed).
            Err(command) => Box::pin(self.send_request_waiting(command)).await,
        }
    }

    /// Whether the connection waits after `command` until the router has applied it.
    fn needs_barrier(&self, command: &Command) -> bool {
        ingress::changes_routing(command)
            || (self.shards.len() > 1 && shard_routing::declares_queue(command))
    }

    /// [`Self::send_request`] when nothing needs waiting for: a command that changes no
    /// routing, routed at once (see [`ingress::Ingress::try_route`]), for one shard, with
    /// room in its channel. `Ok(false)`: the router has stopped; `Err` gives the command
    /// back.
    #[allow(clippy::result_large_err)] // as `Ingress::try_route`
    pub(crate) fn try_send_request(&self, command: Command) -> Result<bool, Command> {
        if self.needs_barrier(&command) || self.earlier_turns(&command) != 0 {
            return Err(command);
        }
        let command = self.ingress.try_route(command)?;
        let (Some(shard), sent) = self.plan(&command) else {
            return Err(command);
        };
        match self.shards[shard].requests.try_send(command) {
            Ok(()) => {
                self.sends.sent(sent);
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Full(command)) => Err(command),
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
        }
    }

    /// [`Self::send_request`]'s path that may wait: for an exchange worker, for room in
    /// the channel, or for the router to apply a change of routing.
    async fn send_request_waiting(&self, command: Command) -> bool {
        let command = self.ingress.route(command).await;
        let barrier = self.needs_barrier(&command);
        let earlier = self.earlier_turns(&command);
        if earlier != 0 && !self.turns_ended(earlier).await {
            return false;
        }
        let (target, sent) = self.plan(&command);
        let sends = match target {
            Some(shard) => vec![(shard, command)],
            None => self.split(command),
        };
        for (shard, command) in sends {
            if self.shards[shard].requests.send(command).await.is_err() {
                return false;
            }
        }
        self.sends.sent(sent);
        !barrier || self.barrier(false).await
    }

    /// [`Self::send_request`] for the broker's own sessions, on the channels that never
    /// wait on clients.
    pub async fn send_internal_request(&self, command: Command) -> bool {
        let command = self.ingress.route(command).await;
        let barrier = self.needs_barrier(&command);
        if !self.send(command) {
            return false;
        }
        !barrier || self.barrier(true).await
    }

    /// The shards whose turns must end before `command` is sent: a consume from a queue
    /// on one shard waits for the other shards the connection used, so that what those
    /// forward to it (the dead letter of a reject just sent, making its `.dlq`) is there
    /// first, as with one shard.
    fn earlier_turns(&self, command: &Command) -> u64 {
        if self.shards.len() == 1 {
            return 0;
        }
        match command {
            Command::Request { conn, request, .. } => match &request.op {
                Op::Subscribe(subscribe) => {
                    let shard = self.placement.shard_of(&subscribe.queue);
                    self.sends.touched_besides(*conn, shard)
                }
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Waits until each shard in `shards` has ended the turn that applies what was sent
    /// to it before (its forwards sent).
    async fn turns_ended(&self, shards: u64) -> bool {
        for shard in conn_sends::shards_in(shards) {
            let (passed, wait) = oneshot::channel();
            let ended = Command::TurnEnded { passed };
            if self.shards[shard].requests.send(ended).await.is_err() || wait.await.is_err() {
                return false;
            }
        }
        true
    }

    /// Waits until every shard has applied what was sent before (on the control channels
    /// with `control`). Home last: a queue removed on another shard has told home by then.
    async fn barrier(&self, control: bool) -> bool {
        for shard in (1..self.shards.len()).chain([0]) {
            let (passed, wait) = oneshot::channel();
            let barrier = Command::Barrier { passed };
            let sent = match control {
                true => self.shards[shard].control.send(barrier).is_ok(),
                false => self.shards[shard].requests.send(barrier).await.is_ok(),
            };
            if !sent || wait.await.is_err() {
                return false;
            }
        }
        true
    }

    /// Asks the router to commit and close the store; returns when it has (the other
    /// shards first, home, which closes the store, last). With several shards, what they
    /// still hand each other is let through first: messages forwarded at the end of a
    /// turn, then their commits, then what waited on those commits (`forward.rs`) — a
    /// round each, every shard applying and committing what it was sent before.
    pub async fn shutdown(&self) {
        let drain_rounds = if self.shards.len() > 1 { 3 } else { 0 };
        for _ in 0..drain_rounds {
            let mut waits = Vec::with_capacity(self.shards.len());
            for shard in self.shards.iter() {
                let (passed, wait) = oneshot::channel();
                if shard.control.send(Command::Synced { passed }).is_ok() {
                    waits.push(wait);
                }
            }
            for wait in waits {
                let _ = wait.await;
            }
        }
        for shard in (1..self.shards.len()).chain([0]) {
            let (done, wait) = oneshot::channel();
            if self.shards[shard]
                .control
                .send(Command::Shutdown { done })
                .is_ok()
            {
                let _ = wait.await;
            }
        }
    }
}
