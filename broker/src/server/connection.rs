//! One client connection: a reader that parses frames into router commands, and a writer
//! that encodes router output and flushes in batches.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::protocol::{ErrorCode, RequestId, ServerFrame, encode_server_frame, parse_request};
use crate::queue::ConnId;
use crate::router::{Command, ConnTx, Outbound, RouterHandle};

/// Frames written before one flush: amortizes syscalls under load, and at low load the
/// writer flushes as soon as its channel is empty.
const MAX_FRAMES_PER_FLUSH: usize = 256;

pub(super) struct Connection {
    pub id: ConnId,
    pub peer: SocketAddr,
    pub router: RouterHandle,
    pub max_frame_bytes: usize,
    pub shutdown: watch::Receiver<bool>,
}

impl Connection {
    pub async fn run(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        // Frames up to twice the limit are read and answered with `frame_too_large`;
        // beyond that the WebSocket layer drops the connection without buffering it all.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(crate::protocol::READ_BUFFER_BYTES)
            .max_message_size(Some(self.max_frame_bytes.saturating_mul(2)))
            .max_frame_size(Some(self.max_frame_bytes.saturating_mul(2)));
        let ws = match tokio_tungstenite::accept_async_with_config(stream, Some(ws_config)).await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "WebSocket handshake failed");
                return;
            }
        };
        tracing::info!(conn = self.id, peer = %self.peer, "connection opened");
        let (sink, mut source) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        if !self.router.send(Command::Open {
            conn: self.id,
            tx: tx.clone(),
            peer: Some(self.peer),
        }) {
            return;
        }
        let writer = tokio::spawn(write_loop(sink, rx, self.id, self.router.clone()));
        let mut broker_stopping = false;
        let reason = loop {
            let frame = tokio::select! {
                frame = source.next() => frame,
                _ = self.shutdown.changed() => {
                    broker_stopping = true;
                    break "broker shutting down".to_string();
                }
            };
            match frame {
                Some(Ok(WsMessage::Text(text))) => self.on_text(&text, &tx),
                Some(Ok(WsMessage::Binary(_))) => send_error(
                    &tx,
                    ErrorCode::UnsupportedFrame,
                    "binary frames are not supported; send JSON text frames",
                ),
                Some(Ok(WsMessage::Close(_))) | None => break "closed by client".to_string(),
                Some(Ok(_)) => {} // ping / pong: answered by the WebSocket layer
                Some(Err(e)) => break format!("read error: {e}"),
            }
        };
        self.router.send(Command::Close {
            conn: self.id,
            broker_stopping,
        });
        // The writer ends once the router has dropped its sender too.
        drop(tx);
        let _ = writer.await;
        tracing::info!(conn = self.id, peer = %self.peer, reason, "connection closed");
    }

    fn on_text(&self, text: &str, tx: &ConnTx) {
        if text.len() > self.max_frame_bytes {
            let message = format!(
                "frame of {} bytes exceeds the limit of {} bytes",
                text.len(),
                self.max_frame_bytes
            );
            // Answer with the request's id when it leads the frame (as this project's
            // clients write it), so the caller's pending request fails instead of waiting.
            let frame = ServerFrame::error(leading_id(text), ErrorCode::FrameTooLarge, message);
            let _ = tx.send(Outbound::Frame(frame));
            return;
        }
        match parse_request(text) {
            Ok(request) => {
                self.router.send(Command::Request {
                    conn: self.id,
                    request,
                });
            }
            Err(e) => {
                let _ = tx.send(Outbound::Frame(ServerFrame::error(e.id, e.code, e.message)));
            }
        }
    }
}

/// The `id` of a frame that starts `{"id":...,` — read from its first bytes only, without
/// parsing the (oversized) rest.
fn leading_id(text: &str) -> Option<RequestId> {
    let head = &text[..text.len().min(200)];
    let rest = head
        .strip_prefix('{')?
        .trim_start()
        .strip_prefix("\"id\"")?;
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find([',', '}'])?;
    serde_json::from_str(rest[..end].trim()).ok()
}

fn send_error(tx: &ConnTx, code: ErrorCode, message: &str) {
    let _ = tx.send(Outbound::Frame(ServerFrame::error(None, code, message)));
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<TcpStream>, WsMessage>,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    conn: ConnId,
    router: RouterHandle,
) {
    let mut written_auto_acks = Vec::new();
    'outer: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut count = 0;
        while let Some(out) = next {
            let frame = match out {
                Outbound::Frame(frame) => frame,
                Outbound::AutoAckDelivery(delivery) => {
                    written_auto_acks.push(delivery.delivery_tag);
                    ServerFrame::Deliver(delivery)
                }
            };
            let text = encode_server_frame(&frame);
            if sink
                .feed(WsMessage::Text(Utf8Bytes::from(text)))
                .await
                .is_err()
            {
                break 'outer;
            }
            count += 1;
            next = if count < MAX_FRAMES_PER_FLUSH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if sink.flush().await.is_err() {
            break;
        }
        if !written_auto_acks.is_empty() {
            router.send(Command::Written {
                conn,
                delivery_tags: std::mem::take(&mut written_auto_acks),
            });
        }
    }
    let _ = sink.send(WsMessage::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_leading_id_without_parsing_the_rest() {
        assert_eq!(
            leading_id(r#"{"id":7,"op":"publish","body":"xxxx"#),
            Some(RequestId::Num(7))
        );
        assert_eq!(
            leading_id(r#"{ "id" : "a-1" , "op""#),
            Some(RequestId::Str("a-1".into()))
        );
        assert_eq!(leading_id(r#"{"op":"publish","id":7}"#), None);
        assert_eq!(leading_id("not json at all"), None);
    }
}
