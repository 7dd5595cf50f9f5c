//! What a `SEND` or `SUBSCRIBE` says of the queue it declares, as RabbitMQ's STOMP plugin
//! reads it: the `durable`, `auto-delete` and `exclusive` headers (for `/queue/`
//! destinations) and RabbitMQ's `x-` queue arguments as headers (`x-max-length:10`,
//! `x-message-ttl:60000`, `x-dead-letter-exchange:dlx`, ...), for every queue a
//! destination declares.

use crate::message::Headers;
use crate::queue::rabbitmq_arguments::{core_arguments, header_value, names};
use crate::stomp::frame::Frame;

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct QueueProperties {
    pub durable: Option<bool>,
    pub auto_delete: Option<bool>,
    pub exclusive: Option<bool>,
    /// The core's queue arguments.
    pub arguments: Headers,
}

impl QueueProperties {
    /// The frame's queue headers; `Err` says which one is malformed.
    pub fn of(frame: &Frame) -> Result<Self, String> {
        let flag = |name: &str| match frame.header(name) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(format!("header `{name}` is `{other}`, not true or false")),
        };
        let given =
            names().filter_map(|name| Some((name, header_value(name, frame.header(name)?))));
        Ok(QueueProperties {
            durable: flag("durable")?,
            auto_delete: flag("auto-delete")?,
            exclusive: flag("exclusive")?,
            arguments: core_arguments(given)?,
        })
    }
}
