//! The exchanges every vhost has, as in RabbitMQ: `amq.direct`, `amq.fanout`,
//! `amq.topic`, `amq.headers` and `amq.match` (a second `headers` exchange), durable,
//! of the bundled types. They are created with a vhost, and at startup for every vhost
//! that lacks them (a data dir from before they existed). Names starting with `amq.`
//! are the broker's: clients cannot declare new ones or delete these.

use super::{OpError, Router};
use crate::exchange::ExchangeTypes as _;
use crate::message::Headers;
use crate::protocol::{DeclareExchange, ErrorCode};
use crate::store::StoreOp;
use crate::vhost;

/// (name, exchange type) of the exchanges every vhost has.
pub const PREDECLARED: [(&str, &str); 5] = [
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
];

/// The prefix of exchange names reserved for the broker (RabbitMQ's).
pub const RESERVED_PREFIX: &str = "amq.";

/// Whether `name` (a broker name, qualified by its vhost) is reserved for the broker.
pub(super) fn is_reserved(name: &str) -> bool {
    vhost::local(name).starts_with(RESERVED_PREFIX)
}

impl Router {
    /// Creates the predeclared exchanges of `vhost` that do not exist yet (stored in this
    /// turn's batch). An exchange of the same name stored earlier (declared by a client
    /// before these existed) is kept as it is.
    pub(super) fn predeclare(&mut self, vhost: &str) {
        for (local, kind) in PREDECLARED {
            let name = vhost::qualify(vhost, local);
            if self.topology.exchanges.contains_key(&name)
                || self.topology.unrestored.contains_key(&name)
            {
                continue;
            }
            let arguments = Headers::new();
            let routing = match self.plugins.create(kind, &name, &arguments) {
                Ok(routing) => routing,
                Err(e) => {
                    tracing::error!(exchange = %name, kind, error = %e, "cannot create predeclared exchange");
                    continue;
                }
            };
            let flags = Default::default();
            self.insert_exchange(
                name.clone(),
                kind.to_string(),
                true,
                flags,
                arguments,
                routing,
            );
            self.store_exchange(&name);
        }
    }

    /// [`Self::predeclare`] for every vhost (startup).
    pub(super) fn predeclare_all(&mut self) {
        for vhost in self.auth.vhosts() {
            self.predeclare(&vhost);
        }
    }

    /// Refuses to declare a new exchange with a reserved name (403, as RabbitMQ). A
    /// declare of an existing one goes on: it succeeds when equivalent, else 406.
    pub(super) fn check_reserved_declare(&self, declare: &DeclareExchange) -> Result<(), OpError> {
        if is_reserved(&declare.exchange)
            && !self.topology.exchanges.contains_key(&declare.exchange)
        {
            return Err(OpError::new(
                ErrorCode::AccessRefused,
                format!(
                    "exchange name `{}` has the reserved prefix `{RESERVED_PREFIX}`",
                    vhost::local(&declare.exchange)
                ),
            ));
        }
        Ok(())
    }

    /// Refuses to delete an exchange with a reserved name (403, as RabbitMQ).
    pub(super) fn check_reserved_delete(&self, name: &str) -> Result<(), OpError> {
        if is_reserved(name) {
            return Err(OpError::new(
                ErrorCode::AccessRefused,
                format!(
                    "exchange `{}` is the broker's and cannot be deleted",
                    vhost::local(name)
                ),
            ));
        }
        Ok(())
    }

    /// Removes `vhost`'s reserved exchanges and their bindings (the vhost is being
    /// deleted; clients cannot delete them).
    pub(super) fn drop_reserved(&mut self, vhost: &str) {
        let names: Vec<String> = self
            .topology
            .exchanges
            .keys()
            .filter(|name| vhost::of(name) == vhost && is_reserved(name))
            .cloned()
            .collect();
        for name in names {
            let Some(exchange) = self.forget_exchange(&name) else {
                continue;
            };
            if exchange.durable {
                for id in exchange.bindings.keys() {
                    self.turn.store(StoreOp::DeleteBinding(*id));
                }
                self.turn.store(StoreOp::DeleteExchange(name));
            }
        }
    }
}
