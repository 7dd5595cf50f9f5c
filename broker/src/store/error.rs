//! Store errors, one enum per operation kind.

/// The data directory or database could not be opened or read at startup.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    // (Not `source`: redb's error repeats its own cause in its message.)
    #[error("cannot open database {path}: {error}")]
    Database {
        path: std::path::PathBuf,
        error: redb::DatabaseError,
    },
    #[error("database {path} is damaged: {damage}")]
    Damaged {
        path: std::path::PathBuf,
        damage: Damage,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The recovery fell back past a commit the broker knew durable (and may have
    /// confirmed): damage to the file after a crash, never a torn commit.
    #[error(
        "database {path} lost confirmed commits: it recovered to commit {recovered}, but \
         {sidecar} records commit {recorded} as durable (the last commit was damaged after \
         the crash). Restore the whole data directory from a backup, or, to accept the older \
         state knowingly (its messages since commit {recovered} are lost), delete {sidecar}"
    )]
    LostCommits {
        path: std::path::PathBuf,
        sidecar: std::path::PathBuf,
        recovered: u64,
        recorded: u64,
    },
}

impl OpenError {
    pub(crate) fn damaged_read(path: &std::path::Path, e: redb::Error) -> Self {
        OpenError::Damaged {
            path: path.to_owned(),
            damage: Damage::Read(e),
        }
    }
}

/// What is wrong with a database file that opened: what reading it back found.
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    #[error("cannot read stored state: {0}")]
    Read(#[from] redb::Error),
    #[error("corrupt record in table `{table}`: {reason}")]
    Corrupt { table: &'static str, reason: String },
    #[error("reading it failed: {0}")]
    Panicked(String),
}

/// Lets `?` lift each of redb's per-operation errors into an operation's own error.
macro_rules! from_redb {
    ($target:ty: $($source:ty),*) => {$(
        impl From<$source> for $target {
            fn from(e: $source) -> Self {
                Self::from(redb::Error::from(e))
            }
        }
    )*};
}

from_redb!(Damage: redb::TransactionError, redb::TableError, redb::StorageError);
from_redb!(CommitError: redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// A message could not be read back from the store while the broker runs.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the store is closed")]
    Closed,
    #[error("cannot read stored message: {0}")]
    Database(#[from] redb::Error),
    #[error("corrupt stored message: {0}")]
    Corrupt(String),
}

/// A write batch failed to commit; none of its operations took effect.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store commit failed: {0}")]
pub struct CommitError(pub String);

impl From<redb::Error> for CommitError {
    fn from(e: redb::Error) -> Self {
        CommitError(e.to_string())
    }
}
