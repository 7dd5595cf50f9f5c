//! STOMP destinations as RabbitMQ's Web-STOMP names them, and the broker operations
//! each one means for SEND and SUBSCRIBE.

use super::queue_properties::QueueProperties;
use crate::message::Headers;
use crate::protocol::{Binding, DeclareExchange, DeclareQueue, Op};

/// The topic exchange behind `/topic/` destinations, declared (durable, type `topic`)
/// on first use where the user may configure it.
pub const TOPIC_EXCHANGE: &str = "amq.topic";

/// Prefix of the queues the broker names for subscriptions to topics and exchanges.
pub const SUBSCRIPTION_QUEUE_PREFIX: &str = "stomp-subscription-";
/// Prefix of the reply queues behind `/temp-queue/` destinations.
pub const REPLY_QUEUE_PREFIX: &str = "stomp-reply-";

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Destination {
    /// `/queue/NAME`: a durable queue, declared on first use.
    Queue(String),
    /// `/amq/queue/NAME`: a queue that must exist already.
    AmqQueue(String),
    /// `/topic/KEY`: key `KEY` on [`TOPIC_EXCHANGE`].
    Topic(String),
    /// `/exchange/NAME/KEY`: any exchange (any type, plugins included); KEY may be absent.
    Exchange { exchange: String, key: String },
    /// `/temp-queue/NAME`: a reply queue of this connection (in `reply-to` only).
    TempQueue(String),
    /// `/reply-queue/NAME`: another connection's reply queue, to send replies to.
    ReplyQueue(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DestinationError {
    #[error(
        "unknown destination `{0}`: use /queue/NAME, /amq/queue/NAME, /topic/KEY, /exchange/NAME/KEY, /temp-queue/NAME (reply-to) or /reply-queue/NAME"
    )]
    Unknown(String),
    #[error("destination `{0}` names no queue or exchange")]
    Empty(String),
    #[error("`{0}` can only be used in `reply-to`")]
    ReplyToOnly(String),
    #[error("cannot subscribe to `{0}`")]
    NotSubscribable(String),
}

impl Destination {
    pub fn parse(text: &str) -> Result<Destination, DestinationError> {
        let nonempty = |name: &str| match name.is_empty() {
            true => Err(DestinationError::Empty(text.to_string())),
            false => Ok(name.to_string()),
        };
        if let Some(name) = text.strip_prefix("/queue/") {
            Ok(Destination::Queue(nonempty(name)?))
        } else if let Some(name) = text.strip_prefix("/amq/queue/") {
            Ok(Destination::AmqQueue(nonempty(name)?))
        } else if let Some(key) = text.strip_prefix("/topic/") {
            Ok(Destination::Topic(nonempty(key)?))
        } else if let Some(rest) = text.strip_prefix("/exchange/") {
            let (exchange, key) = rest.split_once('/').unwrap_or((rest, ""));
            Ok(Destination::Exchange {
                exchange: nonempty(exchange)?,
                key: key.to_string(),
            })
        } else if let Some(name) = text.strip_prefix("/temp-queue/") {
            Ok(Destination::TempQueue(nonempty(name)?))
        } else if let Some(name) = text.strip_prefix("/reply-queue/") {
            Ok(Destination::ReplyQueue(nonempty(name)?))
        } else {
            Err(DestinationError::Unknown(text.to_string()))
        }
    }

    /// (exchange, routing key) a SEND publishes to.
    pub fn publish_target(&self, text: &str) -> Result<(String, String), DestinationError> {
        Ok(match self {
            Destination::Queue(name)
            | Destination::AmqQueue(name)
            | Destination::ReplyQueue(name) => (String::new(), name.clone()),
            Destination::Topic(key) => (TOPIC_EXCHANGE.to_string(), key.clone()),
            Destination::Exchange { exchange, key } => (exchange.clone(), key.clone()),
            Destination::TempQueue(_) => {
                return Err(DestinationError::ReplyToOnly(text.to_string()));
            }
        })
    }

    /// What must be declared before publishing here, with the queue `properties` the
    /// frame gives.
    pub fn declarations(&self, properties: &QueueProperties) -> Vec<Declaration> {
        match self {
            Destination::Queue(name) => {
                vec![Declaration::Required(named_queue(name, properties))]
            }
            Destination::Topic(_) => vec![Declaration::IfAllowed(topic_exchange())],
            _ => vec![],
        }
    }
}

/// A declaration a destination needs.
#[derive(Debug, Clone)]
pub(super) enum Declaration {
    /// Refused (no permission) means the frame is refused.
    Required(Op),
    /// Skipped when the user may not configure it (it is then expected to exist, as
    /// RabbitMQ's predeclared `amq.topic`).
    IfAllowed(Op),
}

/// The name under which a declaration is done once per connection.
pub(super) fn declared_name(op: &Op) -> String {
    match op {
        Op::DeclareQueue(d) => format!("q:{}", d.queue),
        Op::DeclareExchange(d) => format!("e:{}", d.exchange),
        _ => String::new(),
    }
}

/// A `/queue/NAME` destination's queue: durable, neither exclusive nor auto-delete,
/// unless the frame's headers say otherwise.
fn named_queue(name: &str, properties: &QueueProperties) -> Op {
    Op::DeclareQueue(DeclareQueue {
        queue: name.to_string(),
        durable: properties.durable.unwrap_or(true),
        exclusive: properties.exclusive.unwrap_or(false),
        auto_delete: properties.auto_delete.unwrap_or(false),
        arguments: properties.arguments.clone(),
    })
}

fn topic_exchange() -> Op {
    Op::DeclareExchange(DeclareExchange {
        exchange: TOPIC_EXCHANGE.to_string(),
        kind: "topic".to_string(),
        durable: true,
        internal: false,
        auto_delete: false,
        arguments: Headers::new(),
    })
}

/// How a SUBSCRIBE is carried out: declarations, a binding, then the subscription.
#[derive(Debug, Clone)]
pub(super) struct SubscribePlan {
    pub declarations: Vec<Declaration>,
    pub bind: Option<Binding>,
    /// The queue consumed.
    pub queue: String,
    /// A durable subscription's queue: deleted by an UNSUBSCRIBE with `durable:true`.
    pub durable_queue: bool,
}

/// What a subscription to `destination` needs. `durable` asks for a durable queue for
/// a topic or exchange subscription, named by `queue_name` (the `x-queue-name` header)
/// or else from the destination and the subscription id; `properties` are the frame's
/// queue headers.
pub(super) fn subscribe_plan(
    destination: &Destination,
    text: &str,
    id: &str,
    queue_name: Option<&str>,
    properties: &QueueProperties,
) -> Result<SubscribePlan, DestinationError> {
    let (exchange, key) = match destination {
        Destination::Queue(name) => {
            return Ok(SubscribePlan {
                declarations: vec![Declaration::Required(named_queue(name, properties))],
                bind: None,
                queue: name.clone(),
                durable_queue: false,
            });
        }
        Destination::AmqQueue(name) => {
            return Ok(SubscribePlan {
                declarations: vec![],
                bind: None,
                queue: name.clone(),
                durable_queue: false,
            });
        }
        Destination::TempQueue(_) | Destination::ReplyQueue(_) => {
            return Err(DestinationError::NotSubscribable(text.to_string()));
        }
        Destination::Topic(key) => (TOPIC_EXCHANGE.to_string(), key.clone()),
        Destination::Exchange { exchange, key } => (exchange.clone(), key.clone()),
    };
    // `durable` (or `persistent`) asks for a durable subscription.
    let durable = properties.durable.unwrap_or(false);
    let queue = match (queue_name, durable) {
        (Some(name), _) => name.to_string(),
        (None, true) => format!("{SUBSCRIPTION_QUEUE_PREFIX}{}", stable_suffix(text, id)),
        (None, false) => format!("{SUBSCRIPTION_QUEUE_PREFIX}{}", random_suffix()),
    };
    let mut declarations = Vec::new();
    if matches!(destination, Destination::Topic(_)) {
        declarations.push(Declaration::IfAllowed(topic_exchange()));
    }
    declarations.push(Declaration::Required(Op::DeclareQueue(DeclareQueue {
        queue: queue.clone(),
        durable,
        exclusive: !durable,
        auto_delete: !durable,
        arguments: properties.arguments.clone(),
    })));
    Ok(SubscribePlan {
        declarations,
        bind: Some(Binding {
            exchange,
            queue: queue.clone(),
            key,
            arguments: Headers::new(),
        }),
        queue,
        durable_queue: durable,
    })
}

/// The same for the same destination and subscription id, so a durable subscriber finds
/// its queue again after reconnecting.
fn stable_suffix(destination: &str, id: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(destination.as_bytes());
    hash.update([0]);
    hash.update(id.as_bytes());
    hex(&hash.finalize()[..12])
}

pub(super) fn random_suffix() -> String {
    use rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 12];
    OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        let parse = |t: &str| Destination::parse(t);
        assert_eq!(parse("/queue/a"), Ok(Destination::Queue("a".into())));
        assert_eq!(parse("/amq/queue/a"), Ok(Destination::AmqQueue("a".into())));
        assert_eq!(parse("/topic/a.*"), Ok(Destination::Topic("a.*".into())));
        assert_eq!(
            parse("/exchange/ex/k/x"),
            Ok(Destination::Exchange {
                exchange: "ex".into(),
                key: "k/x".into()
            })
        );
        assert_eq!(
            parse("/exchange/ex"),
            Ok(Destination::Exchange {
                exchange: "ex".into(),
                key: String::new()
            })
        );
        assert!(matches!(parse("/queue/"), Err(DestinationError::Empty(_))));
        assert!(matches!(
            parse("/nowhere/a"),
            Err(DestinationError::Unknown(_))
        ));
        assert!(matches!(parse("a"), Err(DestinationError::Unknown(_))));
    }

    #[test]
    fn durable_subscriptions_find_their_queue_again() {
        let dest = Destination::Topic("k".into());
        let durable = QueueProperties {
            durable: Some(true),
            ..Default::default()
        };
        let one = subscribe_plan(&dest, "/topic/k", "s1", None, &durable).unwrap();
        let two = subscribe_plan(&dest, "/topic/k", "s1", None, &durable).unwrap();
        assert_eq!(one.queue, two.queue);
        let other = subscribe_plan(&dest, "/topic/k", "s2", None, &durable).unwrap();
        assert_ne!(one.queue, other.queue);
        let temp = subscribe_plan(&dest, "/topic/k", "s1", None, &Default::default()).unwrap();
        assert_ne!(temp.queue, one.queue);
    }
}
