//! One AMQP channel: a pseudo-connection of the router (its own `ConnId`, so delivery
//! tags, confirm mode, consumers and unacked deliveries are per channel as AMQP wants),
//! the content being assembled, and the methods waiting for the router's answer. It turns
//! the router's frames into AMQP methods.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, confirm, exchange, queue};
use bytes::BytesMut;

use super::errors::{AmqpError, code};
use super::frames::encode;
use super::hot;
use super::mapping::properties_to_amqp;
use super::short_strings::fit_for_amqp;
use super::transaction::Transaction;
use super::writer::{Chunk, Delivered};
use crate::message::Message;
use crate::protocol::{
    Delivery, ErrorCode, ExchangeList, Got, MessageCount, QueueInfo, RequestId, ServerFrame,
};
use crate::queue::ConnId;
use crate::router::{Outbound, outbound_cost};

/// Request ids of operations answered only when they fail.
pub(super) const PUBLISH_ID: &str = "publish";
pub(super) const SETTLE_ID: &str = "settle";

/// What a method waiting for the router answers with.
#[derive(Debug, Clone)]
pub(super) enum Awaiting {
    QueueDeclare {
        nowait: bool,
    },
    QueueBind {
        nowait: bool,
    },
    QueueUnbind,
    QueuePurge {
        nowait: bool,
    },
    QueueDelete {
        nowait: bool,
    },
    ExchangeDeclare {
        nowait: bool,
    },
    /// A passive declare: the exchange must be in the list.
    ExchangeExists {
        exchange: String,
        nowait: bool,
    },
    ExchangeDelete {
        nowait: bool,
    },
    ExchangeBind {
        nowait: bool,
    },
    ExchangeUnbind {
        nowait: bool,
    },
    Consume {
        nowait: bool,
        no_ack: bool,
        /// The direct reply-to consumer (see `reply_to.rs`).
        reply: bool,
    },
    /// The direct reply-to queue's declare: nothing to answer on success.
    ReplyQueue,
    Cancel {
        consumer_tag: String,
        nowait: bool,
    },
    ConfirmSelect {
        nowait: bool,
    },
    /// `tx.select` (its core connection put in confirm mode).
    TxSelect,
    Get,
}

/// A `basic.publish` waiting for its content.
pub(super) struct Content {
    pub publish: basic::Publish,
    pub header: Option<(BasicProperties, u64)>,
    pub body: BytesMut,
}

pub(super) struct Channel {
    pub number: u16,
    pub conn: ConnId,
    pub outbound: Arc<AtomicUsize>,
    /// A channel exception was sent: everything but `channel.close(-ok)` is ignored.
    pub closing: bool,
    /// `basic.qos` prefetch for consumers started after it; 0 is unlimited.
    pub prefetch: u16,
    pub confirms: bool,
    /// `tx.select`ed: publishes and settles wait for `tx.commit` (`transaction.rs`).
    pub tx: Option<Transaction>,
    /// The last publish's confirm sequence number.
    pub publish_seq: u64,
    /// The queue the channel declared last (AMQP's default for an empty queue name).
    pub last_queue: String,
    pub content: Option<Content>,
    next_request: u64,
    awaiting: HashMap<u64, (Awaiting, u16, u16)>,
    /// Consumer tags of no-ack consumers: their deliveries are settled when written.
    no_ack: HashMap<Arc<str>, ()>,
    /// The direct reply-to queue, once a consumer of `amq.rabbitmq.reply-to` was asked for.
    pub reply_queue: Option<String>,
    /// That consumer's tag, once it consumes.
    reply_consumer: Option<String>,
}

fn method_frame(channel: u16, class: AMQPClass, out: &mut Vec<u8>) {
    encode(&AMQPFrame::Method(channel, class), out);
}

impl Channel {
    pub fn new(number: u16, conn: ConnId) -> Self {
        Channel {
            number,
            conn,
            outbound: Arc::new(AtomicUsize::new(0)),
            closing: false,
            prefetch: 0,
            confirms: false,
            tx: None,
            publish_seq: 0,
            last_queue: String::new(),
            content: None,
            next_request: 1,
            awaiting: HashMap::new(),
            no_ack: HashMap::new(),
            reply_queue: None,
            reply_consumer: None,
        }
    }

    /// A request id for a method answered by `awaiting` (with the method's ids for errors).
    pub fn expect(&mut self, awaiting: Awaiting, class_id: u16, method_id: u16) -> RequestId {
        let n = self.next_request;
        self.next_request += 1;
        self.awaiting.insert(n, (awaiting, class_id, method_id));
        RequestId::Str(format!("m{n}"))
    }

    /// Encodes one method frame on this channel.
    pub fn method(&self, class: AMQPClass) -> Chunk {
        let mut out = Vec::new();
        method_frame(self.number, class, &mut out);
        Chunk::frames(out)
    }

    /// The AMQP frames for what the router sent this channel; an error is the channel
    /// exception to raise.
    pub fn on_outbound(
        &mut self,
        outbound: Outbound,
        frame_max: u32,
    ) -> Result<Option<Chunk>, AmqpError> {
        let (delivery, auto_ack) = match outbound {
            Outbound::Frame(ServerFrame::Deliver(d)) => (d, false),
            Outbound::AutoAckDelivery(d) => (d, true),
            Outbound::Frame(frame) => return self.on_frame(frame, frame_max),
            Outbound::Ping => return Ok(None),
            // The broker ends the connection (handled before the channel sees it).
            Outbound::Close(_) => return Ok(None),
        };
        Ok(Some(self.deliver(&delivery, auto_ack, frame_max)))
    }

    fn deliver(&mut self, d: &Delivery, auto_ack: bool, frame_max: u32) -> Chunk {
        let mut out = Vec::with_capacity(d.message.body_len() + 256);
        let n = self.number;
        let (tag, redelivered) = (d.delivery_tag, d.redelivered);
        let fitted = fit_for_amqp(&d.message);
        let message = fitted.as_ref().unwrap_or(&*d.message);
        if hot::write_deliver(&mut out, n, &d.consumer_tag, tag, redelivered, message).is_none() {
            let deliver = basic::Deliver {
                consumer_tag: d.consumer_tag.to_string().into(),
                delivery_tag: d.delivery_tag,
                redelivered: d.redelivered,
                exchange: message.exchange.clone().into(),
                routing_key: message.routing_key.clone().into(),
            };
            let deliver = AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver));
            method_frame(n, deliver, &mut out);
        }
        content_frames(n, message, frame_max, &mut out);
        Chunk {
            bytes: out,
            delivered: Some(Delivered {
                conn: self.conn,
                outbound: self.outbound.clone(),
                cost: outbound_cost(d),
                auto_ack_tag: auto_ack.then_some(d.delivery_tag),
            }),
        }
    }

    fn on_frame(&mut self, frame: ServerFrame, frame_max: u32) -> Result<Option<Chunk>, AmqpError> {
        let mut out = Vec::new();
        let n = self.number;
        match frame {
            ServerFrame::Confirm {
                id: RequestId::Num(seq),
            } => match self.tx.as_mut() {
                Some(tx) => {
                    if let Some(commit_ok) = tx.publish_answered() {
                        method_frame(n, commit_ok, &mut out);
                    }
                }
                None => hot::write_confirm(&mut out, n, seq),
            },
            ServerFrame::Return { message, .. } => {
                let fitted = fit_for_amqp(&message);
                let message = fitted.as_ref().unwrap_or(&*message);
                let ret = basic::Return {
                    reply_code: code::NO_ROUTE,
                    reply_text: "NO_ROUTE".into(),
                    exchange: message.exchange.clone().into(),
                    routing_key: message.routing_key.clone().into(),
                };
                method_frame(
                    n,
                    AMQPClass::Basic(basic::AMQPMethod::Return(ret)),
                    &mut out,
                );
                content_frames(n, message, frame_max, &mut out);
            }
            ServerFrame::Cancelled { consumer_tag, .. } => {
                self.no_ack.remove(consumer_tag.as_str());
                self.forget_reply_consumer(&consumer_tag);
                let cancel = basic::Cancel {
                    consumer_tag: consumer_tag.into(),
                    nowait: true,
                };
                method_frame(
                    n,
                    AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)),
                    &mut out,
                );
            }
            ServerFrame::Ok {
                id: RequestId::Str(id),
                result,
            } => {
                let Some((awaiting, _, _)) = self.take_awaiting(&id) else {
                    return Ok(None);
                };
                if let Awaiting::Get = awaiting {
                    self.got(result, frame_max, &mut out)?;
                    return Ok(Some(Chunk::frames(out)));
                }
                match self.answer(awaiting, result)? {
                    Some(reply) => method_frame(n, reply, &mut out),
                    None => return Ok(None),
                }
            }
            ServerFrame::Error { id, code, message } => return self.on_error(id, code, &message),
            // Blocked / unblocked are the connection's; other ids are not this front end's.
            _ => return Ok(None),
        }
        Ok(Some(Chunk::frames(out)))
    }

    /// `basic.get-ok` with the message, or `get-empty`.
    fn got(
        &mut self,
        result: serde_json::Value,
        frame_max: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), AmqpError> {
        let got: Got = serde_json::from_value(result).map_err(internal)?;
        let Some(d) = got.delivery else {
            let empty = basic::GetEmpty {};
            method_frame(
                self.number,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(empty)),
                out,
            );
            return Ok(());
        };
        let fitted = fit_for_amqp(&d.message);
        let message = fitted.as_ref().unwrap_or(&*d.message);
        let get_ok = basic::GetOk {
            delivery_tag: d.delivery_tag,
            redelivered: d.redelivered,
            exchange: message.exchange.clone().into(),
            routing_key: message.routing_key.clone().into(),
            message_count: got.message_count.min(u32::MAX.into()) as u32,
        };
        method_frame(
            self.number,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(get_ok)),
            out,
        );
        content_frames(self.number, message, frame_max, out);
        Ok(())
    }

    fn take_awaiting(&mut self, id: &str) -> Option<(Awaiting, u16, u16)> {
        let n: u64 = id.strip_prefix('m')?.parse().ok()?;
        self.awaiting.remove(&n)
    }

    /// The reply method for a successful operation (`None`: nothing to send).
    fn answer(
        &mut self,
        awaiting: Awaiting,
        result: serde_json::Value,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        let count = |result: &serde_json::Value| {
            serde_json::from_value::<MessageCount>(result.clone())
                .map_or(0, |c| c.messages.min(u32::MAX.into()) as u32)
        };
        let reply = match awaiting {
            Awaiting::QueueDeclare { nowait } => {
                let info: QueueInfo = serde_json::from_value(result).map_err(internal)?;
                self.last_queue = info.queue.clone();
                if nowait {
                    return Ok(None);
                }
                AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue: info.queue.into(),
                    message_count: info.ready.min(u32::MAX.into()) as u32,
                    consumer_count: info.consumers.min(u32::MAX.into()) as u32,
                }))
            }
            Awaiting::QueueBind { nowait: true }
            | Awaiting::QueuePurge { nowait: true }
            | Awaiting::QueueDelete { nowait: true }
            | Awaiting::ExchangeDeclare { nowait: true }
            | Awaiting::ExchangeDelete { nowait: true }
            | Awaiting::ExchangeBind { nowait: true }
            | Awaiting::ExchangeUnbind { nowait: true }
            | Awaiting::ConfirmSelect { nowait: true } => return Ok(None),
            Awaiting::QueueBind { nowait: false } => {
                AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {}))
            }
            Awaiting::QueueUnbind => {
                AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {}))
            }
            Awaiting::QueuePurge { nowait: false } => {
                AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                    message_count: count(&result),
                }))
            }
            Awaiting::QueueDelete { nowait: false } => {
                AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                    message_count: count(&result),
                }))
            }
            Awaiting::ExchangeDeclare { nowait: false } => {
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}))
            }
            Awaiting::ExchangeExists { exchange, nowait } => {
                let list: ExchangeList = serde_json::from_value(result).map_err(internal)?;
                if !list.exchanges.iter().any(|e| e.exchange == exchange) {
                    return Err(AmqpError::channel(
                        code::NOT_FOUND,
                        "NOT_FOUND",
                        format_args!("no exchange '{exchange}' in vhost '/'"),
                    )
                    .during(40, 10));
                }
                if nowait {
                    return Ok(None);
                }
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}))
            }
            Awaiting::ExchangeDelete { nowait: false } => {
                AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}))
            }
            Awaiting::ExchangeBind { nowait: false } => {
                AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {}))
            }
            Awaiting::ExchangeUnbind { nowait: false } => {
                AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}))
            }
            Awaiting::Consume {
                nowait,
                no_ack,
                reply,
            } => {
                let tag = result["consumer_tag"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if no_ack {
                    self.no_ack.insert(tag.as_str().into(), ());
                }
                if reply {
                    self.reply_consumer = Some(tag.clone());
                }
                if nowait {
                    return Ok(None);
                }
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.into(),
                }))
            }
            Awaiting::Cancel {
                consumer_tag,
                nowait,
            } => {
                self.no_ack.remove(consumer_tag.as_str());
                self.forget_reply_consumer(&consumer_tag);
                if nowait {
                    return Ok(None);
                }
                AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: consumer_tag.into(),
                }))
            }
            Awaiting::ConfirmSelect { nowait: false } => {
                AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {}))
            }
            Awaiting::TxSelect => super::transaction::select_ok(),
            Awaiting::Get | Awaiting::ReplyQueue => return Ok(None),
        };
        Ok(Some(reply))
    }

    /// The direct reply-to consumer ended (its queue, auto-delete, went with it).
    fn forget_reply_consumer(&mut self, consumer_tag: &str) {
        if self.reply_consumer.as_deref() == Some(consumer_tag) {
            self.reply_consumer = None;
            self.reply_queue = None;
        }
    }

    /// A failed operation: a negative confirm, nothing, or the channel exception.
    fn on_error(
        &mut self,
        id: Option<RequestId>,
        error: ErrorCode,
        message: &str,
    ) -> Result<Option<Chunk>, AmqpError> {
        match id {
            // In a transaction: a refused publish is dropped (as without confirms) and
            // counts as answered for the commit.
            Some(RequestId::Num(_))
                if self.tx.is_some()
                    && matches!(
                        error,
                        ErrorCode::QueueFull
                            | ErrorCode::StoreError
                            | ErrorCode::PluginError
                            | ErrorCode::ExchangeUnavailable
                    ) =>
            {
                let tx = self.tx.as_mut().expect("checked");
                Ok(tx
                    .publish_answered()
                    .map(|commit_ok| self.method(commit_ok)))
            }
            Some(RequestId::Num(seq)) => match error {
                // The message was refused (or may not be stored): a negative confirm.
                ErrorCode::QueueFull
                | ErrorCode::StoreError
                | ErrorCode::PluginError
                | ErrorCode::ExchangeUnavailable => {
                    let nack = basic::Nack {
                        delivery_tag: seq,
                        multiple: false,
                        requeue: false,
                    };
                    Ok(Some(
                        self.method(AMQPClass::Basic(basic::AMQPMethod::Nack(nack))),
                    ))
                }
                _ => Err(AmqpError::from_core(error, message).during(60, 40)),
            },
            // Without confirms RabbitMQ drops what a full queue refuses, silently.
            Some(RequestId::Str(id)) if id == PUBLISH_ID => match error {
                ErrorCode::QueueFull | ErrorCode::PluginError | ErrorCode::ExchangeUnavailable => {
                    Ok(None)
                }
                _ => Err(AmqpError::from_core(error, message).during(60, 40)),
            },
            Some(RequestId::Str(id)) if id == SETTLE_ID => {
                Err(AmqpError::from_core(error, message).during(60, 80))
            }
            Some(RequestId::Str(id)) => match self.take_awaiting(&id) {
                // RabbitMQ answers the cancel of an unknown consumer with `cancel-ok`
                // (it may have been cancelled by the broker meanwhile).
                Some((
                    Awaiting::Cancel {
                        consumer_tag,
                        nowait,
                    },
                    _,
                    _,
                )) if error == ErrorCode::UnknownConsumer => {
                    let reply = self.answer(
                        Awaiting::Cancel {
                            consumer_tag,
                            nowait,
                        },
                        Default::default(),
                    )?;
                    Ok(reply.map(|reply| self.method(reply)))
                }
                Some((_, class_id, method_id)) => {
                    Err(AmqpError::from_core(error, message).during(class_id, method_id))
                }
                None => Ok(None),
            },
            None => Err(AmqpError::from_core(error, message)),
        }
    }
}

fn internal(e: serde_json::Error) -> AmqpError {
    AmqpError::connection(code::INTERNAL_ERROR, "INTERNAL_ERROR", e)
}

/// A message's content header and body frames, the body cut to fit `frame_max`.
pub(super) fn content_frames(channel: u16, message: &Message, frame_max: u32, out: &mut Vec<u8>) {
    if hot::write_content_header(out, channel, message).is_none() {
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: message.body.len() as u64,
            properties: properties_to_amqp(message),
        };
        encode(&AMQPFrame::Header(channel, header), out);
    }
    hot::write_body(out, channel, &message.body, frame_max);
}
