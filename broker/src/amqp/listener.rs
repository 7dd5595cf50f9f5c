//! The AMQP listener: sockets admitted under the limits every listener shares, each served
//! on a task of its own. Returns once it stopped accepting and every connection ended.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::connection::{AmqpContext, serve};
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
        move |stream, peer, id| serve(stream, peer, id, ctx.clone(), stopping.clone()),
    )
    .await;
}
