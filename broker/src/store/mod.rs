//! Durable state in one redb file. This module is the only one that touches redb.
//!
//! Reads happen at startup ([`open`] returns everything to recover) and, for the bodies of
//! deep queues, through a [`StoreReader`]; all writes go through the [`writer`] thread,
//! which batches everyone's operations into one write transaction per commit (group
//! commit) and reports each commit to its waiters.

mod apply;
mod check;
mod commit_seq;
mod entry;
mod error;
mod gather;
#[doc(hidden)]
pub mod power_cut;
mod reader;
mod writer;

pub use check::{CheckError, CheckReport, check};
use commit_seq::open_and_recover;
pub use commit_seq::{Sidecar, sidecar_path};
pub use error::{CommitError, Damage, OpenError, ReadError};
pub use reader::StoreReader;
pub use writer::{
    Completion, StoreOp, StoreSubmitter, StoreWriter, WriteBatch, WriterSnapshot, WriterStats,
};

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::exchange::BindingId;
use crate::message::{Headers, Message, Placement};
use crate::protocol::Binding;
use entry::{decode_entry, encode_entry, recall};

/// Durable queues by name.
const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
/// Durable exchanges by name.
const EXCHANGES: TableDefinition<&str, &[u8]> = TableDefinition::new("exchanges");
/// Bindings by id.
const BINDINGS: TableDefinition<u64, &[u8]> = TableDefinition::new("bindings");
/// Persistent messages of durable queues by (queue id, sequence): the enqueue time
/// (ms since the epoch, u64 LE) followed by the message (`encode_stored`).
const MESSAGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("messages");
/// (delivery count, not before ms or 0) of messages returned to their queue at least once;
/// kept apart from MESSAGES so a retry does not rewrite the body.
const ENTRY_STATE: TableDefinition<(u64, u64), (u32, u64)> = TableDefinition::new("entry_state");

/// Deployed plugin versions by (name, version): their metadata (JSON) ...
const PLUGIN_VERSIONS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("plugin_versions");
/// ... and their component bytes.
const PLUGIN_WASM: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("plugin_wasm");
/// The active version of each deployed plugin.
const ACTIVE_PLUGINS: TableDefinition<&str, u64> = TableDefinition::new("active_plugins");
/// The version on trial (shadow or canary) of each plugin that has one: its
/// [`PluginTrialRecord`] (JSON).
const PLUGIN_TRIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_trials");
/// Compiled plugin code by `<engine compatibility hash>-<content hash>`, so a restart
/// need not recompile (see `PluginHost::artifact_key`).
const PLUGIN_ARTIFACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_artifacts");
/// Handler attachments of durable queues by (queue, plugin): their record (JSON).
const HANDLERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("handlers");
/// Users by name: their record (JSON, with the password's Argon2id hash).
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Virtual host name → [`VhostRecord`] (JSON). A data dir from before vhosts has none:
/// the broker then creates `/`, where its resources already are.
const VHOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("vhosts");
/// (queue id, message id) → until when (ms since the Unix epoch) a publish with that
/// message id is a duplicate in that queue (its `dedup_window`).
const DEDUP: TableDefinition<(u64, &str), u64> = TableDefinition::new("dedup");

/// A virtual host as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VhostRecord {
    pub name: String,
}

/// redb's page cache. Its default (1 GiB) kept a backlog's pages in RAM next to the
/// queues' own copy of every message; the OS page cache already holds recent pages.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The progress redb's repair reports after the last commit failed to verify, when it
/// falls back to the one before (`Database::do_repair` in redb 4.6).
const FELL_BACK_PROGRESS: f64 = 0.3;

/// The name of the database file inside the data directory.
pub const DB_FILE: &str = "broker.redb";

/// A durable queue as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: Headers,
    /// The user whose connection declared it (counted against its `max_queues`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,
}

/// A durable exchange as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeRecord {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub arguments: Headers,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_delete: bool,
    /// An auto-delete exchange that has had a binding: one with none left at startup
    /// (they were to queues that did not outlive the broker) is deleted then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bound: bool,
}

/// A row of the bindings table: to a queue (`queue`), or to an exchange (`destination`).
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredBinding {
    Queue(Binding),
    Exchange(crate::protocol::ExchangeBinding),
}

/// One deployed version of a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginVersion {
    pub name: String,
    /// 1 for the first deploy of a name, then counting up.
    pub version: u64,
    /// SHA-256 of the component bytes, hex.
    pub hash: String,
    /// Milliseconds since the epoch.
    pub deployed_at: u64,
    pub deployed_by: String,
    pub size_bytes: u64,
    #[serde(skip)]
    pub wasm: bytes::Bytes,
}

/// A plugin version on trial next to the active one, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginTrialRecord {
    pub version: u64,
    #[serde(flatten)]
    pub mode: crate::plugin::TrialMode,
}

/// A stored message of a recovered queue.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub seq: u64,
    /// When it entered the queue (ms since the epoch): its TTL and delay count from here.
    pub enqueued_at: u64,
    pub delivery_count: u32,
    /// A pending retry's due time.
    pub not_before: Option<u64>,
    pub message: Recalled,
}

/// A recovered message: whole, or (past its queue's in-memory limit) only what placing it
/// needs, its body staying on disk.
#[derive(Debug, Clone)]
pub enum Recalled {
    InMemory(Arc<Message>),
    OnDisk(Placement),
}

/// A durable queue and its persistent messages, in sequence order.
#[derive(Debug, Clone)]
pub struct RecoveredQueue {
    pub record: QueueRecord,
    pub messages: Vec<StoredMessage>,
}

/// Everything the broker recovers at startup.
#[derive(Debug, Default)]
pub struct Recovered {
    pub queues: Vec<RecoveredQueue>,
    pub exchanges: Vec<ExchangeRecord>,
    pub bindings: Vec<(BindingId, Binding)>,
    /// Exchange-to-exchange bindings (stored in the bindings table, told apart by shape).
    pub exchange_bindings: Vec<(BindingId, crate::protocol::ExchangeBinding)>,
    /// Every deployed plugin version, by name then version.
    pub plugin_versions: Vec<PluginVersion>,
    /// Plugin name → active version.
    pub active_plugins: Vec<(String, u64)>,
    /// Plugin name → version on trial.
    pub plugin_trials: Vec<(String, PluginTrialRecord)>,
    /// Compiled plugin code by artifact key.
    pub plugin_artifacts: std::collections::HashMap<String, bytes::Bytes>,
    /// Handler attachments of durable queues.
    pub handlers: Vec<crate::protocol::AttachHandler>,
    /// Users (none before the first start that created the default one).
    pub users: Vec<crate::auth::UserRecord>,
    /// Virtual host names (none before the first start that created `/`).
    pub vhosts: Vec<String>,
    /// Message ids seen within queues' dedup windows: (queue id, message id, until).
    pub dedup: Vec<(u64, String, u64)>,
    /// The recovery after a crash found that the last commit did not verify — torn by the
    /// crash (it was never confirmed) or damaged since — and recovered the one before it.
    pub fell_back: bool,
    /// The number of the last commit the store writer made, as recovered
    /// (`store/commit_seq.rs`).
    pub commit_seq: u64,
    /// What the commit counter's sidecar said before this open (checked against
    /// `commit_seq`: the open fails when it says more).
    pub sidecar: Sidecar,
}

/// Makes the storage a broker opens instead of its data directory's file: tests' simulated
/// disks ([`power_cut`]). Called once per start.
pub type BackendFactory = Arc<dyn Fn() -> Box<dyn redb::StorageBackend> + Send + Sync>;

/// Opens (or creates) the database in `data_dir`, reads what to recover, and starts the
/// writer thread. Of each queue's ready messages, the first `in_memory(queue)` are read
/// whole; the bodies of the rest stay on disk.
pub fn open(
    data_dir: &Path,
    in_memory: impl Fn(&QueueRecord) -> usize,
) -> Result<(Recovered, StoreWriter), OpenError> {
    open_with(data_dir, None, in_memory)
}

/// [`open`] on `backend` instead of the data directory's file when one is given (tests).
///
/// Every page of the database is checked against its checksum on open (redb's integrity
/// check): a plain open trusts a cleanly closed file, so a flipped bit would be served (or
/// panic redb). A damaged file is refused with an error naming it.
pub fn open_with(
    data_dir: &Path,
    backend: Option<Box<dyn redb::StorageBackend>>,
    in_memory: impl Fn(&QueueRecord) -> usize,
) -> Result<(Recovered, StoreWriter), OpenError> {
    std::fs::create_dir_all(data_dir).map_err(|source| OpenError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = data_dir.join(DB_FILE);
    let (db, recovered) = open_and_recover(&path, backend, in_memory)?;
    let commit_seq = commit_seq::CommitSeq::open(&path, recovered.commit_seq);
    Ok((recovered, StoreWriter::start(Arc::new(db), commit_seq)))
}

/// One open of the database: checked, recovered, compared with the sidecar. With
/// `stop_fallback`, a recovery about to fall back fails with `RepairAborted` instead. redb
/// may panic on a damaged file where its checks do not reach: that is reported as damage
/// too.
pub(super) fn open_once(
    path: &Path,
    backend: Option<Box<dyn redb::StorageBackend>>,
    in_memory: &impl Fn(&QueueRecord) -> usize,
    sidecar: Sidecar,
    stop_fallback: bool,
) -> Result<(Database, Recovered), OpenError> {
    let damaged = |damage| OpenError::Damaged {
        path: path.to_owned(),
        damage,
    };
    // redb reports its recovery's steps through this callback; the step after a last
    // commit that did not verify is the only one at 30 %.
    let fell_back = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut builder = redb::Builder::new();
        let seen = fell_back.clone();
        builder
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .set_repair_callback(move |session| {
                if session.progress() == FELL_BACK_PROGRESS {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    if stop_fallback {
                        session.abort();
                    }
                }
            });
        let db = match backend {
            None => builder.create(path),
            Some(backend) => builder.create_with_backend(DynBackend(backend)),
        }
        .map_err(|error| OpenError::Database {
            path: path.to_owned(),
            error,
        })?;
        let had_counter = create_tables(&db).map_err(|e| damaged(Damage::Read(e)))?;
        let mut recovered = recover(&db, in_memory).map_err(damaged)?;
        recovered.fell_back = fell_back.load(std::sync::atomic::Ordering::Relaxed);
        recovered.sidecar = sidecar;
        commit_seq::verify(path, sidecar, recovered.commit_seq, had_counter)?;
        Ok((db, recovered))
    }));
    opened.unwrap_or_else(|panic| Err(damaged(Damage::Panicked(panic_message(&*panic)))))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// A boxed backend as a backend (redb takes `impl StorageBackend`).
#[derive(Debug)]
struct DynBackend(Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for DynBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.0.close()
    }
}

/// Creates the tables that are missing; true when the commit counter was there already.
fn create_tables(db: &Database) -> Result<bool, redb::Error> {
    let txn = db.begin_write()?;
    let had_counter = commit_seq::ensure_stored(&txn)?;
    txn.open_table(QUEUES)?;
    txn.open_table(EXCHANGES)?;
    txn.open_table(BINDINGS)?;
    txn.open_table(MESSAGES)?;
    txn.open_table(ENTRY_STATE)?;
    txn.open_table(PLUGIN_VERSIONS)?;
    txn.open_table(PLUGIN_WASM)?;
    txn.open_table(ACTIVE_PLUGINS)?;
    txn.open_table(PLUGIN_TRIALS)?;
    txn.open_table(PLUGIN_ARTIFACTS)?;
    txn.open_table(HANDLERS)?;
    txn.open_table(USERS)?;
    txn.open_table(VHOSTS)?;
    txn.open_table(DEDUP)?;
    txn.commit()?;
    Ok(had_counter)
}

fn corrupt(table: &'static str) -> impl Fn(String) -> Damage {
    move |reason| Damage::Corrupt { table, reason }
}

fn recover(db: &Database, in_memory: impl Fn(&QueueRecord) -> usize) -> Result<Recovered, Damage> {
    let txn = db.begin_read()?;
    let messages = txn.open_table(MESSAGES)?;
    let deliveries = txn.open_table(ENTRY_STATE)?;
    let mut recovered = Recovered {
        commit_seq: commit_seq::stored(&txn)?,
        ..Recovered::default()
    };

    for entry in txn.open_table(QUEUES)?.iter()? {
        let (_, value) = entry?;
        let record: QueueRecord =
            serde_json::from_slice(value.value()).map_err(|e| corrupt("queues")(e.to_string()))?;
        let range = (record.id, 0)..=(record.id, u64::MAX);
        // Few messages have a state: one pass over them beats a lookup per message.
        let mut states = std::collections::HashMap::new();
        for entry in deliveries.range(range.clone())? {
            let (key, state) = entry?;
            states.insert(key.value().1, state.value());
        }
        let keep = in_memory(&record);
        let mut stored = Vec::new();
        for entry in messages.range(range)? {
            let (key, value) = entry?;
            let (_, seq) = key.value();
            let (delivery_count, not_before) = states.remove(&seq).unwrap_or((0, 0));
            let on_disk = stored.len() >= keep && not_before == 0;
            let (enqueued_at, message) =
                recall(value.value(), on_disk).map_err(corrupt("messages"))?;
            stored.push(StoredMessage {
                seq,
                enqueued_at,
                delivery_count,
                not_before: (not_before > 0).then_some(not_before),
                message,
            });
        }
        recovered.queues.push(RecoveredQueue {
            record,
            messages: stored,
        });
    }
    for entry in txn.open_table(EXCHANGES)?.iter()? {
        let (_, value) = entry?;
        let record = serde_json::from_slice(value.value())
            .map_err(|e| corrupt("exchanges")(e.to_string()))?;
        recovered.exchanges.push(record);
    }
    for entry in txn.open_table(BINDINGS)?.iter()? {
        let (key, value) = entry?;
        match serde_json::from_slice(value.value())
            .map_err(|e| corrupt("bindings")(e.to_string()))?
        {
            StoredBinding::Queue(binding) => recovered.bindings.push((key.value(), binding)),
            StoredBinding::Exchange(binding) => {
                recovered.exchange_bindings.push((key.value(), binding))
            }
        }
    }
    let wasm = txn.open_table(PLUGIN_WASM)?;
    for entry in txn.open_table(PLUGIN_VERSIONS)?.iter()? {
        let (key, value) = entry?;
        let mut version: PluginVersion = serde_json::from_slice(value.value())
            .map_err(|e| corrupt("plugin_versions")(e.to_string()))?;
        let bytes = wasm
            .get(key.value())?
            .ok_or_else(|| corrupt("plugin_wasm")(format!("no bytes for {}", version.name)))?;
        version.wasm = bytes::Bytes::copy_from_slice(bytes.value());
        recovered.plugin_versions.push(version);
    }
    for entry in txn.open_table(ACTIVE_PLUGINS)?.iter()? {
        let (name, version) = entry?;
        recovered
            .active_plugins
            .push((name.value().to_owned(), version.value()));
    }
    for entry in txn.open_table(PLUGIN_TRIALS)?.iter()? {
        let (name, value) = entry?;
        let record = serde_json::from_slice(value.value())
            .map_err(|e| corrupt("plugin_trials")(e.to_string()))?;
        recovered
            .plugin_trials
            .push((name.value().to_owned(), record));
    }
    for entry in txn.open_table(PLUGIN_ARTIFACTS)?.iter()? {
        let (key, artifact) = entry?;
        recovered.plugin_artifacts.insert(
            key.value().to_owned(),
            bytes::Bytes::copy_from_slice(artifact.value()),
        );
    }
    for entry in txn.open_table(HANDLERS)?.iter()? {
        let (_, value) = entry?;
        let record = serde_json::from_slice(value.value())
            .map_err(|e| corrupt("handlers")(e.to_string()))?;
        recovered.handlers.push(record);
    }
    for entry in txn.open_table(USERS)?.iter()? {
        let (_, value) = entry?;
        let record =
            serde_json::from_slice(value.value()).map_err(|e| corrupt("users")(e.to_string()))?;
        recovered.users.push(record);
    }
    for entry in txn.open_table(VHOSTS)?.iter()? {
        let (_, value) = entry?;
        let record: VhostRecord =
            serde_json::from_slice(value.value()).map_err(|e| corrupt("vhosts")(e.to_string()))?;
        recovered.vhosts.push(record.name);
    }
    for entry in txn.open_table(DEDUP)?.iter()? {
        let (key, until) = entry?;
        let (queue, id) = key.value();
        recovered.dedup.push((queue, id.to_owned(), until.value()));
    }
    Ok(recovered)
}

#[cfg(test)]
mod integrity_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn put(queue: u64, seq: u64) -> StoreOp {
        StoreOp::PutMessage {
            queue,
            seq,
            enqueued_at: 1,
            message: Arc::new(Message::text("q", format!("m{seq}"))),
        }
    }

    fn delete(queue: u64, seq: u64, state: bool) -> StoreOp {
        StoreOp::DeleteMessage { queue, seq, state }
    }

    /// Messages acked within their own commit group are never written, and the rest of the
    /// group (including earlier-committed deletes and entry states) still applies; entry
    /// states come back with their messages.
    ///
    /// Writing such a message and deleting it again would leave the same final state, so
    /// the writes are observed through a sentinel: seq 3 is first committed with another
    /// body, and survives untouched only if the group wrote neither the put nor the delete
    /// of its seq 3. (Real seqs are never reused; this one is, to make the writes visible.)
    #[test]
    fn a_group_skips_messages_acked_before_their_commit() {
        let dir = tempfile::tempdir().unwrap();
        let record = QueueRecord {
            id: 7,
            name: "q".into(),
            auto_delete: false,
            arguments: Headers::new(),
            declared_by: None,
        };
        let (_, writer) = open(dir.path(), |_| usize::MAX).unwrap();
        let (committed, first_group) = std::sync::mpsc::channel();
        let sentinel = StoreOp::PutMessage {
            queue: 7,
            seq: 3,
            enqueued_at: 1,
            message: Arc::new(Message::text("q", "sentinel-3")),
        };
        writer.submit(WriteBatch {
            ops: vec![
                StoreOp::PutQueue(record.clone()),
                put(7, 1),
                put(7, 2),
                sentinel,
            ],
            completions: vec![Box::new(move |result| committed.send(result).unwrap())],
        });
        // The next batch must be a group of its own.
        first_group
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap()
            .unwrap();
        writer.submit(WriteBatch {
            ops: vec![
                put(7, 3),
                put(7, 4),
                StoreOp::SetEntryState {
                    queue: 7,
                    seq: 4,
                    delivery_count: 2,
                    not_before: None,
                },
                put(7, 5),
                StoreOp::PutMessage {
                    queue: 7,
                    seq: 6,
                    enqueued_at: 1,
                    message: Arc::new(Message {
                        properties: crate::message::Properties {
                            delay_ms: Some(50),
                            ..Default::default()
                        },
                        ..Message::text("q", "m6")
                    }),
                },
                delete(7, 3, false),
                delete(7, 4, true),
                delete(7, 1, false),
                StoreOp::SetEntryState {
                    queue: 7,
                    seq: 2,
                    delivery_count: 3,
                    not_before: Some(99),
                },
            ],
            completions: Vec::new(),
        });
        writer.close();

        // With no room in memory, bodies stay on disk, except a pending retry's and a
        // delayed message's (both wait in memory).
        let (recovered, writer) = open(dir.path(), |_| 0).unwrap();
        writer.close();
        let queue = &recovered.queues[0];
        assert_eq!(queue.record, record);
        let seqs: Vec<u64> = queue.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [2, 3, 5, 6], "seq 3: neither put nor delete written");
        let Recalled::InMemory(first) = &queue.messages[0].message else {
            panic!("a pending retry is read whole");
        };
        assert_eq!(&first.body[..], b"m2");
        let body_lens: Vec<u64> = queue.messages[1..3]
            .iter()
            .map(|m| match &m.message {
                Recalled::OnDisk(placement) => placement.body_len,
                Recalled::InMemory(_) => panic!("past the limit only the placement is read"),
            })
            .collect();
        assert_eq!(
            body_lens,
            ["sentinel-3".len() as u64, 2],
            "the sentinel's body"
        );
        assert!(
            matches!(&queue.messages[3].message, Recalled::InMemory(m) if &m.body[..] == b"m6")
        );
        let states: Vec<_> = queue
            .messages
            .iter()
            .map(|m| (m.delivery_count, m.not_before))
            .collect();
        assert_eq!(states, [(3, Some(99)), (0, None), (0, None), (0, None)]);
    }
}
