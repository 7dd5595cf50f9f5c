//! The AMQP listener: accepts sockets under the same limits as the WebSocket listener
//! (the shared connection bound, per-source limit and id allocator) and serves each on a
//! task of its own. Returns once it stopped accepting and every connection ended.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::connection::{AmqpContext, serve};
use crate::server::Admission;

pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<AmqpContext>,
    admission: Admission,
    mut shutdown: watch::Receiver<bool>,
) {
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
                    tracing::warn!(error = %e, "AMQP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Some(source) = admission.sources.admit(peer.ip()) else {
            tracing::warn!(%peer, "AMQP connection refused: too many from this address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = admission
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (ctx, shutdown, alive) = (ctx.clone(), shutdown.clone(), alive_tx.clone());
        tokio::spawn(async move {
            serve(stream, peer, id, ctx, shutdown).await;
            drop((permit, source, alive));
        });
    }
    drop(listener);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
}
