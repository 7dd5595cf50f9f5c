//! An exchange's `internal` and `auto_delete` flags, as RabbitMQ has them: clients cannot
//! publish to an internal exchange (only exchange-to-exchange bindings lead there), and
//! an auto-delete exchange is deleted when its last binding (to a queue or an exchange)
//! is removed — by an unbind, or its queue or destination exchange being deleted — once
//! it has had one. Both are stored with the exchange and part of what a redeclare must
//! repeat.

use super::{OpError, Router};
use crate::protocol::{DeclareExchange, ErrorCode};
use crate::vhost;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ExchangeFlags {
    pub internal: bool,
    pub auto_delete: bool,
}

impl ExchangeFlags {
    pub fn of(declare: &DeclareExchange) -> Self {
        ExchangeFlags {
            internal: declare.internal,
            auto_delete: declare.auto_delete,
        }
    }
}

/// Refuses a client's publish to an internal exchange, in RabbitMQ's words.
pub(super) fn check_publishable(
    exchange: Option<&super::ingress::SharedExchange>,
    name: &str,
) -> Result<(), OpError> {
    match exchange {
        Some(exchange) if exchange.flags.internal => {
            let (vhost, name) = vhost::split(name);
            Err(OpError::new(
                ErrorCode::AccessRefused,
                format!("cannot publish to internal exchange '{name}' in vhost '{vhost}'"),
            ))
        }
        _ => Ok(()),
    }
}

impl Router {
    /// A binding from exchange `name` was just made: a durable auto-delete exchange's
    /// record remembers (once) that it has had one, so that at startup, its bindings to
    /// queues that did not outlive the broker gone, it is deleted as RabbitMQ deletes it.
    pub(super) fn note_bound(&mut self, name: &str) {
        let Some(exchange) = self.topology.exchanges.get_mut(name) else {
            return;
        };
        if exchange.bound || !exchange.durable || !exchange.routing.flags.auto_delete {
            return;
        }
        exchange.bound = true;
        self.store_exchange(name);
    }

    /// Startup (or exchanges whose type was just loaded), once their bindings are
    /// restored: each auto-delete exchange of `names` that has had a binding and has
    /// none left is deleted.
    pub(super) fn drop_unbound_auto_delete(&mut self, names: Vec<String>) {
        for name in names {
            let unbound = self.topology.exchanges.get(&name).is_some_and(|e| {
                e.bound && e.bindings.is_empty() && !self.topology.directory.graph.has_out(&name)
            });
            if unbound {
                tracing::info!(exchange = %name, "auto-delete exchange has no binding left after the restart; deleted");
                self.delete_if_auto_unused(&name);
            }
        }
    }

    /// Deletes exchange `name` if it is auto-delete and has no binding left (one was just
    /// removed).
    pub(super) fn delete_if_auto_unused(&mut self, name: &str) {
        let unused = self.topology.exchanges.get(name).is_some_and(|e| {
            e.routing.flags.auto_delete
                && e.bindings.is_empty()
                && !self.topology.directory.graph.has_out(name)
        });
        if unused {
            tracing::debug!(exchange = %name, "auto-delete exchange lost its last binding; deleted");
            if let Err(e) = self.delete_exchange(name, false) {
                tracing::warn!(exchange = %name, error = %e.message, "cannot auto-delete exchange");
            }
        }
    }
}
