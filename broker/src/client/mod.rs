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
//! Credentials come from the URL (`ws://user:password@host:port`), `guest` / `guest`
//! without them. `wss://` URLs connect over TLS, trusting [`ConnectOptions::tls`]'s CAs
//! (the system's without it); a client certificate there logs in as its CN's user.

pub mod credentials;
mod incoming;
mod plugins;
pub mod tls;
mod users;
mod vhosts;

pub use tls::ClientTls;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::message::{Headers, Message};
use crate::protocol::{
    AttachHandler, BINARY_BATCH_BYTES, BINARY_SUBPROTOCOL, Binding, DeclareExchange, DeclareQueue,
    Delivery, Encoding, ErrorCode, MessageCount, Op, Publish, QueueInfo, QueueList, Request,
    RequestId, Subscribe, Subscribed, decode_server_frames, write_request_record,
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

type ReplyTx = oneshot::Sender<Result<serde_json::Value, ClientError>>;

struct Pending {
    reply: ReplyTx,
    /// For `subscribe`: where the subscription's deliveries go once the broker names it.
    deliveries: Option<mpsc::UnboundedSender<Delivery>>,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<HashMap<u64, Pending>>,
    /// Set when the connection is gone: requests made after that fail at once.
    closed: AtomicBool,
    consumers: Mutex<HashMap<String, mpsc::UnboundedSender<Delivery>>>,
    /// The broker's last word on flow control: `Some(reason)` while it blocks this
    /// connection's publishes.
    blocked: watch::Sender<Option<String>>,
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
    writer: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    /// `publish` and `ack` go as binary records (negotiated at connect).
    binary: bool,
    confirms: AtomicBool,
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
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let connect_error = |reason: String| ClientError::Connect {
            url: url.to_owned(),
            reason,
        };
        let (bare_url, user_info) = credentials::split_user_info(url);
        let mut request = bare_url
            .into_client_request()
            .map_err(|e| connect_error(e.to_string()))?;
        // With a client certificate and no credentials in the URL, the certificate alone
        // logs in; otherwise the URL's credentials or the default user's.
        let certified = options.tls.as_ref().is_some_and(ClientTls::has_identity);
        let login = match user_info {
            Some(credentials) => Some(credentials),
            None if certified => None,
            None => Some(credentials::default_credentials()),
        };
        if let Some((user, password)) = login {
            let authorization = credentials::basic_header(&user, &password)
                .parse()
                .map_err(|_| connect_error("credentials not valid in a header".into()))?;
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::header::AUTHORIZATION,
                authorization,
            );
        }
        let binary = options.encoding == Encoding::Binary;
        if binary {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL,
                tokio_tungstenite::tungstenite::http::HeaderValue::from_static(BINARY_SUBPROTOCOL),
            );
        }
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(crate::protocol::READ_BUFFER_BYTES);
        let stream = tls::open_stream(request.uri(), options.tls.as_ref())
            .await
            .map_err(connect_error)?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let (mut sink, mut source) = ws.split();
        let shared = Arc::new(Shared::default());
        let (out, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
        let (returns_tx, returns_rx) = mpsc::unbounded_channel();

        let writer = tokio::spawn(async move {
            // Consecutive binary records packed into one message.
            let mut records = Vec::new();
            while let Some(first) = out_rx.recv().await {
                let mut next = Some(first);
                while let Some(item) = next {
                    let fed = match item {
                        Outgoing::Record(request) => {
                            write_request_record(&mut records, &request);
                            match records.len() >= BINARY_BATCH_BYTES {
                                true => feed_records(&mut sink, &mut records).await,
                                false => Ok(()),
                            }
                        }
                        Outgoing::Text(text) => match feed_records(&mut sink, &mut records).await {
                            Ok(()) => sink.feed(WsMessage::Text(Utf8Bytes::from(text))).await,
                            Err(e) => Err(e),
                        },
                    };
                    if fed.is_err() {
                        return;
                    }
                    next = out_rx.try_recv().ok();
                }
                if feed_records(&mut sink, &mut records).await.is_err()
                    || sink.flush().await.is_err()
                {
                    return;
                }
            }
            let _ = sink.send(WsMessage::Close(None)).await;
        });

        let reader_shared = shared.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = source.next().await {
                match frame {
                    WsMessage::Text(text) => match crate::protocol::parse_server_frame(&text) {
                        Ok(frame) => incoming::on_frame(&reader_shared, &returns_tx, frame),
                        Err(e) => tracing::warn!(error = %e, "undecodable frame from broker"),
                    },
                    WsMessage::Binary(bytes) => {
                        for frame in decode_server_frames(&bytes) {
                            match frame {
                                Ok(frame) => incoming::on_frame(&reader_shared, &returns_tx, frame),
                                Err(e) => {
                                    tracing::warn!(error = %e, "undecodable record from broker")
                                }
                            }
                        }
                    }
                    WsMessage::Close(_) => break,
                    _ => {}
                }
            }
            // Wake every waiter: the connection is gone.
            reader_shared.closed.store(true, Ordering::SeqCst);
            for (_, pending) in reader_shared.pending.lock().unwrap().drain() {
                let _ = pending.reply.send(Err(ClientError::Closed));
            }
            reader_shared.consumers.lock().unwrap().clear();
        });

        Ok(Client {
            out,
            writer,
            shared,
            next_id: AtomicU64::new(1),
            binary,
            confirms: AtomicBool::new(false),
            returns: tokio::sync::Mutex::new(returns_rx),
        })
    }

    /// Sends a request; the returned future resolves with its reply. The frame is queued
    /// before this returns, so calls can be pipelined.
    fn send(
        &self,
        op: Op,
        deliveries: Option<mpsc::UnboundedSender<Delivery>>,
        wants_reply: bool,
    ) -> impl Future<Output = Result<serde_json::Value, ClientError>> + Send + 'static {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            id: RequestId::Num(id),
            op,
        };
        let item = match self.binary && matches!(request.op, Op::Publish(_) | Op::Ack { .. }) {
            true => Outgoing::Record(request),
            false => Outgoing::Text(crate::protocol::encode_request(&request)),
        };
        let rx = wants_reply.then(|| {
            let (reply, rx) = oneshot::channel();
            let pending = Pending { reply, deliveries };
            self.shared.pending.lock().unwrap().insert(id, pending);
            rx
        });
        // After the reader's last drain nobody would answer: fail now instead.
        if self.shared.closed.load(Ordering::SeqCst) {
            self.shared.pending.lock().unwrap().remove(&id);
        }
        let sent = !self.shared.closed.load(Ordering::SeqCst) && self.out.send(item).is_ok();
        async move {
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
        drop(self.out);
        let _ = self.writer.await;
    }

    /// Turns on publisher confirms: from now on `publish` resolves when the broker confirms.
    pub async fn confirm_select(&self) -> Result<(), ClientError> {
        self.call_unit(Op::ConfirmSelect).await?;
        self.confirms.store(true, Ordering::Relaxed);
        Ok(())
    }

    pub async fn declare_queue(
        &self,
        queue: &str,
        options: QueueOptions,
    ) -> Result<QueueInfo, ClientError> {
        self.call(Op::DeclareQueue(DeclareQueue {
            queue: queue.to_owned(),
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            arguments: options.arguments,
        }))
        .await
    }

    /// Deletes a queue; returns how many messages it held.
    pub async fn delete_queue(&self, queue: &str) -> Result<u64, ClientError> {
        let op = Op::DeleteQueue {
            queue: queue.to_owned(),
            if_unused: false,
            if_empty: false,
        };
        Ok(self.call::<MessageCount>(op).await?.messages)
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
        self.send(Op::Route(message), None, true).await
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
        self.call_unit(Op::DeclareExchange(DeclareExchange {
            exchange: exchange.to_owned(),
            kind: kind.to_owned(),
            durable,
            internal: false,
            auto_delete: false,
            arguments,
        }))
        .await
    }

    pub async fn delete_exchange(&self, exchange: &str) -> Result<(), ClientError> {
        self.call_unit(Op::DeleteExchange {
            exchange: exchange.to_owned(),
            if_unused: false,
        })
        .await
    }

    pub async fn bind(&self, binding: Binding) -> Result<(), ClientError> {
        self.call_unit(Op::Bind(binding)).await
    }

    pub async fn unbind(&self, binding: Binding) -> Result<(), ClientError> {
        self.call_unit(Op::Unbind(binding)).await
    }

    /// Binds exchange `binding.destination` to exchange `binding.source`.
    pub async fn bind_exchange(
        &self,
        binding: crate::protocol::ExchangeBinding,
    ) -> Result<(), ClientError> {
        self.call_unit(Op::BindExchange(binding)).await
    }

    pub async fn unbind_exchange(
        &self,
        binding: crate::protocol::ExchangeBinding,
    ) -> Result<(), ClientError> {
        self.call_unit(Op::UnbindExchange(binding)).await
    }

    /// Publishes a message. With confirms on, the future resolves when the broker has
    /// stored it (or refuses it); without, once it is queued for sending. The frame is
    /// queued before this returns, so publishes can be pipelined.
    pub fn publish(
        &self,
        message: Message,
        mandatory: bool,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static {
        let confirms = self.confirms.load(Ordering::Relaxed);
        let reply = self.send(Op::Publish(Publish { message, mandatory }), None, confirms);
        async move { reply.await.map(drop) }
    }

    /// The next message the broker returned as unroutable.
    pub async fn next_return(&self) -> Option<Returned> {
        self.returns.lock().await.recv().await
    }

    pub async fn subscribe(&self, subscribe: Subscribe) -> Result<Subscription, ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let value = self.send(Op::Subscribe(subscribe), Some(tx), true).await?;
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
        self.call_unit(Op::Cancel {
            consumer_tag: consumer_tag.to_owned(),
        })
        .await
    }

    /// Acks a delivery (fire-and-forget, as in AMQP; an unknown tag is reported by the
    /// broker but not surfaced here).
    pub fn ack(&self, delivery_tag: u64, multiple: bool) -> Result<(), ClientError> {
        self.settle(Op::Ack {
            delivery_tag,
            multiple,
        })
    }

    pub fn nack(
        &self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), ClientError> {
        self.settle(Op::Nack {
            delivery_tag,
            multiple,
            requeue,
            delay_ms: None,
        })
    }

    /// Nacks with requeue, redelivering after `delay_ms` instead of the queue's backoff.
    pub fn nack_with_delay(&self, delivery_tag: u64, delay_ms: u64) -> Result<(), ClientError> {
        self.settle(Op::Nack {
            delivery_tag,
            multiple: false,
            requeue: true,
            delay_ms: Some(delay_ms),
        })
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

    pub fn reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), ClientError> {
        self.settle(Op::Reject {
            delivery_tag,
            requeue,
        })
    }

    /// Flow control as the broker reports it: `Some(reason)` while the broker has stopped
    /// reading this connection's requests (`blocked`), `None` once it reads them again.
    pub fn blocked(&self) -> watch::Receiver<Option<String>> {
        self.shared.blocked.subscribe()
    }

    fn settle(&self, op: Op) -> Result<(), ClientError> {
        // Dropping the future is fine: the frame was queued when `send` returned.
        drop(self.send(op, None, false));
        if self.out.is_closed() {
            return Err(ClientError::Closed);
        }
        Ok(())
    }
}

/// What the writer task sends: a JSON text frame, or a request to pack as a binary record.
// In binary mode records are nearly all of the traffic: boxing them would only add an
// allocation per publish.
#[allow(clippy::large_enum_variant)]
enum Outgoing {
    Text(String),
    Record(Request),
}

/// Feeds the packed records (if any) as one binary message.
async fn feed_records<S>(sink: &mut S, records: &mut Vec<u8>) -> Result<(), S::Error>
where
    S: futures_util::Sink<WsMessage> + Unpin,
{
    if records.is_empty() {
        return Ok(());
    }
    let bytes = bytes::Bytes::from(std::mem::take(records));
    sink.feed(WsMessage::Binary(bytes)).await
}
