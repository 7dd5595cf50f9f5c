//! `route`: where a message would go, without publishing it (`broker route`). Ingress
//! routes it like a publish, so the plugin runs where it would for a real one; the router
//! only reads its exchanges, bindings and queues.

use super::exchanges::is_default;
use super::{OpError, Reply, Route, Routed, Router};
use crate::message::Message;
use crate::protocol::{RouteTrace, TracedBinding};

impl Router {
    pub(super) fn trace_route(
        &mut self,
        message: &Message,
        routed: Option<Routed>,
    ) -> Result<Reply, OpError> {
        let route = match routed {
            Some(routed) => routed.map_err(OpError::from)?,
            // The default exchange (routed here, natively), or one that does not exist.
            None if is_default(&message.exchange) => Route {
                queues: Vec::new(),
                bindings: Vec::new(),
            },
            None => {
                let message = format!("no exchange `{}`", message.exchange);
                return Err(OpError::new(
                    crate::protocol::ErrorCode::ExchangeNotFound,
                    message,
                ));
            }
        };
        let queues = match is_default(&message.exchange) {
            true => self.route(message)?,
            false => self.destinations(&route),
        };
        let (kind, version, bindings) = match self.topology.exchanges.get(&message.exchange) {
            None => ("default".to_owned(), None, Vec::new()),
            Some(exchange) => {
                let mut bindings: Vec<_> = route
                    .bindings
                    .iter()
                    .filter_map(|id| exchange.bindings.get(id).map(|b| (*id, b)))
                    .collect();
                bindings.sort_by_key(|(id, _)| *id);
                bindings.dedup_by_key(|(id, _)| *id);
                let bindings = bindings
                    .into_iter()
                    .map(|(_, b)| TracedBinding {
                        queue: b.queue.clone(),
                        key: b.key.clone(),
                        arguments: b.arguments.clone(),
                    })
                    .collect();
                let version = exchange.routing.lock().plugin_version();
                (exchange.kind.clone(), version, bindings)
            }
        };
        let trace = RouteTrace {
            exchange: message.exchange.clone(),
            kind,
            plugin_version: version,
            bindings,
            queues: queues.iter().map(|q| q.to_string()).collect(),
        };
        Ok(Reply::Ok(trace.into()))
    }
}
