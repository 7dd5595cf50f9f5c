//! An AMQP connection's socket writer: encoded frames in order, flushed in batches; after
//! each flush it reports deliveries written (auto-ack ones settle then) and gives back the
//! channels' outbound byte budget, as the WebSocket writer does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::queue::ConnId;
use crate::router::{Command, MAX_OUTBOUND_BYTES, RouterHandle};

/// Frames written before one flush.
const MAX_CHUNKS_PER_FLUSH: usize = 256;

/// Encoded frames for the socket, and what writing them settles.
pub(super) struct Chunk {
    pub bytes: Vec<u8>,
    /// A delivery's cost against its channel's outbound budget.
    pub delivered: Option<Delivered>,
}

pub(super) struct Delivered {
    pub conn: ConnId,
    pub outbound: Arc<AtomicUsize>,
    pub cost: usize,
    /// An auto-ack delivery's tag: written means settled.
    pub auto_ack_tag: Option<u64>,
}

impl Chunk {
    pub fn frames(bytes: Vec<u8>) -> Self {
        Chunk {
            bytes,
            delivered: None,
        }
    }
}

pub(super) type WriterTx = mpsc::UnboundedSender<Chunk>;

/// Writes until every sender is gone or the socket fails; then shuts the socket down.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    socket: W,
    mut rx: mpsc::UnboundedReceiver<Chunk>,
    router: RouterHandle,
) {
    let mut socket = BufWriter::with_capacity(64 * 1024, socket);
    let mut written: Vec<Delivered> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut count = 0;
        while let Some(chunk) = next {
            if socket.write_all(&chunk.bytes).await.is_err() {
                return;
            }
            written.extend(chunk.delivered);
            count += 1;
            next = match count < MAX_CHUNKS_PER_FLUSH {
                true => rx.try_recv().ok(),
                false => None,
            };
        }
        if socket.flush().await.is_err() {
            return;
        }
        settle_written(&router, &mut written).await;
    }
    let _ = socket.shutdown().await;
}

async fn settle_written(router: &RouterHandle, written: &mut Vec<Delivered>) {
    // Per channel: auto-ack tags written, bytes given back.
    written.sort_by_key(|d| d.conn);
    let mut rest = written.drain(..).peekable();
    while let Some(first) = rest.next() {
        let conn = first.conn;
        let outbound = first.outbound.clone();
        let mut cost = first.cost;
        let mut tags: Vec<u64> = first.auto_ack_tag.into_iter().collect();
        while let Some(d) = rest.next_if(|d| d.conn == conn) {
            cost += d.cost;
            tags.extend(d.auto_ack_tag);
        }
        if !tags.is_empty() {
            router
                .send_request(Command::Written {
                    conn,
                    delivery_tags: tags,
                })
                .await;
        }
        let before = outbound
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                Some(queued.saturating_sub(cost))
            })
            .expect("the update always returns Some");
        if before >= MAX_OUTBOUND_BYTES && before.saturating_sub(cost) < MAX_OUTBOUND_BYTES {
            router.send_request(Command::Drained { conn }).await;
        }
    }
}
