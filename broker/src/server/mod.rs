//! The server: opens the store, starts the router, accepts WebSocket connections.
//!
//! Shaped after mini-redis's server: one acceptor, one task per connection, a bound on
//! connections, and a graceful shutdown that stops accepting, closes connections, lets
//! the router commit what is pending and closes the database.

mod connection;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::exchange::{ExchangeTypes, NoExchangeTypes};
use crate::router::{Router, RouterHandle};
use crate::store::{self, OpenError};

/// How to run a broker.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Connections beyond this wait to be accepted.
    pub max_connections: usize,
    /// Largest request frame answered normally; a larger one gets `frame_too_large`.
    pub max_frame_bytes: usize,
    /// The named exchange types available to `declare_exchange`.
    pub exchange_types: Arc<dyn ExchangeTypes>,
}

impl Config {
    pub const DEFAULT_LISTEN: &str = "127.0.0.1:6789";
    pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

    /// Defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: Self::DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: data_dir.into(),
            max_connections: 10_000,
            max_frame_bytes: Self::DEFAULT_MAX_FRAME_BYTES,
            exchange_types: Arc::new(NoExchangeTypes),
        }
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    acceptor: JoinHandle<()>,
}

impl Broker {
    /// Opens the store, recovers, and starts accepting connections.
    pub async fn start(config: Config) -> Result<Broker, StartError> {
        let data_dir = config.data_dir.clone();
        let (recovered, writer) = tokio::task::spawn_blocking(move || store::open(&data_dir))
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
        let router = Router::spawn(recovered, writer, config.exchange_types.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let acceptor = tokio::spawn(accept_loop(listener, router, config, shutdown_rx));
        tracing::info!(%local_addr, "broker listening");
        Ok(Broker {
            local_addr,
            shutdown,
            acceptor,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `ws://` URL clients connect to.
    pub fn url(&self) -> String {
        format!("ws://{}", self.local_addr)
    }

    /// Stops accepting, closes every connection, commits pending writes and closes the
    /// database; returns when all of that is done.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.acceptor.await;
    }
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
