//! Client methods on an open channel → the core's operations. Validation and semantics are
//! the core's; this file only translates fields and says which reply each method awaits.

use amq_protocol::protocol::{AMQPClass, access, basic, channel, confirm, exchange, queue, tx};
use bytes::{Bytes, BytesMut};

use super::channel::{Awaiting, Channel, Content, PUBLISH_ID, SETTLE_ID};
use super::errors::{AmqpError, code};
use super::hot::HotMethod;
use super::mapping::{
    consumer_priority, consumer_timeout, exchange_declaration, message_from_amqp, queue_arguments,
    table_to_json,
};
use super::reply_to::{self, REPLY_TO};
use super::transaction::{self, Transaction};
use crate::protocol::{
    Binding, DeclareExchange, DeclareQueue, ExchangeBinding, Op, Publish, Request, RequestId,
    Subscribe,
};

/// What a client method asks of the connection.
pub(super) enum Effect {
    /// Nothing (yet): e.g. a publish waiting for its content.
    None,
    /// Answer the client at once.
    Reply(AMQPClass),
    /// Hand a request to the router.
    Request(Request),
    /// Hand a publish to the router, with a unit of the connection's publish credit.
    Publish(Request),
    /// A request, and a reply right behind it (the router answers nothing on success).
    RequestThenReply(Request, AMQPClass),
    /// Requests the front end makes for a RabbitMQ feature that needs no permission
    /// (direct reply-to), handed to the router in order without the permission check
    /// (their names are still put in the connection's vhost).
    BrokerRequests(Vec<Request>),
    /// Set the channel-wide prefetch (`basic.qos` with `global`), then reply.
    ChannelPrefetch(u32, AMQPClass),
    /// `tx.commit`: what the transaction held, in order (`amqp/transaction.rs`).
    Commit(Vec<Effect>),
}

fn unexpected(text: impl std::fmt::Display) -> AmqpError {
    AmqpError::connection(code::UNEXPECTED_FRAME, "UNEXPECTED_FRAME", text)
}

fn precondition_failed(text: &str, class_id: u16, method_id: u16) -> AmqpError {
    AmqpError::channel(code::PRECONDITION_FAILED, "PRECONDITION_FAILED", text)
        .during(class_id, method_id)
}

/// `tx.commit` or `tx.rollback` before `tx.select`, as RabbitMQ words it.
fn not_transactional(class_id: u16, method_id: u16) -> AmqpError {
    precondition_failed("channel is not transactional", class_id, method_id)
}

fn not_implemented(text: impl std::fmt::Display, class_id: u16, method_id: u16) -> AmqpError {
    AmqpError::connection(code::NOT_IMPLEMENTED, "NOT_IMPLEMENTED", text)
        .during(class_id, method_id)
}

/// The queue a method names: AMQP's empty name means the channel's last declared queue.
fn queue_name(
    ch: &Channel,
    name: &str,
    class_id: u16,
    method_id: u16,
) -> Result<String, AmqpError> {
    match (name, ch.last_queue.as_str()) {
        ("", "") => {
            Err(
                AmqpError::channel(code::NOT_FOUND, "NOT_FOUND", "no previously declared queue")
                    .during(class_id, method_id),
            )
        }
        ("", last) => Ok(last.to_string()),
        (name, _) => Ok(name.to_string()),
    }
}

/// A method on an open channel (not `channel.open` / `close`, handled by the connection).
pub(super) fn on_method(ch: &mut Channel, method: AMQPClass) -> Result<Effect, AmqpError> {
    let class_id = method.get_amqp_class_id();
    let method_id = method.get_amqp_method_id();
    if ch.content.is_some() {
        return Err(
            unexpected("a method frame in the middle of a message's content")
                .during(class_id, method_id),
        );
    }
    let request = |id: RequestId, op: Op| Effect::Request(Request { id, op });
    Ok(match method {
        AMQPClass::Queue(queue::AMQPMethod::Declare(m)) => {
            let nowait = m.nowait;
            if m.passive {
                let queue = queue_name(ch, m.queue.as_str(), 50, 10)?;
                let id = ch.expect(Awaiting::QueueDeclare { nowait }, 50, 10);
                request(id, Op::QueueInfo { queue })
            } else {
                let arguments = queue_arguments(&m.arguments).map_err(|e| e.during(50, 10))?;
                let id = ch.expect(Awaiting::QueueDeclare { nowait }, 50, 10);
                request(
                    id,
                    Op::DeclareQueue(DeclareQueue {
                        queue: m.queue.as_str().to_string(),
                        durable: m.durable,
                        exclusive: m.exclusive,
                        auto_delete: m.auto_delete,
                        arguments,
                    }),
                )
            }
        }
        AMQPClass::Queue(queue::AMQPMethod::Bind(m)) => {
            let queue = queue_name(ch, m.queue.as_str(), 50, 20)?;
            let id = ch.expect(Awaiting::QueueBind { nowait: m.nowait }, 50, 20);
            request(
                id,
                Op::Bind(Binding {
                    exchange: m.exchange.as_str().to_string(),
                    queue,
                    key: m.routing_key.as_str().to_string(),
                    arguments: table_to_json(&m.arguments),
                }),
            )
        }
        AMQPClass::Queue(queue::AMQPMethod::Unbind(m)) => {
            let queue = queue_name(ch, m.queue.as_str(), 50, 50)?;
            let id = ch.expect(Awaiting::QueueUnbind, 50, 50);
            request(
                id,
                Op::Unbind(Binding {
                    exchange: m.exchange.as_str().to_string(),
                    queue,
                    key: m.routing_key.as_str().to_string(),
                    arguments: table_to_json(&m.arguments),
                }),
            )
        }
        AMQPClass::Queue(queue::AMQPMethod::Purge(m)) => {
            let queue = queue_name(ch, m.queue.as_str(), 50, 30)?;
            let id = ch.expect(Awaiting::QueuePurge { nowait: m.nowait }, 50, 30);
            request(id, Op::PurgeQueue { queue })
        }
        AMQPClass::Queue(queue::AMQPMethod::Delete(m)) => {
            let queue = queue_name(ch, m.queue.as_str(), 50, 40)?;
            let id = ch.expect(Awaiting::QueueDelete { nowait: m.nowait }, 50, 40);
            request(
                id,
                Op::DeleteQueue {
                    queue,
                    if_unused: m.if_unused,
                    if_empty: m.if_empty,
                },
            )
        }
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(m)) => {
            let nowait = m.nowait;
            if m.passive {
                let exchange = m.exchange.as_str().to_string();
                let id = ch.expect(Awaiting::ExchangeExists { exchange, nowait }, 40, 10);
                request(id, Op::ListExchanges)
            } else {
                let (kind, arguments) = exchange_declaration(m.kind.as_str(), &m.arguments)
                    .map_err(|e| e.during(40, 10))?;
                let id = ch.expect(Awaiting::ExchangeDeclare { nowait }, 40, 10);
                request(
                    id,
                    Op::DeclareExchange(DeclareExchange {
                        exchange: m.exchange.as_str().to_string(),
                        kind,
                        durable: m.durable,
                        internal: m.internal,
                        auto_delete: m.auto_delete,
                        arguments,
                    }),
                )
            }
        }
        AMQPClass::Exchange(exchange::AMQPMethod::Delete(m)) => {
            let id = ch.expect(Awaiting::ExchangeDelete { nowait: m.nowait }, 40, 20);
            request(
                id,
                Op::DeleteExchange {
                    exchange: m.exchange.as_str().to_string(),
                    if_unused: m.if_unused,
                },
            )
        }
        AMQPClass::Exchange(exchange::AMQPMethod::Bind(m)) => {
            let id = ch.expect(Awaiting::ExchangeBind { nowait: m.nowait }, 40, 30);
            request(
                id,
                Op::BindExchange(ExchangeBinding {
                    source: m.source.as_str().to_string(),
                    destination: m.destination.as_str().to_string(),
                    key: m.routing_key.as_str().to_string(),
                    arguments: table_to_json(&m.arguments),
                }),
            )
        }
        AMQPClass::Exchange(exchange::AMQPMethod::Unbind(m)) => {
            let id = ch.expect(Awaiting::ExchangeUnbind { nowait: m.nowait }, 40, 40);
            request(
                id,
                Op::UnbindExchange(ExchangeBinding {
                    source: m.source.as_str().to_string(),
                    destination: m.destination.as_str().to_string(),
                    key: m.routing_key.as_str().to_string(),
                    arguments: table_to_json(&m.arguments),
                }),
            )
        }
        AMQPClass::Basic(basic::AMQPMethod::Qos(m)) => {
            let ok = AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {}));
            // RabbitMQ 3's reading: `global` is the channel's limit, shared by its
            // consumers; otherwise the prefetch of each consumer started after it.
            match m.global {
                true => Effect::ChannelPrefetch(u32::from(m.prefetch_count), ok),
                false => {
                    ch.prefetch = m.prefetch_count;
                    Effect::Reply(ok)
                }
            }
        }
        AMQPClass::Basic(basic::AMQPMethod::Consume(m)) if m.queue.as_str() == REPLY_TO => {
            reply_to::consume(ch, m)?
        }
        AMQPClass::Basic(basic::AMQPMethod::Consume(m)) => {
            let queue = queue_name(ch, m.queue.as_str(), 60, 20)?;
            let awaiting = Awaiting::Consume {
                nowait: m.nowait,
                no_ack: m.no_ack,
                reply: false,
            };
            let id = ch.expect(awaiting, 60, 20);
            request(
                id,
                Op::Subscribe(Subscribe {
                    queue,
                    prefetch: u32::from(ch.prefetch),
                    auto_ack: m.no_ack,
                    consumer_tag: Some(m.consumer_tag.as_str().to_string())
                        .filter(|t| !t.is_empty()),
                    filter: None,
                    exclusive: m.exclusive,
                    priority: consumer_priority(&m.arguments)?,
                    consumer_timeout_ms: consumer_timeout(&m.arguments)?,
                }),
            )
        }
        AMQPClass::Basic(basic::AMQPMethod::Cancel(m)) => {
            let consumer_tag = m.consumer_tag.as_str().to_string();
            let awaiting = Awaiting::Cancel {
                consumer_tag: consumer_tag.clone(),
                nowait: m.nowait,
            };
            let id = ch.expect(awaiting, 60, 30);
            request(id, Op::Cancel { consumer_tag })
        }
        AMQPClass::Basic(basic::AMQPMethod::Get(m)) => {
            let queue = queue_name(ch, m.queue.as_str(), 60, 70)?;
            let id = ch.expect(Awaiting::Get, 60, 70);
            request(
                id,
                Op::Get {
                    queue,
                    auto_ack: m.no_ack,
                },
            )
        }
        AMQPClass::Basic(basic::AMQPMethod::Publish(m)) => hot_method(ch, HotMethod::Publish(m))?,
        AMQPClass::Basic(basic::AMQPMethod::Ack(m)) => hot_method(ch, HotMethod::Ack(m))?,
        AMQPClass::Basic(basic::AMQPMethod::Nack(m)) => hot_method(ch, HotMethod::Nack(m))?,
        AMQPClass::Basic(basic::AMQPMethod::Reject(m)) => hot_method(ch, HotMethod::Reject(m))?,
        AMQPClass::Basic(basic::AMQPMethod::Recover(_)) => Effect::RequestThenReply(
            recover(),
            AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
        ),
        AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(_)) => Effect::Request(recover()),
        AMQPClass::Confirm(confirm::AMQPMethod::Select(_)) if ch.tx.is_some() => {
            return Err(precondition_failed(
                "cannot switch from tx to confirm mode",
                85,
                10,
            ));
        }
        AMQPClass::Confirm(confirm::AMQPMethod::Select(m)) => {
            ch.confirms = true;
            let id = ch.expect(Awaiting::ConfirmSelect { nowait: m.nowait }, 85, 10);
            request(id, Op::ConfirmSelect)
        }
        AMQPClass::Channel(channel::AMQPMethod::Flow(m)) if m.active => {
            Effect::Reply(AMQPClass::Channel(channel::AMQPMethod::FlowOk(
                channel::FlowOk { active: true },
            )))
        }
        AMQPClass::Channel(channel::AMQPMethod::Flow(_)) => {
            return Err(not_implemented("channel.flow active=false", 20, 20));
        }
        AMQPClass::Access(access::AMQPMethod::Request(_)) => Effect::Reply(AMQPClass::Access(
            access::AMQPMethod::RequestOk(access::RequestOk {}),
        )),
        AMQPClass::Tx(tx::AMQPMethod::Select(_)) if ch.confirms => {
            return Err(precondition_failed(
                "cannot switch from confirm to tx mode",
                90,
                10,
            ));
        }
        AMQPClass::Tx(tx::AMQPMethod::Select(_)) if ch.tx.is_some() => {
            Effect::Reply(transaction::select_ok())
        }
        AMQPClass::Tx(tx::AMQPMethod::Select(_)) => {
            // The core confirms each publish once stored: what a commit waits for.
            ch.tx = Some(Transaction::default());
            let id = ch.expect(Awaiting::TxSelect, 90, 10);
            request(id, Op::ConfirmSelect)
        }
        AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => match ch.tx.as_mut() {
            Some(tx) => tx.commit(),
            None => return Err(not_transactional(90, 20)),
        },
        AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => match ch.tx.as_mut() {
            Some(tx) => Effect::Reply(tx.rollback()),
            None => return Err(not_transactional(90, 30)),
        },
        _ => {
            return Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "COMMAND_INVALID",
                format_args!("method {class_id}/{method_id} is not sent by clients"),
            )
            .during(class_id, method_id));
        }
    })
}

/// `basic.publish` and the settling methods, however they were read (`hot.rs` or the
/// generic codec).
pub(super) fn on_hot_method(ch: &mut Channel, method: HotMethod) -> Result<Effect, AmqpError> {
    if ch.content.is_some() {
        let (class_id, method_id) = method.ids();
        return Err(
            unexpected("a method frame in the middle of a message's content")
                .during(class_id, method_id),
        );
    }
    hot_method(ch, method)
}

fn hot_method(ch: &mut Channel, method: HotMethod) -> Result<Effect, AmqpError> {
    // In a transaction, settles wait for the commit.
    let settle = |ch: &mut Channel, op: Op| {
        let effect = Effect::Request(Request {
            id: RequestId::Str(SETTLE_ID.into()),
            op,
        });
        match ch.tx.as_mut() {
            Some(tx) => tx.hold(effect).map_err(|e| e.during(60, 80)),
            None => Ok(effect),
        }
    };
    Ok(match method {
        HotMethod::Publish(m) => {
            if m.immediate {
                return Err(not_implemented("immediate=true", 60, 40));
            }
            ch.content = Some(Content {
                publish: m,
                header: None,
                body: BytesMut::new(),
            });
            Effect::None
        }
        HotMethod::Ack(m) => {
            let (delivery_tag, multiple) = all_when_zero(m.delivery_tag, m.multiple);
            settle(
                ch,
                Op::Ack {
                    delivery_tag,
                    multiple,
                },
            )?
        }
        HotMethod::Nack(m) => {
            let (delivery_tag, multiple) = all_when_zero(m.delivery_tag, m.multiple);
            settle(
                ch,
                Op::Nack {
                    delivery_tag,
                    multiple,
                    requeue: m.requeue,
                    delay_ms: None,
                },
            )?
        }
        HotMethod::Reject(m) => settle(
            ch,
            Op::Reject {
                delivery_tag: m.delivery_tag,
                requeue: m.requeue,
            },
        )?,
    })
}

/// AMQP's "tag 0 with multiple": every unacked delivery of the channel.
fn all_when_zero(tag: u64, multiple: bool) -> (u64, bool) {
    match (tag, multiple) {
        (0, true) => (u64::MAX, true),
        other => other,
    }
}

/// `basic.recover`: every unacked delivery of the channel back to its queue.
fn recover() -> Request {
    Request {
        id: RequestId::Str(SETTLE_ID.into()),
        op: Op::Nack {
            delivery_tag: u64::MAX,
            multiple: true,
            requeue: true,
            delay_ms: None,
        },
    }
}

/// A content header frame: the publish's properties and body size.
pub(super) fn on_header(
    ch: &mut Channel,
    header: amq_protocol::frame::AMQPContentHeader,
    max_body: usize,
    user: &str,
) -> Result<Effect, AmqpError> {
    let Some(content) = ch.content.as_mut().filter(|c| c.header.is_none()) else {
        return Err(unexpected(
            "a content header without a basic.publish before it",
        ));
    };
    if header.class_id != 60 {
        return Err(unexpected(format_args!(
            "content header of class {}",
            header.class_id
        )));
    }
    if header.body_size > max_body as u64 {
        ch.content = None;
        return Err(AmqpError::channel(
            code::PRECONDITION_FAILED,
            "PRECONDITION_FAILED",
            format_args!(
                "message size {} is larger than configured max size {max_body}",
                header.body_size
            ),
        )
        .during(60, 40));
    }
    let empty = header.body_size == 0;
    content.header = Some((header.properties, header.body_size));
    match empty {
        // No body frame follows.
        true => complete(ch, Bytes::new(), user),
        false => Ok(Effect::None),
    }
}

/// A content body frame.
pub(super) fn on_body(ch: &mut Channel, body: Bytes, user: &str) -> Result<Effect, AmqpError> {
    let Some(content) = ch.content.as_mut() else {
        return Err(unexpected(
            "a content body without a basic.publish before it",
        ));
    };
    let Some((_, size)) = &content.header else {
        return Err(unexpected("a content body before its content header"));
    };
    let (size, received) = (*size, (content.body.len() + body.len()) as u64);
    if received > size {
        return Err(unexpected("content body longer than its header said"));
    }
    if content.body.is_empty() {
        if received == size {
            // The whole body in one frame: the message keeps the frame's buffer.
            return complete(ch, body, user);
        }
        content.body.reserve(size.min(1 << 20) as usize);
    }
    content.body.extend_from_slice(&body);
    match received == size {
        true => {
            let body = std::mem::take(&mut content.body).freeze();
            complete(ch, body, user)
        }
        false => Ok(Effect::None),
    }
}

/// The publish, once its body is whole.
fn complete(ch: &mut Channel, body: Bytes, user: &str) -> Result<Effect, AmqpError> {
    let Content {
        publish, header, ..
    } = ch.content.take().expect("a publish with content");
    let (properties, _) = header.expect("a content header");
    let mut message = message_from_amqp(
        publish.exchange.as_str(),
        publish.routing_key.as_str(),
        &properties,
        body,
        user,
    )
    .map_err(|e| e.during(60, 40))?;
    reply_to::rewrite(ch, &mut message)?;
    let id = if ch.confirms || ch.tx.is_some() {
        ch.publish_seq += 1;
        RequestId::Num(ch.publish_seq)
    } else {
        RequestId::Str(PUBLISH_ID.into())
    };
    let effect = Effect::Publish(Request {
        id,
        op: Op::Publish(Publish {
            message: Box::new(message),
            mandatory: publish.mandatory,
        }),
    });
    match ch.tx.as_mut() {
        Some(tx) => tx.hold(effect).map_err(|e| e.during(60, 40)),
        None => Ok(effect),
    }
}
