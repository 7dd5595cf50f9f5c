//! The STOMP TCP listener: accepts connections through the broker's shared admission
//! (connection slots, per-source limits, connection ids) until the broker stops.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Context;
use crate::server::Admission;

pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Context>,
    admission: Arc<Admission>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let slot = tokio::select! {
            slot = admission.slot() => slot,
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
        let Some(ticket) = admission.admit(slot, peer) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let (source, sink) = super::transport::split_stream(stream);
            super::session::serve(source, sink, peer, ticket.conn, ctx, None).await;
            drop(ticket);
        });
    }
    tracing::info!("STOMP listener stopped");
}
