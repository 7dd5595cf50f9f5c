//! The task that owns a client's connection: it writes what the client queues (binary
//! records packed several to a WebSocket message, frames fed and flushed in batches),
//! notices when the connection drops, and then either closes the client or — with
//! [`Reconnect`](super::Reconnect) — reconnects and recovers (see [`super::reconnect`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use super::connection::{self, Class, Frame, Outgoing, ReaderEnd, Ws, WsSink};
use super::health::LinkState;
use super::{ClientError, ConnectOptions, Pending, Returned, Shared, reconnect};
use crate::protocol::{BINARY_BATCH_BYTES, write_request_record};

/// How long closing waits for the broker's close, so replies already sent still arrive.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

pub(super) struct Link {
    pub shared: Arc<Shared>,
    pub out_rx: mpsc::UnboundedReceiver<Outgoing>,
    pub returns: mpsc::UnboundedSender<Returned>,
    /// Fires when the client is closed or dropped (ends reconnecting).
    pub alive: oneshot::Receiver<()>,
    pub url: String,
    pub options: ConnectOptions,
    /// Publishes without confirms taken off the queue while disconnected: sent first on
    /// the next connection.
    pub backlog: Vec<Outgoing>,
}

enum Ended {
    /// The client was closed or dropped, and everything it queued was written.
    ClientClosed,
    Lost(String),
}

/// Runs the client's connection, starting with `first`, until the client is closed or
/// the connection is gone for good.
pub(super) async fn run(mut link: Link, first: Ws) {
    let mut ws = first;
    loop {
        let generation = link.shared.generation.load(Ordering::SeqCst);
        let (mut sink, source) = ws.split();
        let (reader, mut end) = connection::spawn_reader(
            source,
            link.shared.clone(),
            link.returns.clone(),
            generation,
        );
        let recovered = match generation {
            0 => Ok(()),
            _ => reconnect::recover(&mut link, &mut sink, &mut end).await,
        };
        let lost = match recovered {
            Err(reason) => reason,
            Ok(()) => match write_loop(&mut link.out_rx, &mut sink, &mut end).await {
                Ended::Lost(reason) => reason,
                Ended::ClientClosed => {
                    let _ = sink.send(WsMessage::Close(None)).await;
                    // Replies already on their way (confirms) still reach their waiters;
                    // `close` does not wait for them.
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(CLOSE_WAIT, end.wait()).await;
                        reader.abort();
                        shut(&link.shared, None);
                    });
                    return;
                }
            },
        };
        reader.abort();
        drop(sink);
        if link.shared.reconnect.is_none() {
            shut(&link.shared, Some(lost));
            return;
        }
        tracing::warn!(reason = %lost, "connection to the broker lost; reconnecting");
        on_lost(&mut link, lost);
        match reconnect::reopen(&mut link).await {
            Some(next) => ws = next,
            None => {
                shut(&link.shared, None);
                return;
            }
        }
    }
}

/// Writes queued requests until the client is closed or the connection drops.
async fn write_loop(
    out_rx: &mut mpsc::UnboundedReceiver<Outgoing>,
    sink: &mut WsSink,
    end: &mut ReaderEnd,
) -> Ended {
    // Consecutive binary records packed into one message.
    let mut records = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            reason = end.wait() => return Ended::Lost(reason),
            item = out_rx.recv() => match item {
                Some(item) => item,
                None => return Ended::ClientClosed,
            },
        };
        let mut next = Some(first);
        while let Some(item) = next {
            if let Err(e) = write_frame(sink, &mut records, item.frame).await {
                return Ended::Lost(e);
            }
            next = out_rx.try_recv().ok();
        }
        if let Err(e) = flush(sink, &mut records).await {
            return Ended::Lost(e);
        }
    }
}

/// Feeds one frame (packing a record with the ones before it).
pub(super) async fn write_frame(
    sink: &mut WsSink,
    records: &mut Vec<u8>,
    frame: Frame,
) -> Result<(), String> {
    match frame {
        Frame::Record(request) => {
            write_request_record(records, &request);
            if records.len() >= BINARY_BATCH_BYTES {
                feed_records(sink, records).await?;
            }
            Ok(())
        }
        Frame::Text(text) => {
            feed_records(sink, records).await?;
            sink.feed(WsMessage::Text(Utf8Bytes::from(text)))
                .await
                .map_err(|e| e.to_string())
        }
    }
}

/// Feeds the packed records (if any), then flushes.
pub(super) async fn flush(sink: &mut WsSink, records: &mut Vec<u8>) -> Result<(), String> {
    feed_records(sink, records).await?;
    sink.flush().await.map_err(|e| e.to_string())
}

/// Feeds the packed records (if any) as one binary message.
async fn feed_records(sink: &mut WsSink, records: &mut Vec<u8>) -> Result<(), String> {
    if records.is_empty() {
        return Ok(());
    }
    let bytes = bytes::Bytes::from(std::mem::take(records));
    sink.feed(WsMessage::Binary(bytes))
        .await
        .map_err(|e| e.to_string())
}

/// The connection dropped and the client reconnects: acks of its deliveries are refused
/// from now on, requests waiting for a reply fail with [`ClientError::Disconnected`]
/// (publishes waiting for a confirm and declarations wait for the next connection
/// instead).
fn on_lost(link: &mut Link, reason: String) {
    let shared = &link.shared;
    shared.generation.fetch_add(1, Ordering::SeqCst);
    shared.buffered.store(0, Ordering::Relaxed);
    shared.health.send_modify(|health| {
        health.state = LinkState::Reconnecting;
        health.disconnected_since = Some(Instant::now());
        health.failed_attempts = 0;
        health.last_error = Some(format!("connection lost: {reason}"));
        if health.circuit == super::Circuit::HalfOpen {
            health.circuit = super::Circuit::Open;
        }
    });
    shared.blocked.send_replace(None);
    let shared = shared.clone();
    let mut pending = shared.pending.lock().unwrap();
    let waiting: Vec<u64> = pending
        .iter()
        .filter(|(_, p)| p.resend.is_none())
        .map(|(id, _)| *id)
        .collect();
    for id in waiting {
        if let Some(p) = pending.remove(&id) {
            let _ = p.reply.send(Err(ClientError::Disconnected));
        }
    }
    link.take_queued(&mut pending);
}

impl Link {
    /// Takes what is queued off the queue (the caller holds `pending`'s lock): publishes
    /// without confirms go to the backlog, publishes waiting for a confirm and
    /// declarations are resent from `pending`, acks are dropped (their deliveries' connection is gone; the
    /// broker redelivers), other requests fail with [`ClientError::Disconnected`].
    pub(super) fn take_queued(&mut self, pending: &mut HashMap<u64, Pending>) {
        while let Ok(item) = self.out_rx.try_recv() {
            match item.class {
                Class::Publish | Class::Declare if pending.contains_key(&item.id) => {}
                Class::Publish | Class::Declare => self.backlog.push(item),
                Class::Settle => {}
                Class::Other => {
                    if let Some(p) = pending.remove(&item.id) {
                        let _ = p.reply.send(Err(ClientError::Disconnected));
                    }
                }
            }
        }
    }
}

/// The client is done: everything waiting fails with [`ClientError::Closed`],
/// subscriptions end, and requests made from now on fail at once.
fn shut(shared: &Shared, reason: Option<String>) {
    shared.closed.store(true, Ordering::SeqCst);
    shared.health.send_modify(|health| {
        health.state = LinkState::Closed;
        if reason.is_some() {
            health.last_error = reason;
        }
    });
    for (_, pending) in shared.pending.lock().unwrap().drain() {
        let _ = pending.reply.send(Err(ClientError::Closed));
    }
    shared.consumers.lock().unwrap().clear();
}
