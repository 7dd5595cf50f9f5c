//! Admission of client connections, shared by every listener (WebSocket, STOMP): the
//! connection slots (`max_connections`), the per-source limit, the one allocator of
//! connection ids, and the count of live connections the broker waits for at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::sources::{SourceGuard, Sources};
use crate::queue::ConnId;

pub struct Admission {
    slots: Arc<Semaphore>,
    sources: Arc<Sources>,
    max_per_source: usize,
    next_conn: AtomicU64,
    /// Each admitted connection holds a clone; the receiver returns `None` once every
    /// connection ended and every listener dropped its `Admission`.
    alive: mpsc::Sender<()>,
}

/// An admitted connection: its id, and its slot and source count until dropped.
pub struct Ticket {
    pub conn: ConnId,
    _slot: OwnedSemaphorePermit,
    _source: SourceGuard,
    _alive: mpsc::Sender<()>,
}

impl Admission {
    pub(super) fn new(
        max_connections: usize,
        max_per_source: usize,
    ) -> (Arc<Self>, mpsc::Receiver<()>) {
        let (alive, alive_rx) = mpsc::channel(1);
        let admission = Admission {
            slots: Arc::new(Semaphore::new(max_connections)),
            sources: Sources::new(max_per_source),
            max_per_source,
            next_conn: AtomicU64::new(1),
            alive,
        };
        (Arc::new(admission), alive_rx)
    }

    /// Waits for a free connection slot (connections beyond the limit wait to be
    /// accepted).
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed")
    }

    /// Admits a connection from `peer` into `slot`, or `None` (logged) when its address
    /// has too many connections already.
    pub fn admit(&self, slot: OwnedSemaphorePermit, peer: SocketAddr) -> Option<Ticket> {
        let Some(source) = self.sources.admit(peer.ip()) else {
            tracing::warn!(%peer, limit = self.max_per_source, "connection refused: too many from this address");
            return None;
        };
        Some(Ticket {
            conn: self.next_conn.fetch_add(1, Ordering::Relaxed),
            _slot: slot,
            _source: source,
            _alive: self.alive.clone(),
        })
    }
}
