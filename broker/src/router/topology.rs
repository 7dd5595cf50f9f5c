//! The topology: declared exchanges with their bindings and counters, the directory
//! ingress routes through, stored exchanges whose type is not loaded yet, and binding ids.
//!
//! The router's turn changes it (declare, bind, unbind, delete, in `exchanges.rs`,
//! `exchange_bindings.rs`, `exchange_flags.rs`); ingress reads the directory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fast_map::FastMap;

use crate::exchange::BindingId;
use crate::protocol::Binding;

use super::exchanges::Unrestored;
use super::ingress::{ExchangeDirectory, SharedExchange};

pub(super) struct Topology {
    pub exchanges: FastMap<String, ExchangeState>,
    /// The exchanges' routing as ingress finds it; updated with `exchanges`.
    pub directory: Arc<ExchangeDirectory>,
    /// Stored exchanges whose type was not loaded at startup, with their stored bindings:
    /// created when their type gets an active version, dropped if an exchange of that
    /// name is declared anew.
    pub unrestored: HashMap<String, Unrestored>,
    pub next_binding_id: BindingId,
}

impl Topology {
    pub fn new(directory: Arc<ExchangeDirectory>) -> Self {
        Topology {
            exchanges: FastMap::default(),
            directory,
            unrestored: HashMap::new(),
            next_binding_id: 1,
        }
    }
}

/// A declared exchange and its bindings. What a publish needs of it (its routing, flags,
/// alternate exchange and counters) is in `routing`, which ingress's directory shares.
pub(super) struct ExchangeState {
    pub kind: String,
    pub durable: bool,
    pub arguments: crate::message::Headers,
    pub routing: Arc<SharedExchange>,
    pub bindings: FastMap<BindingId, Binding>,
    /// Has had a binding (see `exchange_flags.rs`; kept for auto-delete ones).
    pub bound: bool,
}

impl ExchangeState {
    /// What is stored of it, under `name`.
    pub fn record(&self, name: &str) -> crate::store::ExchangeRecord {
        crate::store::ExchangeRecord {
            name: name.to_owned(),
            kind: self.kind.clone(),
            arguments: self.arguments.clone(),
            internal: self.routing.flags.internal,
            auto_delete: self.routing.flags.auto_delete,
            bound: self.bound,
        }
    }
}

/// What happened to the publishes through one exchange since the broker started; counted
/// by whoever applies the publish.
#[derive(Debug, Default)]
pub(crate) struct ExchangeCounters {
    routed: AtomicU64,
    unroutable: AtomicU64,
    failed: AtomicU64,
}

/// [`ExchangeCounters`] read at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PublishTotals {
    pub routed: u64,
    pub unroutable: u64,
    pub failed: u64,
}

impl ExchangeCounters {
    /// Counts one publish routed to `queues` queues (none: unroutable).
    pub fn count_route(&self, queues: usize) {
        let counter = match queues {
            0 => &self.unroutable,
            _ => &self.routed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one publish the exchange failed to route.
    pub fn count_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn totals(&self) -> PublishTotals {
        PublishTotals {
            routed: self.routed.load(Ordering::Relaxed),
            unroutable: self.unroutable.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}
