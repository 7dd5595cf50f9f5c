//! The circuit breaker around publishing. While the connection is down, publishes wait in
//! the client for the next connection — until the outage passes
//! [`Breaker::open_after`], [`Breaker::failed_attempts`] connection attempts in a row
//! fail, or [`Breaker::max_buffered`] publishes wait. Then the circuit opens and
//! `publish` fails at once with [`ClientError::CircuitOpen`] instead of queueing without
//! bound. On the next connection the circuit is half-open (publishes still fail fast)
//! until the recovery's round trips (the probe) succeed; then it closes.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::health::{Health, LinkState};
use super::{ClientError, Shared};

/// The breaker's thresholds (part of [`Reconnect`](super::Reconnect)).
#[derive(Debug, Clone)]
pub struct Breaker {
    /// Open once the connection has been down this long.
    pub open_after: Duration,
    /// Open after this many failed connection attempts in a row.
    pub failed_attempts: u32,
    /// Open when this many publishes made while disconnected wait for a connection.
    pub max_buffered: usize,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            open_after: Duration::from_secs(5),
            failed_attempts: 5,
            max_buffered: 10_000,
        }
    }
}

/// The publish circuit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Publishes go out (or wait for the next connection).
    Closed,
    /// Publishes fail fast with [`ClientError::CircuitOpen`].
    Open,
    /// Reconnected; publishes fail fast until the recovery's probe succeeds.
    HalfOpen,
}

/// Whether a publish may go out (or wait for the next connection) now.
pub(super) fn admit_publish(shared: &Shared) -> Result<(), ClientError> {
    let Some(policy) = shared.reconnect.as_ref().map(|r| &r.breaker) else {
        return Ok(());
    };
    {
        let health = shared.health.borrow();
        // A closed client refuses with `Closed` whatever the circuit says.
        let closed = health.state == LinkState::Closed;
        if closed || (health.circuit == Circuit::Closed && health.state == LinkState::Connected) {
            return Ok(());
        }
    }
    let mut verdict = Ok(());
    shared.health.send_if_modified(|health| {
        if health.circuit != Circuit::Closed {
            verdict = Err(open_error(health));
            return false;
        }
        if health.state != LinkState::Reconnecting {
            return false;
        }
        let buffered = shared.buffered.fetch_add(1, Ordering::Relaxed) + 1;
        let reason = match health.down_for().unwrap_or_default() {
            down if down >= policy.open_after => format!("disconnected for {down:?}"),
            _ if buffered > policy.max_buffered => {
                format!("{} publishes already wait for a connection", buffered - 1)
            }
            _ => return false,
        };
        open(health, reason);
        verdict = Err(open_error(health));
        true
    });
    verdict
}

/// Opens the circuit if the outage has lasted `open_after`; returns when it would
/// (`None` once open or while connected).
pub(super) fn check_outage(shared: &Shared, now: Instant) -> Option<Instant> {
    let policy = &shared.reconnect.as_ref()?.breaker;
    let mut deadline = None;
    shared.health.send_if_modified(|health| {
        let Some(since) = health.disconnected_since else {
            return false;
        };
        if health.circuit != Circuit::Closed {
            return false;
        }
        let open_at = since + policy.open_after;
        if now < open_at {
            deadline = Some(open_at);
            return false;
        }
        open(health, format!("disconnected for {:?}", now - since));
        true
    });
    deadline
}

/// Opens the circuit after `attempts` failed connection attempts in a row, if that is
/// the threshold.
pub(super) fn on_failed_attempt(shared: &Shared, attempts: u32, error: String) {
    let threshold = shared.reconnect.as_ref().map(|r| r.breaker.failed_attempts);
    shared.health.send_modify(|health| {
        health.failed_attempts = attempts;
        health.last_error = Some(error);
        if health.circuit == Circuit::Closed && threshold.is_some_and(|t| attempts >= t) {
            open(health, format!("{attempts} connection attempts failed"));
        }
    });
}

fn open(health: &mut Health, reason: String) {
    health.circuit = Circuit::Open;
    health.last_error = Some(format!("circuit opened: {reason}"));
}

fn open_error(health: &Health) -> ClientError {
    ClientError::CircuitOpen {
        reason: health.last_error.clone().unwrap_or_default(),
    }
}
