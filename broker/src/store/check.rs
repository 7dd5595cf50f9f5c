//! Offline verification of a data directory (`broker check`): the same open, integrity
//! check and recovery the broker runs at startup, plus a decode of every stored message,
//! without changing the file.
//!
//! A recovered state older than the commit counter's sidecar records fails the check as
//! it fails the start ([`OpenError::LostCommits`], `store/commit_seq.rs`).
//!
//! redb's integrity check (and the recovery of a file that was not shut down cleanly)
//! commits; here its writes go to an in-memory overlay over the file opened read-only.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{ReadableDatabase, ReadableTable};

use super::{DB_FILE, ENTRY_STATE, MESSAGES, OpenError, decode_entry, open_and_recover};

/// What `broker check` found in a sound data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub path: PathBuf,
    /// The broker that last wrote it closed it; otherwise it needed (and passed) recovery.
    pub clean_shutdown: bool,
    /// The recovery found the last commit torn (or damaged) and recovered the one before
    /// it (see [`super::Recovered::fell_back`]).
    pub fell_back: bool,
    /// The last commit the store writer made, as recovered.
    pub commit_seq: u64,
    /// The last commit the broker recorded as durable (`<data file>.commit-seq`): no more
    /// than `commit_seq`, or the check fails.
    pub sidecar: super::Sidecar,
    pub queues: usize,
    /// Every stored message, decoded whole (those of deleted queues included).
    pub messages: u64,
    /// Stored delivery counts and retry times.
    pub entry_states: u64,
    pub exchanges: usize,
    pub bindings: usize,
    pub plugin_versions: usize,
    pub handlers: usize,
    pub users: usize,
    pub vhosts: usize,
}

/// Why a data directory failed the check.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no database at {0}")]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is open in a running broker: stop it first")]
    InUse(PathBuf),
    #[error(transparent)]
    Damaged(#[from] OpenError),
    #[error("database {path} is damaged: message ({queue}, {seq}): {reason}")]
    Message {
        path: PathBuf,
        queue: u64,
        seq: u64,
        reason: String,
    },
}

/// Checks the database of `data_dir` without changing it.
pub fn check(data_dir: &Path) -> Result<CheckReport, CheckError> {
    let path = data_dir.join(DB_FILE);
    let io = |source| CheckError::Io {
        path: path.clone(),
        source,
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckError::Missing(path));
        }
        Err(e) => return Err(io(e)),
    };
    // A read-only open refuses a file a broker has open, and one needing recovery.
    let clean_shutdown = match std::panic::catch_unwind(|| {
        redb::Builder::new().open_read_only(&path).map(drop)
    }) {
        Ok(Ok(())) => true,
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => return Err(CheckError::InUse(path)),
        // Needing recovery, or damaged: the full open below tells which.
        Ok(Err(_)) | Err(_) => false,
    };
    let overlay = ReadOnlyOverlay::new(file).map_err(io)?;
    let (db, recovered) = open_and_recover(&path, Some(Box::new(overlay)), |_| usize::MAX)?;
    let damaged = |e: redb::Error| CheckError::Damaged(OpenError::damaged_read(&path, e));
    let txn = db.begin_read().map_err(|e| damaged(e.into()))?;
    let mut messages = 0;
    for entry in txn
        .open_table(MESSAGES)
        .map_err(|e| damaged(e.into()))?
        .iter()
        .map_err(|e| damaged(e.into()))?
    {
        let (key, value) = entry.map_err(|e| damaged(e.into()))?;
        let (queue, seq) = key.value();
        decode_entry(value.value()).map_err(|reason| CheckError::Message {
            path: path.clone(),
            queue,
            seq,
            reason,
        })?;
        messages += 1;
    }
    let mut entry_states = 0;
    for entry in txn
        .open_table(ENTRY_STATE)
        .map_err(|e| damaged(e.into()))?
        .iter()
        .map_err(|e| damaged(e.into()))?
    {
        entry.map_err(|e| damaged(e.into()))?;
        entry_states += 1;
    }
    Ok(CheckReport {
        path: path.clone(),
        clean_shutdown,
        fell_back: recovered.fell_back,
        commit_seq: recovered.commit_seq,
        sidecar: recovered.sidecar,
        queues: recovered.queues.len(),
        messages,
        entry_states,
        exchanges: recovered.exchanges.len(),
        bindings: recovered.bindings.len() + recovered.exchange_bindings.len(),
        plugin_versions: recovered.plugin_versions.len(),
        handlers: recovered.handlers.len(),
        users: recovered.users.len(),
        vhosts: recovered.vhosts.len(),
    })
}

/// The file, read-only, under the writes redb makes while checking it (kept in memory).
#[derive(Debug)]
pub(super) struct ReadOnlyOverlay {
    file: File,
    overlay: Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    len: u64,
    /// The file's bytes are valid below this (a shrink hides the rest).
    file_visible: u64,
    /// Writes in order (a later one wins where they overlap).
    writes: Vec<(u64, Vec<u8>)>,
}

impl ReadOnlyOverlay {
    pub(super) fn new(file: File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(ReadOnlyOverlay {
            file,
            overlay: Mutex::new(Overlay {
                len,
                file_visible: len,
                writes: Vec::new(),
            }),
        })
    }
}

impl redb::StorageBackend for ReadOnlyOverlay {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.overlay.lock().unwrap().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let overlay = self.overlay.lock().unwrap();
        let end = offset + out.len() as u64;
        if end > overlay.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the database",
            ));
        }
        out.fill(0);
        let from_file = overlay.file_visible.clamp(offset, end) - offset;
        self.file
            .read_exact_at(&mut out[..from_file as usize], offset)?;
        for (at, data) in &overlay.writes {
            let (start, stop) = (offset.max(*at), end.min(at + data.len() as u64));
            if start < stop {
                out[(start - offset) as usize..(stop - offset) as usize]
                    .copy_from_slice(&data[(start - at) as usize..(stop - at) as usize]);
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut overlay = self.overlay.lock().unwrap();
        if len < overlay.len {
            overlay.file_visible = overlay.file_visible.min(len);
            overlay.writes.retain_mut(|(at, data)| {
                data.truncate(len.saturating_sub(*at) as usize);
                !data.is_empty()
            });
        }
        overlay.len = len;
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut overlay = self.overlay.lock().unwrap();
        overlay.len = overlay.len.max(offset + data.len() as u64);
        overlay.writes.push((offset, data.to_vec()));
        Ok(())
    }
}
