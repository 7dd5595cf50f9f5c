//! The STOMP TCP listener: sockets admitted under the limits every listener shares, each
//! served on a task of its own. Returns once it stopped accepting and every connection
//! ended.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Context;
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
            super::session::serve(source, sink, peer, id, ctx.clone(), None)
        },
    )
    .await;
}
