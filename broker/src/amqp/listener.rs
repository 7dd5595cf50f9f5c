//! The AMQP listeners (plain `--amqp` and TLS `--amqps`): sockets admitted under the
//! limits every listener shares, each served on a task of its own. Returns once it stopped
//! accepting and every connection ended.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::connection::{AmqpContext, serve};
use crate::server::tls::{self, TlsSetup};
use crate::server::{Admission, accept_each};

pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<AmqpContext>,
    admission: Admission,
    shutdown: watch::Receiver<bool>,
) {
    let stopping = shutdown.clone();
    accept_each(
        "amqp",
        listener,
        admission,
        shutdown,
        move |stream, peer, id| serve(stream, peer, id, ctx.clone(), stopping.clone(), None),
    )
    .await;
}

/// AMQP over TLS (RabbitMQ's `listeners.ssl`): the TLS handshake under the handshake
/// timeout, then the same connection as on the plain listener.
pub(crate) async fn accept_tls_loop(
    listener: TcpListener,
    tls: TlsSetup,
    ctx: Arc<AmqpContext>,
    admission: Admission,
    shutdown: watch::Receiver<bool>,
) {
    let stopping = shutdown.clone();
    accept_each(
        "amqps",
        listener,
        admission,
        shutdown,
        move |tcp, peer, id| {
            let (setup, ctx, stopping) = (tls.clone(), ctx.clone(), stopping.clone());
            async move {
                if let Some(stream) = tls::handshake(&setup, tcp, peer, ctx.handshake_timeout).await
                {
                    // A verified client certificate (`--tls-ca`) logs in with SASL EXTERNAL.
                    let certified = stream.client_user();
                    serve(stream, peer, id, ctx, stopping, certified).await;
                }
            }
        },
    )
    .await;
}
