//! One AMQP connection: the protocol header, the handshake (`handshake.rs`), then a task
//! that owns the channel map and multiplexes: client frames to the router (each channel
//! its own router pseudo-connection), router frames to the socket, heartbeats both ways,
//! publish credit and the memory alarm, and the closing handshakes. However it ends —
//! the client closes, a connection exception, silence, the broker stopping, a panic —
//! the router hears `Close` for every channel it opened.

use crate::server::next_tick;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, connection};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use super::channel::Channel;
use super::errors::{AmqpError, code};
use super::frames::{Incoming, ReadError, encode};
use super::handshake::{self, NotOpened, Offer};
use super::reader::{self, FrameReceiver, Read};
use super::writer::{Chunk, WriterTx, write_loop};
use crate::auth::{Authenticator, Principal};
use crate::protocol::{ServerFrame, WireProtocol};
use crate::queue::ConnId;
use crate::router::{Command, ConnRx, ConnTx, Outbound, RouterHandle};

/// AMQP 0-9-1's protocol header.
const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Router frames handled in one turn of the connection task's loop at most.
const MAX_ROUTER_FRAMES_PER_TURN: usize = 256;

/// What every AMQP connection shares.
pub(crate) struct AmqpContext {
    pub router: RouterHandle,
    pub auth: Arc<Authenticator>,
    pub offer: Offer,
    pub handshake_timeout: Duration,
    pub max_unconfirmed: usize,
    /// Largest message body accepted.
    pub max_body: usize,
    /// Channels take their router connection ids here too.
    pub conn_ids: crate::conn_ids::ConnIds,
    pub alarm: watch::Receiver<bool>,
}

type Frames = FrameReceiver;
pub(super) type RouterFrames = ConnRx;

/// Why a connection ended.
pub(super) enum Ended {
    ClientClosed,
    ReadError(String),
    BrokerStopping,
    HeartbeatTimeout(Duration),
    /// The broker closed it with this exception.
    Raised(AmqpError),
    WriteFailed,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::ClientClosed => f.write_str("closed by client"),
            Ended::ReadError(e) => write!(f, "read error: {e}"),
            Ended::BrokerStopping => f.write_str("broker shutting down"),
            Ended::HeartbeatTimeout(d) => write!(
                f,
                "peer silent for {} ms (heartbeat timeout)",
                d.as_millis()
            ),
            Ended::Raised(e) => write!(f, "closed by the broker: {e}"),
            Ended::WriteFailed => f.write_str("write failed"),
        }
    }
}

/// Serves one AMQP byte stream (a TCP socket, or a WebSocket's binary messages) until it
/// closes. `certified`: the user a verified client certificate names (`--amqps` with
/// `--tls-ca`), offered SASL EXTERNAL.
pub(crate) async fn serve<S>(
    mut stream: S,
    peer: SocketAddr,
    id: ConnId,
    ctx: Arc<AmqpContext>,
    shutdown: watch::Receiver<bool>,
    certified: Option<String>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut header = [0u8; 8];
    match tokio::time::timeout(ctx.handshake_timeout, stream.read_exact(&mut header)).await {
        Ok(Ok(_)) if &header == PROTOCOL_HEADER => {}
        Ok(Ok(_)) => {
            // The spec's answer to a header it does not speak: ours, then close.
            tracing::debug!(%peer, "AMQP connection with a wrong protocol header");
            let _ = stream.write_all(PROTOCOL_HEADER).await;
            let _ = stream.shutdown().await;
            return;
        }
        _ => return,
    }
    let (read, write) = tokio::io::split(stream);
    let (writer_tx, writer_rx) = mpsc::unbounded_channel();
    crate::shard_threads::spawn(write_loop(write, writer_rx, ctx.router.clone()));
    let frame_max = Arc::new(AtomicU32::new(ctx.offer.frame_max));
    let (mut frames, reader) = reader::spawn(read, frame_max.clone());
    let mut send0 = |class: AMQPClass| {
        let mut out = Vec::new();
        encode(&AMQPFrame::Method(0, class), &mut out);
        let _ = writer_tx.send(Chunk::frames(out));
    };
    send0(handshake::start(certified.is_some()));
    let opening = handshake::open(
        &mut frames,
        &mut send0,
        &ctx.auth,
        peer,
        ctx.offer,
        certified.as_deref(),
    );
    let opened = match tokio::time::timeout(ctx.handshake_timeout, opening).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(NotOpened::Refused(e))) => {
            tracing::info!(conn = id, %peer, error = %e, "AMQP connection refused");
            handshake::close(&writer_tx, &e, &mut frames).await;
            reader.abort();
            return;
        }
        Ok(Err(NotOpened::Gone)) | Err(_) => {
            tracing::debug!(conn = id, %peer, "AMQP handshake not completed");
            reader.abort();
            return;
        }
    };
    frame_max.store(opened.frame_max, Ordering::Relaxed);
    tracing::info!(conn = id, %peer, user = %opened.principal.user, protocol = "amqp", "connection opened");
    // The connection itself is a router connection too: its channels' exclusive queues
    // belong to it, and `list_connections` shows it (with its channels) once.
    // Every channel's router frames come in on one channel, each with its channel number;
    // what the router says to the connection itself (that it is over: its vhost was
    // deleted, or its user is at its connection limit) comes in as channel 0's.
    let (router_tx, mut router_frames) = ConnTx::channel(id);
    let session = Command::Open(crate::router::OpenConn {
        conn: id,
        tx: router_tx.clone(),
        peer: Some(peer),
        outbound: None,
        user: Some(opened.principal.clone()),
        vhost: opened.vhost.clone(),
        session: None,
        protocol: WireProtocol::Amqp,
        link: crate::router::ConnLink::of_this_task(),
    });
    if !ctx.router.send_request(session).await {
        reader.abort();
        return;
    }
    send0(handshake::open_ok());
    let mut conn = AmqpConnection {
        id,
        peer,
        ctx: ctx.clone(),
        principal: opened.principal,
        names: crate::vhost::LocalNames::new(&opened.vhost),
        vhost: opened.vhost,
        frame_max: opened.frame_max,
        channel_max: opened.channel_max,
        heartbeat: opened.heartbeat,
        writer: writer_tx,
        router_tx,
        channels: HashMap::new(),
        credit: Arc::new(Semaphore::new(ctx.max_unconfirmed)),
        alarm: ctx.alarm.clone(),
        published: false,
        blocked: false,
        shutdown,
        grants: Default::default(),
    };
    let served = AssertUnwindSafe(conn.serve(&mut frames, &mut router_frames))
        .catch_unwind()
        .await;
    let ended = match served {
        Ok(Ended::Raised(e)) => {
            handshake::close(&conn.writer, &e, &mut frames).await;
            Ended::Raised(e)
        }
        Ok(ended) => ended,
        Err(_) => Ended::Raised(AmqpError::connection(
            code::INTERNAL_ERROR,
            "INTERNAL_ERROR",
            "connection task panicked",
        )),
    };
    let broker_stopping = matches!(ended, Ended::BrokerStopping);
    conn.close_channels(broker_stopping).await;
    let close = Command::Close {
        conn: id,
        broker_stopping,
    };
    ctx.router.send_request(close).await;
    if matches!(ended, Ended::ClientClosed) {
        handshake::client_closes(&mut frames).await;
    }
    reader.abort();
    tracing::info!(conn = id, %peer, reason = %ended, "connection closed");
}

/// A frame the reader handed over, or how the connection ends when it could not read one.
fn received(frame: Option<Read>) -> Result<Incoming, Ended> {
    match frame {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(ReadError::Invalid(e))) => Err(Ended::Raised(e)),
        Some(Err(ReadError::Closed(e))) => Err(Ended::ReadError(e.to_string())),
        None => Err(Ended::ReadError("reader stopped".into())),
    }
}

pub(super) struct AmqpConnection {
    pub(super) id: ConnId,
    pub(super) peer: SocketAddr,
    pub(super) ctx: Arc<AmqpContext>,
    pub(super) principal: Principal,
    /// The vhost `connection.open` named: requests are authorized and named in it.
    pub(super) vhost: Arc<str>,
    /// Makes the router's frames speak the vhost's names.
    pub(super) names: crate::vhost::LocalNames,
    pub(super) frame_max: u32,
    pub(super) channel_max: u16,
    pub(super) heartbeat: Option<Duration>,
    pub(super) writer: WriterTx,
    /// The sender the router writes the connection's frames with; each channel's is
    /// this one for its number and router connection.
    pub(super) router_tx: ConnTx,
    pub(super) channels: HashMap<u16, Channel>,
    /// One permit per publish the router has not answered yet.
    pub(super) credit: Arc<Semaphore>,
    pub(super) alarm: watch::Receiver<bool>,
    /// Only connections that publish are blocked by the memory alarm.
    pub(super) published: bool,
    pub(super) blocked: bool,
    pub(super) shutdown: watch::Receiver<bool>,
    /// The user's grant in `vhost`, as last checked.
    pub(super) grants: crate::auth::GrantCache,
}

impl AmqpConnection {
    async fn serve(&mut self, frames: &mut Frames, router_frames: &mut RouterFrames) -> Ended {
        let mut beats = self
            .heartbeat
            .map(|every| tokio::time::interval_at(Instant::now() + every, every));
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => {
                    let e = AmqpError::connection(code::CONNECTION_FORCED, "CONNECTION_FORCED", "broker shutdown");
                    handshake::close(&self.writer, &e, frames).await;
                    return Ended::BrokerStopping;
                }
                Some(first) = router_frames.recv() => {
                    // And those already queued behind it, up to a bound, without a turn
                    // of this loop each.
                    let mut next = Some(first);
                    let mut taken = 0;
                    while let Some((number, conn, outbound)) = next {
                        let written = match self.on_router_frame(number, conn, outbound) {
                            Ok(None) => Ok(()),
                            Ok(Some((number, e))) => Box::pin(self.raise(number, e)).await,
                            Err(ended) => Err(ended),
                        };
                        if let Err(ended) = written {
                            return ended;
                        }
                        taken += 1;
                        next = match taken < MAX_ROUTER_FRAMES_PER_TURN {
                            true => router_frames.try_recv().ok(),
                            false => None,
                        };
                    }
                }
                frame = frames.recv(), if !self.blocked => {
                    // The rest of the reader's batch too, without a turn of this loop
                    // each, unless the memory alarm blocks the connection meanwhile.
                    let mut next = Some(frame);
                    while let Some(frame) = next {
                        let handled = match received(frame) {
                            // Boxed: the rare path's futures are large, and this
                            // task's future would otherwise carry them.
                            Ok(frame) => match self.on_frame_now(frame) {
                                Ok(None) => Ok(()),
                                Ok(Some(pending)) => {
                                    Box::pin(self.finish(pending, router_frames)).await
                                }
                                Err(ended) => Err(ended),
                            },
                            Err(ended) => Err(ended),
                        };
                        if let Err(ended) = handled {
                            return ended;
                        }
                        self.update_blocked();
                        next = match self.blocked {
                            true => None,
                            false => frames.ready().map(Some),
                        };
                    }
                    // Time spent waiting for credit is not the peer's silence.
                    last_heard = Instant::now();
                }
                _ = next_tick(&mut beats) => {
                    let every = self.heartbeat.expect("ticks only with a heartbeat");
                    let silent = last_heard.elapsed();
                    if silent >= every * 2 && !self.blocked {
                        return Ended::HeartbeatTimeout(silent);
                    }
                    let mut out = Vec::new();
                    encode(&AMQPFrame::Heartbeat, &mut out);
                    if self.writer.send(Chunk::frames(out)).is_err() {
                        return Ended::WriteFailed;
                    }
                }
                changed = self.alarm.changed() => {
                    if changed.is_ok() {
                        self.update_blocked();
                    }
                }
            }
        }
    }

    /// Raises or clears `connection.blocked` as the alarm and the publishing say.
    fn update_blocked(&mut self) {
        let block = self.published && *self.alarm.borrow();
        if block == self.blocked {
            return;
        }
        self.blocked = block;
        let method = match block {
            true => connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "memory high watermark reached".into(),
            }),
            false => connection::AMQPMethod::Unblocked(connection::Unblocked {}),
        };
        tracing::info!(conn = self.id, peer = %self.peer, blocked = block, "AMQP connection flow");
        self.send(0, AMQPClass::Connection(method));
    }

    pub(super) fn send(&self, channel: u16, class: AMQPClass) {
        let mut out = Vec::new();
        encode(&AMQPFrame::Method(channel, class), &mut out);
        let _ = self.writer.send(Chunk::frames(out));
    }

    /// Writes a router frame for a channel; `Some` is a channel exception to raise.
    pub(super) fn on_router_frame(
        &mut self,
        number: u16,
        conn: ConnId,
        outbound: Outbound,
    ) -> Result<Option<(u16, AmqpError)>, Ended> {
        let outbound = match outbound {
            Outbound::Close(reason) => {
                let e = AmqpError::connection(code::CONNECTION_FORCED, "CONNECTION_FORCED", reason);
                return Err(Ended::Raised(e));
            }
            Outbound::Frame(frame) => Outbound::Frame(self.names.frame(frame)),
            Outbound::AutoAckDelivery(d) => match self.names.frame(ServerFrame::Deliver(d)) {
                ServerFrame::Deliver(d) => Outbound::AutoAckDelivery(d),
                _ => unreachable!("a delivery stays a delivery"),
            },
            other => other,
        };
        let Some(channel) = self
            .channels
            .get_mut(&number)
            .filter(|c| c.conn == conn && !c.closing)
        else {
            return Ok(None);
        };
        match channel.on_outbound(outbound, self.frame_max) {
            Ok(Some(chunk)) => match self.writer.send(chunk) {
                Ok(()) => Ok(None),
                Err(_) => Err(Ended::WriteFailed),
            },
            Ok(None) => Ok(None),
            Err(e) => Ok(Some((number, e))),
        }
    }

    pub(super) fn on_connection_method(&mut self, class: AMQPClass) -> Result<(), Ended> {
        match class {
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                Err(Ended::ClientClosed)
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Err(Ended::ClientClosed),
            // RabbitMQ's client-side flow notifications need no answer.
            AMQPClass::Connection(connection::AMQPMethod::Blocked(_))
            | AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => Ok(()),
            other => Err(Ended::Raised(
                AmqpError::connection(
                    code::COMMAND_INVALID,
                    "COMMAND_INVALID",
                    "unexpected method on channel 0",
                )
                .during(other.get_amqp_class_id(), other.get_amqp_method_id()),
            )),
        }
    }
}
