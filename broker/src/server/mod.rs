//! The server: opens the store, starts the router, accepts WebSocket (and STOMP)
//! connections.
//!
//! Shaped after mini-redis's server: one acceptor, one task per connection, a bound on
//! connections, and a graceful shutdown that stops accepting, closes connections, lets
//! the router commit what is pending and closes the database.

mod admission;
mod conn_writer;
mod connection;
pub(crate) use connection::{next_tick, panic_text};
mod gate;
mod login;
mod memory_alarm;
mod plugins_dir;
mod sources;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use tokio::task::JoinHandle;

use crate::plugin::{HostError, Limits, PluginHost, PluginSource};
use crate::queue::{DEFAULT_MAX_IN_MEMORY_LENGTH, QueuePolicy};
use crate::router::{Router, RouterHandle};
use crate::store::{self, OpenError, Recovered, StoreOp, WriteBatch};
pub(crate) use admission::{Admission, accept_each};
pub use connection::INJECTED_PANIC_FRAME;
use connection::{ConnLimits, FlowControl};
use gate::Gate;
pub use memory_alarm::{
    MemoryStats, MemoryWatermark, StoppedWhileBlocked, resident_memory, wait_until_alarm_clears,
};
use plugins_dir::PluginsDir;
use sources::Sources;
use tls::TlsSetup;
pub use tls::{TlsConfig, TlsError};

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
    /// Where to serve AMQP 0-9-1 (docs/amqp.md); `None`: no AMQP listener.
    pub amqp: Option<SocketAddr>,
    /// Where to accept STOMP over TCP (docs/stomp.md); `None`: nowhere. STOMP over the
    /// WebSocket listener is always on (subprotocols `v12.stomp`, `v11.stomp`,
    /// `v10.stomp`).
    pub stomp: Option<SocketAddr>,
    /// Where to serve AMQP over TLS (RabbitMQ's `listeners.ssl`, docs/amqp.md) with the
    /// [`Config::tls`] certificates; `None`: nowhere. Needs `tls`.
    pub amqps: Option<SocketAddr>,
    /// Where to accept STOMP over TLS (docs/stomp.md) with the [`Config::tls`]
    /// certificates; `None`: nowhere. Needs `tls`.
    pub stomps: Option<SocketAddr>,
    /// Origins (`http://host:port`) of web pages allowed to open WebSocket connections;
    /// empty: only the management page's own. Requests without `Origin` (programs, not
    /// browsers) are not affected.
    pub allowed_origins: Vec<String>,
    /// `Host` header values the management HTTP listener answers to (defeats DNS
    /// rebinding); empty: its own address, and `localhost:PORT` on loopback.
    pub http_allowed_hosts: Vec<String>,
    /// How long a management page login lasts (its session cookie is refused after).
    pub http_session_timeout: Duration,
    /// Stored versions kept per plugin after each deploy (older ones are deleted, but
    /// never the active one or the one before it); `None`: all.
    pub keep_plugin_versions: Option<u64>,
    /// TLS for the WebSocket and the HTTP listener: when set, both accept TLS only (a
    /// plaintext client fails the handshake) and, with a client CA, log in clients by
    /// their certificate's CN. The `amqps` and `stomps` listeners use the same
    /// certificates; the plain `amqp` and `stomp` listeners stay plain.
    pub tls: Option<TlsConfig>,
    /// Tests of panic containment only: a connection receiving
    /// [`INJECTED_PANIC_FRAME`] panics.
    #[doc(hidden)]
    pub inject_connection_panics: bool,
    /// Durability tests only: the storage to open instead of `data_dir`'s database file
    /// (a simulated disk that loses power, `store::power_cut`). `None`: the file.
    #[doc(hidden)]
    pub storage_backend: Option<store::BackendFactory>,
}

impl Config {
    pub const DEFAULT_LISTEN: &str = "127.0.0.1:6789";
    pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
    /// The CLI's default for `--http` (a library `Config` has no HTTP unless asked).
    pub const DEFAULT_HTTP: &str = "127.0.0.1:6790";
    /// The CLI's default for `--amqp` (a library `Config` has no AMQP unless asked).
    pub const DEFAULT_AMQP: &str = "127.0.0.1:5672";
    /// The CLI's default for `--stomp` (a library `Config` has no STOMP listener unless
    /// asked): the usual STOMP port.
    pub const DEFAULT_STOMP: &str = "127.0.0.1:61613";
    /// The CLI's default for `--amqps` when TLS is configured: the usual AMQPS port.
    pub const DEFAULT_AMQPS: &str = "127.0.0.1:5671";
    /// The CLI's default for `--stomps` when TLS is configured: the usual STOMP TLS port.
    pub const DEFAULT_STOMPS: &str = "127.0.0.1:61614";
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 1_000;
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_UNCONFIRMED: usize = 10_000;
    /// RabbitMQ's management login lasts 8 hours too.
    pub const DEFAULT_HTTP_SESSION_TIMEOUT: Duration = Duration::from_secs(8 * 3600);

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
            amqp: None,
            stomp: None,
            amqps: None,
            stomps: None,
            allowed_origins: Vec::new(),
            http_allowed_hosts: Vec::new(),
            http_session_timeout: Self::DEFAULT_HTTP_SESSION_TIMEOUT,
            keep_plugin_versions: None,
            tls: None,
            inject_connection_panics: false,
            storage_backend: None,
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
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the {listener} listener needs TLS certificates (--tls-cert and --tls-key)")]
    TlsListenerWithoutTls { listener: &'static str },
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
        let router = Router::spawn(
            recovered,
            writer,
            plugins.clone(),
            auth.clone(),
            config.keep_plugin_versions,
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
            next_conn: Arc::new(AtomicU64::new(1)),
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
            next_conn: admission.next_conn.clone(),
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
        next_conn,
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
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
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
        };
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            connection.run(stream).await;
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
