//! The single writer: one thread owns the write side of the database and commits
//! everybody's operations together (group commit).
//!
//! Batches are sized by load: while one commit's fsync runs, the next operations queue up
//! in the channel, and the next transaction takes all of them; at high load one fsync
//! covers thousands of messages. At moderate load that alone made nearly every message its
//! own commit (5,000 msg/s: ~1,600 commits/s of ~6 operations, the writer thread ~0.25 core,
//! almost all of it fdatasync and redb's page flush, a fixed cost per commit), so the writer
//! also gathers (`store/gather.rs`, which also wakes the writer only when needed):
//!
//! - a group that only deletes messages (acks) waits up to `ACK_LINGER` for more: nobody
//!   waits for an ack's commit (a crash before it redelivers the message, as a crash before
//!   the ack would have);
//! - a small group somebody waits for (a confirm, a declare) lingers `LINGER` (2 ms) for
//!   more (a large one does not: the load already makes groups), unless the last linger
//!   gathered nothing waited-for: then not for `QUIET_BACKOFF`, so
//!   a lone synchronous publisher pays one linger per backoff, not one per message.
//!
//! Completions still run only after the commit that includes their operations: a confirm
//! is never sent before its message's fsync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed};
use std::thread;
use std::time::Instant;

use redb::Database;

use super::apply::apply_group;
use super::commit_seq::CommitSeq;
use super::gather::{Gathering, Inbox, gather};
use super::reader::{Commits, StoreReader};
use super::{CommitError, ExchangeRecord, PluginVersion, QueueRecord};
use crate::exchange::BindingId;
use crate::message::Message;
use crate::metrics::{Histogram, HistogramSnapshot};
use crate::protocol::Binding;

/// One change to durable state.
#[derive(Debug)]
pub enum StoreOp {
    PutQueue(QueueRecord),
    /// Removes the queue and all its messages.
    DeleteQueue {
        name: String,
        id: u64,
    },
    PutExchange(ExchangeRecord),
    DeleteExchange(String),
    PutBinding(BindingId, Binding),
    /// An exchange-to-exchange binding, in the same table (ids are shared); removed with
    /// `DeleteBinding`.
    PutExchangeBinding(BindingId, crate::protocol::ExchangeBinding),
    DeleteBinding(BindingId),
    PutMessage {
        queue: u64,
        seq: u64,
        enqueued_at: u64,
        message: Arc<Message>,
    },
    /// Removes a message (and its entry state when `state` says it has one).
    DeleteMessage {
        queue: u64,
        seq: u64,
        state: bool,
    },
    /// Stores a deployed plugin version (metadata and bytes).
    PutPluginVersion(PluginVersion),
    /// Deletes a stored plugin version (metadata and bytes).
    DeletePluginVersion {
        name: String,
        version: u64,
    },
    DeletePluginArtifact(String),
    /// Caches a plugin's compiled code under its artifact key.
    PutPluginArtifact {
        key: String,
        artifact: Vec<u8>,
    },
    /// Makes `version` the one restored at startup.
    SetActivePlugin {
        name: String,
        version: u64,
    },
    /// The plugin was deleted: nothing of it is restored at startup.
    ClearActivePlugin(String),
    /// Starts (`Some`) or ends (`None`) the plugin's version on trial.
    SetPluginTrial {
        name: String,
        trial: Option<super::PluginTrialRecord>,
    },
    /// Records a retried message's delivery count and, for a delayed retry, its due time.
    SetEntryState {
        queue: u64,
        seq: u64,
        delivery_count: u32,
        not_before: Option<u64>,
    },
    /// Stores a handler attachment (replacing one of the same queue and plugin).
    PutHandler(crate::protocol::AttachHandler),
    DeleteHandler {
        queue: String,
        plugin: String,
    },
    /// Stores a user (replacing one of the same name).
    PutUser(crate::auth::UserRecord),
    DeleteUser(String),
    /// Stores a virtual host (by name).
    PutVhost(String),
    DeleteVhost(String),
    /// Remembers a message id in a queue's dedup window until `until` (ms since the Unix
    /// epoch), replacing an earlier entry.
    PutDedup {
        queue: u64,
        message_id: String,
        until: u64,
    },
    /// Forgets a message id whose window has passed.
    DeleteDedup {
        queue: u64,
        message_id: String,
    },
}

/// Runs once the batch holding it has committed (or failed to).
pub type Completion = Box<dyn FnOnce(Result<(), CommitError>) + Send>;

/// Operations to apply in order, and who to tell when they are durable.
#[derive(Default)]
pub struct WriteBatch {
    pub ops: Vec<StoreOp>,
    pub completions: Vec<Completion>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.completions.is_empty()
    }
}

pub(super) enum Request {
    Write(WriteBatch),
    /// Commit what is queued, then stop and close the database.
    Close,
}

/// What the writer thread measures, readable from any thread (for `/metrics`, `/readyz`).
#[derive(Debug)]
pub struct WriterStats {
    /// Store operations per committed transaction.
    pub batch_ops: Histogram,
    /// Time to apply and commit one transaction, fsync included, in seconds.
    pub commit_seconds: Histogram,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    /// The most recent commit failed (cleared by the next success).
    pub failing: AtomicBool,
    /// The writer thread is running (false once it stopped, for whatever reason).
    pub running: AtomicBool,
    /// Fault injection for tests ([`crate::Broker::fail_commits`]): while set, every
    /// transaction with operations is aborted instead of committed, and fails like a
    /// commit on a full or broken disk.
    pub(crate) fail_commits: AtomicBool,
    /// Fault injection for tests ([`crate::Broker::hold_commits`]): while set, the writer
    /// waits before each commit, like a disk that stalls.
    pub(crate) hold_commits: AtomicBool,
}

/// Operations per commit: 1 at idle, thousands under load.
const BATCH_BOUNDS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];
/// Commit durations, 50 µs to 1 s (a disk's fdatasync is typically 0.1–10 ms).
const COMMIT_BOUNDS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0,
];

impl Default for WriterStats {
    fn default() -> Self {
        WriterStats {
            batch_ops: Histogram::new(&BATCH_BOUNDS),
            commit_seconds: Histogram::new(&COMMIT_BOUNDS),
            commits: AtomicU64::new(0),
            commit_errors: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            running: AtomicBool::new(true),
            fail_commits: AtomicBool::new(false),
            hold_commits: AtomicBool::new(false),
        }
    }
}

/// A point-in-time copy of [`WriterStats`].
#[derive(Debug, Clone)]
pub struct WriterSnapshot {
    pub batch_ops: HistogramSnapshot,
    pub commit_seconds: HistogramSnapshot,
    pub commits: u64,
    pub commit_errors: u64,
    pub failing: bool,
    pub running: bool,
}

impl WriterStats {
    pub fn snapshot(&self) -> WriterSnapshot {
        WriterSnapshot {
            batch_ops: self.batch_ops.snapshot(),
            commit_seconds: self.commit_seconds.snapshot(),
            commits: self.commits.load(Relaxed),
            commit_errors: self.commit_errors.load(Relaxed),
            failing: self.failing.load(Relaxed),
            running: self.running.load(Relaxed),
        }
    }
}

/// Handle to the writer thread.
pub struct StoreWriter {
    inbox: Arc<Inbox>,
    thread: Option<thread::JoinHandle<()>>,
    stats: Arc<WriterStats>,
    reader: StoreReader,
}

impl StoreWriter {
    /// Starts the writer thread, the database's only strong owner: it closes with it.
    pub(super) fn start(db: Arc<Database>, mut commit_seq: CommitSeq) -> Self {
        let inbox = Arc::new(Inbox::default());
        let thread_inbox = inbox.clone();
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let commits = Arc::new(Commits::default());
        let reader = StoreReader {
            db: Arc::downgrade(&db),
            commits: commits.clone(),
        };
        let thread = thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                // However the thread ends, panics included: not running, and whatever
                // is still queued (or submitted later) fails instead of waiting forever.
                struct Running(Arc<WriterStats>, Arc<Inbox>);
                impl Drop for Running {
                    fn drop(&mut self) {
                        self.0.running.store(false, Relaxed);
                        for request in self.1.stop() {
                            if let Request::Write(batch) = request {
                                fail_all(batch.completions, &closed());
                            }
                        }
                    }
                }
                let running = Running(thread_stats, thread_inbox);
                run(&db, &running.1, &running.0, &commits, &mut commit_seq);
            })
            .expect("spawning the store writer thread");
        StoreWriter {
            inbox,
            thread: Some(thread),
            stats,
            reader,
        }
    }

    /// Reads messages back (and tells which batches have committed).
    pub fn reader(&self) -> StoreReader {
        self.reader.clone()
    }

    /// The writer's counters, shared with the thread.
    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// Queues a batch; its completions run after the commit that includes it.
    pub fn submit(&self, batch: WriteBatch) {
        submit(&self.inbox, &self.reader, batch);
    }

    /// A handle that submits batches too (one per queue shard); only this one closes.
    pub fn submitter(&self) -> StoreSubmitter {
        StoreSubmitter {
            inbox: self.inbox.clone(),
            reader: self.reader.clone(),
        }
    }

    /// Commits everything submitted so far, closes the database and waits for the thread.
    pub fn close(mut self) {
        let _ = self.inbox.push(Request::Close);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StoreWriter {
    /// Dropped without `close`: the writer commits what was submitted, then stops.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.inbox.push(Request::Close);
        }
    }
}

/// Submits batches to the writer thread, as [`StoreWriter::submit`]; the writer commits
/// batches from every submitter together (group commit).
#[derive(Clone)]
pub struct StoreSubmitter {
    inbox: Arc<Inbox>,
    reader: StoreReader,
}

impl StoreSubmitter {
    pub fn submit(&self, batch: WriteBatch) {
        submit(&self.inbox, &self.reader, batch);
    }

    pub fn reader(&self) -> StoreReader {
        self.reader.clone()
    }
}

fn submit(inbox: &Inbox, reader: &StoreReader, batch: WriteBatch) {
    if batch.is_empty() {
        return;
    }
    reader.commits.submitted.fetch_add(1, Ordering::AcqRel);
    if let Err(Request::Write(batch)) = inbox.push(Request::Write(batch)) {
        fail_all(batch.completions, &closed());
    }
}

fn closed() -> CommitError {
    CommitError("the store is closed".into())
}

fn fail_all(completions: Vec<Completion>, err: &CommitError) {
    for done in completions {
        done(Err(err.clone()));
    }
}

fn run(
    db: &Database,
    inbox: &Inbox,
    stats: &WriterStats,
    commits: &Commits,
    commit_seq: &mut CommitSeq,
) {
    let mut encode_buf = Vec::new();
    let mut closing = false;
    let mut gathering = Gathering::default();
    while !closing {
        let batches = gather(inbox, &mut gathering, &mut closing);
        let ops: usize = batches.iter().map(|b| b.ops.len()).sum();
        while stats.hold_commits.load(Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let started = Instant::now();
        let fail = stats.fail_commits.load(Relaxed);
        let result = commit(db, &batches, &mut encode_buf, fail, commit_seq);
        if result.is_ok() {
            commits
                .committed
                .fetch_add(batches.len() as u64, Ordering::AcqRel);
        } else {
            commits.failed.store(true, Ordering::Release);
        }
        // A batch of completions only writes nothing: it says nothing about the disk.
        if ops > 0 {
            if result.is_ok() {
                stats.commits.fetch_add(1, Relaxed);
            }
            stats.batch_ops.observe(ops as f64);
            stats
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            stats.failing.store(result.is_err(), Relaxed);
        }
        if let Err(e) = &result {
            stats.commit_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "store commit failed");
        }
        for batch in batches {
            match &result {
                Ok(()) => batch.completions.into_iter().for_each(|done| done(Ok(()))),
                Err(e) => fail_all(batch.completions, e),
            }
        }
    }
    tracing::debug!("store writer closed");
}

/// Applies every batch's operations in one transaction, numbered by `commit_seq`, and
/// commits it, then records the number in the sidecar (before any completion runs); with
/// `fail` (a test's fault injection) the transaction is aborted instead and reported as
/// failed.
fn commit(
    db: &Database,
    batches: &[WriteBatch],
    buf: &mut Vec<u8>,
    fail: bool,
    commit_seq: &mut CommitSeq,
) -> Result<(), CommitError> {
    if batches.iter().all(|b| b.ops.is_empty()) {
        return Ok(());
    }
    let txn = db.begin_write()?;
    apply_group(&txn, batches.iter().flat_map(|b| &b.ops), buf)?;
    let seq = commit_seq.stage(&txn)?;
    if fail {
        txn.abort()?;
        return Err(CommitError(
            "injected commit failure (test fault injection)".into(),
        ));
    }
    txn.commit()?;
    commit_seq.committed(seq);
    Ok(())
}
