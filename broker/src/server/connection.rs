//! One client connection: the WebSocket handshake (bounded in time), a reader that parses
//! frames into router commands while it watches the peer's liveness, and the writer
//! (`conn_writer.rs`). However the reader ends — the client closes, the peer goes silent,
//! the broker stops, or the connection's own code panics — the router hears `Close`
//! exactly once, so the connection's consumers, unacked messages and exclusive queues
//! never outlive it.

use std::fmt;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as HsRequest, Response as HsResponse,
};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::conn_writer::write_loop;
use super::gate::{Admitted, Gate};
use super::login::{LoggedIn, login, user_change};
use super::tls::{self, MaybeTls, TlsSetup};
use crate::auth::Principal;
use crate::protocol::{
    BINARY_SUBPROTOCOL, Encoding, ErrorCode, Op, ParseError, Request, RequestId, ServerFrame,
    decode_requests, parse_request,
};
use crate::queue::ConnId;
use crate::router::{Command, ConnTx, Outbound, RouterHandle};
use crate::shard_threads::{self, PlacedTask, Socket};
use crate::vhost::LocalNames;

/// A text frame that makes the connection task panic, when the broker was started with
/// [`super::Config::inject_connection_panics`] (tests of panic containment only).
pub const INJECTED_PANIC_FRAME: &str = "__inject_connection_panic__";

/// The limits a connection enforces on its peer.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnLimits {
    pub max_frame_bytes: usize,
    pub handshake_timeout: Duration,
    pub first_request_timeout: Duration,
    pub heartbeat: Option<Duration>,
    pub max_unconfirmed: usize,
    pub inject_panics: bool,
}

pub(super) struct Connection {
    pub id: ConnId,
    pub peer: SocketAddr,
    pub router: RouterHandle,
    pub gate: Arc<Gate>,
    /// For a WebSocket that chooses a STOMP subprotocol.
    pub stomp: Arc<crate::stomp::Context>,
    /// The vhost it logged in to (its requests' names are that vhost's).
    pub vhost: Arc<str>,
    /// The listener's TLS, when it has it: the handshake comes before the WebSocket one.
    pub tls: Option<TlsSetup>,
    pub limits: ConnLimits,
    pub flow: FlowControl,
    pub shutdown: watch::Receiver<bool>,
    /// For a WebSocket that chose the `amqp` subprotocol.
    pub amqp: Arc<crate::amqp::AmqpContext>,
    /// The logged-in user's grant in `vhost`, as last checked.
    pub grants: crate::auth::GrantCache,
}

/// What holds a publishing connection back.
pub(super) struct FlowControl {
    /// One permit per publish the router has not answered yet.
    pub credit: Arc<Semaphore>,
    /// The broker's memory alarm (true while raised).
    pub alarm: watch::Receiver<bool>,
    /// Whether this connection has published (only publishers are blocked).
    pub published: bool,
}

/// Why a connection ended.
enum Ended {
    ClientClosed,
    ReadError(String),
    BrokerStopping,
    /// Nothing came from the peer for two heartbeat intervals.
    HeartbeatTimeout(Duration),
    NoFirstRequest(Duration),
    /// The writer stopped (socket write failed).
    WriteFailed,
    Panicked(String),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::ClientClosed => f.write_str("closed by client"),
            Ended::ReadError(e) => write!(f, "read error: {e}"),
            Ended::BrokerStopping => f.write_str("broker shutting down"),
            Ended::HeartbeatTimeout(d) => write!(
                f,
                "peer silent for {} ms (heartbeat timeout)",
                d.as_millis()
            ),
            Ended::NoFirstRequest(d) => {
                write!(f, "no request within {} ms of connecting", d.as_millis())
            }
            Ended::WriteFailed => f.write_str("write failed"),
            Ended::Panicked(what) => write!(f, "connection task panicked: {what}"),
        }
    }
}

type WsSource = futures_util::stream::SplitStream<WebSocketStream<MaybeTls>>;

/// An accepted WebSocket, its encoding, the upgrade request's credentials and vhost, and
/// whether it chose the `amqp` subprotocol.
type Upgraded = (WebSocketStream<MaybeTls>, Encoding, Admitted, bool);

impl Connection {
    pub async fn run(mut self, stream: Socket) {
        let handshake = tokio::time::timeout(self.limits.handshake_timeout, self.handshake(stream));
        let (mut ws, encoding, admitted, amqp) = match handshake.await {
            Ok(Some(accepted)) => accepted,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!(peer = %self.peer, "WebSocket handshake timed out");
                return;
            }
        };
        if amqp {
            // AMQP logs in with its own SASL handshake.
            let (peer, id, ctx) = (self.peer, self.id, self.amqp.clone());
            crate::amqp::serve_websocket(ws, peer, id, ctx, self.shutdown.clone()).await;
            return;
        }
        if admitted.stomp {
            let stomp = crate::stomp::serve_websocket(
                ws,
                self.peer,
                self.id,
                self.stomp,
                admitted.credentials,
            );
            return stomp.await;
        }
        let within = self.limits.first_request_timeout;
        let Admitted {
            credentials, vhost, ..
        } = admitted;
        let login = login(&mut ws, &self.gate, self.peer, credentials, &vhost, within).await;
        let Some(LoggedIn { principal, answer }) = login else {
            tracing::debug!(conn = self.id, peer = %self.peer, "connection not authenticated");
            return;
        };
        tracing::info!(conn = self.id, peer = %self.peer, user = %principal.user, vhost, encoding = encoding.name(), "connection opened");
        self.vhost = vhost.into();
        let (sink, mut source) = ws.split();
        let (tx, rx) = ConnTx::channel(self.id);
        let outbound = Arc::new(AtomicUsize::new(0));
        let open = Command::Open(crate::router::OpenConn {
            conn: self.id,
            tx: tx.clone(),
            peer: Some(self.peer),
            outbound: Some(outbound.clone()),
            user: Some(principal.clone()),
            vhost: self.vhost.clone(),
            session: None,
            protocol: crate::protocol::WireProtocol::Json,
            link: crate::router::ConnLink::of_this_task(),
        });
        if !self.router.send_request(open).await {
            return;
        }
        // After the open: whoever lists connections once the client has this answer
        // sees it (each shard gets the open before anything sent after the answer).
        if let Some(answer) = answer {
            let _ = tx.send(Outbound::Frame(answer));
        }
        let router = self.router.clone();
        let names = LocalNames::new(&self.vhost);
        let mut writer = shard_threads::spawn(write_loop(
            sink, rx, self.id, router, encoding, outbound, names,
        ));
        // A panic anywhere in the reader ends the connection like any other reason.
        let read =
            AssertUnwindSafe(self.read_loop(&mut source, &tx, &mut writer, encoding, &principal));
        let ended = read
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Ended::Panicked(panic_text(&*panic)));
        let close = Command::Close {
            conn: self.id,
            broker_stopping: matches!(ended, Ended::BrokerStopping),
        };
        self.router.send_request(close).await;
        // The writer ends once the router has dropped its sender too.
        drop(tx);
        if !matches!(ended, Ended::WriteFailed) {
            let _ = writer.await;
        }
        if matches!(ended, Ended::Panicked(_)) {
            tracing::error!(conn = self.id, peer = %self.peer, reason = %ended, "connection closed");
        } else {
            tracing::info!(conn = self.id, peer = %self.peer, reason = %ended, "connection closed");
        }
    }

    /// The TLS handshake when the listener has TLS (a plaintext client fails it), then the
    /// WebSocket upgrade (refused for a browser origin not allowed), negotiating the
    /// binary encoding when the client offers it; returns the request's credentials too.
    async fn handshake(&self, stream: Socket) -> Option<Upgraded> {
        let stream = match tls::accept(self.tls.as_ref(), stream).await {
            Ok(stream) => stream,
            Err(e) if tls::is_certificate_error(&e) => {
                tracing::warn!(target: "audit", event = "certificate_refused", peer = %self.peer, error = %e, "TLS handshake refused: client certificate");
                return None;
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                return None;
            }
        };
        // Frames up to twice the limit are read and answered with `frame_too_large`;
        // beyond that the WebSocket layer drops the connection without buffering it all.
        let max = self.limits.max_frame_bytes.saturating_mul(2);
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(crate::protocol::READ_BUFFER_BYTES)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let mut encoding = Encoding::Json;
        let mut admitted = Admitted::default();
        let mut amqp = false;
        // tungstenite's callback type.
        #[allow(clippy::result_large_err)]
        let negotiate = |request: &HsRequest, mut response: HsResponse| {
            admitted = self.gate.check_upgrade(request)?;
            if offers(request, crate::amqp::AMQP_SUBPROTOCOL) {
                amqp = true;
                response.headers_mut().insert(
                    SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(crate::amqp::AMQP_SUBPROTOCOL),
                );
            } else if let Some(stomp) = crate::stomp::offered_subprotocol(request) {
                admitted.stomp = true;
                let chosen = HeaderValue::from_static(stomp);
                response
                    .headers_mut()
                    .insert(SEC_WEBSOCKET_PROTOCOL, chosen);
            } else if offers_binary(request) {
                encoding = Encoding::Binary;
                response.headers_mut().insert(
                    SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(BINARY_SUBPROTOCOL),
                );
            }
            Ok(response)
        };
        let accepted =
            tokio_tungstenite::accept_hdr_async_with_config(stream, negotiate, Some(ws_config))
                .await;
        match accepted {
            Ok(ws) => Some((ws, encoding, admitted, amqp)),
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "WebSocket handshake failed");
                None
            }
        }
    }

    /// Reads requests until the connection ends, pinging the peer every heartbeat interval
    /// and giving up on it after two intervals of silence.
    async fn read_loop(
        &mut self,
        source: &mut WsSource,
        tx: &ConnTx,
        writer: &mut PlacedTask<()>,
        encoding: Encoding,
        principal: &Principal,
    ) -> Ended {
        let heartbeat = self.limits.heartbeat;
        let mut pings =
            heartbeat.map(|every| tokio::time::interval_at(Instant::now() + every, every));
        let mut last_heard = Instant::now();
        let first_request_by = Instant::now() + self.limits.first_request_timeout;
        let mut requested = false;
        loop {
            let frame = tokio::select! {
                frame = source.next() => frame,
                _ = self.shutdown.changed() => return Ended::BrokerStopping,
                _ = &mut *writer => return Ended::WriteFailed,
                _ = next_tick(&mut pings) => {
                    let silent = last_heard.elapsed();
                    let every = heartbeat.expect("ticks only with a heartbeat");
                    if silent >= every * 2 {
                        return Ended::HeartbeatTimeout(silent);
                    }
                    let _ = tx.send(Outbound::Ping);
                    continue;
                }
                _ = tokio::time::sleep_until(first_request_by), if !requested => {
                    return Ended::NoFirstRequest(self.limits.first_request_timeout);
                }
            };
            let handled = match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    requested = true;
                    self.on_text(&text, tx, principal).await
                }
                Some(Ok(WsMessage::Binary(bytes))) if encoding == Encoding::Binary => {
                    requested = true;
                    self.on_binary(&bytes, tx, principal).await
                }
                Some(Ok(WsMessage::Binary(_))) => {
                    send_error(
                        tx,
                        ErrorCode::UnsupportedFrame,
                        "binary frames are not supported; send JSON text frames",
                    );
                    Ok(())
                }
                Some(Ok(WsMessage::Close(_))) | None => return Ended::ClientClosed,
                Some(Ok(_)) => Ok(()), // ping / pong: answered by the WebSocket layer
                Some(Err(e)) => return Ended::ReadError(e.to_string()),
            };
            if let Err(ended) = handled {
                return ended;
            }
            if let Err(ended) = self.wait_while_blocked(tx).await {
                return ended;
            }
            // Time spent waiting for credit or the alarm is not the peer's silence.
            last_heard = Instant::now();
        }
    }

    async fn on_text(
        &mut self,
        text: &str,
        tx: &ConnTx,
        principal: &Principal,
    ) -> Result<(), Ended> {
        if self.limits.inject_panics && text == INJECTED_PANIC_FRAME {
            panic!("injected connection panic");
        }
        if text.len() > self.limits.max_frame_bytes {
            let message = format!(
                "frame of {} bytes exceeds the limit of {} bytes",
                text.len(),
                self.limits.max_frame_bytes
            );
            // Answer with the request's id when it leads the frame (as this project's
            // clients write it), so the caller's pending request fails instead of waiting.
            let frame = ServerFrame::error(leading_id(text), ErrorCode::FrameTooLarge, message);
            let _ = tx.send(Outbound::Frame(frame));
            return Ok(());
        }
        self.forward(parse_request(text), tx, principal).await
    }

    /// A binary message of the negotiated encoding: its records in order, up to the first
    /// bad one (answered with its error; the rest of the message is dropped).
    async fn on_binary(
        &mut self,
        bytes: &[u8],
        tx: &ConnTx,
        principal: &Principal,
    ) -> Result<(), Ended> {
        for record in decode_requests(bytes, self.limits.max_frame_bytes) {
            self.forward(record, tx, principal).await?;
        }
        Ok(())
    }

    /// Hands a request to the router; a publish first takes one unit of the connection's
    /// unconfirmed-publish credit, waiting (and reading nothing more) while there is none.
    async fn forward(
        &mut self,
        parsed: Result<Request, ParseError>,
        tx: &ConnTx,
        principal: &Principal,
    ) -> Result<(), Ended> {
        let mut request = match parsed {
            Ok(request) => request,
            Err(e) => {
                let _ = tx.send(Outbound::Frame(ServerFrame::error(e.id, e.code, e.message)));
                return Ok(());
            }
        };
        let admitted = self.gate.auth.admit(
            principal,
            &self.vhost,
            self.peer.ip(),
            &mut request.op,
            &self.grants,
        );
        if let Err((code, message)) = admitted {
            let frame = ServerFrame::error(Some(request.id), code, message);
            let _ = tx.send(Outbound::Frame(frame));
            return Ok(());
        }
        if matches!(
            request.op,
            Op::AddUser { .. } | Op::ChangePassword { .. } | Op::Authenticate { .. }
        ) {
            let Request { id, op } = request;
            let command = match Box::pin(user_change(&self.gate, principal, op)).await {
                Ok(change) => Command::ChangeUser {
                    conn: self.id,
                    id,
                    change,
                },
                Err((code, message)) => {
                    let _ = tx.send(Outbound::Frame(ServerFrame::error(Some(id), code, message)));
                    return Ok(());
                }
            };
            return match self.router.send_request(command).await {
                true => Ok(()),
                false => Err(Ended::BrokerStopping),
            };
        }
        let credit = if matches!(request.op, Op::Publish(_)) {
            self.flow.published = true;
            let credit = self.flow.credit.clone();
            let permit = match credit.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => tokio::select! {
                    permit = Box::pin(credit.acquire_owned()) => permit.expect("the semaphore is never closed"),
                    _ = self.shutdown.changed() => return Err(Ended::BrokerStopping),
                },
            };
            Some(permit)
        } else {
            None
        };
        let command = Command::Request {
            conn: self.id,
            request,
            credit,
            routed: None,
        };
        match self.router.send_request(command).await {
            true => Ok(()),
            false => Err(Ended::BrokerStopping),
        }
    }

    /// While the memory alarm is raised, a connection that publishes is not read: it is
    /// told `blocked`, then `unblocked` once the alarm clears.
    async fn wait_while_blocked(&mut self, tx: &ConnTx) -> Result<(), Ended> {
        if !self.flow.published || !*self.flow.alarm.borrow() {
            return Ok(());
        }
        let reason = "memory high watermark reached: publishes wait until memory falls";
        let _ = tx.send(Outbound::Frame(ServerFrame::Blocked {
            reason: reason.to_string(),
        }));
        tracing::info!(conn = self.id, peer = %self.peer, "connection blocked");
        super::wait_until_alarm_clears(&mut self.flow.alarm, &mut self.shutdown)
            .await
            .map_err(|_| Ended::BrokerStopping)?;
        let _ = tx.send(Outbound::Frame(ServerFrame::Unblocked));
        tracing::info!(conn = self.id, peer = %self.peer, "connection unblocked");
        Ok(())
    }
}

/// Whether the handshake's `Sec-WebSocket-Protocol` headers list the binary subprotocol.
fn offers_binary(request: &HsRequest) -> bool {
    offers(request, BINARY_SUBPROTOCOL)
}

/// Whether the handshake's `Sec-WebSocket-Protocol` headers list `subprotocol`.
fn offers(request: &HsRequest, subprotocol: &str) -> bool {
    request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .any(|name| name.trim() == subprotocol)
}

/// The `id` of a frame that starts `{"id":...,` — read from its first bytes only, without
/// parsing the (oversized) rest.
fn leading_id(text: &str) -> Option<RequestId> {
    // The cut may fall inside a multi-byte character: back up to a boundary.
    let mut cut = text.len().min(200);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = &text[..cut];
    let rest = head
        .strip_prefix('{')?
        .trim_start()
        .strip_prefix("\"id\"")?;
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find([',', '}'])?;
    serde_json::from_str(rest[..end].trim()).ok()
}

/// Waits for the next heartbeat tick; forever without heartbeats (every protocol's
/// connection uses it).
pub(crate) async fn next_tick(pings: &mut Option<tokio::time::Interval>) {
    match pings {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// What a caught panic said.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

fn send_error(tx: &ConnTx, code: ErrorCode, message: &str) {
    let _ = tx.send(Outbound::Frame(ServerFrame::error(None, code, message)));
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
        // A cut inside a multi-byte character is moved back, not a panic.
        let text = format!(r#"{{"id":9,"op":"publish","body":"{}"#, "é".repeat(200));
        assert!(!text.is_char_boundary(200));
        assert_eq!(leading_id(&text), Some(RequestId::Num(9)));
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
