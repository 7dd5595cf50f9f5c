//! One live plugin instance (one store) and the guarded way to call into it: fresh fuel
//! and deadline per call, timing, and failures classified for the stats.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use wasmtime::{Store, Trap};

use super::bindings::{ExchangePlugin, wit};
use super::epoch::CALL_DEADLINE_TICKS;
use super::host_state::HostState;
use super::limits::Limits;
use super::loader::LoadedPlugin;
use super::stats::{FailureKind, PluginStats};
use crate::exchange::BindingId;

/// A call that failed; the instance must not be used again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

impl Failure {
    pub fn invalid_output(reason: String) -> Self {
        Failure {
            kind: FailureKind::InvalidOutput,
            reason,
        }
    }
}

pub struct LiveInstance {
    store: Store<HostState>,
    plugin: ExchangePlugin,
    limits: Limits,
    stats: Arc<PluginStats>,
}

impl LiveInstance {
    /// Instantiates `plugin` and runs its `init`. `Ok(Err(_))` is the plugin rejecting the
    /// exchange's arguments; `Err(_)` is a failure.
    pub fn new(
        plugin: &LoadedPlugin,
        exchange: &Arc<str>,
        arguments: &[wit::Header],
        limits: &Limits,
        stats: &Arc<PluginStats>,
    ) -> Result<Result<Self, String>, Failure> {
        let state = HostState::new(limits, plugin.name.clone(), exchange.clone());
        let mut store = Store::new(plugin.pre.engine(), state);
        store.limiter(|state| state.limiter());
        stats.record_instantiation();
        prepare(&mut store, limits, 1);
        let instance = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, e))?;
        let mut live = LiveInstance {
            store,
            plugin: instance,
            limits: limits.clone(),
            stats: stats.clone(),
        };
        let name = exchange.to_string();
        match live.call(1, |ex, store| ex.call_init(store, &name, arguments))? {
            Ok(()) => Ok(Ok(live)),
            Err(reason) => Ok(Err(reason)),
        }
    }

    /// Runs `f` against the exchange export with the budget for `messages` messages.
    fn call<R>(
        &mut self,
        messages: usize,
        f: impl FnOnce(&wit::Guest, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        prepare(&mut self.store, &self.limits, messages);
        let started = Instant::now();
        let result = f(self.plugin.broker_plugin_exchange(), &mut self.store);
        self.stats.record_call(started.elapsed());
        self.store.data_mut().bodies.clear();
        result.map_err(|e| classify(&self.store, e))
    }

    pub fn validate_binding(
        &mut self,
        key: &str,
        arguments: &[wit::Header],
    ) -> Result<Result<(), String>, Failure> {
        self.call(1, |ex, store| {
            ex.call_validate_binding(store, key, arguments)
        })
    }

    pub fn bind(
        &mut self,
        id: BindingId,
        key: &str,
        arguments: &[wit::Header],
    ) -> Result<Result<(), String>, Failure> {
        self.call(1, |ex, store| ex.call_bind(store, id, key, arguments))
    }

    pub fn unbind(&mut self, id: BindingId) -> Result<(), Failure> {
        self.call(1, |ex, store| ex.call_unbind(store, id))
    }

    pub fn route(&mut self, msg: &wit::Message, body: Bytes) -> Result<Vec<BindingId>, Failure> {
        self.store.data_mut().bodies.push(body);
        self.call(1, |ex, store| ex.call_route(store, msg))
    }

    pub fn route_batch(
        &mut self,
        msgs: &[wit::Message],
        bodies: impl Iterator<Item = Bytes>,
    ) -> Result<Vec<Vec<BindingId>>, Failure> {
        self.store.data_mut().bodies.extend(bodies);
        let routed = self.call(msgs.len(), |ex, store| ex.call_route_batch(store, msgs))?;
        if routed.len() != msgs.len() {
            return Err(Failure::invalid_output(format!(
                "route-batch returned {} results for {} messages",
                routed.len(),
                msgs.len()
            )));
        }
        Ok(routed)
    }
}

/// Fresh budget before a call: fuel for `messages`, deadline, log allowance.
fn prepare(store: &mut Store<HostState>, limits: &Limits, messages: usize) {
    if limits.meter_fuel {
        store
            .set_fuel(limits.fuel_for(messages))
            .expect("the engine is configured to consume fuel");
    }
    if limits.call_deadline.is_some() {
        store.set_epoch_deadline(CALL_DEADLINE_TICKS);
    }
    store.data_mut().begin_call();
}

fn classify(store: &Store<HostState>, error: wasmtime::Error) -> Failure {
    let trap = error.downcast_ref::<Trap>().copied();
    let kind = match trap {
        _ if store.data().memory_denied() => FailureKind::MemoryExhausted,
        Some(Trap::OutOfFuel | Trap::Interrupt) => FailureKind::Timeout,
        _ => FailureKind::Trap,
    };
    // The short cause goes to the client; the full error (with the Wasm backtrace) to the log.
    tracing::debug!(error = ?error, "plugin call failed");
    let cause = match trap {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    let reason = match kind {
        FailureKind::Timeout => format!("exceeded its CPU budget ({cause})"),
        FailureKind::MemoryExhausted => format!("exceeded its memory limit ({cause})"),
        _ => cause,
    };
    Failure { kind, reason }
}
