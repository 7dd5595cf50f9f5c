//! One STOMP connection after CONNECT: its frames become the same operations the JSON
//! protocol sends (authorized and qualified for the vhost by `auth.admit`), its
//! subscriptions and transactions, its heart-beats and flow control. However it ends,
//! the router hears `Close` exactly once.

use crate::server::{next_tick, panic_text};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

mod subscriptions;

use subscriptions::Subscription;

use super::Context;
use super::connect::{Heartbeat, TransportLogin, connect};
use super::destinations::{Declaration, Destination};
use super::frame::{ClientCommand, Decoder, Frame, Version};
use super::headers::message_of;
use super::queue_properties::QueueProperties;
use super::transport::{Read, Sink, Source};
use super::writer::{Answer, Writer};
use crate::auth::Principal;
use crate::message::Message;
use crate::protocol::{ErrorCode, Op, Publish, Request, ServerFrame};
use crate::queue::ConnId;
use crate::router::{Command, ConnTx, Outbound};
use crate::vhost::LocalNames;

/// Frames one transaction may hold before COMMIT.
const MAX_TRANSACTION_FRAMES: usize = 10_000;

/// Why a STOMP connection ended.
enum Ended {
    ClientClosed,
    Disconnected,
    ReadError(String),
    BrokerStopping,
    HeartbeatTimeout(Duration),
    /// An ERROR was sent (a bad frame, or a refused operation).
    Refused(String),
    /// The writer stopped: it sent an ERROR from the router, or the socket failed.
    WriterStopped,
    Panicked(String),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::ClientClosed => f.write_str("closed by client"),
            Ended::Disconnected => f.write_str("DISCONNECT"),
            Ended::ReadError(e) => write!(f, "read error: {e}"),
            Ended::BrokerStopping => f.write_str("broker shutting down"),
            Ended::HeartbeatTimeout(d) => {
                write!(
                    f,
                    "peer silent for {} ms (heart-beat timeout)",
                    d.as_millis()
                )
            }
            Ended::Refused(e) => write!(f, "ERROR sent: {e}"),
            Ended::WriterStopped => f.write_str("writer ended (ERROR sent or write failed)"),
            Ended::Panicked(what) => write!(f, "connection task panicked: {what}"),
        }
    }
}

/// Serves one STOMP connection from its first byte to its end.
pub(crate) async fn serve<S>(
    mut source: Source<S>,
    mut sink: Sink<S>,
    peer: SocketAddr,
    conn: ConnId,
    ctx: Arc<Context>,
    transport_login: TransportLogin,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::new(ctx.max_frame_bytes);
    let connect = connect(
        &mut source,
        &mut sink,
        &mut buf,
        &mut decoder,
        &ctx,
        peer,
        conn,
        transport_login,
    );
    let Some((connected, answer)) = connect.await else {
        return;
    };
    let vhost: Arc<str> = connected.vhost.into();
    let principal = connected.principal;
    tracing::info!(conn, %peer, user = %principal.user, %vhost, version = connected.version.as_str(), "STOMP connection opened");
    let (tx, rx) = ConnTx::channel(conn);
    let outbound = Arc::new(AtomicUsize::new(0));
    let open = Command::Open(crate::router::OpenConn {
        conn,
        tx: tx.clone(),
        peer: Some(peer),
        outbound: Some(outbound.clone()),
        user: Some(principal.clone()),
        vhost: vhost.clone(),
        session: None,
        protocol: crate::protocol::WireProtocol::Stomp,
        link: crate::router::ConnLink::of_this_task(),
    });
    if !ctx.router.send_request(open).await {
        return;
    }
    // CONNECTED after the open: whoever lists connections once the client has it sees
    // this one.
    if sink.feed(answer).await.is_err() || sink.flush().await.is_err() {
        let close = Command::Close {
            conn,
            broker_stopping: false,
        };
        ctx.router.send_request(close).await;
        return;
    }
    let writer = Writer {
        sink,
        conn,
        router: ctx.router.clone(),
        version: connected.version,
        outbound,
        names: LocalNames::new(&vhost),
    };
    let mut writer = crate::shard_threads::spawn(writer.run(rx));
    let mut session = Session {
        credit: Arc::new(Semaphore::new(ctx.max_unconfirmed)),
        alarm: ctx.alarm.clone(),
        shutdown: ctx.shutdown.clone(),
        ctx: ctx.clone(),
        conn,
        peer,
        principal,
        vhost,
        version: connected.version,
        tx: tx.clone(),
        published: false,
        next_request: 0,
        publishes: 0,
        subscriptions: HashMap::new(),
        transactions: HashMap::new(),
        declared: HashSet::new(),
        temp_queues: HashMap::new(),
        grants: Default::default(),
    };
    // Publishes are confirmed (after their commit when persistent): RECEIPTs wait for it.
    let ended = match session.request(Op::ConfirmSelect, Answer::Nothing).await {
        Err(ended) => ended,
        Ok(()) => {
            let read = session.read_loop(
                &mut source,
                &mut buf,
                &mut decoder,
                &mut writer,
                connected.heartbeat,
            );
            AssertUnwindSafe(read)
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Ended::Panicked(panic_text(&*panic)))
        }
    };
    let close = Command::Close {
        conn,
        broker_stopping: matches!(ended, Ended::BrokerStopping),
    };
    ctx.router.send_request(close).await;
    drop(session);
    drop(tx);
    let _ = writer.await;
    match ended {
        Ended::Panicked(_) => {
            tracing::error!(conn, %peer, reason = %ended, "STOMP connection closed")
        }
        _ => tracing::info!(conn, %peer, reason = %ended, "STOMP connection closed"),
    }
}

struct Session {
    ctx: Arc<Context>,
    conn: ConnId,
    peer: SocketAddr,
    principal: Principal,
    vhost: Arc<str>,
    version: Version,
    tx: ConnTx,
    /// One permit per publish the router has not answered yet.
    credit: Arc<Semaphore>,
    alarm: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    /// Whether this connection has published (only publishers are blocked).
    published: bool,
    next_request: u64,
    /// Publishes sent to the router so far (a RECEIPT waits for their confirms).
    publishes: u64,
    /// By subscription id (the consumer tag on the router).
    subscriptions: HashMap<String, Subscription>,
    /// Transaction id → its SEND, ACK and NACK frames, applied at COMMIT.
    transactions: HashMap<String, Vec<Frame>>,
    /// Queues and exchanges this connection declared already (see `declared_name`).
    declared: HashSet<String>,
    /// `/temp-queue/NAME` → the reply queue behind it.
    temp_queues: HashMap<String, String>,
    /// The user's grant in `vhost`, as last checked.
    grants: crate::auth::GrantCache,
}

impl Session {
    async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        source: &mut Source<S>,
        buf: &mut BytesMut,
        decoder: &mut Decoder,
        writer: &mut crate::shard_threads::PlacedTask<()>,
        heartbeat: Heartbeat,
    ) -> Ended {
        let ticker = |every: Option<Duration>| {
            every.map(|every| tokio::time::interval_at(Instant::now() + every, every))
        };
        let mut sends = ticker(heartbeat.send);
        let mut checks = ticker(heartbeat.expect);
        let mut last_heard = Instant::now();
        loop {
            loop {
                let frame = match decoder.decode(buf) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return self.refuse(e.to_string(), None),
                };
                if let Err(ended) = self.handle(frame).await {
                    return ended;
                }
                if let Err(ended) = self.wait_while_blocked().await {
                    return ended;
                }
                // Time spent waiting for credit or the alarm is not the peer's silence.
                last_heard = Instant::now();
            }
            tokio::select! {
                read = source.read(buf) => match read {
                    Ok(Read::Data) => last_heard = Instant::now(),
                    Ok(Read::Closed) => return Ended::ClientClosed,
                    Err(e) => return Ended::ReadError(e),
                },
                _ = self.shutdown.changed() => return Ended::BrokerStopping,
                _ = &mut *writer => return Ended::WriterStopped,
                _ = next_tick(&mut sends) => {
                    let _ = self.tx.send(Outbound::Ping);
                }
                _ = next_tick(&mut checks) => {
                    let every = heartbeat.expect.expect("ticks only with a heart-beat");
                    let silent = last_heard.elapsed();
                    if silent >= every * 2 {
                        return Ended::HeartbeatTimeout(silent);
                    }
                }
            }
        }
    }

    /// Sends an ERROR (the writer then ends the connection).
    fn refuse(&self, message: String, receipt: Option<&str>) -> Ended {
        let id = receipt.map(|receipt| {
            Answer::Receipt {
                receipt: receipt.to_string(),
                after_publishes: 0,
            }
            .request_id(0)
        });
        let frame = ServerFrame::error(id, ErrorCode::InvalidField, message.clone());
        let _ = self.tx.send(Outbound::Frame(frame));
        Ended::Refused(message)
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), Ended> {
        let receipt = frame.header("receipt").map(str::to_string);
        let receipt = receipt.as_deref();
        match frame.command {
            ClientCommand::Connect | ClientCommand::Stomp => {
                Err(self.refuse("already connected".into(), receipt))
            }
            ClientCommand::Send | ClientCommand::Ack | ClientCommand::Nack
                if frame.header("transaction").is_some() =>
            {
                let id = frame.header("transaction").unwrap_or_default().to_string();
                let Some(frames) = self.transactions.get_mut(&id) else {
                    return Err(self.refuse(format!("no transaction `{id}`"), receipt));
                };
                if frames.len() == MAX_TRANSACTION_FRAMES {
                    let message = format!(
                        "transaction `{id}` holds {MAX_TRANSACTION_FRAMES} frames: COMMIT or ABORT it"
                    );
                    return Err(self.refuse(message, receipt));
                }
                frames.push(frame.clone());
                self.receipt(receipt).await
            }
            ClientCommand::Send => self.send(&frame, receipt).await,
            ClientCommand::Ack | ClientCommand::Nack => {
                self.settle(&frame, receipt).await?;
                self.receipt(receipt).await
            }
            ClientCommand::Subscribe => self.subscribe(&frame, receipt).await,
            ClientCommand::Unsubscribe => self.unsubscribe(&frame, receipt).await,
            ClientCommand::Begin => {
                let id = self.required(&frame, "transaction", receipt)?.to_string();
                if self.transactions.contains_key(&id) {
                    return Err(self.refuse(format!("transaction `{id}` already begun"), receipt));
                }
                self.transactions.insert(id, Vec::new());
                self.receipt(receipt).await
            }
            ClientCommand::Commit | ClientCommand::Abort => {
                let id = self.required(&frame, "transaction", receipt)?.to_string();
                let Some(frames) = self.transactions.remove(&id) else {
                    return Err(self.refuse(format!("no transaction `{id}`"), receipt));
                };
                if frame.command == ClientCommand::Commit {
                    for frame in frames {
                        match frame.command {
                            ClientCommand::Send => self.send(&frame, None).await?,
                            _ => self.settle(&frame, None).await?,
                        }
                    }
                }
                self.receipt(receipt).await
            }
            ClientCommand::Disconnect => {
                let answer = Answer::Disconnect {
                    receipt: receipt.unwrap_or_default().to_string(),
                    after_publishes: self.publishes,
                };
                self.request(Op::ConfirmSelect, answer).await?;
                Err(Ended::Disconnected)
            }
        }
    }

    fn required<'f>(
        &self,
        frame: &'f Frame,
        header: &str,
        receipt: Option<&str>,
    ) -> Result<&'f str, Ended> {
        frame.header(header).ok_or_else(|| {
            let command = format!("{:?}", frame.command).to_uppercase();
            self.refuse(format!("{command} needs a `{header}` header"), receipt)
        })
    }

    /// A RECEIPT once everything sent before is processed (and its publishes confirmed).
    async fn receipt(&mut self, receipt: Option<&str>) -> Result<(), Ended> {
        let Some(receipt) = receipt else {
            return Ok(());
        };
        let answer = Answer::Receipt {
            receipt: receipt.to_string(),
            after_publishes: self.publishes,
        };
        self.request(Op::ConfirmSelect, answer).await
    }

    fn destination(&self, frame: &Frame, receipt: Option<&str>) -> Result<Destination, Ended> {
        let text = self.required(frame, "destination", receipt)?;
        Destination::parse(text).map_err(|e| self.refuse(e.to_string(), receipt))
    }

    async fn send(&mut self, frame: &Frame, receipt: Option<&str>) -> Result<(), Ended> {
        let destination = self.destination(frame, receipt)?;
        let text = frame.header("destination").unwrap_or_default();
        let (exchange, routing_key) = destination
            .publish_target(text)
            .map_err(|e| self.refuse(e.to_string(), receipt))?;
        let (mut properties, headers) =
            message_of(frame).map_err(|e| self.refuse(e.to_string(), receipt))?;
        if let Some(reply_to) = &properties.reply_to
            && let Ok(Destination::TempQueue(name)) = Destination::parse(reply_to)
        {
            let queue = self.temp_queue(&name, reply_to, receipt).await?;
            properties.reply_to = Some(format!("/reply-queue/{queue}"));
        }
        let queue_properties = QueueProperties::of(frame).map_err(|e| self.refuse(e, receipt))?;
        for declaration in destination.declarations(&queue_properties) {
            self.declare(declaration, receipt).await?;
        }
        let message = Message {
            exchange,
            routing_key,
            headers,
            properties,
            body: frame.body.clone(),
        };
        let op = Op::Publish(Publish {
            message: Box::new(message),
            mandatory: false,
        });
        let answer = match receipt {
            Some(receipt) => Answer::Receipt {
                receipt: receipt.to_string(),
                after_publishes: 0,
            },
            None => Answer::Nothing,
        };
        self.request(op, answer).await
    }

    /// Declares once per connection; an optional declaration the user may not do is
    /// skipped.
    async fn declare(
        &mut self,
        declaration: Declaration,
        receipt: Option<&str>,
    ) -> Result<(), Ended> {
        let (op, required) = match declaration {
            Declaration::Required(op) => (op, true),
            Declaration::IfAllowed(op) => (op, false),
        };
        let name = super::destinations::declared_name(&op);
        if self.declared.contains(&name) {
            return Ok(());
        }
        let mut admitted = op;
        let refused = self.admit(&mut admitted);
        match (refused, required) {
            (Ok(()), _) => {
                self.declared.insert(name);
                self.send_admitted(admitted, Answer::Nothing).await
            }
            (Err(_), false) => Ok(()),
            (Err((_, message)), true) => Err(self.refuse(message, receipt)),
        }
    }

    /// The user's permission for `op` in the session's vhost (which names `op` for it).
    fn admit(&self, op: &mut Op) -> Result<(), (crate::protocol::ErrorCode, String)> {
        let (principal, peer) = (&self.principal, self.peer.ip());
        (self.ctx.auth).admit(principal, &self.vhost, peer, op, &self.grants)
    }

    /// Authorizes `op` (refused: ERROR with `receipt`) and sends it.
    async fn request_or_refuse(
        &mut self,
        mut op: Op,
        answer: Answer,
        receipt: Option<&str>,
    ) -> Result<(), Ended> {
        if let Err((_, message)) = self.admit(&mut op) {
            return Err(self.refuse(message, receipt));
        }
        self.send_admitted(op, answer).await
    }

    async fn request(&mut self, op: Op, answer: Answer) -> Result<(), Ended> {
        let receipt = match &answer {
            Answer::Receipt { receipt, .. } => Some(receipt.clone()),
            _ => None,
        };
        self.request_or_refuse(op, answer, receipt.as_deref()).await
    }

    /// Hands an admitted request to the router; a publish first takes one unit of the
    /// connection's unconfirmed-publish credit, waiting (and reading nothing) without.
    async fn send_admitted(&mut self, op: Op, answer: Answer) -> Result<(), Ended> {
        let credit = if matches!(op, Op::Publish(_)) {
            self.published = true;
            self.publishes += 1;
            let credit = self.credit.clone();
            Some(match credit.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => tokio::select! {
                    permit = credit.acquire_owned() => permit.expect("the semaphore is never closed"),
                    _ = self.shutdown.changed() => return Err(Ended::BrokerStopping),
                },
            })
        } else {
            None
        };
        self.next_request += 1;
        let request = Request {
            id: answer.request_id(self.next_request),
            op,
        };
        let command = Command::Request {
            conn: self.conn,
            request,
            credit,
            routed: None,
        };
        match self.ctx.router.send_request(command).await {
            true => Ok(()),
            false => Err(Ended::BrokerStopping),
        }
    }

    /// While the memory alarm is raised, a connection that publishes is not read.
    async fn wait_while_blocked(&mut self) -> Result<(), Ended> {
        if !self.published || !*self.alarm.borrow() {
            return Ok(());
        }
        tracing::info!(conn = self.conn, peer = %self.peer, "STOMP connection blocked");
        crate::server::wait_until_alarm_clears(&mut self.alarm, &mut self.shutdown)
            .await
            .map_err(|_| Ended::BrokerStopping)?;
        tracing::info!(conn = self.conn, peer = %self.peer, "STOMP connection unblocked");
        Ok(())
    }
}

fn receipt_answer(receipt: Option<&str>) -> Answer {
    match receipt {
        Some(receipt) => Answer::Receipt {
            receipt: receipt.to_string(),
            after_publishes: 0,
        },
        None => Answer::Nothing,
    }
}
