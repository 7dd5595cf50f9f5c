//! The server: opens the store, starts the router, accepts WebSocket connections.
//!
//! Shaped after mini-redis's server: one acceptor, one task per connection, a bound on
//! connections, and a graceful shutdown that stops accepting, closes connections, lets
//! the router commit what is pending and closes the database.

mod connection;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::plugin::{HostError, Limits, PluginHost};
use crate::router::{Router, RouterHandle};
use crate::store::{self, OpenError, Recovered};

/// How to run a broker.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Connections beyond this wait to be accepted.
    pub max_connections: usize,
    /// Largest request frame answered normally; a larger one gets `frame_too_large`.
    pub max_frame_bytes: usize,
    /// The exchange types; `None` starts a host with the standard exchanges (`direct`,
    /// `topic`, `fanout`, `headers`) and default limits.
    pub plugins: Option<PluginHost>,
    /// Custom exchange plugins loaded at startup: every `NAME.wasm` becomes type `NAME`.
    pub plugins_dir: Option<PathBuf>,
    /// Where to serve the management HTTP API, metrics and page; `None`: no HTTP.
    pub http: Option<SocketAddr>,
}

impl Config {
    pub const DEFAULT_LISTEN: &str = "127.0.0.1:6789";
    pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
    /// The CLI's default for `--http` (a library `Config` has no HTTP unless asked).
    pub const DEFAULT_HTTP: &str = "127.0.0.1:6790";

    /// Defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: Self::DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: data_dir.into(),
            max_connections: 10_000,
            max_frame_bytes: Self::DEFAULT_MAX_FRAME_BYTES,
            plugins: None,
            plugins_dir: None,
            http: None,
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
    shutdown: watch::Sender<bool>,
    acceptor: JoinHandle<()>,
    http: Option<JoinHandle<()>>,
}

impl Broker {
    /// Opens the store, recovers, and starts accepting connections.
    pub async fn start(config: Config) -> Result<Broker, StartError> {
        // Plugins first: recovered exchanges need their types.
        let (host, dir) = (config.plugins.clone(), config.plugins_dir.clone());
        let plugins = tokio::task::spawn_blocking(move || start_plugins(host, dir.as_deref()))
            .await
            .expect("plugin loading does not panic")?;
        let data_dir = config.data_dir.clone();
        let host = plugins.clone();
        let (recovered, writer) = tokio::task::spawn_blocking(move || {
            let (recovered, writer) = store::open(&data_dir)?;
            restore_plugin_versions(&host, &recovered);
            Ok::<_, OpenError>((recovered, writer))
        })
        .await
        .expect("store open task does not panic")?;
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
        let store_stats = writer.stats();
        let router = Router::spawn(recovered, writer, plugins.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let http = http_listener.as_ref().map(|(_, addr)| *addr);
        let http_task = http_listener.map(|(listener, http_addr)| {
            let state = Arc::new(crate::http::HttpState {
                management: crate::http::Management::open(router.clone()),
                plugins,
                store: store_stats,
                started: std::time::Instant::now(),
            });
            tracing::info!(%http_addr, "management HTTP listening");
            tokio::spawn(crate::http::serve(listener, state, shutdown_rx.clone()))
        });
        let acceptor = tokio::spawn(accept_loop(listener, router, config, shutdown_rx));
        tracing::info!(%local_addr, "broker listening");
        Ok(Broker {
            local_addr,
            http_addr: http,
            shutdown,
            acceptor,
            http: http_task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `ws://` URL clients connect to.
    pub fn url(&self) -> String {
        format!("ws://{}", self.local_addr)
    }

    /// Where the management HTTP listener is, when [`Config::http`] asked for one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
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

/// Loads the active version of every deployed plugin, as stored (these override files
/// of the same name in the plugins directory: a deploy is newer than the file).
fn restore_plugin_versions(host: &PluginHost, recovered: &Recovered) {
    for (name, active) in &recovered.active_plugins {
        let stored = recovered
            .plugin_versions
            .iter()
            .find(|v| v.name == *name && v.version == *active);
        let result = match stored {
            Some(v) => host.load_blocking(name, &v.wasm).map_err(|e| e.to_string()),
            None => Err(format!("version {active} is not stored")),
        };
        match result {
            Ok(_) => tracing::info!(plugin = %name, version = active, "plugin version restored"),
            Err(e) => {
                tracing::error!(plugin = %name, version = active, error = %e, "plugin version not restored")
            }
        }
    }
}

/// The plugin host with the standard exchanges, plus every `*.wasm` in `dir`. A plugin
/// that fails to load is reported and skipped: one bad file does not keep the broker down.
fn start_plugins(host: Option<PluginHost>, dir: Option<&Path>) -> Result<PluginHost, StartError> {
    let host = match host {
        Some(host) => host,
        None => PluginHost::with_standard_exchanges(Limits::default())?,
    };
    let Some(dir) = dir else {
        return Ok(host);
    };
    let read_dir = |source| StartError::PluginsDir {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    files.sort();
    for path in files {
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let loaded = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| host.load_blocking(name, &bytes).map_err(|e| e.to_string()));
        match loaded {
            Ok(info) => {
                tracing::info!(plugin = %info.name, path = %path.display(), "plugin loaded")
            }
            Err(e) => tracing::error!(path = %path.display(), error = %e, "plugin not loaded"),
        }
    }
    Ok(host)
}

async fn accept_loop(
    listener: TcpListener,
    router: RouterHandle,
    config: Config,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let next_conn = AtomicU64::new(1);
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
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let connection = connection::Connection {
            id: conn,
            peer,
            router: router.clone(),
            max_frame_bytes: config.max_frame_bytes,
            shutdown: shutdown.clone(),
        };
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            connection.run(stream).await;
            drop(permit);
            drop(alive);
        });
    }
    drop(listener);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    router.shutdown().await;
    tracing::info!("broker stopped");
}
