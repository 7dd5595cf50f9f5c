//! The resource limits applied to every plugin call, with safe defaults.

use std::time::Duration;

/// Limits for plugins. Every field has a default meant for production; tests shrink them.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// CPU budget of one call, in fuel (about one unit per Wasm instruction). A topic route
    /// costs ~15k; 10M stops a runaway loop in well under a millisecond of broker time.
    /// A `route-batch` call gets this budget per message.
    pub fuel_per_call: u64,
    /// Whether calls are metered at all. Turning it off removes the CPU budget (a loop
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
    /// Entries of the per-exchange key -> bindings cache (key-only plugins); 0 disables it.
    pub key_cache_entries: usize,
    /// Messages per `route-batch` call.
    pub max_batch: usize,
    /// Wall-clock backstop for one call (epoch interruption), in case fuel accounting is
    /// not enough (e.g. a slow host call). `None` disables it and its small overhead.
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

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel_per_call: 10_000_000,
            meter_fuel: true,
            memory_bytes: 16 << 20,
            max_route_ids: 65_536,
            max_module_bytes: 16 << 20,
            max_consecutive_failures: 5,
            key_cache_entries: 4096,
            max_batch: 256,
            call_deadline: Some(Duration::from_secs(1)),
            pooled_instances: None,
            max_log_lines_per_call: 16,
            max_log_line_bytes: 1024,
        }
    }
}

impl Limits {
    /// The fuel for a call routing `messages` messages (saturating, never zero).
    pub(crate) fn fuel_for(&self, messages: usize) -> u64 {
        self.fuel_per_call
            .saturating_mul(messages.max(1) as u64)
            .max(1)
    }
}
