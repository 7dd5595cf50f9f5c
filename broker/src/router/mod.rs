//! The router: one task per queue shard (`queue_shards.rs`), each owning its queues and
//! its copy of every connection's consumers and deliveries; the home shard (0) also owns
//! exchanges and bindings (`topology.rs`), plugin versions (`plugin_versions.rs`),
//! handlers, users and vhosts.
//!
//! Connections talk to the shards over channels ([`RouterHandle`], which sends each
//! command to its owner: `shard_routing.rs`), as in rumqttd's router; a shard never
//! blocks on I/O. Each turn it takes every waiting command and applies them, filling the
//! turn's record (`turn.rs`); at the end of the turn it hands messages to consumers and
//! submits the turn's store operations as one batch to the store writer (shared by the
//! shards; its group commit merges their batches), whose commit then confirms to
//! publishers.

mod ack_timeout;
mod conn;
mod conn_sends;
mod consumers;
mod dead_letter;
mod dedup;
mod delivery_tags;
mod dispatch;
mod enqueue;
mod exchange_bindings;
mod exchange_flags;
mod exchange_graph;
mod exchanges;
mod forward;
mod gather;
mod handle;
mod handlers;
mod ingress;
mod outbound;
mod overview;
mod plugin_list;
mod plugin_logs;
mod plugin_prune;
mod plugin_versions;
mod plugins;
mod predeclared;
mod prefetch;
mod publish;
mod queue_shards;
mod queues;
mod recovery;
mod reply;
mod requests;
mod route_trace;
mod session;
mod settle;
mod shard_routing;
mod topology;
mod trials;
mod turn;
pub(crate) use trials::restore_trials;
mod users;
mod vhosts;

pub use conn::ConnLink;
use conn::{Conn, Held};
pub use dead_letter::{DEATH_HEADER, DeathReason};
pub use handle::RouterHandle;
use handle::ShardTx;
pub use outbound::{Addressed, ConnRx, ConnTx, MAX_OUTBOUND_BYTES, Outbound, outbound_cost};
pub use publish::{DELAY_HEADER, DELAYED};
use reply::{Answer, OpError, Reply};
pub use session::{Session, SessionError};
use topology::ExchangeState;
pub use users::UserChange;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::auth::{Authenticator, Principal};
use crate::conn_ids::ConnIds;
use crate::exchange::BindingId;
use crate::fast_map::FastMap;
use crate::plugin::PluginHost;
use crate::protocol::{ErrorCode, Request, RequestId, ServerFrame};
use crate::queue::{ConnId, Retry};
use crate::store::{Recovered, StoreOp, StoreSubmitter, StoreWriter};

/// Commands from connections waiting for the router at most: past this, connections stop
/// reading their sockets until it catches up.
const REQUEST_CHANNEL_CAPACITY: usize = 4096;

/// A connection (or AMQP channel, or the broker's own session) opening: each queue shard
/// gets a copy.
#[derive(Debug, Clone)]
pub struct OpenConn {
    pub conn: ConnId,
    pub tx: ConnTx,
    /// The client's address; `None` for the broker's own management connection (the
    /// HTTP API), which `list_connections` does not show.
    pub peer: Option<SocketAddr>,
    /// Delivery bytes queued for the connection's writer, which subtracts what it
    /// has written (see [`MAX_OUTBOUND_BYTES`]); `None`: not bounded this way.
    pub outbound: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// Who authenticated; `None` for the broker's own sessions.
    pub user: Option<Principal>,
    /// The virtual host its requests' names are in (already qualified by the
    /// connection, see [`crate::vhost`]); listings show this vhost's resources.
    pub vhost: Arc<str>,
    /// The connection this one is a channel of (AMQP): exclusive queues belong to
    /// it, and `list_connections` shows the channels in its row.
    pub session: Option<ConnId>,
    pub protocol: crate::protocol::WireProtocol,
    /// What its copies on the queue shards share (a new one: the handle gives every
    /// shard the same).
    pub link: Arc<ConnLink>,
}

/// What connections ask of the router.
// Requests are nearly all of the traffic, so boxing the big variant would only add an
// allocation per publish.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Command {
    Open(OpenConn),
    /// The connection ended; `broker_stopping` when the broker closed it to shut down
    /// (its unacked messages then go back without counting as failed deliveries).
    Close {
        conn: ConnId,
        broker_stopping: bool,
    },
    Request {
        conn: ConnId,
        request: Request,
        /// A publish's share of the connection's unconfirmed-publish limit, given back
        /// when the publish is answered (for a confirm, after its commit).
        credit: Option<OwnedSemaphorePermit>,
        /// A publish's route, found at ingress (see [`ingress`]); `None` from senders,
        /// and for the default exchange, which the router routes itself.
        routed: Option<Routed>,
    },
    /// Answered once every command sent on the same channel before it is applied.
    Barrier {
        passed: oneshot::Sender<()>,
    },
    /// Answered at the end of the turn that applies it, once what that turn forwards to
    /// other shards (dead letters, alternate routes) is sent to them.
    TurnEnded {
        passed: oneshot::Sender<()>,
    },
    /// Answered once every command sent on the same channel before it is applied and
    /// committed (and what waited on that commit has run).
    Synced {
        passed: oneshot::Sender<()>,
    },
    /// A user change from connection `conn`'s request `id` (its password already hashed).
    ChangeUser {
        conn: ConnId,
        id: RequestId,
        change: UserChange,
    },
    /// The connection's writer drained below [`MAX_OUTBOUND_BYTES`]: its consumers may
    /// receive again.
    Drained {
        conn: ConnId,
    },
    /// At most `prefetch` unsettled deliveries on the connection across its consumers
    /// (AMQP `basic.qos` with `global`); 0: no such limit.
    ChannelPrefetch {
        conn: ConnId,
        prefetch: u32,
    },
    /// Auto-ack deliveries that reached the socket.
    Written {
        conn: ConnId,
        delivery_tags: Vec<u64>,
    },
    /// A deployed or rolled-back plugin version was compiled (or refused).
    PluginPrepared(Box<plugins::Prepared>),
    /// A prepared plugin version's commit ended (successfully or not).
    PluginStored(Box<plugins::Stored>),
    /// A version deployed with automatic rollback is failing.
    AutoRollback {
        name: String,
        failing: crate::protocol::AutoRollback,
    },
    /// A handler's verdict on a delivery (with what it published).
    HandlerDone(Box<handlers::Done>),
    /// An attached handler's first instance is ready.
    HandlerStarted(Box<handlers::Started>),
    /// Commit what is pending, close the store, then answer.
    Shutdown {
        done: oneshot::Sender<()>,
    },
    /// This shard's part of a request several shards apply.
    Part(Box<Part>),
    /// Messages another shard forwards to queues of this one (applied in one turn).
    Enqueue(Vec<forward::Forwarded>),
    /// Store operations this shard deferred until what it forwarded was stored.
    Store(Vec<StoreOp>),
    /// The shards a handler's outputs went to have stored them (settle the delivery
    /// `how`; its ack was stored with them when `ack_stored`) or refused them (`Failed`).
    OutputsAnswered {
        conn: ConnId,
        tag: u64,
        how: Settle,
        ack_stored: bool,
    },
    /// A queue another shard owned was removed (to home: its bindings go).
    QueueRemoved {
        name: Arc<str>,
    },
}

/// One shard's part of a request several shards apply (see `shard_routing.rs`).
#[derive(Debug)]
pub struct Part {
    conn: ConnId,
    /// `None`: a sync part, answered after this shard's next commit (`conn_sends.rs`).
    request: Option<Request>,
    routed: Option<Routed>,
    /// A publish whose queues are on several shards, this part routing its own.
    split: bool,
    gather: Arc<gather::Gather>,
}

impl std::fmt::Debug for gather::Gather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather")
            .field("id", self.id())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for forward::Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarded")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

pub struct Router {
    /// This shard's queues and their timers.
    queues: queue_shards::QueueShards,
    /// Every shard's control channel (this one's too), for what crosses shards.
    peers: Arc<[mpsc::UnboundedSender<Command>]>,
    /// Exchanges, bindings and the directory ingress routes through.
    topology: topology::Topology,
    /// The exchange types (Wasm plugins), and where deploys load new versions.
    plugins: PluginHost,
    /// Deployed, active, on-trial and committing plugin versions.
    versions: plugin_versions::PluginVersions,
    /// For work finished off the router's task to report back.
    self_tx: mpsc::UnboundedSender<Command>,
    conns: FastMap<ConnId, Conn>,
    /// Where the turn's batches go; `None` once stopped.
    store: Option<StoreSubmitter>,
    /// The home shard's: closed at shutdown, after every shard's last batch.
    store_owner: Option<StoreWriter>,
    /// What the current turn produces (store operations, queues to dispatch, ...).
    turn: turn::Turn,
    /// Distinguishes this run's generated names from earlier runs' durable ones.
    run_id: String,
    /// Handler attachments and filtered subscriptions.
    handlers: handlers::Handlers,
    /// The users, updated once user changes commit.
    auth: Arc<Authenticator>,
    /// For the in-broker consumers of handler attachments.
    conn_ids: ConnIds,
    /// The consumer timeouts and their next check.
    ack_timeout: ack_timeout::AckTimeout,
}

impl Router {
    /// Builds the router's shards from recovered state and starts them on the current
    /// runtime.
    pub fn spawn(
        recovered: Recovered,
        store: StoreWriter,
        plugins: PluginHost,
        auth: Arc<Authenticator>,
        keep_plugin_versions: Option<u64>,
        consumer_timeout: Option<Duration>,
        runtimes: crate::shard_threads::ShardRuntimes,
    ) -> RouterHandle {
        let placement = Arc::new(queue_shards::Placement::new(runtimes.count()));
        let shards = placement.shards();
        let mut receivers = Vec::with_capacity(shards);
        let mut senders = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (control, control_rx) = mpsc::unbounded_channel();
            let (requests, requests_rx) = mpsc::channel(REQUEST_CHANNEL_CAPACITY);
            senders.push(ShardTx { requests, control });
            receivers.push((requests_rx, control_rx));
        }
        let peers: Arc<[mpsc::UnboundedSender<Command>]> =
            senders.iter().map(|s| s.control.clone()).collect();
        let directory = Arc::new(ingress::ExchangeDirectory::default());
        let conn_ids = ConnIds::default();
        let run_id = format!("{:x}", crate::clock::now_ms());
        let mut parts = recovery::split(recovered, &placement);
        // The other shards first: their queues are in the directory when home restores
        // the bindings to them.
        let mut routers = Vec::with_capacity(shards);
        for shard in (1..shards).rev() {
            let setup = recovery::ShardSetup {
                shard,
                placement: placement.clone(),
                peers: peers.clone(),
                store: store.submitter(),
                store_owner: None,
                run_id: run_id.clone(),
                conn_ids: conn_ids.clone(),
                directory: directory.clone(),
            };
            let recovered = parts.pop().expect("a part per shard");
            routers.push(Router::recover(
                recovered,
                setup,
                plugins.clone(),
                auth.clone(),
            ));
        }
        let setup = recovery::ShardSetup {
            shard: 0,
            placement: placement.clone(),
            peers,
            store: store.submitter(),
            store_owner: Some(store),
            run_id,
            conn_ids: conn_ids.clone(),
            directory: directory.clone(),
        };
        let home = parts.pop().expect("a part per shard");
        let mut home = Router::recover(home, setup, plugins, auth);
        home.versions.keep = keep_plugin_versions;
        home.watch_recovered_canaries();
        routers.push(home);
        for mut router in routers {
            router.ack_timeout = ack_timeout::AckTimeout::new(consumer_timeout);
            let (requests_rx, control_rx) = receivers.pop().expect("a channel per shard");
            let shard = router.queues.shard();
            debug_assert_eq!(receivers.len(), shard);
            runtimes.spawn_shard(shard, router.run(requests_rx, control_rx));
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = ingress::ExchangeWorkers::start(cores.max(2))
            .expect("cannot start the exchange worker threads");
        RouterHandle {
            shards: senders.into(),
            sends: Default::default(),
            placement,
            ingress: Arc::new(ingress::Ingress::new(directory, workers)),
            conn_ids,
        }
    }

    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Command>,
        mut control: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut commands = Vec::with_capacity(1024);
        loop {
            let ack_check = self.ack_timeout.next_check();
            let wait = [self.queues.next_wakeup(), ack_check]
                .into_iter()
                .flatten()
                .min()
                .map(|due| Duration::from_millis(due.saturating_sub(crate::clock::now_ms())));
            // The broker's own work first; then what clients sent, up to a turn's worth.
            tokio::select! {
                biased;
                command = control.recv() => match command {
                    Some(command) => commands.push(command),
                    None => break,
                },
                command = requests.recv() => match command {
                    Some(command) => commands.push(command),
                    None => break,
                },
                _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
            }
            while commands.len() < 512
                && let Ok(command) = control.try_recv()
            {
                commands.push(command);
            }
            while commands.len() < 1024
                && let Ok(command) = requests.try_recv()
            {
                commands.push(command);
            }
            self.turn.begin();
            for command in commands.drain(..) {
                match command {
                    Command::Open(open) => {
                        let conn = open.conn;
                        let state = Conn::new(open, self.queues.shard());
                        self.open_conn(conn, state)
                    }
                    Command::ChangeUser { conn, id, change } => self.change_user(conn, id, change),
                    Command::Close {
                        conn,
                        broker_stopping,
                    } => self.close_conn(conn, broker_stopping),
                    Command::Request {
                        conn,
                        request,
                        credit,
                        routed,
                    } => self.request(conn, request, routed, credit),
                    Command::Barrier { passed } => {
                        let _ = passed.send(());
                    }
                    Command::TurnEnded { passed } => self.turn.turn_ended.push(passed),
                    Command::Synced { passed } => self.turn.on_commit(Box::new(move |_| {
                        let _ = passed.send(());
                    })),
                    Command::Drained { conn } => self.drained(conn),
                    Command::ChannelPrefetch { conn, prefetch } => {
                        self.set_channel_prefetch(conn, prefetch)
                    }
                    Command::Written {
                        conn,
                        delivery_tags,
                    } => self.settle_written(conn, delivery_tags),
                    Command::PluginPrepared(prepared) => self.plugin_prepared(*prepared),
                    Command::PluginStored(stored) => self.plugin_stored(*stored),
                    Command::AutoRollback { name, failing } => self.auto_rollback(name, failing),
                    Command::HandlerDone(done) => self.handler_done(*done),
                    Command::HandlerStarted(started) => self.handler_started(*started),
                    Command::Shutdown { done } => {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                    Command::Part(part) => self.request_part(*part),
                    Command::Enqueue(forwards) => self.enqueue_forwards(forwards),
                    Command::OutputsAnswered {
                        conn,
                        tag,
                        how,
                        ack_stored,
                    } => self.outputs_answered(conn, tag, how, ack_stored),
                    Command::Store(ops) => self.store_deferred(ops),
                    Command::QueueRemoved { name } => self.queue_removed(&name),
                }
            }
            self.end_turn();
        }
        self.shutdown().await;
    }

    /// Ticks every queue with a wake-up due: delays end, expired messages dead-letter.
    fn fire_timers(&mut self) {
        let now = crate::clock::now_ms();
        while let Some(name) = self.queues.pop_due(now) {
            let queue = self.queues.get_mut(&name).expect("popped a live queue");
            if queue.expired_unused(now) {
                tracing::info!(queue = %name, "queue expired unused (`expires`); deleted");
                self.remove_queue(&name, "queue expired (expires)");
                continue;
            }
            for entry in queue.tick(now) {
                self.dead_letter(&name, entry, DeathReason::Expired, now);
            }
            self.turn.to_dispatch.insert(name);
        }
    }

    async fn shutdown(&mut self) {
        self.flush();
        self.store = None;
        if let Some(store) = self.store_owner.take() {
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
            tracing::info!("router stopped; store closed");
        }
    }

    /// Submits the turn's store batch.
    fn flush(&mut self) {
        let batch = self.turn.take_store();
        if let Some(store) = &self.store {
            store.submit(batch);
        }
    }

    fn open_conn(&mut self, conn: ConnId, state: Conn) {
        // A channel of an open connection is no new connection, nor is a session acting
        // for a user (no peer: the HTTP API's). Home counts connections for every shard.
        if let (Some(principal), None, Some(_)) = (&state.user, state.session, state.peer)
            && self.is_home()
            && let Err(refused) = self.check_connection_limit(principal)
        {
            let frame = ServerFrame::error(None, ErrorCode::AccessRefused, refused.clone());
            let _ = state.tx.send(Outbound::Frame(frame));
            let _ = state.tx.send(Outbound::Close(refused));
            return;
        }
        self.conns.insert(conn, state);
    }

    /// Who owns the exclusive queues `conn` declares: its session, or itself.
    fn owner(&self, conn: ConnId) -> ConnId {
        self.conns
            .get(&conn)
            .and_then(|c| c.session)
            .unwrap_or(conn)
    }

    fn confirm_select(&mut self, conn: ConnId) -> Result<Reply, OpError> {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.confirms = true;
        }
        Ok(Reply::Ok(Answer::Done))
    }

    /// A broker-chosen name, unique across runs: `{prefix}-{run}-{conn}-{n}` (a queue
    /// name still to qualify with the connection's vhost). With several shards, only
    /// names placed on this one: a generated queue lives where it was declared, and the
    /// shards' names (consumer tags too) never collide.
    fn generate_name(&mut self, conn: ConnId, prefix: &str) -> String {
        let vhost = self.conn_vhost(conn).to_owned();
        let c = self
            .conns
            .get_mut(&conn)
            .expect("requests come from open connections");
        loop {
            c.next_generated += 1;
            let name = format!("{prefix}-{}-{conn}-{}", self.run_id, c.next_generated - 1);
            let qualified = crate::vhost::qualify(&vhost, &name);
            if self.queues.is_local(&qualified) {
                return name;
            }
        }
    }

    /// The vhost of connection `conn` (listings show its resources only).
    fn conn_vhost(&self, conn: ConnId) -> &str {
        self.conns
            .get(&conn)
            .map_or(crate::vhost::DEFAULT_VHOST, |c| &c.vhost)
    }
}

/// A message's route through a named exchange (and the exchanges bound to it), found at
/// ingress or by [`ingress::ExchangeDirectory::route_now`].
pub type Routed = Result<Route, crate::exchange::ExchangeError>;

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The queues it goes to, each once (one deleted since may be among them).
    pub queues: Vec<Arc<str>>,
    /// The bindings it took (what `route` shows).
    pub bindings: Vec<BindingId>,
}

/// What to do with a settled delivery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Settle {
    /// Processed: remove it.
    Ack,
    /// Failed: back to its queue (now or after a delay), or dead-lettered at the limit.
    Retry(Retry),
    /// Refused without requeue: dead-letter it (reason `rejected`).
    DeadLetter,
    /// A handler failed on it: retried with the queue's backoff like `Retry`, but
    /// dead-lettered with reason `plugin_error` at the delivery limit.
    Failed,
}

#[cfg(test)]
mod sizes {
    /// Every publish moves its `Command` by value through ingress, a channel and the
    /// router's turn: an inline `Message` (376 bytes) in any variant made each of those
    /// moves a 456-byte copy (memmove was 12 % of the broker's CPU at full speed).
    #[test]
    fn a_command_stays_small() {
        assert!(std::mem::size_of::<super::Command>() <= 256);
        assert!(std::mem::size_of::<crate::protocol::Op>() <= 128);
    }
}
