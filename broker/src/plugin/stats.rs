//! Per-plugin-version counters, updated lock-free by every exchange running the version.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Call-time histogram buckets: bucket `i` counts calls shorter than `256 ns << i`; the
/// last one counts the rest. 256 ns .. 1 s covers a cached lookup up to the deadline.
pub const CALL_TIME_BUCKETS: usize = 23;

/// Upper bound of call-time bucket `i` (`None`: the unbounded last bucket).
pub fn call_time_bucket_bound(i: usize) -> Option<Duration> {
    (i + 1 < CALL_TIME_BUCKETS).then(|| Duration::from_nanos(256 << i))
}

/// Counters of one plugin version (all the exchanges that ran it).
#[derive(Debug, Default)]
pub struct PluginStats {
    messages: AtomicU64,
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
    call_buckets: [AtomicU64; CALL_TIME_BUCKETS],
}

/// A point-in-time copy of [`PluginStats`], for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Messages routed by this version (cache hits included).
    pub messages: u64,
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
    /// Calls per duration bucket (see [`call_time_bucket_bound`]).
    pub call_buckets: [u64; CALL_TIME_BUCKETS],
}

impl StatsSnapshot {
    /// The sum of two snapshots (one plugin's versions, for its totals).
    pub fn merged(mut self, other: &StatsSnapshot) -> StatsSnapshot {
        self.messages += other.messages;
        self.calls += other.calls;
        self.errors += other.errors;
        self.traps += other.traps;
        self.timeouts += other.timeouts;
        self.memory_exhausted += other.memory_exhausted;
        self.invalid_output += other.invalid_output;
        self.instantiations += other.instantiations;
        self.quarantines += other.quarantines;
        self.cache_hits += other.cache_hits;
        self.call_time += other.call_time;
        for (mine, theirs) in self.call_buckets.iter_mut().zip(other.call_buckets) {
            *mine += theirs;
        }
        self
    }

    /// The upper bound of the bucket holding the 99th percentile call (`None`: no calls).
    pub fn call_p99(&self) -> Option<Duration> {
        let total: u64 = self.call_buckets.iter().sum();
        let rank = total - total / 100;
        let mut seen = 0;
        for (i, count) in self.call_buckets.iter().enumerate() {
            seen += count;
            if total > 0 && seen >= rank {
                return Some(call_time_bucket_bound(i).unwrap_or(Duration::from_secs(1)));
            }
        }
        None
    }
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
        let nanos = elapsed.as_nanos().min(u64::MAX as u128) as u64;
        self.calls.fetch_add(1, Relaxed);
        self.call_nanos.fetch_add(nanos, Relaxed);
        // Bucket i holds [256 << (i-1), 256 << i): count the bits above the first 8.
        let bucket = (u64::BITS - (nanos >> 8).leading_zeros()) as usize;
        self.call_buckets[bucket.min(CALL_TIME_BUCKETS - 1)].fetch_add(1, Relaxed);
    }

    pub(crate) fn record_messages(&self, messages: u64) {
        self.messages.fetch_add(messages, Relaxed);
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
            messages: self.messages.load(Relaxed),
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
            call_buckets: std::array::from_fn(|i| self.call_buckets[i].load(Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_time_histogram() {
        let stats = PluginStats::default();
        assert_eq!(stats.snapshot().call_p99(), None);
        for _ in 0..98 {
            stats.record_call(Duration::from_nanos(100)); // bucket 0
        }
        stats.record_call(Duration::from_micros(3)); // < 4096 ns: bucket 4
        stats.record_call(Duration::from_secs(5)); // last bucket
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.call_buckets[0], 98);
        assert_eq!(snapshot.call_buckets[4], 1);
        assert_eq!(snapshot.call_buckets[CALL_TIME_BUCKETS - 1], 1);
        assert_eq!(snapshot.call_p99(), Some(Duration::from_nanos(4096)));
        let both = snapshot.merged(&snapshot);
        assert_eq!((both.calls, both.call_buckets[0]), (200, 196));
    }
}
