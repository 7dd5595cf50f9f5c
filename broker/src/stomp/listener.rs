//! The STOMP TCP listeners (plain `--stomp` and TLS `--stomps`): sockets admitted under
//! the limits every listener shares, each served on a task of its own. Returns once it
//! stopped accepting and every connection ended.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Context;
use super::connect::TransportLogin;
use crate::server::tls::{self, TlsSetup};
use crate::server::{Admission, accept_each};

pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Context>,
    admission: Admission,
    shutdown: watch::Receiver<bool>,
) {
    accept_each(
        "stomp",
        listener,
        admission,
        shutdown,
        move |stream, peer, id| {
            let (source, sink) = super::transport::split_stream(stream);
            super::session::serve(source, sink, peer, id, ctx.clone(), TransportLogin::Nothing)
        },
    )
    .await;
}

/// STOMP over TLS (RabbitMQ's `stomp.listeners.ssl`): the TLS handshake under the
/// handshake timeout, then the same session as on the plain listener.
pub(crate) async fn accept_tls_loop(
    listener: TcpListener,
    tls: TlsSetup,
    ctx: Arc<Context>,
    admission: Admission,
    shutdown: watch::Receiver<bool>,
) {
    accept_each(
        "stomps",
        listener,
        admission,
        shutdown,
        move |tcp, peer, id| {
            let (setup, ctx) = (tls.clone(), ctx.clone());
            async move {
                if let Some(stream) = tls::handshake(&setup, tcp, peer, ctx.handshake_timeout).await
                {
                    // A verified client certificate (`--tls-ca`) logs in as its CN's user.
                    let login = match stream.client_user() {
                        Some(user) => TransportLogin::Certificate(user),
                        None => TransportLogin::Nothing,
                    };
                    let (source, sink) = super::transport::split_stream(stream);
                    super::session::serve(source, sink, peer, id, ctx, login).await;
                }
            }
        },
    )
    .await;
}
