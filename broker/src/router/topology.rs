//! The topology: declared exchanges with their bindings and counters, the directory
//! ingress routes through, stored exchanges whose type is not loaded yet, and binding ids.
//!
//! The router's turn changes it (declare, bind, unbind, delete, in `exchanges.rs`,
//! `exchange_bindings.rs`, `exchange_flags.rs`); ingress reads the directory.

use std::collections::HashMap;

use crate::fast_map::FastMap;
use std::sync::Arc;

use crate::exchange::BindingId;
use crate::protocol::Binding;

use super::exchange_flags::ExchangeFlags;
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
    /// The default exchange's counters (it has no [`ExchangeState`]).
    pub default_exchange: ExchangeCounters,
}

impl Topology {
    pub fn new(directory: Arc<ExchangeDirectory>) -> Self {
        Topology {
            exchanges: FastMap::default(),
            directory,
            unrestored: HashMap::new(),
            next_binding_id: 1,
            default_exchange: ExchangeCounters::default(),
        }
    }
}

/// A declared exchange and its bindings.
pub(super) struct ExchangeState {
    pub kind: String,
    pub durable: bool,
    /// `internal` and `auto_delete` (see `exchange_flags.rs`).
    pub flags: ExchangeFlags,
    pub arguments: crate::message::Headers,
    pub routing: Arc<SharedExchange>,
    pub bindings: FastMap<BindingId, Binding>,
    pub counters: ExchangeCounters,
}

/// What happened to the publishes through one exchange since the broker started.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ExchangeCounters {
    pub routed: u64,
    pub unroutable: u64,
    pub failed: u64,
}
