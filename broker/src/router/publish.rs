//! The route stage of a publish at the router: a `delayed` exchange's `x-delay`, its
//! destinations (the queues ingress found that still exist; the default exchange by
//! routing key; for a message routed nowhere, its exchange's alternate exchange), the
//! exchange's counters, a mandatory return, then the enqueue into each queue (what a
//! full `reject_publish_dlx` queue refuses is dead-lettered) and the reply.

use std::sync::Arc;

use super::DeathReason;
use super::dedup::Taken;
use super::enqueue::QueueFull;
use super::exchange_flags::check_publishable;
use super::exchanges::{exchange_not_found, is_default};
use super::ingress::SharedExchange;
use super::{OpError, Outbound, Reply, Route, Routed, Router};
use crate::message::Message;
use crate::protocol::{ErrorCode, Publish, RequestId, ServerFrame};
use crate::queue::{ConnId, Entry, Overflow};

/// The exchange argument naming where messages it routes nowhere go.
pub(super) const ALTERNATE_EXCHANGE: &str = "alternate_exchange";
/// The exchange argument (`true`) that makes a message's [`DELAY_HEADER`] delay it, as
/// RabbitMQ's delayed message exchange does.
pub const DELAYED: &str = "delayed";
/// Milliseconds to delay a message published to a `delayed` exchange (an integer, or
/// text of one: STOMP headers are text); not positive: no delay.
pub const DELAY_HEADER: &str = "x-delay";

impl Router {
    /// `part`: one of several shards' parts of a publish split by its queues' shards (see
    /// `gather.rs`); the whole publish was routed somewhere, so a part neither returns a
    /// mandatory message nor tries the alternate exchange.
    pub(super) fn publish(
        &mut self,
        conn: ConnId,
        id: &RequestId,
        publish: Publish,
        routed: Option<Routed>,
        part: bool,
    ) -> Result<Reply, OpError> {
        let Publish {
            mut message,
            mandatory,
        } = publish;
        let exchange = self.shared_exchange(&message.exchange);
        check_publishable(exchange.as_deref(), &message.exchange)?;
        if message.properties.delay_ms.is_none()
            && let Some(delay) = message.headers.get(DELAY_HEADER)
            && exchange.as_ref().is_some_and(|e| e.delayed)
        {
            message.properties.delay_ms = delay_of(delay);
        }
        if message.properties.timestamp.is_none() {
            message.properties.timestamp = Some(self.turn.now_ms());
        }
        let routed = match routed {
            Some(routed) => routed
                .map_err(OpError::from)
                .map(|route| self.destinations(&route)),
            None => self.route(&message),
        };
        let counters = match &exchange {
            Some(exchange) => Some(&exchange.counters),
            None if is_default(&message.exchange) => {
                Some(&self.topology.directory.default_counters)
            }
            None => None,
        };
        if let Some(counters) = counters {
            match &routed {
                Ok(queues) => counters.count_route(queues.len()),
                Err(_) => counters.count_failure(),
            }
        }
        let mut destinations = routed?;
        if destinations.is_empty() && !part {
            destinations = self.alternate_destinations(&message)?;
        }
        let confirms = self.conns.get(&conn).is_some_and(|c| c.confirms);
        // Routed with its BCC keys; delivered without them, as RabbitMQ does.
        message.headers.remove(crate::message::BCC_HEADER);
        let message = Arc::<crate::message::Message>::from(message);
        if destinations.is_empty()
            && mandatory
            && !part
            && let Some(c) = self.conns.get(&conn)
        {
            let _ = c.tx.send(Outbound::Frame(ServerFrame::Return {
                id: id.clone(),
                reason: ErrorCode::Unroutable,
                message: message.clone(),
            }));
        }
        let now = self.turn.now_ms();
        let mut stored = false;
        let mut full = Vec::new();
        let mut elsewhere = Vec::new();
        for name in destinations {
            if !self.queues.is_local(&name) {
                elsewhere.push(name);
                continue;
            }
            if let Taken::Duplicate { stored: durable } =
                self.check_message_id(&name, &message, now)
            {
                stored |= durable;
                continue;
            }
            match self.enqueue(&name, &message, now) {
                Ok(persisted) => {
                    stored |= persisted;
                    self.record_message_id(&name, &message, now);
                }
                Err(QueueFull) => {
                    self.dead_letter_refused(&name, &message, now);
                    full.push(name);
                }
            }
        }
        if !full.is_empty() {
            // The queues that accepted it keep it; the publisher learns who refused.
            return Err(queue_full(&full));
        }
        if !elsewhere.is_empty() {
            // Its alternate exchange's queues, on other shards: confirmed once they and
            // this shard have stored it.
            return Ok(self.publish_elsewhere(conn, id, elsewhere, message, confirms));
        }
        Ok(match (confirms, stored) {
            (false, _) => Reply::Silent,
            (true, false) => Reply::Confirm,
            (true, true) => Reply::ConfirmAfterCommit,
        })
    }

    /// Exchange `name` as a publish reads it: the topology's at home, the directory's on
    /// the other shards (the same shared routing).
    fn shared_exchange(&self, name: &str) -> Option<Arc<SharedExchange>> {
        match self.topology.exchanges.get(name) {
            Some(state) => Some(state.routing.clone()),
            None if self.is_home() => None,
            None => self.topology.directory.get(name),
        }
    }

    /// A queue with `overflow: reject_publish_dlx` dead-letters the publish it refused
    /// (reason `max_length`), as RabbitMQ's `reject-publish-dlx`.
    pub(super) fn dead_letter_refused(
        &mut self,
        queue: &Arc<str>,
        message: &Arc<Message>,
        now: u64,
    ) {
        let dead_letters = self
            .queues
            .get(queue)
            .is_some_and(|q| q.policy.overflow == Overflow::RejectPublishDlx);
        if dead_letters {
            let entry = Entry::new(0, message.clone(), false);
            self.dead_letter(queue, entry, DeathReason::MaxLength, now);
        }
    }

    /// The publish counters of exchange `name` (the default one included).
    fn count_alternate_route(&self, name: &str, queues: usize) {
        if is_default(name) {
            return self.topology.directory.default_counters.count_route(queues);
        }
        if let Some(exchange) = self.shared_exchange(name) {
            exchange.counters.count_route(queues);
        }
    }

    /// Where a message its exchange routed nowhere goes instead: through the exchange's
    /// `alternate_exchange` (RabbitMQ's `alternate-exchange`), then that one's, and so on,
    /// each exchange once. An alternate that does not exist routes nowhere, as in RabbitMQ.
    fn alternate_destinations(
        &mut self,
        message: &crate::message::Message,
    ) -> Result<Vec<Arc<str>>, OpError> {
        let mut visited = vec![message.exchange.clone()];
        while let Some(next) = self.alternate_of(visited.last().expect("not empty")) {
            if visited.contains(&next)
                || !(is_default(&next) || self.shared_exchange(&next).is_some())
            {
                break;
            }
            // Routed as if published there; delivered as published (its own exchange).
            let mut via = message.clone();
            via.exchange.clone_from(&next);
            let destinations = self.route(&via)?;
            self.count_alternate_route(&next, destinations.len());
            if !destinations.is_empty() {
                return Ok(destinations);
            }
            visited.push(next);
        }
        Ok(Vec::new())
    }

    /// The qualified name of exchange `name`'s alternate exchange, if it has one.
    fn alternate_of(&self, name: &str) -> Option<String> {
        self.shared_exchange(name)?.alternate.clone()
    }

    /// The queues a message goes to, each once.
    pub(super) fn route(
        &mut self,
        message: &crate::message::Message,
    ) -> Result<Vec<Arc<str>>, OpError> {
        if is_default(&message.exchange) {
            let vhost = crate::vhost::of(&message.exchange);
            // Its routing key, then those of its `CC` and `BCC` headers.
            let extra = message.extra_routing_keys();
            let keys = std::iter::once(&message.routing_key).chain(&extra);
            let mut queues: Vec<Arc<str>> = Vec::with_capacity(1);
            // A routing key cannot name another vhost's queue.
            for key in keys.filter(|k| !k.contains(crate::vhost::SEPARATOR)) {
                let queue = crate::vhost::qualify(vhost, key);
                if let Some(name) = self.queues.existing(&queue)
                    && !queues.contains(&name)
                {
                    queues.push(name);
                }
            }
            return Ok(queues);
        }
        let route = self
            .topology
            .directory
            .route_now(message)
            .ok_or_else(|| exchange_not_found(&message.exchange))?;
        Ok(self.destinations(&route.map_err(OpError::from)?))
    }

    /// The queues of `route` that exist, on any shard (one may have been deleted since it
    /// was routed).
    pub(super) fn destinations(&self, route: &Route) -> Vec<Arc<str>> {
        route
            .queues
            .iter()
            .filter_map(|name| self.queues.existing(name))
            .collect()
    }
}

/// The delay an `x-delay` header asks for, if positive.
fn delay_of(header: &serde_json::Value) -> Option<u64> {
    let ms = match header {
        serde_json::Value::String(text) => text.trim().parse::<i64>().ok()?,
        other => other.as_i64()?,
    };
    u64::try_from(ms).ok().filter(|ms| *ms > 0)
}

/// A publish refused by full `reject_publish` queues (on this shard or, for an alternate
/// route, on others: `forward.rs`).
pub(super) fn queue_full(full: &[Arc<str>]) -> OpError {
    let message = format!("queue full (overflow: reject_publish): {}", full.join(", "));
    OpError::new(ErrorCode::QueueFull, message)
}
