//! What [`Client::health`](super::Client::health) reports: whether the client is
//! connected, reconnecting or closed, the publish circuit's state, how many times it
//! reconnected and why it last lost (or failed to open) a connection.

use std::time::{Duration, Instant};

use super::circuit::Circuit;

/// The client's connection, as far as the client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connected,
    /// The connection dropped; the client is opening a new one (or recovering on it:
    /// redeclaring, resubscribing, resending).
    Reconnecting,
    /// The connection is gone for good: closed by the application, dropped without
    /// [`Reconnect`](super::Reconnect), or reconnecting gave up after its attempts.
    Closed,
}

/// A snapshot of the client's health.
#[derive(Debug, Clone)]
pub struct Health {
    pub state: LinkState,
    pub circuit: Circuit,
    /// Connections opened after the first one.
    pub reconnects: u64,
    /// Failed connection attempts since the connection was lost (0 while connected).
    pub failed_attempts: u32,
    /// Why the last connection dropped, a connection attempt failed, a recovery step was
    /// refused, or the circuit opened — the latest of these.
    pub last_error: Option<String>,
    /// When the current (or latest) connection was established.
    pub last_connected: Instant,
    /// When the connection was lost; `None` while connected.
    pub disconnected_since: Option<Instant>,
    /// Publishes sent again on a new connection because the old one dropped before they
    /// were confirmed.
    pub resent: u64,
}

impl Health {
    pub(super) fn connected_now() -> Health {
        Health {
            state: LinkState::Connected,
            circuit: Circuit::Closed,
            reconnects: 0,
            failed_attempts: 0,
            last_error: None,
            last_connected: Instant::now(),
            disconnected_since: None,
            resent: 0,
        }
    }

    /// How long the client has been without a connection; `None` while connected.
    pub fn down_for(&self) -> Option<Duration> {
        self.disconnected_since.map(|since| since.elapsed())
    }

    /// Time since the latest connection was established.
    pub fn since_connected(&self) -> Duration {
        self.last_connected.elapsed()
    }
}
