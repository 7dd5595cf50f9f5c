//! A connection's writer: encodes what the router (and the connection's reader) sends and
//! flushes in batches. With the binary encoding, `deliver` / `confirm` records are packed
//! several to a WebSocket message.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::router::ConnRx;
use bytes::Bytes;
use futures_util::SinkExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::protocol::{
    BINARY_BATCH_BYTES, Encoding, ServerFrame, encode_server_frame, write_server_record,
};
use crate::queue::ConnId;
use crate::router::{Command, MAX_OUTBOUND_BYTES, Outbound, RouterHandle, outbound_cost};
use crate::vhost::LocalNames;

/// Frames written before one flush: amortizes syscalls under load, and at low load the
/// writer flushes as soon as its channel is empty.
const MAX_FRAMES_PER_FLUSH: usize = 256;

pub(super) type WsSink =
    futures_util::stream::SplitSink<WebSocketStream<super::tls::MaybeTls>, WsMessage>;

/// Writes until the channel closes (the router and the reader dropped their senders) or
/// the socket fails; then sends a close frame.
pub(super) async fn write_loop(
    mut sink: WsSink,
    mut rx: ConnRx,
    conn: ConnId,
    router: RouterHandle,
    encoding: Encoding,
    outbound: Arc<AtomicUsize>,
    names: LocalNames,
) {
    let mut written_auto_acks = Vec::new();
    // Binary mode: consecutive `deliver` / `confirm` records packed into one message.
    let mut records = Vec::new();
    'outer: while let Some((_, _, first)) = rx.recv().await {
        let mut next = Some(first);
        let mut count = 0;
        let mut written_bytes = 0;
        while let Some(out) = next {
            let frame = match out {
                Outbound::Frame(frame) => names.frame(frame),
                Outbound::AutoAckDelivery(delivery) => {
                    written_auto_acks.push(delivery.delivery_tag);
                    names.frame(ServerFrame::Deliver(delivery))
                }
                Outbound::Close(reason) => {
                    tracing::info!(conn, %reason, "the broker closes the connection");
                    let _ = feed_records(&mut sink, &mut records).await;
                    break 'outer;
                }
                Outbound::Ping => {
                    let fed = match feed_records(&mut sink, &mut records).await {
                        Ok(()) => sink.feed(WsMessage::Ping(Bytes::new())).await,
                        Err(e) => Err(e),
                    };
                    if fed.is_err() {
                        break 'outer;
                    }
                    next = rx.try_recv().ok().map(|(_, _, out)| out);
                    continue;
                }
            };
            if let ServerFrame::Deliver(delivery) = &frame {
                written_bytes += outbound_cost(delivery);
            }
            let fed = if encoding == Encoding::Binary && write_server_record(&mut records, &frame) {
                if records.len() >= BINARY_BATCH_BYTES {
                    feed_records(&mut sink, &mut records).await
                } else {
                    Ok(())
                }
            } else {
                // A JSON frame keeps its place after the records before it.
                let text = encode_server_frame(&frame);
                match feed_records(&mut sink, &mut records).await {
                    Ok(()) => sink.feed(WsMessage::Text(Utf8Bytes::from(text))).await,
                    Err(e) => Err(e),
                }
            };
            if fed.is_err() {
                break 'outer;
            }
            count += 1;
            next = if count < MAX_FRAMES_PER_FLUSH {
                rx.try_recv().ok().map(|(_, _, out)| out)
            } else {
                None
            };
        }
        if feed_records(&mut sink, &mut records).await.is_err() || sink.flush().await.is_err() {
            break;
        }
        if !written_auto_acks.is_empty() {
            let delivery_tags = std::mem::take(&mut written_auto_acks);
            router
                .send_request(Command::Written {
                    conn,
                    delivery_tags,
                })
                .await;
        }
        // Saturating: deliveries that passed a filter handler were never counted.
        let before = outbound
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                Some(queued.saturating_sub(written_bytes))
            })
            .expect("the update always returns Some");
        if before >= MAX_OUTBOUND_BYTES && before.saturating_sub(written_bytes) < MAX_OUTBOUND_BYTES
        {
            router.send_request(Command::Drained { conn }).await;
        }
    }
    let _ = sink.send(WsMessage::Close(None)).await;
}

/// Feeds the packed records (if any) as one binary message.
async fn feed_records(
    sink: &mut WsSink,
    records: &mut Vec<u8>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let bytes = Bytes::from(std::mem::take(records));
    sink.feed(WsMessage::Binary(bytes)).await
}
