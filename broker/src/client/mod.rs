//! The async Rust client: connect, declare, publish with confirms, subscribe, ack.
//!
//! A writer task owns the socket's write half (frames are fed and flushed in batches, so
//! pipelined publishes are cheap); a reader task routes replies to their waiting callers
//! by request id and deliveries to their subscriptions by consumer tag.
//!
//! [`Client::connect_with`] and [`Encoding::Binary`] send `publish` and `ack` as binary
//! records (packed several to a WebSocket message) and read `deliver` and `confirm` records;
//! every other request and reply stays JSON.
//!
//! With [`ConnectOptions::reconnect`] the client survives a lost connection: it
//! reconnects with backoff, declares again what the application declared, subscribes
//! again, resends publishes that were not confirmed (at-least-once), and guards
//! publishing with a circuit breaker; [`Client::health`] says how it is doing. See
//! [`reconnect`], [`circuit`], [`health`] and [`delivery_tags`].
//!
//! Credentials come from the URL (`ws://user:password@host:port`), `guest` / `guest`
//! without them. `wss://` URLs connect over TLS, trusting [`ConnectOptions::tls`]'s CAs
//! (the system's without it); a client certificate there logs in as its CN's user.

pub mod circuit;
mod connection;
pub mod credentials;
pub mod delivery_tags;
pub mod health;
mod incoming;
mod link;
mod plugins;
pub mod reconnect;
mod settle;
mod shared;
pub mod tls;
mod topology;
mod users;
mod vhosts;

pub use circuit::{Breaker, Circuit};
pub use health::{Health, LinkState};
pub use reconnect::Reconnect;
pub use tls::ClientTls;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};

use connection::{Class, Frame, Outgoing};
use shared::{NewConsumer, Pending, Shared};

use crate::message::{Headers, Message};
use crate::protocol::{
    AttachHandler, Binding, DeclareExchange, DeclareQueue, Delivery, Encoding, ErrorCode,
    MessageCount, Op, Publish, QueueInfo, QueueList, Request, RequestId, Subscribe, Subscribed,
};

/// What can go wrong talking to a broker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the connection is closed")]
    Closed,
    #[error("{code}: {message}")]
    Server { code: ErrorCode, message: String },
    #[error("unexpected reply from the broker: {0}")]
    Protocol(String),
    /// The connection dropped before the reply came, or the request was made while the
    /// client reconnects; it may or may not have taken effect. Retry once
    /// [`Client::health`] says connected.
    #[error("disconnected from the broker; reconnecting")]
    Disconnected,
    /// Publishing fails fast: the broker has been unreachable too long (see
    /// [`Breaker`]).
    #[error("publishing refused while the circuit is open ({reason})")]
    CircuitOpen { reason: String },
    /// An ack, nack or reject for a delivery made on a connection that is gone: nothing
    /// was settled, and the broker redelivers the message.
    #[error(
        "delivery tag {delivery_tag} is from a connection that is gone; the broker redelivers it"
    )]
    StaleDelivery { delivery_tag: u64 },
}

impl ClientError {
    /// The broker's error code, when the broker refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A message the broker handed back: `mandatory` and routed nowhere.
#[derive(Debug, Clone)]
pub struct Returned {
    pub id: RequestId,
    pub reason: ErrorCode,
    pub message: Arc<Message>,
}

/// A connection to a broker. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Client {
    out: mpsc::UnboundedSender<Outgoing>,
    link: tokio::task::JoinHandle<()>,
    /// Dropped with the client: ends reconnecting.
    alive: oneshot::Sender<()>,
    shared: Arc<Shared>,
    returns: tokio::sync::Mutex<mpsc::UnboundedReceiver<Returned>>,
}

/// Options of [`Client::connect_with`].
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// How `publish`, `ack`, `deliver` and `confirm` travel; everything else is JSON.
    pub encoding: Encoding,
    /// For `wss://` URLs: the CAs to trust and the client certificate to present
    /// (default: the system's CAs, no certificate). Unused for `ws://`.
    pub tls: Option<ClientTls>,
    /// Reconnect when the connection drops, and recover what the application had (see
    /// [`Reconnect`]). `None` (the default): a dropped connection closes the client.
    pub reconnect: Option<Reconnect>,
}

/// Options of `declare_queue`.
#[derive(Debug, Clone, Default)]
pub struct QueueOptions {
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: Headers,
}

impl QueueOptions {
    pub fn durable() -> Self {
        QueueOptions {
            durable: true,
            ..Default::default()
        }
    }
}

/// A stream of deliveries for one consumer.
#[derive(Debug)]
pub struct Subscription {
    pub consumer_tag: String,
    rx: mpsc::UnboundedReceiver<Delivery>,
}

impl Subscription {
    /// The next delivery; `None` once the subscription or connection ended.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:6789`) with the default options (JSON).
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, ConnectOptions::default()).await
    }

    /// Connects with `options`: with [`Encoding::Binary`] the client offers the
    /// [`BINARY_SUBPROTOCOL`] and fails to connect if the broker does not accept it.
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Client, ClientError> {
        let ws = connection::open(url, &options).await?;
        let (out, out_rx) = mpsc::unbounded_channel::<Outgoing>();
        let (returns_tx, returns_rx) = mpsc::unbounded_channel();
        let (alive, alive_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            closed: AtomicBool::new(false),
            consumers: Mutex::default(),
            blocked: watch::Sender::new(None),
            next_id: AtomicU64::new(1),
            binary: options.encoding == Encoding::Binary,
            confirms: AtomicBool::new(false),
            reconnect: options.reconnect.clone(),
            generation: AtomicU64::new(0),
            health: watch::Sender::new(Health::connected_now()),
            topology: Mutex::default(),
            buffered: AtomicUsize::new(0),
        });
        let link = link::Link {
            shared: shared.clone(),
            out_rx,
            returns: returns_tx,
            alive: alive_rx,
            url: url.to_owned(),
            options,
            backlog: Vec::new(),
        };
        let link = tokio::spawn(link::run(link, ws));
        Ok(Client {
            out,
            link,
            alive,
            shared,
            returns: tokio::sync::Mutex::new(returns_rx),
        })
    }

    /// How the client is doing: connected, reconnecting or closed, the publish circuit,
    /// reconnects so far, the last error, time since the last connection.
    pub fn health(&self) -> Health {
        self.shared.health.borrow().clone()
    }

    /// [`Client::health`] as it changes (to wait for a state instead of polling).
    pub fn health_changes(&self) -> watch::Receiver<Health> {
        self.shared.health.subscribe()
    }

    /// Sends a request; the returned future resolves with its reply. The frame is queued
    /// before this returns, so calls can be pipelined.
    fn send(
        &self,
        op: Op,
        consumer: Option<NewConsumer>,
        wants_reply: bool,
    ) -> impl Future<Output = Result<serde_json::Value, ClientError>> + Send + 'static {
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let class = Class::of(&op);
        // While reconnecting only publishes and declarations wait for the next connection.
        let refused = !class.waits()
            && shared.reconnect.is_some()
            && shared.health.borrow().state == LinkState::Reconnecting;
        let request = Request {
            id: RequestId::Num(id),
            op,
        };
        let resend =
            (wants_reply && class.waits() && shared.reconnect.is_some()).then(|| request.clone());
        let frame = match shared.binary && matches!(request.op, Op::Publish(_) | Op::Ack { .. }) {
            true => Frame::Record(request),
            false => Frame::Text(crate::protocol::encode_request(&request)),
        };
        let item = Outgoing { id, class, frame };
        let mut rx = None;
        let sent = match refused {
            true => false,
            false if wants_reply => {
                let (reply, reply_rx) = oneshot::channel();
                let mut pending = shared.pending.lock().unwrap();
                // After the connection task's last drain nobody would answer: fail now.
                let sent = !shared.closed.load(Ordering::SeqCst) && self.out.send(item).is_ok();
                if sent {
                    let waiting = Pending {
                        reply,
                        consumer,
                        resend,
                    };
                    pending.insert(id, waiting);
                    rx = Some(reply_rx);
                }
                sent
            }
            false => !shared.closed.load(Ordering::SeqCst) && self.out.send(item).is_ok(),
        };
        async move {
            if refused {
                return Err(ClientError::Disconnected);
            }
            if !sent {
                return Err(ClientError::Closed);
            }
            match rx {
                Some(rx) => rx.await.unwrap_or(Err(ClientError::Closed)),
                None => Ok(serde_json::Value::Null),
            }
        }
    }

    async fn call<T: DeserializeOwned>(&self, op: Op) -> Result<T, ClientError> {
        let value = self.send(op, None, true).await?;
        serde_json::from_value(value).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn call_unit(&self, op: Op) -> Result<(), ClientError> {
        self.send(op, None, true).await.map(drop)
    }

    /// Sends everything queued, then closes the connection with a WebSocket close
    /// handshake. (Dropping a client closes it too, without waiting.)
    pub async fn close(self) {
        let Client {
            out, link, alive, ..
        } = self;
        drop(out);
        drop(alive);
        let _ = link.await;
    }

    /// Turns on publisher confirms: from now on `publish` resolves when the broker confirms.
    pub async fn confirm_select(&self) -> Result<(), ClientError> {
        self.call_unit(Op::ConfirmSelect).await?;
        self.shared.confirms.store(true, Ordering::Relaxed);
        Ok(())
    }

    pub async fn declare_queue(
        &self,
        queue: &str,
        options: QueueOptions,
    ) -> Result<QueueInfo, ClientError> {
        let declare = DeclareQueue {
            queue: queue.to_owned(),
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            arguments: options.arguments,
        };
        let info: QueueInfo = self.call(Op::DeclareQueue(declare.clone())).await?;
        self.remember(|t| t.declared_queue(declare, &info.queue));
        Ok(info)
    }

    /// Records a declaration or subscription to make again after a reconnect.
    fn remember(&self, change: impl FnOnce(&mut topology::Topology)) {
        if self.shared.reconnect.is_some() {
            change(&mut self.shared.topology.lock().unwrap());
        }
    }

    /// Deletes a queue; returns how many messages it held.
    pub async fn delete_queue(&self, queue: &str) -> Result<u64, ClientError> {
        let op = Op::DeleteQueue {
            queue: queue.to_owned(),
            if_unused: false,
            if_empty: false,
        };
        let messages = self.call::<MessageCount>(op).await?.messages;
        self.remember(|t| t.deleted_queue(queue));
        Ok(messages)
    }

    /// Removes a queue's ready messages; returns how many.
    pub async fn purge_queue(&self, queue: &str) -> Result<u64, ClientError> {
        let op = Op::PurgeQueue {
            queue: queue.to_owned(),
        };
        Ok(self.call::<MessageCount>(op).await?.messages)
    }

    pub async fn queue_info(&self, queue: &str) -> Result<QueueInfo, ClientError> {
        self.call(Op::QueueInfo {
            queue: queue.to_owned(),
        })
        .await
    }

    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>, ClientError> {
        Ok(self.call::<QueueList>(Op::ListQueues).await?.queues)
    }

    /// Every exchange with its counters (the default exchange `""` included).
    pub async fn list_exchanges(&self) -> Result<crate::protocol::ExchangeList, ClientError> {
        self.call(Op::ListExchanges).await
    }

    /// Where `message` would go, without publishing it (the `route` op's result: type,
    /// plugin version, matching bindings, queues).
    pub async fn route(&self, message: Message) -> Result<serde_json::Value, ClientError> {
        self.send(Op::Route(Box::new(message)), None, true).await
    }

    /// The exchange-to-exchange bindings (`list_bindings`' `exchange_bindings`).
    pub async fn list_exchange_bindings(
        &self,
    ) -> Result<Vec<crate::protocol::ExchangeBinding>, ClientError> {
        Ok(self
            .call::<crate::protocol::BindingList>(Op::ListBindings)
            .await?
            .exchange_bindings)
    }

    pub async fn list_bindings(&self) -> Result<Vec<Binding>, ClientError> {
        Ok(self
            .call::<crate::protocol::BindingList>(Op::ListBindings)
            .await?
            .bindings)
    }

    /// The broker's client connections (this one included).
    pub async fn list_connections(
        &self,
    ) -> Result<Vec<crate::protocol::ConnectionInfo>, ClientError> {
        Ok(self
            .call::<crate::protocol::ConnectionList>(Op::ListConnections)
            .await?
            .connections)
    }

    pub async fn declare_exchange(
        &self,
        exchange: &str,
        kind: &str,
        durable: bool,
        arguments: Headers,
    ) -> Result<(), ClientError> {
        let declare = DeclareExchange {
            exchange: exchange.to_owned(),
            kind: kind.to_owned(),
            durable,
            internal: false,
            auto_delete: false,
            arguments,
        };
        self.declare_exchange_with(declare).await
    }

    /// [`Self::declare_exchange`] with every field of the declaration (`internal`,
    /// `auto_delete`).
    pub async fn declare_exchange_with(&self, declare: DeclareExchange) -> Result<(), ClientError> {
        self.call_unit(Op::DeclareExchange(declare.clone())).await?;
        self.remember(|t| t.declared_exchange(declare));
        Ok(())
    }

    pub async fn delete_exchange(&self, exchange: &str) -> Result<(), ClientError> {
        self.call_unit(Op::DeleteExchange {
            exchange: exchange.to_owned(),
            if_unused: false,
        })
        .await?;
        self.remember(|t| t.deleted_exchange(exchange));
        Ok(())
    }

    pub async fn bind(&self, binding: Binding) -> Result<(), ClientError> {
        self.call_unit(Op::Bind(binding.clone())).await?;
        self.remember(|t| t.bound(binding));
        Ok(())
    }

    pub async fn unbind(&self, binding: Binding) -> Result<(), ClientError> {
        self.call_unit(Op::Unbind(binding.clone())).await?;
        self.remember(|t| t.unbound(&binding));
        Ok(())
    }

    /// Binds exchange `binding.destination` to exchange `binding.source`.
    pub async fn bind_exchange(
        &self,
        binding: crate::protocol::ExchangeBinding,
    ) -> Result<(), ClientError> {
        self.call_unit(Op::BindExchange(binding.clone())).await?;
        self.remember(|t| t.bound_exchange(binding));
        Ok(())
    }

    pub async fn unbind_exchange(
        &self,
        binding: crate::protocol::ExchangeBinding,
    ) -> Result<(), ClientError> {
        self.call_unit(Op::UnbindExchange(binding.clone())).await?;
        self.remember(|t| t.unbound_exchange(&binding));
        Ok(())
    }

    /// Publishes a message. With confirms on, the future resolves when the broker has
    /// stored it (or refuses it); without, once it is queued for sending. The frame is
    /// queued before this returns, so publishes can be pipelined.
    ///
    /// On a reconnecting client a publish made while disconnected waits for the next
    /// connection, and one waiting for its confirm when the connection drops is sent
    /// again there (its future resolves with that confirm): at-least-once, the broker
    /// may store it twice. While the circuit is open it fails at once with
    /// [`ClientError::CircuitOpen`].
    pub fn publish(
        &self,
        message: Message,
        mandatory: bool,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static {
        let admitted = circuit::admit_publish(&self.shared);
        let confirms = self.shared.confirms.load(Ordering::Relaxed);
        let reply = admitted.map(|()| {
            let message = Box::new(message);
            self.send(Op::Publish(Publish { message, mandatory }), None, confirms)
        });
        async move { reply?.await.map(drop) }
    }

    /// The next message the broker returned as unroutable.
    pub async fn next_return(&self) -> Option<Returned> {
        self.returns.lock().await.recv().await
    }

    /// Subscribes. On a reconnecting client the subscription survives reconnects: it is
    /// made again on each new connection with the same consumer tag, queue, prefetch and
    /// filter, and the stream carries on with what the broker delivers there (its
    /// redeliveries first).
    pub async fn subscribe(&self, subscribe: Subscribe) -> Result<Subscription, ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let consumer = NewConsumer {
            deliveries: tx,
            resubscribe: self.shared.reconnect.is_some().then(|| subscribe.clone()),
        };
        let value = self
            .send(Op::Subscribe(subscribe), Some(consumer), true)
            .await?;
        let Subscribed { consumer_tag } =
            serde_json::from_value(value).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Subscription { consumer_tag, rx })
    }

    /// Subscribes with manual acks and the given prefetch.
    pub async fn consume(&self, queue: &str, prefetch: u32) -> Result<Subscription, ClientError> {
        self.subscribe(Subscribe {
            queue: queue.to_owned(),
            prefetch,
            auto_ack: false,
            consumer_tag: None,
            filter: None,
            exclusive: false,
            priority: 0,
            consumer_timeout_ms: None,
        })
        .await
    }

    /// Subscribes with manual acks through filter handler `filter` (attached to the queue
    /// in filter mode): dropped messages never arrive, transformed ones arrive instead.
    pub async fn consume_filtered(
        &self,
        queue: &str,
        prefetch: u32,
        filter: &str,
    ) -> Result<Subscription, ClientError> {
        self.subscribe(Subscribe {
            queue: queue.to_owned(),
            prefetch,
            auto_ack: false,
            consumer_tag: None,
            filter: Some(filter.to_owned()),
            exclusive: false,
            priority: 0,
            consumer_timeout_ms: None,
        })
        .await
    }

    /// Attaches a handler plugin to a queue (see [`AttachHandler`]).
    pub async fn attach_handler(&self, attach: AttachHandler) -> Result<(), ClientError> {
        self.call_unit(Op::AttachHandler(attach)).await
    }

    pub async fn detach_handler(&self, queue: &str, plugin: &str) -> Result<(), ClientError> {
        self.call_unit(Op::DetachHandler {
            queue: queue.to_owned(),
            plugin: plugin.to_owned(),
        })
        .await
    }

    /// Every attachment: queue, plugin, mode, concurrency, config, plugin version, counters.
    pub async fn list_handlers(&self) -> Result<serde_json::Value, ClientError> {
        self.send(Op::ListHandlers, None, true).await
    }

    pub async fn cancel(&self, consumer_tag: &str) -> Result<(), ClientError> {
        self.shared.consumers.lock().unwrap().remove(consumer_tag);
        self.remember(|t| t.cancelled(consumer_tag));
        self.call_unit(Op::Cancel {
            consumer_tag: consumer_tag.to_owned(),
        })
        .await
    }

    /// Ready messages of a queue in delivery order, without consuming them.
    pub async fn peek_queue(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<crate::protocol::PeekedMessage>, ClientError> {
        let op = Op::PeekQueue {
            queue: queue.to_owned(),
            limit,
        };
        Ok(self
            .call::<crate::protocol::PeekedMessages>(op)
            .await?
            .messages)
    }

    /// Moves dead letters in `queue` back to their original queues (all, or those with
    /// `message_id`); returns how many moved.
    pub async fn requeue_dead_letters(
        &self,
        queue: &str,
        message_id: Option<&str>,
    ) -> Result<u64, ClientError> {
        let op = Op::RequeueDeadLetters {
            queue: queue.to_owned(),
            message_id: message_id.map(str::to_owned),
        };
        Ok(self.call::<crate::protocol::Moved>(op).await?.moved)
    }

    /// Flow control as the broker reports it: `Some(reason)` while the broker has stopped
    /// reading this connection's requests (`blocked`), `None` once it reads them again.
    pub fn blocked(&self) -> watch::Receiver<Option<String>> {
        self.shared.blocked.subscribe()
    }
}
