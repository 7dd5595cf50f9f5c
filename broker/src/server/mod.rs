//! The server: opens the store, starts the router, accepts WebSocket (and STOMP)
//! connections.
//!
//! Shaped after mini-redis's server: one acceptor, one task per connection, a bound on
//! connections, and a graceful shutdown that stops accepting, closes connections, lets
//! the router commit what is pending and closes the database.

mod admission;
mod conn_writer;
mod connection;
mod gate;
mod login;
mod memory_alarm;
mod plugins_dir;
mod sources;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

pub use admission::{Admission, Ticket};
use tokio::task::JoinHandle;

use crate::plugin::{HostError, Limits, PluginHost, PluginSource};
use crate::queue::{DEFAULT_MAX_IN_MEMORY_LENGTH, QueuePolicy};
use crate::router::{Router, RouterHandle};
use crate::store::{self, OpenError, Recovered, StoreOp, WriteBatch};
pub use connection::INJECTED_PANIC_FRAME;
use connection::{ConnLimits, FlowControl};
use gate::Gate;
pub use memory_alarm::{MemoryStats, MemoryWatermark, resident_memory};
use plugins_dir::PluginsDir;

/// How to run a broker.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Connections beyond this wait to be accepted.
    pub max_connections: usize,
    /// Connections from one IP address beyond this are refused (closed at once).
    pub max_connections_per_source: usize,
    /// Largest request frame answered normally; a larger one gets `frame_too_large`.
    pub max_frame_bytes: usize,
    /// How long a client may take to complete the WebSocket handshake: sockets that
    /// never speak give their connection slot back after this.
    pub handshake_timeout: Duration,
    /// How long a connection may stay open before its first request.
    pub first_request_timeout: Duration,
    /// The interval of the broker's WebSocket pings; a peer that sends nothing (not even
    /// a pong) for two intervals is disconnected and its unacked messages return to their
    /// queues. `None`: no heartbeats.
    pub heartbeat: Option<Duration>,
    /// Publishes one connection may have waiting for their answer (the confirm, in
    /// confirm mode); past this the broker stops reading the connection until answers
    /// go out.
    pub max_unconfirmed: usize,
    /// Resident memory past which publishing connections are blocked (memory alarm).
    pub memory_high_watermark: MemoryWatermark,
    /// The exchange types; `None` starts a host with the standard exchanges (`direct`,
    /// `topic`, `fanout`, `headers`) and default limits.
    pub plugins: Option<PluginHost>,
    /// Custom exchange plugins loaded at startup: every `NAME.wasm` becomes type `NAME`.
    pub plugins_dir: Option<PathBuf>,
    /// Keep deploying changed files of `plugins_dir` while running.
    pub watch_plugins: bool,
    /// Take compiled plugin code from the store instead of compiling at startup.
    pub artifact_cache: bool,
    /// Where to serve the management HTTP API, metrics and page; `None`: no HTTP.
    pub http: Option<SocketAddr>,
    /// Where to accept STOMP over TCP (docs/stomp.md); `None`: nowhere. STOMP over the
    /// WebSocket listener is always on (subprotocols `v12.stomp`, `v11.stomp`,
    /// `v10.stomp`).
    pub stomp: Option<SocketAddr>,
    /// Origins (`http://host:port`) of web pages allowed to open WebSocket connections;
    /// empty: only the management page's own. Requests without `Origin` (programs, not
    /// browsers) are not affected.
    pub allowed_origins: Vec<String>,
    /// `Host` header values the management HTTP listener answers to (defeats DNS
    /// rebinding); empty: its own address, and `localhost:PORT` on loopback.
    pub http_allowed_hosts: Vec<String>,
    /// Tests of panic containment only: a connection receiving
    /// [`INJECTED_PANIC_FRAME`] panics.
    #[doc(hidden)]
    pub inject_connection_panics: bool,
}

impl Config {
    pub const DEFAULT_LISTEN: &str = "127.0.0.1:6789";
    pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
    /// The CLI's default for `--http` (a library `Config` has no HTTP unless asked).
    pub const DEFAULT_HTTP: &str = "127.0.0.1:6790";
    /// The CLI's default for `--stomp` (a library `Config` has no STOMP listener unless
    /// asked): the usual STOMP port.
    pub const DEFAULT_STOMP: &str = "127.0.0.1:61613";
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 1_000;
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_UNCONFIRMED: usize = 10_000;

    /// Defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: Self::DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: data_dir.into(),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_source: Self::DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            max_frame_bytes: Self::DEFAULT_MAX_FRAME_BYTES,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            first_request_timeout: Self::DEFAULT_FIRST_REQUEST_TIMEOUT,
            heartbeat: Some(Self::DEFAULT_HEARTBEAT),
            max_unconfirmed: Self::DEFAULT_MAX_UNCONFIRMED,
            memory_high_watermark: MemoryWatermark::DEFAULT,
            plugins: None,
            plugins_dir: None,
            watch_plugins: false,
            artifact_cache: true,
            http: None,
            stomp: None,
            allowed_origins: Vec::new(),
            http_allowed_hosts: Vec::new(),
            inject_connection_panics: false,
        }
    }

    fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            max_frame_bytes: self.max_frame_bytes,
            handshake_timeout: self.handshake_timeout,
            first_request_timeout: self.first_request_timeout,
            heartbeat: self.heartbeat,
            max_unconfirmed: self.max_unconfirmed.max(1),
            inject_panics: self.inject_connection_panics,
        }
    }
}

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
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    stomp_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    acceptor: JoinHandle<()>,
    http: Option<JoinHandle<()>>,
    store: Arc<store::WriterStats>,
}

impl Broker {
    /// Opens the store, recovers, and starts accepting connections.
    pub async fn start(config: Config) -> Result<Broker, StartError> {
        // Plugins before the router: recovered exchanges need their types. Compiled code
        // comes from the store's artifact cache when it is valid for this engine.
        let (data_dir, host, use_cache) = (
            config.data_dir.clone(),
            config.plugins.clone(),
            config.artifact_cache,
        );
        let (recovered, writer, plugins) = tokio::task::spawn_blocking(move || {
            let (mut recovered, writer) = store::open(&data_dir, in_memory_length)?;
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
        let http_listener = match config.http {
            Some(addr) => {
                let listen_error = |source| StartError::Listen { addr, source };
                let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
                let bound = listener.local_addr().map_err(listen_error)?;
                Some((listener, bound))
            }
            None => None,
        };
        let stomp_listener = match config.stomp {
            Some(addr) => {
                let listen_error = |source| StartError::Listen { addr, source };
                let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
                let bound = listener.local_addr().map_err(listen_error)?;
                Some((listener, bound))
            }
            None => None,
        };
        let store_stats = writer.stats();
        let auth =
            crate::auth::Authenticator::new(recovered.users.clone(), recovered.vhosts.clone());
        let router = Router::spawn(recovered, writer, plugins.clone(), auth.clone());
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
            });
            tracing::info!(%http_addr, "management HTTP listening");
            tokio::spawn(crate::http::serve(listener, state, shutdown_rx.clone()))
        });
        let allowed_origins = match config.allowed_origins.is_empty() {
            true => gate::management_origins(http),
            false => config.allowed_origins.clone(),
        };
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
        let (admission, alive) =
            Admission::new(config.max_connections, config.max_connections_per_source);
        let stomp_addr = stomp_listener.map(|(listener, addr)| {
            tracing::info!(stomp_addr = %addr, "STOMP listening");
            let accept = crate::stomp::listener::accept_loop(
                listener,
                stomp.clone(),
                admission.clone(),
                shutdown_rx.clone(),
            );
            tokio::spawn(accept);
            addr
        });
        let acceptor = tokio::spawn(accept_loop(
            listener,
            router,
            Listener {
                config,
                gate,
                stomp,
                admission,
                alive,
            },
            alarm_rx,
            shutdown_rx,
        ));
        tracing::info!(%local_addr, "broker listening");
        Ok(Broker {
            local_addr,
            stomp_addr,
            http_addr: http,
            shutdown,
            acceptor,
            http: http_task,
            store,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `ws://` URL clients connect to.
    pub fn url(&self) -> String {
        format!("ws://{}", self.local_addr)
    }

    /// Where the STOMP TCP listener is, when [`Config::stomp`] asked for one.
    pub fn stomp_addr(&self) -> Option<SocketAddr> {
        self.stomp_addr
    }

    /// Where the management HTTP listener is, when [`Config::http`] asked for one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
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
        match host.prepare_blocking(&source) {
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

/// What the WebSocket acceptor works with.
struct Listener {
    config: Config,
    gate: Arc<Gate>,
    stomp: Arc<crate::stomp::Context>,
    admission: Arc<Admission>,
    /// `None` once every connection (of every listener) ended.
    alive: mpsc::Receiver<()>,
}

async fn accept_loop(
    listener: TcpListener,
    router: RouterHandle,
    accepting: Listener,
    alarm: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Listener {
        config,
        gate,
        stomp,
        admission,
        mut alive,
    } = accepting;
    let limits = config.conn_limits();
    loop {
        let slot = tokio::select! {
            slot = admission.slot() => slot,
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
        let Some(ticket) = admission.admit(slot, peer) else {
            drop(stream);
            continue;
        };
        let connection = connection::Connection {
            id: ticket.conn,
            peer,
            router: router.clone(),
            gate: gate.clone(),
            stomp: stomp.clone(),
            vhost: crate::vhost::DEFAULT_VHOST.into(),
            limits,
            flow: FlowControl {
                credit: Arc::new(Semaphore::new(limits.max_unconfirmed)),
                alarm: alarm.clone(),
                published: false,
            },
            shutdown: shutdown.clone(),
        };
        tokio::spawn(async move {
            connection.run(stream).await;
            drop(ticket);
        });
    }
    drop(listener);
    drop(admission);
    let _ = alive.recv().await;
    router.shutdown().await;
    tracing::info!("broker stopped");
}
