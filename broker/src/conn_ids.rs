//! The one allocator of connection ids. Client connections on every listener, AMQP
//! channels, the broker's own sessions and in-broker handler consumers all take theirs
//! here, so an id names one connection whoever opened it, in one sequence.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::queue::ConnId;

/// Cheap to clone: every clone draws from the same sequence (1, 2, 3, ...).
#[derive(Clone, Default, Debug)]
pub struct ConnIds(Arc<AtomicU64>);

impl ConnIds {
    pub fn next(&self) -> ConnId {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}
