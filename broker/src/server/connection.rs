//! One client connection: a reader that parses frames into router commands, and a writer
//! that encodes router output and flushes in batches. A connection that negotiated
//! [`BINARY_SUBPROTOCOL`] reads and writes the frames that carry messages as binary
//! records, packed several to a WebSocket message.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as HsRequest, Response as HsResponse,
};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::protocol::{
    BINARY_BATCH_BYTES, BINARY_SUBPROTOCOL, Encoding, ErrorCode, ParseError, Request, RequestId,
    ServerFrame, decode_requests, encode_server_frame, parse_request, write_server_record,
};
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
        // The binary encoding when the client offers its subprotocol (echoed back then).
        let mut encoding = Encoding::Json;
        // tungstenite's callback type; this one never fails.
        #[allow(clippy::result_large_err)]
        let negotiate = |request: &HsRequest, mut response: HsResponse| {
            if offers_binary(request) {
                encoding = Encoding::Binary;
                response.headers_mut().insert(
                    SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(BINARY_SUBPROTOCOL),
                );
            }
            Ok(response)
        };
        let handshake =
            tokio_tungstenite::accept_hdr_async_with_config(stream, negotiate, Some(ws_config));
        let ws = match handshake.await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "WebSocket handshake failed");
                return;
            }
        };
        tracing::info!(conn = self.id, peer = %self.peer, encoding = encoding.name(), "connection opened");
        let (sink, mut source) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        if !self.router.send(Command::Open {
            conn: self.id,
            tx: tx.clone(),
            peer: Some(self.peer),
        }) {
            return;
        }
        let writer = tokio::spawn(write_loop(sink, rx, self.id, self.router.clone(), encoding));
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
                Some(Ok(WsMessage::Binary(bytes))) if encoding == Encoding::Binary => {
                    self.on_binary(&bytes, &tx)
                }
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
        self.on_parsed(parse_request(text), tx);
    }

    /// A binary message of the negotiated encoding: its records in order, up to the first
    /// bad one (answered with its error; the rest of the message is dropped).
    fn on_binary(&self, bytes: &[u8], tx: &ConnTx) {
        for record in decode_requests(bytes, self.max_frame_bytes) {
            self.on_parsed(record, tx);
        }
    }

    fn on_parsed(&self, parsed: Result<Request, ParseError>, tx: &ConnTx) {
        match parsed {
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

/// Whether the handshake's `Sec-WebSocket-Protocol` headers list the binary subprotocol.
fn offers_binary(request: &HsRequest) -> bool {
    request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .any(|name| name.trim() == BINARY_SUBPROTOCOL)
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
    mut sink: WsSink,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    conn: ConnId,
    router: RouterHandle,
    encoding: Encoding,
) {
    let mut written_auto_acks = Vec::new();
    // Binary mode: consecutive `deliver` / `confirm` records packed into one message.
    let mut records = Vec::new();
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
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if feed_records(&mut sink, &mut records).await.is_err() || sink.flush().await.is_err() {
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

type WsSink = futures_util::stream::SplitSink<WebSocketStream<TcpStream>, WsMessage>;

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

    #[test]
    fn binary_is_negotiated_when_offered_among_others() {
        let offer = |values: &[&str]| {
            let mut request = HsRequest::new(());
            for value in values {
                request
                    .headers_mut()
                    .append(SEC_WEBSOCKET_PROTOCOL, value.parse().unwrap());
            }
            offers_binary(&request)
        };
        assert!(offer(&["broker-binary.v1"]));
        assert!(offer(&["chat, broker-binary.v1"]));
        assert!(offer(&["chat", "broker-binary.v1"]));
        assert!(!offer(&[]));
        assert!(!offer(&["chat"]));
        assert!(!offer(&["broker-binary.v2, broker-binary"]));
    }
}
