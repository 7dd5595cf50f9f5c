//! Per-plugin counters, updated lock-free by every exchange of the plugin type.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Counters of one plugin type (all its exchanges, all its versions).
#[derive(Debug, Default)]
pub struct PluginStats {
    calls: AtomicU64,
    errors: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    memory_exhausted: AtomicU64,
    invalid_output: AtomicU64,
    instantiations: AtomicU64,
    quarantines: AtomicU64,
    cache_hits: AtomicU64,
    call_nanos: AtomicU64,
}

/// A point-in-time copy of [`PluginStats`], for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Calls into the plugin (route, route-batch, bind, ...); cache hits are not calls.
    pub calls: u64,
    /// Failed calls of any kind (the sum of the four kinds below).
    pub errors: u64,
    /// Wasm traps (panics, unreachable, out-of-bounds access...).
    pub traps: u64,
    /// Calls stopped for using up their fuel or hitting the wall-clock deadline.
    pub timeouts: u64,
    /// Calls stopped for growing memory past the limit.
    pub memory_exhausted: u64,
    /// Calls whose result broke the contract (unknown binding id, too many ids...).
    pub invalid_output: u64,
    /// Instances created (one per exchange, plus one after each failure).
    pub instantiations: u64,
    /// Times an exchange of this type was quarantined.
    pub quarantines: u64,
    /// Messages routed from the host-side key cache without calling the plugin.
    pub cache_hits: u64,
    /// Total time spent in calls.
    pub call_time: Duration,
}

/// How a plugin call failed, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Trap,
    Timeout,
    MemoryExhausted,
    InvalidOutput,
}

impl PluginStats {
    pub(crate) fn record_call(&self, elapsed: Duration) {
        self.calls.fetch_add(1, Relaxed);
        self.call_nanos
            .fetch_add(elapsed.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub(crate) fn record_failure(&self, kind: FailureKind) {
        self.errors.fetch_add(1, Relaxed);
        let counter = match kind {
            FailureKind::Trap => &self.traps,
            FailureKind::Timeout => &self.timeouts,
            FailureKind::MemoryExhausted => &self.memory_exhausted,
            FailureKind::InvalidOutput => &self.invalid_output,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_instantiation(&self) {
        self.instantiations.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_quarantine(&self) {
        self.quarantines.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_cache_hits(&self, hits: u64) {
        self.cache_hits.fetch_add(hits, Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            calls: self.calls.load(Relaxed),
            errors: self.errors.load(Relaxed),
            traps: self.traps.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            memory_exhausted: self.memory_exhausted.load(Relaxed),
            invalid_output: self.invalid_output.load(Relaxed),
            instantiations: self.instantiations.load(Relaxed),
            quarantines: self.quarantines.load(Relaxed),
            cache_hits: self.cache_hits.load(Relaxed),
            call_time: Duration::from_nanos(self.call_nanos.load(Relaxed)),
        }
    }
}
