//! Which queue shard a command goes to, decided at the [`RouterHandle`] on the sender's
//! task. With one shard, everything goes to it. With several:
//!
//! | command | goes to |
//! |---|---|
//! | publish | the shard of its queues (found at ingress; the default exchange's by name); split into a part per shard when they are on several, answered once (`gather.rs`) |
//! | ack, nack, reject, auto-acks written | the shard that delivered the tag (`delivery_tags.rs`); `multiple`, or a tag it does not know, to every shard |
//! | declare, delete, purge, info, peek, get, subscribe, requeue dead letters, attach and detach a handler | the queue's shard (a broker-named queue's: the one that names it) |
//! | open, close, drained, channel prefetch, confirm select, cancel, listings of queues, connections and handlers, vhost deletion | every shard, answered once |
//! | everything else (exchanges, bindings, plugins, users, vhosts) | home (shard 0) |
//!
//! One connection's commands reach each shard through one channel, in order, so a
//! publisher's messages enter each queue in the order it sent them. A confirmed publish
//! also gets a sync part on each other shard the connection sent commands to since its
//! last one (`conn_sends.rs`), so its confirm covers them too.

use std::sync::Arc;

use super::conn_sends::{Sent, shards_in};
use super::gather::{Combine, Gather};
use super::{Command, Part, Route, Routed, RouterHandle};
use crate::message::Message;
use crate::protocol::Op;
use crate::queue::ConnId;

impl RouterHandle {
    /// The one shard `command` goes to (`None` when it goes to several, [`Self::split`]),
    /// and what sending it changes of its connection's record. A publish's shards are
    /// found once for both.
    pub(super) fn plan(&self, command: &Command) -> (Option<usize>, Sent) {
        if self.shards.len() > 1
            && let Command::Request {
                conn,
                request,
                routed,
                ..
            } = command
            && let Op::Publish(publish) = &request.op
        {
            let shards = self.publish_shards(&publish.message, routed.as_ref());
            return (
                self.publish_target(*conn, shards),
                Sent::Published(*conn, shards),
            );
        }
        (self.target(command), self.sent(command))
    }

    fn target(&self, command: &Command) -> Option<usize> {
        if self.shards.len() == 1 {
            return Some(0);
        }
        match command {
            Command::Open(_)
            | Command::Close { .. }
            | Command::Drained { .. }
            | Command::ChannelPrefetch { .. } => None,
            Command::Written {
                conn,
                delivery_tags,
            } => {
                let shard_of = |tag: &u64| self.sends.shard_of_tag(*conn, *tag);
                let first = shard_of(delivery_tags.first()?)?;
                (delivery_tags.iter())
                    .all(|t| shard_of(t) == Some(first))
                    .then_some(first)
            }
            Command::Request {
                conn,
                request,
                routed,
                ..
            } => self.request_target(*conn, &request.op, routed.as_ref()),
            _ => Some(0),
        }
    }

    /// A publish to the queues on `shards` goes to one shard when they are all on it and
    /// no earlier publish of the connection is unconfirmed elsewhere.
    fn publish_target(&self, conn: ConnId, shards: u64) -> Option<usize> {
        let one = shards.count_ones() == 1;
        let first = shards.trailing_zeros() as usize;
        (one && self.sends.pending_besides(conn, shards) == 0).then_some(first)
    }

    fn request_target(&self, conn: ConnId, op: &Op, routed: Option<&Routed>) -> Option<usize> {
        let placement = &self.placement;
        let shard_of = |queue: &str| Some(placement.shard_of(queue));
        match op {
            Op::Publish(publish) => {
                self.publish_target(conn, self.publish_shards(&publish.message, routed))
            }
            // A broker-named queue: named by the connection's shard, where it then lives.
            Op::DeclareQueue(declare) if declare.queue.is_empty() => {
                Some(conn as usize % self.shards.len())
            }
            Op::DeclareQueue(declare) => Some(placement.place_declare(&declare.queue)),
            Op::Subscribe(subscribe) => shard_of(&subscribe.queue),
            Op::AttachHandler(attach) => shard_of(&attach.queue),
            Op::DeleteQueue { queue, .. }
            | Op::DetachHandler { queue, .. }
            | Op::PurgeQueue { queue }
            | Op::QueueInfo { queue }
            | Op::PeekQueue { queue, .. }
            | Op::Get { queue, .. }
            | Op::RequeueDeadLetters { queue, .. } => shard_of(queue),
            Op::Ack {
                delivery_tag,
                multiple: false,
            }
            | Op::Nack {
                delivery_tag,
                multiple: false,
                ..
            }
            | Op::Reject { delivery_tag, .. } => self.sends.shard_of_tag(conn, *delivery_tag),
            Op::Ack { .. }
            | Op::Nack { .. }
            | Op::Cancel { .. }
            | Op::ListQueues
            | Op::ListConnections
            | Op::ListHandlers
            | Op::ConfirmSelect
            | Op::DeleteVhost { .. } => None,
            _ => Some(0),
        }
    }

    /// `command`, for which [`Self::target`] named no single shard, as the commands each
    /// shard gets.
    pub(super) fn split(&self, command: Command) -> Vec<(usize, Command)> {
        let every = 0..self.shards.len();
        match command {
            Command::Open(open) => every
                .map(|shard| (shard, Command::Open(open.clone())))
                .collect(),
            Command::Close {
                conn,
                broker_stopping,
            } => {
                let close = |shard| {
                    let close = Command::Close {
                        conn,
                        broker_stopping,
                    };
                    (shard, close)
                };
                every.map(close).collect()
            }
            Command::Drained { conn } => every
                .map(|shard| (shard, Command::Drained { conn }))
                .collect(),
            Command::ChannelPrefetch { conn, prefetch } => every
                .map(|shard| (shard, Command::ChannelPrefetch { conn, prefetch }))
                .collect(),
            Command::Written {
                conn,
                delivery_tags,
            } => {
                let mut by_shard = vec![Vec::new(); self.shards.len()];
                for tag in delivery_tags {
                    match self.sends.shard_of_tag(conn, tag) {
                        Some(shard) => by_shard[shard].push(tag),
                        // Forgotten: the shard that holds it settles it.
                        None => by_shard.iter_mut().for_each(|tags| tags.push(tag)),
                    }
                }
                let written = by_shard.into_iter().enumerate();
                written
                    .filter(|(_, tags)| !tags.is_empty())
                    .map(|(shard, delivery_tags)| {
                        let written = Command::Written {
                            conn,
                            delivery_tags,
                        };
                        (shard, written)
                    })
                    .collect()
            }
            Command::Request {
                conn,
                request,
                credit,
                routed,
            } => {
                if let Op::Publish(publish) = &request.op {
                    let parts: Vec<(usize, Option<Routed>)> =
                        match self.publish_parts(&publish.message, routed.as_ref()) {
                            // Routed nowhere, or refused: home answers (see `publish_queues`).
                            parts if parts.is_empty() => vec![(0, routed)],
                            parts => parts.into_iter().map(|(s, r)| (s, Some(Ok(r)))).collect(),
                        };
                    let mask = parts.iter().fold(0, |mask, (shard, _)| mask | 1 << shard);
                    let syncs = self.sends.pending_besides(conn, mask);
                    let count = parts.len() + syncs.count_ones() as usize;
                    let gather = Gather::new(count, request.id.clone(), Combine::Publish, credit);
                    let gather = Arc::new(gather);
                    // Split: the route's queues are on several shards (each part routes its own).
                    let split = parts.len() > 1;
                    let part = |request: Option<crate::protocol::Request>, routed| {
                        let gather = gather.clone();
                        let part = Part {
                            conn,
                            request,
                            routed,
                            split,
                            gather,
                        };
                        Command::Part(Box::new(part))
                    };
                    // The last part takes the request, the others a copy each.
                    let last = parts.len() - 1;
                    let mut request = Some(request);
                    let mut commands = Vec::with_capacity(count);
                    for (i, (shard, routed)) in parts.into_iter().enumerate() {
                        let request = if i == last {
                            request.take()
                        } else {
                            request.clone()
                        };
                        commands.push((shard, part(request, routed)));
                    }
                    commands.extend(shards_in(syncs).map(|shard| (shard, part(None, None))));
                    return commands;
                }
                let combine = match request.op {
                    Op::Ack { .. } | Op::Nack { .. } | Op::Reject { .. } | Op::Cancel { .. } => {
                        Combine::AnyOk
                    }
                    Op::ListQueues | Op::ListConnections | Op::ListHandlers => Combine::Lists,
                    _ => Combine::Home,
                };
                let gather = Gather::new(self.shards.len(), request.id.clone(), combine, credit);
                let gather = Arc::new(gather);
                every
                    .map(|shard| {
                        let part = Part {
                            conn,
                            request: Some(request.clone()),
                            routed: None,
                            split: false,
                            gather: gather.clone(),
                        };
                        (shard, Command::Part(Box::new(part)))
                    })
                    .collect()
            }
            other => vec![(0, other)],
        }
    }

    /// What sending `command` changes of its connection's record (`conn_sends.rs`).
    fn sent(&self, command: &Command) -> Sent {
        if self.shards.len() == 1 {
            return Sent::Nothing;
        }
        let every = u64::MAX >> (64 - self.shards.len());
        match command {
            Command::Open(open) => Sent::Opened(open.conn, open.link.clone()),
            Command::Close { conn, .. } => Sent::Closed(*conn),
            Command::Written {
                conn,
                delivery_tags,
            } => {
                let shard_of = |tag: &u64| self.sends.shard_of_tag(*conn, *tag);
                let shards = (delivery_tags.iter())
                    .fold(0, |m, t| m | shard_of(t).map_or(every, |shard| 1 << shard));
                Sent::Touched(*conn, shards)
            }
            Command::Request {
                conn,
                request,
                routed,
                ..
            } => match &request.op {
                Op::ConfirmSelect => Sent::ConfirmMode(*conn),
                Op::Subscribe(subscribe) => {
                    Sent::Consumed(*conn, self.placement.shard_of(&subscribe.queue))
                }
                Op::Publish(publish) => Sent::Published(
                    *conn,
                    self.publish_shards(&publish.message, routed.as_ref()),
                ),
                op => match self.request_target(*conn, op, routed.as_ref()) {
                    Some(shard) => Sent::Touched(*conn, 1 << shard),
                    None => Sent::Touched(*conn, every),
                },
            },
            _ => Sent::Nothing,
        }
    }

    /// The shards (a bit each) of a publish's queues; home's when it has none. Without
    /// allocating on the common paths: a route's queues, one routing key in `/`.
    fn publish_shards(&self, message: &Message, routed: Option<&Routed>) -> u64 {
        let bit = |queue: &str| 1u64 << self.placement.shard_of(queue);
        let shards = match routed {
            Some(Ok(route)) => route.queues.iter().fold(0, |mask, q| mask | bit(q)),
            Some(Err(_)) => 0,
            None if super::exchanges::is_default(&message.exchange)
                && crate::vhost::of(&message.exchange) == crate::vhost::DEFAULT_VHOST
                && !message.routing_key.contains(crate::vhost::SEPARATOR)
                && message.headers.is_empty() =>
            {
                bit(&message.routing_key)
            }
            None => publish_queues(message, routed)
                .iter()
                .fold(0, |mask, q| mask | bit(q)),
        };
        if shards == 0 { 1 } else { shards }
    }

    /// A publish's queues grouped by shard, each group its part's route.
    fn publish_parts(&self, message: &Message, routed: Option<&Routed>) -> Vec<(usize, Route)> {
        let bindings = match routed {
            Some(Ok(route)) => route.bindings.clone(),
            _ => Vec::new(),
        };
        let mut parts: Vec<(usize, Route)> = Vec::new();
        for queue in publish_queues(message, routed) {
            let shard = self.placement.shard_of(&queue);
            let index = match parts.iter().position(|(s, _)| *s == shard) {
                Some(index) => index,
                None => {
                    let route = Route {
                        queues: Vec::new(),
                        bindings: bindings.clone(),
                    };
                    parts.push((shard, route));
                    parts.len() - 1
                }
            };
            parts[index].1.queues.push(queue);
        }
        parts
    }
}

/// The queues a publish may go to: its route's, or on the default exchange those its
/// routing keys name (whether they exist is the shard's to say). None: routed nowhere, or
/// refused; home answers it (its alternate exchange, the error).
fn publish_queues(message: &Message, routed: Option<&Routed>) -> Vec<Arc<str>> {
    match routed {
        Some(Ok(route)) => route.queues.clone(),
        Some(Err(_)) => Vec::new(),
        None if super::exchanges::is_default(&message.exchange) => {
            let vhost = crate::vhost::of(&message.exchange);
            let extra = message.extra_routing_keys();
            let keys = std::iter::once(&message.routing_key).chain(&extra);
            keys.filter(|key| !key.contains(crate::vhost::SEPARATOR))
                .map(|key| Arc::from(crate::vhost::qualify(vhost, key)))
                .collect()
        }
        None => Vec::new(),
    }
}

/// Whether `command` declares a queue: with several shards, the connection waits for it
/// to be applied, so a bind that follows (applied by home) finds it.
pub(super) fn declares_queue(command: &Command) -> bool {
    matches!(
        command,
        Command::Request {
            request: crate::protocol::Request {
                op: Op::DeclareQueue(_),
                ..
            },
            ..
        }
    )
}
