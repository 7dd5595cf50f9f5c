//! The directory ingress routes through: every exchange by its (qualified) name, where
//! exchange-to-exchange bindings lead, and which queue each queue binding leads to. The
//! router keeps it (declare, bind, unbind, delete); ingress reads it, so a publish leaves
//! ingress with the names of its queues.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::SharedExchange;
use crate::exchange::BindingId;
use crate::fast_map::FastMap;
use crate::message::Message;
use crate::router::{Route, Routed};

#[derive(Default)]
pub(crate) struct ExchangeDirectory {
    exchanges: RwLock<HashMap<String, Arc<SharedExchange>>>,
    /// Where exchange-to-exchange bindings lead (see `hops.rs`).
    pub graph: crate::router::exchange_graph::ExchangeGraph,
    /// The queue behind each queue binding (binding ids are unique across exchanges).
    queues: RwLock<FastMap<BindingId, Arc<str>>>,
    /// The default exchange's publish counters (it has no [`SharedExchange`]).
    pub default_counters: crate::router::topology::ExchangeCounters,
}

impl ExchangeDirectory {
    pub fn insert(&self, name: &str, exchange: Arc<SharedExchange>) {
        let mut exchanges = self.exchanges.write().expect("directory lock poisoned");
        exchanges.insert(name.to_owned(), exchange);
    }

    pub fn remove(&self, name: &str) {
        let mut exchanges = self.exchanges.write().expect("directory lock poisoned");
        exchanges.remove(name);
    }

    pub fn get(&self, name: &str) -> Option<Arc<SharedExchange>> {
        let exchanges = self.exchanges.read().expect("directory lock poisoned");
        exchanges.get(name).cloned()
    }

    /// Records that binding `id` leads to queue `queue`; before the exchange's routing
    /// gets the binding, so every id it returns can be resolved.
    pub fn bind_queue(&self, id: BindingId, queue: &str) {
        let mut queues = self.queues.write().expect("directory lock poisoned");
        queues.insert(id, Arc::from(queue));
    }

    /// Forgets queue binding `id`; after the exchange's routing dropped it.
    pub fn unbind_queue(&self, id: BindingId) {
        let mut queues = self.queues.write().expect("directory lock poisoned");
        queues.remove(&id);
    }

    /// The route of binding ids some exchanges returned: the queues they lead to, each
    /// once. Exchange-to-exchange bindings lead to no queue, nor does a binding removed
    /// since the exchange routed.
    pub fn resolve(&self, bindings: Vec<BindingId>) -> Route {
        let mut names: Vec<Arc<str>> = Vec::with_capacity(bindings.len());
        {
            let queues = self.queues.read().expect("directory lock poisoned");
            for id in &bindings {
                if let Some(name) = queues.get(id)
                    && !names.contains(name)
                {
                    names.push(name.clone());
                }
            }
        }
        Route {
            queues: names,
            bindings,
        }
    }

    /// Routes `message` on the calling thread (the router's own routing of dead letters
    /// and alternates, a handler's worker for what the handler published), through the
    /// exchanges bound to its exchange too; `None` for the default exchange, which the
    /// router routes by key, and for an exchange that does not exist.
    pub fn route_now(&self, message: &Message) -> Option<Routed> {
        if crate::router::exchanges::is_default(&message.exchange) {
            return None;
        }
        let exchange = self.get(&message.exchange)?;
        let mut ids = Vec::new();
        let mut routed = exchange.lock().route(message, &mut ids);
        for key in message.extra_routing_keys() {
            let mut copy = message.clone();
            copy.routing_key = key;
            let mut more = Vec::new();
            routed = routed.and_then(|()| exchange.lock().route(&copy, &mut more));
            for id in more {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Some(
            routed
                .and_then(|()| self.follow_now(message, &mut ids))
                .map(|()| self.resolve(ids)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_names_each_queue_once_and_skips_what_leads_to_no_queue() {
        let directory = ExchangeDirectory::default();
        directory.bind_queue(1, "/:a");
        directory.bind_queue(2, "/:b");
        directory.bind_queue(3, "/:a");
        directory.bind_queue(4, "/:c");
        directory.unbind_queue(4);
        // 7: an exchange-to-exchange binding; 4: unbound since the exchange routed.
        let route = directory.resolve(vec![3, 7, 2, 1, 4]);
        let queues: Vec<&str> = route.queues.iter().map(|q| &**q).collect();
        assert_eq!(queues, ["/:a", "/:b"]);
        assert_eq!(route.bindings, [3, 7, 2, 1, 4]);
    }
}
