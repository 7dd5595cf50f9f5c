//! The resource limits applied to every plugin call, with safe defaults.

use std::time::Duration;

/// Limits for plugins. Every field has a default meant for production; tests shrink them.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// CPU budget of one call (one message), in fuel (about one unit per Wasm instruction,
    /// ~1 ns on a current core). A topic route costs ~15k; the default stops a runaway loop
    /// after ~1.5 ms. Each message of a batch gets its own call and budget.
    pub fuel_per_call: u64,
    /// Whether calls are metered at all. Turning it off removes the fuel budget (a loop
    /// then only meets `call_deadline`); it exists to measure the metering's overhead.
    pub meter_fuel: bool,
    /// Maximum linear memory of one instance; growing past it traps.
    pub memory_bytes: usize,
    /// Maximum number of binding ids one message may be routed to.
    pub max_route_ids: usize,
    /// Largest plugin binary accepted by `load`.
    pub max_module_bytes: usize,
    /// Consecutive failures after which an exchange is quarantined.
    pub max_consecutive_failures: u32,
    /// Calls in the sliding window of an exchange's recent outcomes (at most 64)...
    pub failure_window: u32,
    /// ...and the failures in it (if they are at least half of it) that quarantine the
    /// exchange: an exchange failing every other message is stopped too.
    pub window_failures: u32,
    /// Time an exchange's failing calls may take per second (CPU time, restarts
    /// included); past it the exchange is throttled (its publishes fail fast) until the
    /// allowance refills. Bounds what a plugin failing below the quarantine ratio costs.
    pub failing_time_per_sec: Duration,
    /// Entries of the per-exchange key -> bindings cache (key-only plugins); 0 disables it.
    pub key_cache_entries: usize,
    /// Time budget of one call (one message): CPU time of the calling thread, checked
    /// every 0.5 ms by epoch interruption; memory growth is charged against it (100 µs per
    /// MiB), since fuel does not count it. A wall clock of 500x (at least 1 s) is the
    /// backstop. `None` disables it and its small overhead. The default is 1.5 ms in a
    /// release build and 4x that in a debug build (see [`DEFAULT_CALL_TIME`]).
    pub call_deadline: Option<Duration>,
    /// Pre-allocate instance slots with the pooling allocator: faster instantiation, but
    /// reserves address space per slot and caps live instances (exchanges) at this number.
    /// `None` allocates on demand.
    pub pooled_instances: Option<u32>,
    /// Log lines a plugin may write per call; the rest are dropped.
    pub max_log_lines_per_call: u32,
    /// Longest log line kept, in bytes; longer lines are cut.
    pub max_log_line_bytes: usize,
}

/// The default time budget of one call. A debug build runs the host's side of a call
/// (lowering arguments, lifting results, first touches of a fresh instance's memory) several
/// times slower than a release build, while the guest's compiled code runs at the same
/// speed; without the margin an ordinary plugin call in a debug build on a loaded machine
/// can run out of time (seen in CI: a `fanout` route and a guest panic's unwinding).
pub const DEFAULT_CALL_TIME: Duration = if cfg!(debug_assertions) {
    Duration::from_micros(6000)
} else {
    Duration::from_micros(1500)
};

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel_per_call: 1_500_000,
            meter_fuel: true,
            memory_bytes: 16 << 20,
            max_route_ids: 65_536,
            max_module_bytes: 16 << 20,
            max_consecutive_failures: 5,
            failure_window: 20,
            window_failures: 10,
            failing_time_per_sec: Duration::from_millis(50),
            key_cache_entries: 4096,
            call_deadline: Some(DEFAULT_CALL_TIME),
            pooled_instances: None,
            max_log_lines_per_call: 16,
            max_log_line_bytes: 1024,
        }
    }
}

/// What reading a body may add to a call's budget, per KiB (copying and parsing it is
/// work the plugin cannot avoid)...
const FUEL_PER_BODY_KIB: u64 = 10_000;
const TIME_PER_BODY_KIB: Duration = Duration::from_micros(10);
/// ...up to this multiple of the base budget.
const MAX_BODY_FACTOR: u32 = 10;

impl Limits {
    /// Fuel for a call whose messages carry `body_bytes` of bodies (never zero).
    pub(crate) fn fuel_for(&self, body_bytes: usize) -> u64 {
        let extra = (body_bytes as u64 / 1024).saturating_mul(FUEL_PER_BODY_KIB);
        let cap = self
            .fuel_per_call
            .saturating_mul(u64::from(MAX_BODY_FACTOR));
        self.fuel_per_call.saturating_add(extra).min(cap).max(1)
    }

    /// CPU time for a call whose messages carry `body_bytes` of bodies.
    pub(crate) fn time_for(&self, body_bytes: usize) -> Option<Duration> {
        let base = self.call_deadline?;
        let kib = u32::try_from(body_bytes / 1024).unwrap_or(u32::MAX);
        let extra = TIME_PER_BODY_KIB.saturating_mul(kib);
        Some(
            base.saturating_add(extra)
                .min(base.saturating_mul(MAX_BODY_FACTOR)),
        )
    }
}
