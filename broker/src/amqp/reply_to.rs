//! Direct reply-to (RabbitMQ's `amq.rabbitmq.reply-to`) for RPC clients: a no-ack
//! consumer on that pseudo-queue gets a private reply queue of the channel, and a publish
//! from the channel with `reply_to = amq.rabbitmq.reply-to` carries that queue's name
//! instead, so a server's reply (to the default exchange, routing key = `reply_to`)
//! comes back to the consumer. The reply queue is exclusive and auto-delete: it goes
//! when the consumer is cancelled, or its connection closes.

use amq_protocol::protocol::basic;

use super::channel::{Awaiting, Channel};
use super::errors::{AmqpError, code};
use super::methods::Effect;
use crate::message::Message;
use crate::protocol::{DeclareQueue, Op, Request, Subscribe};

/// The pseudo-queue a client consumes from, and the `reply_to` it publishes with.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn refused(text: &str, method_id: u16) -> AmqpError {
    AmqpError::channel(code::PRECONDITION_FAILED, "PRECONDITION_FAILED", text).during(60, method_id)
}

/// `basic.consume` of [`REPLY_TO`]: declares the channel's reply queue, then consumes it.
pub(super) fn consume(ch: &mut Channel, m: basic::Consume) -> Result<Effect, AmqpError> {
    if !m.no_ack {
        return Err(refused("reply consumer cannot acknowledge", 20));
    }
    if ch.reply_queue.is_some() {
        return Err(refused("reply consumer already set", 20));
    }
    let queue = format!(
        "{REPLY_TO}.{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    );
    ch.reply_queue = Some(queue.clone());
    let declare = Request {
        id: ch.expect(Awaiting::ReplyQueue, 60, 20),
        op: Op::DeclareQueue(DeclareQueue {
            queue: queue.clone(),
            durable: false,
            exclusive: true,
            auto_delete: true,
            arguments: [("dead_letter".to_string(), serde_json::Value::Bool(false))]
                .into_iter()
                .collect(),
        }),
    };
    let awaiting = Awaiting::Consume {
        nowait: m.nowait,
        no_ack: true,
        reply: true,
    };
    let subscribe = Request {
        id: ch.expect(awaiting, 60, 20),
        op: Op::Subscribe(Subscribe {
            queue,
            prefetch: 0,
            auto_ack: true,
            consumer_tag: Some(m.consumer_tag.as_str().to_string()).filter(|t| !t.is_empty()),
            filter: None,
            exclusive: false,
            priority: 0,
            consumer_timeout_ms: None,
        }),
    };
    // As in RabbitMQ, direct reply-to needs no permission: the queue's name is the
    // broker's choice, and it is exclusive to this connection.
    Ok(Effect::BrokerRequests(vec![declare, subscribe]))
}

/// A publish asking for direct reply-to gets the channel's reply queue as its `reply_to`
/// (406 without a reply consumer, as RabbitMQ).
pub(super) fn rewrite(ch: &Channel, message: &mut Message) -> Result<(), AmqpError> {
    if message.properties.reply_to.as_deref() != Some(REPLY_TO) {
        return Ok(());
    }
    match &ch.reply_queue {
        Some(queue) => {
            message.properties.reply_to = Some(queue.clone());
            Ok(())
        }
        None => Err(refused("fast reply consumer does not exist", 40)),
    }
}
