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
    ///
    /// A run of mostly consecutive numbers (a FIFO backlog) is read with one range scan,
    /// several times cheaper than a B-tree lookup per message.
    pub fn messages(&self, queue: u64, seqs: &[u64]) -> Result<Vec<Option<Message>>, ReadError> {
        let db = self.db.upgrade().ok_or(ReadError::Closed)?;
        let txn = db.begin_read().map_err(redb::Error::from)?;
        let table = txn.open_table(MESSAGES).map_err(redb::Error::from)?;
        let decode = |bytes: &[u8]| {
            decode_entry(bytes)
                .map(|(_, m)| m)
                .map_err(ReadError::Corrupt)
        };
        let (Some(&first), Some(&last)) = (seqs.iter().min(), seqs.iter().max()) else {
            return Ok(Vec::new());
        };
        if last - first >= 2 * seqs.len() as u64 {
            return seqs
                .iter()
                .map(
                    |&seq| match table.get((queue, seq)).map_err(redb::Error::from)? {
                        Some(value) => decode(value.value()).map(Some),
                        None => Ok(None),
                    },
                )
                .collect();
        }
        let wanted: std::collections::HashMap<u64, usize> =
            seqs.iter().enumerate().map(|(i, seq)| (*seq, i)).collect();
        let mut out: Vec<Option<Message>> = (0..seqs.len()).map(|_| None).collect();
        for entry in table
            .range((queue, first)..=(queue, last))
            .map_err(redb::Error::from)?
        {
            let (key, value) = entry.map_err(redb::Error::from)?;
            if let Some(&i) = wanted.get(&key.value().1) {
                out[i] = Some(decode(value.value())?);
            }
        }
        Ok(out)
    }
}
