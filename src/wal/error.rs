//! Errors of the write-ahead log.

use std::path::PathBuf;
use std::time::Duration;

use crate::record::CodecError;

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// The log directory could not be created or its mode set.
    #[error("cannot prepare log directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// sled failed (I/O error, corruption it detected, or a bug it reports).
    #[error("sled {op} failed: {source}")]
    Sled {
        op: &'static str,
        #[source]
        source: sled::Error,
    },
    /// `fdatasync` of sled's data file failed: nothing since the last
    /// successful sync may be acknowledged.
    #[error("{op}: fdatasync of {path} failed: {source}")]
    Sync {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Under `when_full = "block"`, no space was freed within the deadline.
    /// Retriable: the caller should push back (HTTP 503 with `Retry-After`).
    #[error(
        "write-ahead log is full ({used} of {max} bytes) and no space was freed within {waited:?}"
    )]
    Full {
        used: u64,
        max: u64,
        waited: Duration,
    },
    /// The filesystem under the log has less than `min_free_bytes` free: the
    /// append is refused before it reaches sled. Retriable (HTTP 503 with
    /// `Retry-After`): appends resume once space is freed.
    #[error("disk under the write-ahead log is nearly full: {free} bytes free at {path}, below min_free_bytes = {min_free}")]
    DiskFull {
        path: PathBuf,
        free: u64,
        min_free: u64,
    },
    /// One append is larger than the whole log may ever hold.
    #[error("append of {bytes} bytes exceeds the log's max_bytes of {max}")]
    TooLarge { bytes: u64, max: u64 },
    /// The group commit holding this append failed; nothing of it is acknowledged.
    #[error("group commit failed: {detail}")]
    Commit { detail: String },
    /// A flush or write failed earlier in this process: the log refuses
    /// appends until a restart re-opens it (see `durability.rs`, fail-stop).
    /// Callers answer 503: the writer should retry later, an operator must act.
    #[error("write-ahead log has failed and refuses appends: {reason}")]
    Failed { reason: String },
    /// A sled write or flush has not returned for `wal.stall_ms` (the
    /// watchdog in `durability.rs`): the log is put in the failed state and
    /// the relay exits so that its service manager restarts it.
    #[error("the log's {what} has not returned for {secs} s (sled 0.34.7 can deadlock under heavy writes: docs/OPERATIONS.md, \"Appends that hang\")")]
    Stalled { what: &'static str, secs: u64 },
    /// The log is closed (shutdown in progress, or the writer thread died).
    #[error("write-ahead log is closed")]
    Closed,
    /// The log on disk was written by a newer walrelay.
    #[error("log format version {found} is newer than this walrelay supports ({supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// A record could not be encoded for the log.
    #[error("record does not encode: {0}")]
    Encode(#[from] CodecError),
    /// A stored value did not parse (dead letter, cursor, meta entry).
    #[error("corrupt {what} in the log: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

impl WalError {
    /// Whether the same call may succeed later without operator action.
    pub fn is_retriable(&self) -> bool {
        matches!(self, WalError::Full { .. } | WalError::DiskFull { .. })
    }

    pub(crate) fn sled(op: &'static str) -> impl FnOnce(sled::Error) -> WalError {
        move |source| WalError::Sled { op, source }
    }
}
