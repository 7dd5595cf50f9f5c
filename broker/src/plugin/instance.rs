//! One live plugin instance (one store) and the guarded way to call into it: fresh fuel
//! and time per call (one message per call), timing, and failures classified for the
//! stats.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use wasmtime::{Store, Trap};

use super::bindings::{ExchangePlugin, wit};
use super::epoch::Exhausted;
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
    /// The time budget ran out (thread CPU time, memory growth charged): unlike fuel, what
    /// that measures varies with how busy the machine is.
    pub out_of_time: bool,
}

impl Failure {
    pub fn invalid_output(reason: String) -> Self {
        Failure {
            kind: FailureKind::InvalidOutput,
            reason,
            out_of_time: false,
        }
    }
}

pub struct LiveInstance {
    store: Store<HostState>,
    plugin: ExchangePlugin,
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
        let state = HostState::new(limits, plugin.name.clone(), exchange.clone())
            .with_log(plugin.log.clone())
            .with_body_hidden(plugin.info.capabilities.key_only);
        let mut store = Store::new(plugin.pre.engine(), state);
        HostState::install(&mut store, |state| state);
        stats.record_instantiation();
        HostState::arm_setup(&mut store, |state| state);
        let instance = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(store.data(), e))?;
        let mut live = LiveInstance {
            store,
            plugin: instance,
            stats: stats.clone(),
        };
        let name = exchange.to_string();
        HostState::arm_setup(&mut live.store, |state| state);
        match live.call_armed(|ex, store| ex.call_init(store, &name, arguments))? {
            Ok(()) => Ok(Ok(live)),
            Err(reason) => Ok(Err(reason)),
        }
    }

    /// Runs `f` against the exchange export with a fresh budget.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&wit::Guest, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        HostState::arm(&mut self.store, |state| state);
        self.call_armed(f)
    }

    /// Runs `f` against the exchange export with the budget already armed.
    fn call_armed<R>(
        &mut self,
        f: impl FnOnce(&wit::Guest, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let started = Instant::now();
        let result = f(self.plugin.broker_plugin_exchange(), &mut self.store);
        self.stats.record_call(started.elapsed());
        self.store.data_mut().bodies.clear();
        result.map_err(|e| classify(self.store.data(), e))
    }

    pub fn validate_binding(
        &mut self,
        key: &str,
        arguments: &[wit::Header],
    ) -> Result<Result<(), String>, Failure> {
        self.call(|ex, store| ex.call_validate_binding(store, key, arguments))
    }

    pub fn bind(
        &mut self,
        id: BindingId,
        key: &str,
        arguments: &[wit::Header],
    ) -> Result<Result<(), String>, Failure> {
        self.call(|ex, store| ex.call_bind(store, id, key, arguments))
    }

    pub fn unbind(&mut self, id: BindingId) -> Result<(), Failure> {
        self.call(|ex, store| ex.call_unbind(store, id))
    }

    /// The fuel its last call used (`None` when fuel is not metered).
    pub fn last_call_fuel(&self) -> Option<u64> {
        HostState::fuel_used(&self.store, |state| state)
    }

    /// Whether this (key-only) instance asked for a message body it was not given.
    pub fn asked_for_hidden_body(&self) -> bool {
        self.store.data().asked_for_hidden_body()
    }

    pub fn route(&mut self, msg: &wit::Message, body: Bytes) -> Result<Vec<BindingId>, Failure> {
        self.store.data_mut().bodies.push(body);
        self.call(|ex, store| ex.call_route(store, msg))
    }
}

/// What went wrong in a failed call (exchange or handler), from the error and what the
/// store saw: a memory limit, the time or fuel budget, a panic the guest reported, a trap.
pub(crate) fn classify(host: &HostState, error: wasmtime::Error) -> Failure {
    let trap = error.downcast_ref::<Trap>().copied();
    // The short cause goes to the client; the full error (with the Wasm backtrace) to the log.
    tracing::debug!(error = ?error, "plugin call failed");
    let cause = match trap {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    let (kind, reason) = match (trap, host.exhausted()) {
        _ if host.memory_denied() => (
            FailureKind::MemoryExhausted,
            format!("exceeded its memory limit ({cause})"),
        ),
        (_, Some(Exhausted::Growth)) => (
            FailureKind::Timeout,
            "exceeded its CPU budget (time, memory growth charged)".to_owned(),
        ),
        (Some(Trap::Interrupt), _) => (
            FailureKind::Timeout,
            "exceeded its CPU budget (time)".to_owned(),
        ),
        (Some(Trap::OutOfFuel), _) => (
            FailureKind::Timeout,
            "exceeded its CPU budget (fuel)".to_owned(),
        ),
        _ => match host.panic_message() {
            Some(panic) => (FailureKind::Trap, panic.to_owned()),
            None => (FailureKind::Trap, cause),
        },
    };
    let out_of_time = !host.memory_denied()
        && (host.exhausted() == Some(Exhausted::Growth) || trap == Some(Trap::Interrupt));
    Failure {
        kind,
        reason,
        out_of_time,
    }
}
