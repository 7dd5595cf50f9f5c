//! The store's commit counter, kept twice: inside redb, and in a sidecar file next to it.
//!
//! redb's 1-phase commit cannot tell, after a crash, a last commit the crash tore (never
//! confirmed: falling back to the one before is right) from a last commit damaged on disk
//! since (confirmed: falling back silently serves a shorter queue). So every commit of
//! the writer also stores the next number of a counter in `store_meta`, and once the
//! commit is durable — before its confirms go out — the writer records that number in
//! `<data file>.commit-seq`. On open, a recovered counter below the sidecar's means a
//! commit the broker confirmed is gone: the store refuses to start.
//!
//! The sidecar is written in place (16 bytes at offset 0) and never synced: a write to
//! the page cache per commit, next to the commit's own fsync. That is safe because it is
//! only written after redb's commit is durable: whatever of it survives a power cut names
//! a durable commit or an older one, so it can make the check miss (an old or torn
//! sidecar), never raise a false alarm. A `kill -9` leaves it in the page cache, which is
//! where the case it exists for (damage found by the recovery after a crash) begins.
//!
//! What each sidecar means on open:
//! - missing (a data dir from before it, or deleted by hand): nothing to compare; written;
//! - garbled (bad checksum; a power cut may tear an unsynced write): a warning; rewritten;
//! - the database had no counter before this open (a new file, or one from before the
//!   counter): the sidecar belonged to another file; a warning; rewritten;
//! - greater than the recovered counter: refused ([`OpenError::LostCommits`]);
//! - otherwise: rewritten with the recovered counter.
//!
//! A refused open leaves the data file as the crash left it: redb's recovery, about to
//! fall back (which rewrites the file), is stopped, and run first on a read-only overlay
//! of the file (as `broker check` runs it); only a fallback the sidecar allows then runs
//! on the file itself.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use redb::Database;

use super::{CommitError, OpenError, QueueRecord, Recovered, open_once};

/// Store-wide values by name.
const STORE_META: TableDefinition<&str, u64> = TableDefinition::new("store_meta");
/// The number of the last commit the writer made (0: none since the counter exists).
const COMMIT_SEQ: &str = "commit_seq";

/// The sidecar of the data file `db`: `<db>.commit-seq`.
pub fn sidecar_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".commit-seq");
    PathBuf::from(name)
}

/// The sidecar's bytes: the counter (u64 LE), then the CRC-32 of those 8 bytes (u32 LE)
/// and a magic (u32 LE), so a zeroed or foreign file is not read as counter 0.
const SIDECAR_LEN: usize = 16;
const MAGIC: u32 = 0x5153_4543; // "CESQ"

fn encode(seq: u64) -> [u8; SIDECAR_LEN] {
    let mut bytes = [0; SIDECAR_LEN];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    let sum = crc32fast::hash(&bytes[..8]);
    bytes[8..12].copy_from_slice(&sum.to_le_bytes());
    bytes[12..].copy_from_slice(&MAGIC.to_le_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Option<u64> {
    let bytes: &[u8; SIDECAR_LEN] = bytes.try_into().ok()?;
    let seq: [u8; 8] = bytes[..8].try_into().ok()?;
    let sum = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
    let magic = u32::from_le_bytes(bytes[12..].try_into().ok()?);
    (magic == MAGIC && sum == crc32fast::hash(&seq)).then(|| u64::from_le_bytes(seq))
}

/// What a data file's sidecar says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sidecar {
    #[default]
    Missing,
    /// Unreadable as a counter (torn by a power cut, or damaged).
    Garbled,
    /// The last commit the broker knew durable.
    Recorded(u64),
}

impl std::fmt::Display for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sidecar::Missing => write!(f, "missing"),
            Sidecar::Garbled => write!(f, "garbled (ignored)"),
            Sidecar::Recorded(seq) => write!(f, "commit {seq}"),
        }
    }
}

/// Reads the sidecar of the data file `db`.
pub(super) fn read_sidecar(db: &Path) -> Result<Sidecar, OpenError> {
    let path = sidecar_path(db);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(decode(&bytes).map_or(Sidecar::Garbled, Sidecar::Recorded)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Sidecar::Missing),
        Err(source) => Err(OpenError::Read { path, source }),
    }
}

/// Opens the database (checking it) and reads everything to recover; refuses a recovered
/// state older than the commit counter's sidecar records (`store/commit_seq.rs`), leaving
/// the file as it was.
pub(crate) fn open_and_recover(
    path: &Path,
    backend: Option<Box<dyn redb::StorageBackend>>,
    in_memory: impl Fn(&QueueRecord) -> usize,
) -> Result<(Database, Recovered), OpenError> {
    let sidecar = read_sidecar(path)?;
    // With a counter to compare, a recovery about to fall back (and rewrite the file) is
    // stopped, and first run on a read-only overlay: refused there, the file stays as the
    // crash left it, to restore or examine. (A test's backend opens once.)
    let guard = backend.is_none() && matches!(sidecar, Sidecar::Recorded(_));
    let opened = match open_once(path, backend, &in_memory, sidecar, guard) {
        Err(OpenError::Database {
            error: redb::DatabaseError::RepairAborted,
            ..
        }) if guard => {
            let read = |source| OpenError::Read {
                path: path.to_owned(),
                source,
            };
            let file = std::fs::File::open(path).map_err(read)?;
            let overlay = super::check::ReadOnlyOverlay::new(file).map_err(read)?;
            // Bodies stay on disk: only the counter matters here.
            let keep_none = |_: &QueueRecord| 0;
            drop(open_once(
                path,
                Some(Box::new(overlay)),
                &keep_none,
                sidecar,
                false,
            )?);
            open_once(path, None, &in_memory, sidecar, false)
        }
        opened => opened,
    };
    if let Ok((_, recovered)) = &opened
        && recovered.fell_back
    {
        tracing::warn!(
            file = %path.display(),
            sidecar = %recovered.sidecar,
            "recovered the commit before the last one: the last did not verify (torn by \
             a crash, so never confirmed; or, if the sidecar is not a recorded commit, \
             possibly damaged since)"
        );
    }
    opened
}

/// Creates the counter where it is missing (at 0); true when it was there already.
pub(super) fn ensure_stored(txn: &WriteTransaction) -> Result<bool, redb::Error> {
    let mut meta = txn.open_table(STORE_META)?;
    let present = meta.get(COMMIT_SEQ)?.is_some();
    if !present {
        meta.insert(COMMIT_SEQ, 0)?;
    }
    Ok(present)
}

/// The counter of the state `txn` reads.
pub(super) fn stored(txn: &ReadTransaction) -> Result<u64, redb::Error> {
    let meta = txn.open_table(STORE_META)?;
    Ok(meta.get(COMMIT_SEQ)?.map_or(0, |seq| seq.value()))
}

/// Compares the recovered counter with the sidecar: an error when a commit the sidecar
/// says was durable is not in the recovered state. `had_counter`: the database held the
/// counter before this open (else the sidecar, if any, is another file's).
pub(super) fn verify(
    db: &Path,
    sidecar: Sidecar,
    recovered: u64,
    had_counter: bool,
) -> Result<(), OpenError> {
    let path = sidecar_path(db);
    match sidecar {
        Sidecar::Missing => Ok(()),
        Sidecar::Garbled => {
            tracing::warn!(
                sidecar = %path.display(),
                "the commit counter's sidecar is garbled (a power cut may tear it): ignored \
                 and rewritten; the recovered state cannot be checked against it this time"
            );
            Ok(())
        }
        Sidecar::Recorded(recorded) if !had_counter => {
            tracing::warn!(
                sidecar = %path.display(),
                recorded,
                "the database has no commit counter (a new file, or one from before the \
                 counter): the sidecar belonged to another file; rewritten"
            );
            Ok(())
        }
        Sidecar::Recorded(recorded) if recorded > recovered => Err(OpenError::LostCommits {
            path: db.to_owned(),
            sidecar: path,
            recovered,
            recorded,
        }),
        Sidecar::Recorded(_) => Ok(()),
    }
}

/// The writer thread's counter and its sidecar.
pub(super) struct CommitSeq {
    last: u64,
    path: PathBuf,
    /// `None` once it could not be opened (a warning said so; the commits go on).
    file: Option<File>,
    /// The last write failed (warned once until one succeeds).
    failing: bool,
}

impl CommitSeq {
    /// Starts from the recovered counter, recording it in the sidecar (created if
    /// missing): the recovered state is durable.
    pub(super) fn open(db: &Path, recovered: u64) -> Self {
        let path = sidecar_path(db);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|file| file.set_len(SIDECAR_LEN as u64).map(|()| file))
            .inspect_err(|error| {
                tracing::warn!(sidecar = %path.display(), %error,
                    "cannot open the commit counter's sidecar: damage to the last commit \
                     after a crash will not be told from a torn commit")
            })
            .ok();
        let mut seq = CommitSeq {
            last: recovered,
            path,
            file,
            failing: false,
        };
        seq.record(recovered);
        seq
    }

    /// Stores the next number in `txn` (the writer's commit); returns it.
    pub(super) fn stage(&self, txn: &WriteTransaction) -> Result<u64, CommitError> {
        let next = self.last + 1;
        txn.open_table(STORE_META)?.insert(COMMIT_SEQ, next)?;
        Ok(next)
    }

    /// `seq`'s commit is durable: records it (called before its confirms go out).
    pub(super) fn committed(&mut self, seq: u64) {
        self.last = seq;
        self.record(seq);
    }

    fn record(&mut self, seq: u64) {
        let Some(file) = &self.file else { return };
        match file.write_all_at(&encode(seq), 0) {
            Ok(()) => self.failing = false,
            Err(error) if !self.failing => {
                self.failing = true;
                tracing::warn!(sidecar = %self.path.display(), %error,
                    "cannot write the commit counter's sidecar");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sidecar_reads_back_and_a_changed_byte_is_garbled() {
        assert_eq!(decode(&encode(0)), Some(0));
        assert_eq!(decode(&encode(u64::MAX - 3)), Some(u64::MAX - 3));
        for at in 0..SIDECAR_LEN {
            let mut bytes = encode(41);
            bytes[at] ^= 0x20;
            assert_eq!(decode(&bytes), None, "byte {at}");
        }
        assert_eq!(decode(&[0; SIDECAR_LEN]), None, "zeroes are not counter 0");
        assert_eq!(decode(&encode(7)[..8]), None, "torn short");
    }
}
