//! `bind_exchange` / `unbind_exchange` (AMQP's `exchange.bind` / `unbind`): the router's
//! side of exchange-to-exchange bindings. The source exchange's routing gets the binding
//! like a queue binding (its plugin decides which messages take it); the
//! [`super::exchange_graph::ExchangeGraph`] records where it leads, for ingress. A
//! binding is stored when both exchanges are durable, and goes when either is deleted.

use super::exchanges::is_default;
use super::{Answer, OpError, Reply, Router};
use crate::exchange::BindingId;
use crate::protocol::{ErrorCode, ExchangeBinding};
use crate::store::StoreOp;

fn default_refused() -> OpError {
    OpError::new(
        ErrorCode::AccessRefused,
        "operation not permitted on the default exchange",
    )
}

fn not_found(name: &str) -> OpError {
    OpError::new(ErrorCode::ExchangeNotFound, format!("no exchange `{name}`"))
}

impl Router {
    pub(super) fn bind_exchange(&mut self, binding: ExchangeBinding) -> Result<Reply, OpError> {
        if is_default(&binding.source) || is_default(&binding.destination) {
            return Err(default_refused());
        }
        let destination_durable = self
            .topology
            .exchanges
            .get(&binding.destination)
            .ok_or_else(|| not_found(&binding.destination))?
            .durable;
        let source = self
            .topology
            .exchanges
            .get_mut(&binding.source)
            .ok_or_else(|| not_found(&binding.source))?;
        if self.topology.directory.graph.find(&binding).is_some() {
            return Ok(Reply::Ok(Answer::Done));
        }
        let id = self.topology.next_binding_id;
        {
            let mut routing = source.routing.lock();
            routing.validate_binding(&binding.key, &binding.arguments)?;
            routing.bind(id, &binding.key, &binding.arguments)?;
        }
        self.topology.next_binding_id += 1;
        let durable = source.durable && destination_durable;
        if durable {
            let stored = StoreOp::PutExchangeBinding(id, binding.clone());
            self.turn.store(stored);
        }
        let source = binding.source.clone();
        self.topology.directory.graph.insert(id, binding);
        self.note_bound(&source);
        Ok(match durable {
            true => Reply::OkAfterCommit(Answer::Done),
            false => Reply::Ok(Answer::Done),
        })
    }

    /// Unbinding a binding that does not exist succeeds (as in AMQP).
    pub(super) fn unbind_exchange(&mut self, binding: ExchangeBinding) -> Result<Reply, OpError> {
        if is_default(&binding.source) || is_default(&binding.destination) {
            return Err(default_refused());
        }
        for name in [&binding.source, &binding.destination] {
            if !self.topology.exchanges.contains_key(name) {
                return Err(not_found(name));
            }
        }
        let Some(id) = self.topology.directory.graph.find(&binding) else {
            return Ok(Reply::Ok(Answer::Done));
        };
        self.forget_exchange_binding(id, &binding.source);
        self.delete_if_auto_unused(&binding.source);
        Ok(Reply::OkAfterCommit(Answer::Done))
    }

    /// Removes binding `id` of exchange `source` from its routing, the graph and the store.
    fn forget_exchange_binding(&mut self, id: BindingId, source: &str) {
        self.unbind_routing(id, source);
        self.topology.directory.graph.remove(source, id);
        self.turn.store(StoreOp::DeleteBinding(id));
    }

    fn unbind_routing(&self, id: BindingId, source: &str) {
        if let Some(exchange) = self.topology.exchanges.get(source)
            && let Err(e) = exchange.routing.lock().unbind(id)
        {
            tracing::warn!(binding = id, error = %e, "exchange refused unbind");
        }
    }

    /// Exchange `name` was deleted: its bindings to and from other exchanges go too (an
    /// auto-delete source that loses its last one goes as well).
    pub(super) fn drop_exchange_bindings(&mut self, name: &str) {
        if self.topology.directory.graph.is_empty() {
            return;
        }
        for (id, binding) in self.topology.directory.graph.remove_touching(name) {
            self.turn.store(StoreOp::DeleteBinding(id));
            if binding.source != name {
                self.unbind_routing(id, &binding.source);
                self.delete_if_auto_unused(&binding.source);
            }
        }
    }

    /// Re-adds a stored exchange-to-exchange binding (startup, or an exchange whose type
    /// was not loaded just was). One whose exchange is not stored is dropped; one whose
    /// exchange waits for its type waits with it.
    pub(super) fn restore_exchange_binding(&mut self, id: BindingId, binding: ExchangeBinding) {
        let ends = [&binding.source, &binding.destination];
        if ends
            .iter()
            .any(|name| self.topology.unrestored.contains_key(*name))
        {
            self.topology.directory.graph.wait(id, binding);
            return;
        }
        if ends
            .iter()
            .any(|name| !self.topology.exchanges.contains_key(*name))
        {
            tracing::warn!(binding = id, source = %binding.source, destination = %binding.destination, "stored exchange binding of an exchange that is not stored; dropped");
            self.turn.store(StoreOp::DeleteBinding(id));
            return;
        }
        let source = self
            .topology
            .exchanges
            .get(&binding.source)
            .expect("checked above");
        match source
            .routing
            .lock()
            .bind(id, &binding.key, &binding.arguments)
        {
            Ok(()) => self.topology.directory.graph.insert(id, binding),
            Err(e) => tracing::error!(binding = id, error = %e, "cannot restore exchange binding"),
        }
    }

    /// Retries the stored exchange-to-exchange bindings that waited for an exchange's type.
    pub(super) fn restore_waiting_exchange_bindings(&mut self) {
        for (id, binding) in self.topology.directory.graph.take_waiting() {
            self.restore_exchange_binding(id, binding);
        }
    }

    /// A stored exchange that never got restored is replaced or deleted: the stored
    /// bindings waiting for it go.
    pub(super) fn drop_waiting_exchange_bindings(&mut self, name: &str) {
        for (id, binding) in self.topology.directory.graph.take_waiting() {
            if binding.source == name || binding.destination == name {
                self.turn.store(StoreOp::DeleteBinding(id));
            } else {
                self.topology.directory.graph.wait(id, binding);
            }
        }
    }

    /// Exchange-to-exchange bindings from exchanges of `vhost`, by source then age.
    pub(super) fn exchange_bindings_in(&self, vhost: &str) -> Vec<ExchangeBinding> {
        let mut bindings = self.topology.directory.graph.all();
        bindings.retain(|(_, b)| crate::vhost::of(&b.source) == vhost);
        bindings.sort_by(|a, b| (&a.1.source, a.0).cmp(&(&b.1.source, b.0)));
        bindings.into_iter().map(|(_, b)| b).collect()
    }
}
