//! The server: opens the store, starts the router, accepts WebSocket (and STOMP)
//! connections.
//!
//! Shaped after mini-redis's server: one acceptor, one task per connection, a bound on
//! connections, and a graceful shutdown that stops accepting, closes connections, lets
//! the router commit what is pending and closes the database.

mod admission;
mod config;
mod conn_writer;
mod connection;
pub(crate) use connection::{next_tick, panic_text};
mod gate;
mod login;
mod memory_alarm;
mod plugins_dir;
mod sources;
pub mod tls;

use crate::shard_threads::{ShardRuntimes, ShardThreads, Socket};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use tokio::task::JoinHandle;

use crate::plugin::{HostError, Limits, PluginHost, PluginSource};
use crate::queue::{DEFAULT_MAX_IN_MEMORY_LENGTH, QueuePolicy};
use crate::router::{Router, RouterHandle};
use crate::store::{self, OpenError, Recovered, StoreOp, WriteBatch};
pub(crate) use admission::{Admission, accept_each};
pub use config::Config;
use connection::FlowControl;
pub use connection::INJECTED_PANIC_FRAME;
use gate::Gate;
pub use memory_alarm::{
    MemoryStats, MemoryWatermark, StoppedWhileBlocked, resident_memory, wait_until_alarm_clears,
};
use plugins_dir::PluginsDir;
use sources::Sources;
use tls::TlsSetup;
pub use tls::{TlsConfig, TlsError};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error(transparent)]
    Plugins(#[from] HostError),
    #[error("cannot read plugins directory {path}: {source}")]
    PluginsDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the {listener} listener needs TLS certificates (--tls-cert and --tls-key)")]
    TlsListenerWithoutTls { listener: &'static str },
    #[error("cannot start the shard threads: {0}")]
    ShardThreads(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
    /// Whether the listeners speak TLS (`wss://`, `https://`).
    tls: bool,
    http_addr: Option<SocketAddr>,
    amqp_addr: Option<SocketAddr>,
    stomp_addr: Option<SocketAddr>,
    amqps_addr: Option<SocketAddr>,
    stomps_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    acceptor: JoinHandle<()>,
    http: Option<JoinHandle<()>>,
    store: Arc<store::WriterStats>,
    /// With `--shard-threads`; stopped last.
    shard_threads: Option<ShardThreads>,
}

impl Broker {
    /// Opens the store, recovers, and starts accepting connections.
    pub async fn start(config: Config) -> Result<Broker, StartError> {
        // Bad TLS files stop the broker before it touches the store.
        let tls = config.tls.as_ref().map(TlsSetup::load).transpose()?;
        for (listener, asked) in [("amqps", config.amqps), ("stomps", config.stomps)] {
            if asked.is_some() && tls.is_none() {
                return Err(StartError::TlsListenerWithoutTls { listener });
            }
        }
        // Plugins before the router: recovered exchanges need their types. Compiled code
        // comes from the store's artifact cache when it is valid for this engine.
        let (data_dir, host, use_cache) = (
            config.data_dir.clone(),
            config.plugins.clone(),
            config.artifact_cache,
        );
        let backend = config.storage_backend.as_ref().map(|make| make());
        let (recovered, writer, plugins) = tokio::task::spawn_blocking(move || {
            let (mut recovered, writer) = store::open_with(&data_dir, backend, in_memory_length)?;
            if !use_cache {
                recovered.plugin_artifacts.clear();
            }
            let mut compiled = WriteBatch::default();
            let host = match host {
                Some(host) => host,
                None => {
                    let host = PluginHost::new(Limits::default())?;
                    let standard = host.load_standard_exchanges(&recovered.plugin_artifacts)?;
                    for (key, artifact) in standard {
                        recovered
                            .plugin_artifacts
                            .insert(key.clone(), artifact.clone().into());
                        compiled
                            .ops
                            .push(StoreOp::PutPluginArtifact { key, artifact });
                    }
                    host
                }
            };
            restore_plugin_versions(&host, &mut recovered, &mut compiled);
            crate::router::restore_trials(&host, &mut recovered, &mut compiled);
            if recovered.users.is_empty() {
                // A fresh install (or a data dir from before users): RabbitMQ's default.
                let guest = crate::auth::default_user();
                tracing::info!(user = %guest.name, "created the default user (loopback only)");
                compiled.ops.push(StoreOp::PutUser(guest.clone()));
                recovered.users.push(guest);
            }
            if recovered.vhosts.is_empty() {
                // A fresh install, or a data dir from before vhosts: its resources are
                // the default vhost's (see `crate::vhost`).
                let default = crate::vhost::DEFAULT_VHOST.to_string();
                compiled.ops.push(StoreOp::PutVhost(default.clone()));
                recovered.vhosts.push(default);
            }
            writer.submit(compiled);
            Ok::<_, StartError>((recovered, writer, host))
        })
        .await
        .expect("startup task does not panic")?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let http_listener = bind_if_asked(config.http).await?;
        let amqp_listener = bind_if_asked(config.amqp).await?;
        let stomp_listener = bind_if_asked(config.stomp).await?;
        let amqps_listener = bind_if_asked(config.amqps).await?;
        let stomps_listener = bind_if_asked(config.stomps).await?;
        let store_stats = writer.stats();
        let auth =
            crate::auth::Authenticator::new(recovered.users.clone(), recovered.vhosts.clone());
        let (runtimes, shard_threads) = match config.shard_threads {
            true => {
                let (runtimes, threads) = ShardRuntimes::threads(config.queue_shards)
                    .map_err(StartError::ShardThreads)?;
                (runtimes, Some(threads))
            }
            false => (ShardRuntimes::pool(config.queue_shards), None),
        };
        let router = Router::spawn(
            recovered,
            writer,
            plugins.clone(),
            auth.clone(),
            config.keep_plugin_versions,
            config.consumer_timeout,
            runtimes.clone(),
        );
        let store = store_stats.clone();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let memory = Arc::new(MemoryStats::default());
        let (alarm, alarm_rx) = watch::channel(false);
        tokio::spawn(memory_alarm::watch_memory(
            config.memory_high_watermark.bytes(),
            alarm,
            memory.clone(),
            shutdown_rx.clone(),
        ));
        if let Some(dir) = &config.plugins_dir {
            let mut plugins_dir = PluginsDir::new(dir, &router);
            plugins_dir
                .deploy_all()
                .await
                .map_err(|source| StartError::PluginsDir {
                    path: dir.clone(),
                    source,
                })?;
            if config.watch_plugins {
                tokio::spawn(plugins_dir.watch(shutdown_rx.clone()));
            }
        }
        let http = http_listener.as_ref().map(|(_, addr)| *addr);
        let http_task = http_listener.map(|(listener, http_addr)| {
            let state = Arc::new(crate::http::HttpState {
                management: crate::router::Session::open(router.clone()),
                plugins,
                store: store_stats,
                memory: memory.clone(),
                started: std::time::Instant::now(),
                auth: auth.clone(),
                allowed_hosts: match config.http_allowed_hosts.is_empty() {
                    true => crate::http::default_hosts(http_addr),
                    false => config.http_allowed_hosts.clone(),
                },
                tls: tls.clone(),
                sessions: crate::http::Sessions::new(config.http_session_timeout),
                rates: crate::http::RateHistory::start(
                    crate::router::Session::open(router.clone()),
                    shutdown_rx.clone(),
                ),
            });
            tracing::info!(%http_addr, tls = tls.is_some(), "management HTTP listening");
            tokio::spawn(crate::http::serve(listener, state, shutdown_rx.clone()))
        });
        let allowed_origins = match config.allowed_origins.is_empty() {
            true => gate::management_origins(http, tls.is_some()),
            false => config.allowed_origins.clone(),
        };
        let admission = Admission {
            limit: Arc::new(Semaphore::new(config.max_connections)),
            sources: Sources::new(config.max_connections_per_source),
            conn_ids: router.conn_ids().clone(),
            runtimes,
        };
        let amqp_addr = amqp_listener.as_ref().map(|(_, addr)| *addr);
        // AMQP's shared state: for its listener, and for WebSocket upgrades that choose
        // the `amqp` subprotocol.
        let amqp = Arc::new(crate::amqp::AmqpContext {
            router: router.clone(),
            auth: auth.clone(),
            offer: crate::amqp::Offer {
                frame_max: crate::amqp::DEFAULT_FRAME_MAX,
                channel_max: crate::amqp::DEFAULT_CHANNEL_MAX,
                heartbeat: config.heartbeat,
            },
            handshake_timeout: config.handshake_timeout,
            max_unconfirmed: config.max_unconfirmed.max(1),
            max_body: config.max_frame_bytes,
            conn_ids: admission.conn_ids.clone(),
            alarm: alarm_rx.clone(),
        });
        let amqp_task = amqp_listener.map(|(listener, amqp_addr)| {
            tracing::info!(%amqp_addr, "AMQP listening");
            tokio::spawn(crate::amqp::accept_loop(
                listener,
                amqp.clone(),
                admission.clone(),
                shutdown_rx.clone(),
            ))
        });
        let amqps_addr = amqps_listener.as_ref().map(|(_, addr)| *addr);
        let amqps_task = amqps_listener
            .zip(tls.clone())
            .map(|((listener, addr), tls)| {
                tracing::info!(amqps_addr = %addr, "AMQP over TLS listening");
                tokio::spawn(crate::amqp::accept_tls_loop(
                    listener,
                    tls,
                    amqp.clone(),
                    admission.clone(),
                    shutdown_rx.clone(),
                ))
            });
        let stomp = Arc::new(crate::stomp::Context {
            router: router.clone(),
            auth: auth.clone(),
            max_frame_bytes: config.max_frame_bytes,
            handshake_timeout: config.handshake_timeout,
            max_unconfirmed: config.max_unconfirmed.max(1),
            alarm: alarm_rx.clone(),
            shutdown: shutdown_rx.clone(),
        });
        let gate = Arc::new(Gate {
            auth,
            allowed_origins,
        });
        let stomp_addr = stomp_listener.as_ref().map(|(_, addr)| *addr);
        let stomp_task = stomp_listener.map(|(listener, addr)| {
            tracing::info!(stomp_addr = %addr, "STOMP listening");
            tokio::spawn(crate::stomp::listener::accept_loop(
                listener,
                stomp.clone(),
                admission.clone(),
                shutdown_rx.clone(),
            ))
        });
        let stomps_addr = stomps_listener.as_ref().map(|(_, addr)| *addr);
        let stomps_task = stomps_listener
            .zip(tls.clone())
            .map(|((listener, addr), tls)| {
                tracing::info!(stomps_addr = %addr, "STOMP over TLS listening");
                tokio::spawn(crate::stomp::listener::accept_tls_loop(
                    listener,
                    tls,
                    stomp.clone(),
                    admission.clone(),
                    shutdown_rx.clone(),
                ))
            });
        let tls_enabled = tls.is_some();
        let acceptor = tokio::spawn(accept_loop(
            listener,
            router,
            config,
            Entry { gate, tls },
            alarm_rx,
            Acceptors {
                admission,
                amqp: amqp_task,
                amqp_context: amqp,
                stomp: stomp_task,
                tls_listeners: [amqps_task, stomps_task],
                stomp_context: stomp,
            },
            shutdown_rx,
        ));
        tracing::info!(%local_addr, tls = tls_enabled, "broker listening");
        Ok(Broker {
            local_addr,
            tls: tls_enabled,
            stomp_addr,
            http_addr: http,
            amqp_addr,
            amqps_addr,
            stomps_addr,
            shutdown,
            acceptor,
            http: http_task,
            store,
            shard_threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL clients connect to: `ws://`, or `wss://` with TLS.
    pub fn url(&self) -> String {
        match self.tls {
            true => format!("wss://{}", self.local_addr),
            false => format!("ws://{}", self.local_addr),
        }
    }

    /// Where the STOMP TCP listener is, when [`Config::stomp`] asked for one.
    pub fn stomp_addr(&self) -> Option<SocketAddr> {
        self.stomp_addr
    }

    /// Where the management HTTP listener is, when [`Config::http`] asked for one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The management page's URL (`http://` or, with TLS, `https://`), when there is one.
    pub fn http_url(&self) -> Option<String> {
        let scheme = if self.tls { "https" } else { "http" };
        self.http_addr.map(|addr| format!("{scheme}://{addr}/"))
    }

    /// Where the AMQP listener is, when [`Config::amqp`] asked for one.
    pub fn amqp_addr(&self) -> Option<SocketAddr> {
        self.amqp_addr
    }

    /// Where the AMQP-over-TLS listener is, when [`Config::amqps`] asked for one.
    pub fn amqps_addr(&self) -> Option<SocketAddr> {
        self.amqps_addr
    }

    /// Where the STOMP-over-TLS listener is, when [`Config::stomps`] asked for one.
    pub fn stomps_addr(&self) -> Option<SocketAddr> {
        self.stomps_addr
    }

    /// Fault injection for tests: while `on`, every store commit fails (the transaction is
    /// aborted, nothing of it is written), the way commits fail on a full or broken disk,
    /// so replies that wait for a commit get `store_error`. Not for production use.
    #[doc(hidden)]
    pub fn fail_commits(&self, on: bool) {
        self.store
            .fail_commits
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Fault injection for tests: while `on`, the store writer waits before each commit,
    /// like a stalled disk, so nothing is confirmed. Not for production use.
    #[doc(hidden)]
    pub fn hold_commits(&self, on: bool) {
        self.store
            .hold_commits
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops accepting, closes every connection, commits pending writes and closes the
    /// database; returns when all of that is done.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Some(http) = self.http {
            let _ = http.await;
        }
        let _ = self.acceptor.await;
        drop(self.shard_threads);
    }
}

/// Loads the stored active plugin versions, from the artifact cache when it holds them;
/// adds the store writes caching what had to be compiled to `compiled`.
/// How many of a recovered queue's messages to read whole: its `max_in_memory_length`
/// (arguments that no longer parse get the defaults, as the router gives them).
fn in_memory_length(record: &store::QueueRecord) -> usize {
    QueuePolicy::from_arguments(&record.arguments, false)
        .map_or(DEFAULT_MAX_IN_MEMORY_LENGTH, |policy| {
            policy.max_in_memory_length
        })
}

fn restore_plugin_versions(
    host: &PluginHost,
    recovered: &mut Recovered,
    compiled: &mut WriteBatch,
) {
    let started = std::time::Instant::now();
    let mut cached = 0;
    for (name, active) in &recovered.active_plugins {
        let stored = recovered
            .plugin_versions
            .iter()
            .find(|v| v.name == *name && v.version == *active);
        let Some(stored) = stored else {
            tracing::error!(plugin = %name, version = active, "plugin version not restored: not stored");
            continue;
        };
        let key = host.artifact_key(&stored.hash);
        let source = PluginSource {
            name: name.clone(),
            version: *active,
            wasm: stored.wasm.clone(),
            compiled: recovered.plugin_artifacts.get(&key).cloned(),
        };
        match host.compile_blocking(&source) {
            Ok(prepared) => {
                match prepared.artifact() {
                    Some(artifact) => {
                        recovered
                            .plugin_artifacts
                            .insert(key.clone(), artifact.clone().into());
                        compiled
                            .ops
                            .push(StoreOp::PutPluginArtifact { key, artifact });
                    }
                    None => cached += 1,
                }
                host.install(prepared);
            }
            Err(e) => {
                tracing::error!(plugin = %name, version = active, error = %e, "plugin version not restored")
            }
        }
    }
    if !recovered.active_plugins.is_empty() {
        tracing::info!(
            plugins = recovered.active_plugins.len(),
            from_cache = cached,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plugin versions restored"
        );
    }
}

/// A listener on `addr` when one was asked for, with the address it got.
async fn bind_if_asked(
    addr: Option<SocketAddr>,
) -> Result<Option<(TcpListener, SocketAddr)>, StartError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listen_error = |source| StartError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    Ok(Some((listener, bound)))
}

/// What every connection of the WebSocket listener goes through first.
struct Entry {
    gate: Arc<Gate>,
    tls: Option<TlsSetup>,
}

/// The WebSocket acceptor's share of the admission, and the other listeners it waits for
/// before the router stops.
struct Acceptors {
    admission: Admission,
    amqp: Option<JoinHandle<()>>,
    /// For WebSocket connections that speak AMQP.
    amqp_context: Arc<crate::amqp::AmqpContext>,
    stomp: Option<JoinHandle<()>>,
    /// For WebSocket connections that speak STOMP.
    stomp_context: Arc<crate::stomp::Context>,
    /// `--amqps` and `--stomps`.
    tls_listeners: [Option<JoinHandle<()>>; 2],
}

async fn accept_loop(
    listener: TcpListener,
    router: RouterHandle,
    config: Config,
    entry: Entry,
    alarm: watch::Receiver<bool>,
    acceptors: Acceptors,
    mut shutdown: watch::Receiver<bool>,
) {
    let Admission {
        limit,
        sources,
        conn_ids,
        runtimes,
    } = acceptors.admission;
    let limits = config.conn_limits();
    // Each connection holds a clone; recv() returns None once all of them ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.expect("semaphore never closed"),
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Some(source) = sources.admit(peer.ip()) else {
            tracing::warn!(%peer, limit = config.max_connections_per_source, "connection refused: too many from this address");
            drop(stream);
            continue;
        };
        let conn = conn_ids.next();
        let connection = connection::Connection {
            id: conn,
            peer,
            router: router.clone(),
            vhost: crate::vhost::DEFAULT_VHOST.into(),
            gate: entry.gate.clone(),
            tls: entry.tls.clone(),
            limits,
            flow: FlowControl {
                credit: Arc::new(Semaphore::new(limits.max_unconfirmed)),
                alarm: alarm.clone(),
                published: false,
            },
            shutdown: shutdown.clone(),
            amqp: acceptors.amqp_context.clone(),
            stomp: acceptors.stomp_context.clone(),
            grants: Default::default(),
        };
        let alive = alive_tx.clone();
        let _ = stream.set_nodelay(true);
        // Made here, where it is registered (it moves to its connection's thread).
        let socket = Socket::new(stream);
        runtimes.spawn_connection(conn, async move {
            connection.run(socket).await;
            drop((permit, source, alive));
        });
    }
    drop(listener);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    let [amqps, stomps] = acceptors.tls_listeners;
    for listener in [acceptors.amqp, acceptors.stomp, amqps, stomps]
        .into_iter()
        .flatten()
    {
        let _ = listener.await;
    }
    router.shutdown().await;
    tracing::info!("broker stopped");
}
