//! Admission of client connections, shared by every listener (WebSocket, AMQP, STOMP):
//! one bound on connections, one per-source limit, one allocator of connection ids (AMQP
//! channels take theirs from it too), and the accept loop of the protocol listeners.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use super::sources::Sources;
use crate::queue::ConnId;
use crate::shard_threads::{ShardRuntimes, Socket};

#[derive(Clone)]
pub(crate) struct Admission {
    pub limit: Arc<Semaphore>,
    pub sources: Arc<Sources>,
    pub conn_ids: crate::conn_ids::ConnIds,
    /// Where connections run (see `shard_threads`).
    pub runtimes: ShardRuntimes,
}

/// Accepts sockets on `listener` under `admission` and serves each with `serve` on a
/// task of its own, until `shutdown`; returns once every connection it served ended.
pub(crate) async fn accept_each<S, F>(
    protocol: &'static str,
    listener: TcpListener,
    admission: Admission,
    mut shutdown: watch::Receiver<bool>,
    serve: S,
) where
    S: Fn(Socket, SocketAddr, ConnId) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    loop {
        let permit = tokio::select! {
            permit = admission.limit.clone().acquire_owned() => permit.expect("semaphore never closed"),
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(protocol, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Some(source) = admission.sources.admit(peer.ip()) else {
            tracing::warn!(protocol, %peer, "connection refused: too many from this address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = admission.conn_ids.next();
        let served = serve(Socket::new(stream), peer, id);
        let alive = alive_tx.clone();
        admission.runtimes.spawn_connection(id, async move {
            served.await;
            drop((permit, source, alive));
        });
    }
    tracing::info!(protocol, "listener stopped");
    drop(listener);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
}
