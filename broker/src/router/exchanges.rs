//! Exchanges and bindings: declare, delete, bind, unbind, restore. (A publish's route at
//! the router: `publish.rs`.)

use crate::fast_map::FastMap;

use super::exchange_flags::ExchangeFlags;
use super::ingress::SharedExchange;
use super::queues::{check_name, check_owner};
use super::{Answer, ExchangeState, OpError, Reply, Router};
use crate::exchange::{BindingId, ExchangeError, ExchangeTypes as _};
use crate::protocol::{Binding, DeclareExchange, ErrorCode};
use crate::queue::ConnId;
use crate::store::{ExchangeRecord, StoreOp};

/// The default exchange: routes to the queue named by the routing key. Native, not a plugin.
pub const DEFAULT_EXCHANGE: &str = "";

/// Whether `name` is a vhost's default exchange (`""` in the client's view).
pub(super) fn is_default(name: &str) -> bool {
    crate::vhost::local(name) == DEFAULT_EXCHANGE
}

impl From<ExchangeError> for OpError {
    fn from(e: ExchangeError) -> Self {
        let code = match &e {
            ExchangeError::UnknownType(_) => ErrorCode::UnknownExchangeType,
            ExchangeError::InvalidBinding(_) => ErrorCode::InvalidBinding,
            ExchangeError::InvalidArguments(_) => ErrorCode::InvalidField,
            ExchangeError::PluginFailed(_) => ErrorCode::PluginError,
            ExchangeError::Unavailable(_) => ErrorCode::ExchangeUnavailable,
        };
        OpError::new(code, e.to_string())
    }
}

/// A stored exchange whose type is not loaded, and its stored bindings: restored when a
/// version of its type becomes active.
pub(super) struct Unrestored {
    pub record: ExchangeRecord,
    pub bindings: Vec<(BindingId, Binding)>,
}

fn default_exchange_refused(what: &str) -> OpError {
    OpError::new(
        ErrorCode::AccessRefused,
        format!("the default exchange cannot be {what}"),
    )
}

impl Router {
    pub(super) fn declare_exchange(&mut self, declare: DeclareExchange) -> Result<Reply, OpError> {
        if is_default(&declare.exchange) {
            return Err(default_exchange_refused("redeclared"));
        }
        check_name("exchange", &declare.exchange)?;
        self.check_reserved_declare(&declare)?;
        if let Some(alternate) = declare.arguments.get(super::publish::ALTERNATE_EXCHANGE)
            && !alternate.is_string()
        {
            let message = format!("`alternate_exchange` must be an exchange name, not {alternate}");
            return Err(OpError::new(ErrorCode::InvalidField, message));
        }
        if let Some(delayed) = declare.arguments.get(super::publish::DELAYED)
            && !delayed.is_boolean()
        {
            let message = format!("`delayed` must be true or false, not {delayed}");
            return Err(OpError::new(ErrorCode::InvalidField, message));
        }
        if let Some(existing) = self.topology.exchanges.get(&declare.exchange) {
            if existing.kind != declare.kind
                || existing.durable != declare.durable
                || existing.routing.flags != ExchangeFlags::of(&declare)
                || existing.arguments != declare.arguments
            {
                return Err(OpError::new(
                    ErrorCode::PreconditionFailed,
                    format!(
                        "exchange `{}` exists with a different type/durable/internal/auto_delete/arguments",
                        declare.exchange
                    ),
                ));
            }
            return Ok(Reply::Ok(Answer::Done));
        }
        let routing = self
            .plugins
            .create(&declare.kind, &declare.exchange, &declare.arguments)?;
        // A new exchange replacing an unrestored stored one inherits neither its record
        // nor its bindings.
        if let Some(waiting) = self.topology.unrestored.remove(&declare.exchange) {
            for (id, _) in waiting.bindings {
                self.turn.store(StoreOp::DeleteBinding(id));
            }
            self.turn
                .store(StoreOp::DeleteExchange(declare.exchange.clone()));
            self.drop_waiting_exchange_bindings(&declare.exchange);
        }
        let flags = ExchangeFlags::of(&declare);
        tracing::debug!(exchange = %declare.exchange, kind = %declare.kind, "exchange declared");
        let name = declare.exchange.clone();
        self.insert_exchange(
            declare.exchange,
            declare.kind,
            declare.durable,
            flags,
            declare.arguments,
            routing,
        );
        if declare.durable {
            self.store_exchange(&name);
        }
        Ok(if declare.durable {
            Reply::OkAfterCommit(Answer::Done)
        } else {
            Reply::Ok(Answer::Done)
        })
    }

    /// The one way an exchange comes into being: in the router's state and in ingress's
    /// directory together.
    pub(super) fn insert_exchange(
        &mut self,
        name: String,
        kind: String,
        durable: bool,
        flags: ExchangeFlags,
        arguments: crate::message::Headers,
        routing: Box<dyn crate::exchange::Exchange>,
    ) {
        let alternate = arguments
            .get(super::publish::ALTERNATE_EXCHANGE)
            .and_then(|a| a.as_str())
            .map(|a| crate::vhost::qualify(crate::vhost::of(&name), a));
        let delayed =
            arguments.get(super::publish::DELAYED) == Some(&serde_json::Value::Bool(true));
        let routing = SharedExchange::new(routing, flags, alternate, delayed);
        self.topology.directory.insert(&name, routing.clone());
        let state = ExchangeState {
            kind,
            durable,
            arguments,
            routing,
            bindings: FastMap::default(),
            bound: false,
        };
        self.topology.exchanges.insert(name, state);
    }

    pub(super) fn delete_exchange(
        &mut self,
        name: &str,
        if_unused: bool,
    ) -> Result<Reply, OpError> {
        if is_default(name) {
            return Err(default_exchange_refused("deleted"));
        }
        self.check_reserved_delete(name)?;
        if if_unused
            && self.topology.exchanges.get(name).is_some_and(|e| {
                !e.bindings.is_empty() || self.topology.directory.graph.has_out(name)
            })
        {
            let message = format!("exchange `{name}` has bindings");
            return Err(OpError::new(ErrorCode::PreconditionFailed, message));
        }
        let exchange = self
            .forget_exchange(name)
            .ok_or_else(|| exchange_not_found(name))?;
        if !exchange.durable {
            return Ok(Reply::Ok(Answer::Done));
        }
        for id in exchange.bindings.keys() {
            self.turn.store(StoreOp::DeleteBinding(*id));
        }
        self.turn.store(StoreOp::DeleteExchange(name.to_owned()));
        Ok(Reply::OkAfterCommit(Answer::Done))
    }

    pub(super) fn bind(&mut self, conn: ConnId, binding: Binding) -> Result<Reply, OpError> {
        if is_default(&binding.exchange) {
            return Err(default_exchange_refused("bound"));
        }
        let queue = self.queues.card(&binding.queue).ok_or_else(|| {
            let message = format!("no queue `{}`", binding.queue);
            OpError::new(ErrorCode::QueueNotFound, message)
        })?;
        check_owner(&binding.queue, queue.exclusive_owner, self.owner(conn))?;
        let queue_stored = queue.stored;
        let exchange = self
            .topology
            .exchanges
            .get_mut(&binding.exchange)
            .ok_or_else(|| exchange_not_found(&binding.exchange))?;
        if exchange.bindings.values().any(|b| *b == binding) {
            return Ok(Reply::Ok(Answer::Done));
        }
        let id = self.topology.next_binding_id;
        {
            let mut routing = exchange.routing.lock();
            routing.validate_binding(&binding.key, &binding.arguments)?;
            routing.bind(id, &binding.key, &binding.arguments)?;
            // Under the routing's lock: no route can take the binding before this.
            self.topology.directory.bind_queue(id, &binding.queue);
        }
        self.topology.next_binding_id += 1;
        let durable = exchange.durable && queue_stored;
        if durable {
            self.turn.store(StoreOp::PutBinding(id, binding.clone()));
        }
        let source = binding.exchange.clone();
        exchange.bindings.insert(id, binding);
        self.note_bound(&source);
        Ok(if durable {
            Reply::OkAfterCommit(Answer::Done)
        } else {
            Reply::Ok(Answer::Done)
        })
    }

    /// Unbinding a binding that does not exist succeeds (idempotent, as in AMQP).
    pub(super) fn unbind(&mut self, conn: ConnId, binding: Binding) -> Result<Reply, OpError> {
        if is_default(&binding.exchange) {
            return Err(default_exchange_refused("unbound"));
        }
        if let Some(queue) = self.queues.card(&binding.queue) {
            check_owner(&binding.queue, queue.exclusive_owner, self.owner(conn))?;
        }
        let exchange = self
            .topology
            .exchanges
            .get_mut(&binding.exchange)
            .ok_or_else(|| exchange_not_found(&binding.exchange))?;
        let Some(id) = exchange
            .bindings
            .iter()
            .find_map(|(id, b)| (*b == binding).then_some(*id))
        else {
            return Ok(Reply::Ok(Answer::Done));
        };
        exchange.routing.lock().unbind(id)?;
        self.topology.directory.unbind_queue(id);
        exchange.bindings.remove(&id);
        self.turn.store(StoreOp::DeleteBinding(id));
        self.delete_if_auto_unused(&binding.exchange);
        Ok(Reply::OkAfterCommit(Answer::Done))
    }

    /// Creates a stored exchange (startup, or its type just became available), without
    /// bindings; gives the record back when its type cannot create it.
    pub(super) fn restore_exchange(
        &mut self,
        record: ExchangeRecord,
    ) -> Result<(), (ExchangeRecord, ExchangeError)> {
        match self
            .plugins
            .create(&record.kind, &record.name, &record.arguments)
        {
            Ok(routing) => {
                let flags = ExchangeFlags {
                    internal: record.internal,
                    auto_delete: record.auto_delete,
                };
                let (name, kind, arguments) = (record.name, record.kind, record.arguments);
                self.insert_exchange(name.clone(), kind, true, flags, arguments, routing);
                if let Some(exchange) = self.topology.exchanges.get_mut(&name) {
                    exchange.bound = record.bound;
                }
                Ok(())
            }
            Err(e) => Err((record, e)),
        }
    }

    /// Stores exchange `name`'s record (new, or changed).
    pub(super) fn store_exchange(&mut self, name: &str) {
        if let Some(exchange) = self.topology.exchanges.get(name) {
            let record = exchange.record(name);
            self.turn.store(StoreOp::PutExchange(record));
        }
    }

    /// Removes exchange `name` from the topology and from ingress, with its bindings to
    /// queues and to and from other exchanges; the store is the caller's.
    pub(super) fn forget_exchange(&mut self, name: &str) -> Option<ExchangeState> {
        let exchange = self.topology.exchanges.remove(name)?;
        self.topology.directory.remove(name);
        for id in exchange.bindings.keys() {
            self.topology.directory.unbind_queue(*id);
        }
        self.drop_exchange_bindings(name);
        Some(exchange)
    }

    /// Re-adds a stored binding (startup, or its exchange was just restored); a binding
    /// whose queue is gone, or whose exchange is not stored, is dropped from the store.
    pub(super) fn restore_binding(&mut self, id: BindingId, binding: Binding) {
        let queue_exists = self.queues.card(&binding.queue).is_some();
        if let Some(waiting) = self.topology.unrestored.get_mut(&binding.exchange) {
            // Its exchange's type is not loaded: keep it until it is.
            if queue_exists {
                waiting.bindings.push((id, binding));
            } else {
                self.turn.store(StoreOp::DeleteBinding(id));
            }
            return;
        }
        match self.topology.exchanges.get_mut(&binding.exchange) {
            Some(exchange) if queue_exists => {
                let mut routing = exchange.routing.lock();
                match routing.bind(id, &binding.key, &binding.arguments) {
                    Ok(()) => {
                        self.topology.directory.bind_queue(id, &binding.queue);
                        exchange.bindings.insert(id, binding);
                    }
                    Err(e) => tracing::error!(binding = id, error = %e, "cannot restore binding"),
                }
            }
            Some(_) => self.turn.store(StoreOp::DeleteBinding(id)),
            None => {
                tracing::warn!(binding = id, exchange = %binding.exchange, "stored binding of an exchange that is not stored; dropped");
                self.turn.store(StoreOp::DeleteBinding(id));
            }
        }
    }

    /// Plugin type `kind` just got an active version: the stored exchanges of that type
    /// that could not be restored at startup are created now, with their bindings.
    pub(super) fn restore_waiting_exchanges(&mut self, kind: &str) {
        let names: Vec<String> = self
            .topology
            .unrestored
            .iter()
            .filter(|(_, waiting)| waiting.record.kind == kind)
            .map(|(name, _)| name.clone())
            .collect();
        let mut restored = Vec::new();
        for name in names {
            let Some(Unrestored { record, bindings }) = self.topology.unrestored.remove(&name)
            else {
                continue;
            };
            match self.restore_exchange(record) {
                Ok(()) => {
                    let count = bindings.len();
                    for (id, binding) in bindings {
                        self.restore_binding(id, binding);
                    }
                    tracing::info!(exchange = %name, kind, bindings = count, "stored exchange restored: its type is active now");
                    restored.push(name);
                }
                Err((record, e)) => {
                    tracing::error!(exchange = %name, kind, error = %e, "cannot restore exchange with the new version of its type; it stays stored");
                    self.topology
                        .unrestored
                        .insert(name, Unrestored { record, bindings });
                }
            }
        }
        self.restore_waiting_exchange_bindings();
        self.drop_unbound_auto_delete(restored);
    }

    /// Removes every binding to `queue` (the queue is being deleted).
    pub(super) fn remove_bindings_to(&mut self, queue: &str) {
        for waiting in self.topology.unrestored.values_mut() {
            waiting.bindings.retain(|(id, b)| {
                let keep = b.queue != queue;
                if !keep {
                    self.turn.store(StoreOp::DeleteBinding(*id));
                }
                keep
            });
        }
        let mut unbound = Vec::new();
        for (name, exchange) in self.topology.exchanges.iter_mut() {
            let ids: Vec<BindingId> = exchange
                .bindings
                .iter()
                .filter(|(_, b)| b.queue == queue)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Err(e) = exchange.routing.lock().unbind(id) {
                    tracing::warn!(binding = id, error = %e, "exchange refused unbind");
                }
                self.topology.directory.unbind_queue(id);
                exchange.bindings.remove(&id);
                self.turn.store(StoreOp::DeleteBinding(id));
                unbound.push(name.clone());
            }
        }
        for name in unbound {
            self.delete_if_auto_unused(&name);
        }
    }
}

pub(super) fn exchange_not_found(name: &str) -> OpError {
    OpError::new(ErrorCode::ExchangeNotFound, format!("no exchange `{name}`"))
}
