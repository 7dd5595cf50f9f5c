//! How an exchange's calls have been going, and what follows from it: quarantine (failures
//! in a row, or a failure ratio over a sliding window), a throttle on the time its failing
//! calls take, and rate-limited failure logs.

use std::time::{Duration, Instant};

use super::limits::Limits;

/// Why an exchange was quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuarantineCause {
    InARow(u32),
    InWindow { failures: u32, calls: u32 },
}

impl std::fmt::Display for QuarantineCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuarantineCause::InARow(n) => write!(f, "{n} calls failed in a row"),
            QuarantineCause::InWindow { failures, calls } => {
                write!(f, "{failures} of its last {calls} calls failed")
            }
        }
    }
}

/// The recent outcomes of one exchange's calls.
#[derive(Debug)]
pub struct CallHealth {
    /// Bit i is set when the i-th most recent call failed.
    window: u64,
    calls_in_window: u32,
    in_a_row: u32,
    /// Failing time the exchange may still spend (negative: throttled), refilled at
    /// `failing_time_per_sec`.
    failing_allowance: f64,
    refilled_at: Instant,
}

impl CallHealth {
    pub fn new(limits: &Limits) -> Self {
        CallHealth {
            window: 0,
            calls_in_window: 0,
            in_a_row: 0,
            failing_allowance: limits.failing_time_per_sec.as_secs_f64(),
            refilled_at: Instant::now(),
        }
    }

    /// Forgets the past (a reset or a new plugin version).
    pub fn clear(&mut self, limits: &Limits) {
        *self = CallHealth::new(limits);
    }

    pub fn record_success(&mut self, limits: &Limits) {
        self.push(false, limits);
        self.in_a_row = 0;
    }

    /// Records a failed call that took `spent`; says whether it quarantines the exchange.
    pub fn record_failure(&mut self, spent: Duration, limits: &Limits) -> Option<QuarantineCause> {
        self.push(true, limits);
        self.in_a_row += 1;
        self.refill(limits);
        self.failing_allowance -= spent.as_secs_f64();
        let failures = self.failures_in_window(limits);
        if self.in_a_row >= limits.max_consecutive_failures {
            Some(QuarantineCause::InARow(self.in_a_row))
        } else if failures >= limits.window_failures && failures * 2 >= self.calls_in_window {
            Some(QuarantineCause::InWindow {
                failures,
                calls: self.calls_in_window,
            })
        } else {
            None
        }
    }

    /// Whether failing calls have used up their time share: the exchange's publishes then
    /// fail fast until it refills.
    pub fn throttled(&mut self, limits: &Limits) -> bool {
        self.refill(limits);
        self.failing_allowance < 0.0
    }

    fn window_size(limits: &Limits) -> u32 {
        limits.failure_window.clamp(1, 64)
    }

    fn push(&mut self, failed: bool, limits: &Limits) {
        let size = Self::window_size(limits);
        self.window = (self.window << 1) | u64::from(failed);
        self.calls_in_window = (self.calls_in_window + 1).min(size);
    }

    fn failures_in_window(&self, limits: &Limits) -> u32 {
        let size = Self::window_size(limits);
        let mask = if size == 64 {
            u64::MAX
        } else {
            (1u64 << size) - 1
        };
        (self.window & mask).count_ones()
    }

    fn refill(&mut self, limits: &Limits) {
        let now = Instant::now();
        let per_sec = limits.failing_time_per_sec.as_secs_f64();
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.failing_allowance = (self.failing_allowance + elapsed * per_sec).min(per_sec);
        self.refilled_at = now;
    }
}

/// At most one failure line per interval for one exchange (or handler attachment); the
/// next line says how many it left out.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct LogThrottle {
    last: Option<Instant>,
    suppressed: u64,
}

/// The shortest time between two failure lines of one exchange.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl LogThrottle {
    /// `Some(lines left out since the last one)` when a line may be written now.
    pub fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < FAILURE_LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_in_a_row_and_by_ratio() {
        let limits = Limits::default();
        let mut health = CallHealth::new(&limits);
        let spent = Duration::ZERO;
        for _ in 0..4 {
            assert_eq!(health.record_failure(spent, &limits), None);
        }
        assert_eq!(
            health.record_failure(spent, &limits),
            Some(QuarantineCause::InARow(5))
        );

        // Every other call failing: never 5 in a row, but 10 of the last 20.
        let mut health = CallHealth::new(&limits);
        let mut quarantined = None;
        for i in 0..40 {
            if i % 2 == 0 {
                health.record_success(&limits);
            } else if let Some(cause) = health.record_failure(spent, &limits) {
                quarantined = Some((i, cause));
                break;
            }
        }
        assert_eq!(
            quarantined,
            Some((
                19,
                QuarantineCause::InWindow {
                    failures: 10,
                    calls: 20
                }
            ))
        );

        // One failure in three stays below the ratio.
        let mut health = CallHealth::new(&limits);
        for i in 0..300 {
            if i % 3 == 0 {
                assert_eq!(health.record_failure(spent, &limits), None);
            } else {
                health.record_success(&limits);
            }
        }
    }

    #[test]
    fn failing_time_throttles() {
        let limits = Limits {
            failing_time_per_sec: Duration::from_millis(10),
            ..Limits::default()
        };
        let mut health = CallHealth::new(&limits);
        assert!(!health.throttled(&limits));
        health.record_failure(Duration::from_millis(4), &limits);
        health.record_success(&limits);
        assert!(!health.throttled(&limits));
        health.record_failure(Duration::from_millis(8), &limits);
        assert!(
            health.throttled(&limits),
            "12 ms of failures in a 10 ms/s share"
        );
    }

    #[test]
    fn log_throttle_counts_what_it_leaves_out() {
        let mut log = LogThrottle::default();
        assert_eq!(log.admit(), Some(0));
        assert_eq!(log.admit(), None);
        assert_eq!(log.admit(), None);
        log.last = Some(Instant::now() - FAILURE_LOG_INTERVAL);
        assert_eq!(log.admit(), Some(2));
    }
}
