//! The STOMP TCP listener: accepts sockets under the same limits as the other listeners
//! (the shared connection bound, per-source limit and id allocator) and serves each on a
//! task of its own. Returns once it stopped accepting and every connection ended.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::Context;
use crate::server::Admission;

pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Context>,
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
                    tracing::warn!(error = %e, "STOMP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Some(source) = admission.sources.admit(peer.ip()) else {
            tracing::warn!(%peer, "STOMP connection refused: too many from this address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = admission
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (ctx, alive) = (ctx.clone(), alive_tx.clone());
        tokio::spawn(async move {
            let (source_half, sink) = super::transport::split_stream(stream);
            super::session::serve(source_half, sink, peer, id, ctx, None).await;
            drop((permit, source, alive));
        });
    }
    tracing::info!("STOMP listener stopped");
    drop(listener);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
}
