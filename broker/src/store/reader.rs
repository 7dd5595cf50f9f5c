//! Reading messages back while the broker runs.
//!
//! A deep queue keeps only the head of its backlog in memory; the bodies of the rest live
//! only in the store (see `Queue` paging) and are read back in runs shortly before they are
//! delivered. A message may leave memory only once the batch that stored it has committed,
//! so the reader also tells which batches have.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use redb::{Database, ReadableDatabase};

use super::{MESSAGES, ReadError, decode_entry};
use crate::message::Message;

/// Batches handed to the writer and batches durably committed, counted in submission
/// order (the writer commits them in that order).
#[derive(Debug, Default)]
pub(super) struct Commits {
    pub submitted: AtomicU64,
    pub committed: AtomicU64,
    /// A commit failed: its messages are not on disk, and the counts no longer say which
    /// are. Nothing leaves memory after that (until a restart).
    pub failed: AtomicBool,
}

/// Reads stored messages; cheap to clone. Holds the database weakly: it closes with the
/// writer, after which reads fail with [`ReadError::Closed`].
#[derive(Debug, Clone)]
pub struct StoreReader {
    pub(super) db: Weak<Database>,
    pub(super) commits: Arc<Commits>,
}

impl StoreReader {
    /// The number of the batch being filled now: a message stored now commits with it.
    pub fn current_batch(&self) -> u64 {
        self.commits.submitted.load(Ordering::Acquire) + 1
    }

    /// Whether batch `batch` (and every one before it) has committed.
    pub fn is_committed(&self, batch: u64) -> bool {
        !self.commits.failed.load(Ordering::Acquire)
            && self.commits.committed.load(Ordering::Acquire) >= batch
    }

    /// A commit failed since the start: which messages are on disk is no longer known.
    pub fn has_failed(&self) -> bool {
        self.commits.failed.load(Ordering::Acquire)
    }

    /// Reads messages of queue `queue` by sequence number, in one read transaction; a
    /// message not in the store comes back as `None`.
    pub fn messages(&self, queue: u64, seqs: &[u64]) -> Result<Vec<Option<Message>>, ReadError> {
        let db = self.db.upgrade().ok_or(ReadError::Closed)?;
        let txn = db.begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(MESSAGES).map_err(redb::Error::from)?;
        seqs.iter()
            .map(|&seq| {
                let Some(value) = table.get((queue, seq)).map_err(redb::Error::from)? else {
                    return Ok(None);
                };
                let (_, message) = decode_entry(value.value()).map_err(ReadError::Corrupt)?;
                Ok(Some(message))
            })
            .collect()
    }
}
