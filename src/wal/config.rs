//! Settings of the log. Every field states its default and, where it trades
//! durability for speed, the data-loss window of each choice.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// When an acknowledged append is guaranteed to survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Default. The writer flushes sled (fsync) before acknowledging a group:
    /// an acknowledged record survives a process crash *and* power loss.
    Sync,
    /// Acknowledge once sled has written the group out of the process (its
    /// flush, without `fdatasync`); `fdatasync` every `interval_ms`. An
    /// acknowledged record survives a crash of the relay (the kernel keeps
    /// written pages; `tests/crash_durability.rs`), but **power loss or a
    /// kernel crash may lose the appends acknowledged in the last
    /// `interval_ms` milliseconds** (plus the group being written then).
    Interval { interval_ms: u64 },
}

impl Durability {
    /// The promise this policy makes, in one sentence (`walrelay check`
    /// prints it; `tests/crash_durability.rs` holds it).
    pub fn promise(&self) -> String {
        match self {
            Durability::Sync => "sync: an acknowledged record survives a crash of the relay and a power loss (fdatasync before every acknowledgement)".into(),
            Durability::Interval { interval_ms } => format!(
                "interval_ms = {interval_ms}: an acknowledged record survives a crash of the relay; \
                 a power loss or kernel crash may lose the records acknowledged in the last {interval_ms} ms"
            ),
        }
    }
}

impl Default for Durability {
    fn default() -> Self {
        Durability::Sync
    }
}

impl<'de> Deserialize<'de> for Durability {
    /// Accepts `durability = "sync"` or `durability = { interval_ms = 50 }`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Name(String),
            Interval { interval_ms: u64 },
        }
        match Repr::deserialize(d).map_err(|_| {
            serde::de::Error::custom(r#"expected "sync" or { interval_ms = N } with N > 0"#)
        })? {
            Repr::Name(s) if s == "sync" => Ok(Durability::Sync),
            Repr::Name(s) => Err(serde::de::Error::custom(format!(
                r#"unknown durability "{s}": expected "sync" or {{ interval_ms = N }}"#
            ))),
            Repr::Interval { interval_ms: 0 } => {
                Err(serde::de::Error::custom("interval_ms must be > 0"))
            }
            Repr::Interval { interval_ms } => Ok(Durability::Interval { interval_ms }),
        }
    }
}

/// What `append` does when the log holds `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Default. `append` waits up to `block_timeout` for drainers to free space,
    /// then fails with [`WalError::Full`](super::WalError::Full); callers turn
    /// that into backpressure (HTTP 503). Nothing is lost.
    #[default]
    Block,
    /// The oldest frames are deleted to make room; lagging cursors move past
    /// them. Every dropped record is counted and logged as a warning.
    DropOldest,
}

/// Configuration of the write-ahead log (`[wal]` in the TOML file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// Directory of the sled store; created with mode 0700. Default `./walrelay-data`.
    pub dir: PathBuf,
    /// See [`Durability`]. Default `"sync"`.
    pub durability: Durability,
    /// Upper bound of the log's size in bytes (approximate: frame bytes). Default 10 GiB.
    pub max_bytes: u64,
    /// Upper bound of the dead letters' size in bytes (key + value), their
    /// own bound beside `max_bytes`: when a new dead letter would exceed it,
    /// the oldest are deleted and counted (`dead_letter.rs`). Default 256 MiB.
    pub dead_letter_max_bytes: u64,
    /// Appends are refused ([`crate::wal::WalError::DiskFull`], HTTP 503 with
    /// `Retry-After`) while the filesystem under `dir` has less than this many
    /// bytes free, so that sled never runs into ENOSPC itself (sled keeps an
    /// I/O error for good, which makes the log fail-stop until a restart).
    /// Draining, acknowledging and dead-lettering go on; appends resume by
    /// themselves once space is freed. 0 turns the check off. On a
    /// filesystem that reports no size (FUSE, some network filesystems) it
    /// cannot be enforced: a warning at open, appends accepted (`disk.rs`).
    /// Default 64 MiB.
    pub min_free_bytes: u64,
    /// See [`WhenFull`]. Default `"block"`.
    pub when_full: WhenFull,
    /// How long `append` waits for space under `block`. Default 5000 ms.
    pub block_timeout_ms: u64,
    /// sled page-cache bound in bytes. Default 16 MiB (64 MiB before issue
    /// 23: an edge host's relay reads mostly what it just wrote, and a
    /// quarter of the cache did not slow ingest or delivery in the relay
    /// bench; docs/PERFORMANCE.md).
    pub cache_bytes: u64,
    /// A frame is sealed once it holds this many records. Default 1024.
    pub max_frame_records: usize,
    /// A frame is sealed once it holds this many payload bytes. Default 256 KiB.
    pub max_frame_bytes: usize,
    /// sled segment size, for a log created from now on; an existing log
    /// keeps the size it was created with (`recovery.rs`). sled keeps up to
    /// about ten segment-sized I/O buffers alive under saturating writes,
    /// and stores items over a quarter of a segment as separate blob files.
    /// Default 2 MiB (8 MiB for logs created before issue 23).
    pub segment_bytes: usize,
    /// A group's sled write or its flush that has not returned after this
    /// many ms puts the log in the failed state (appends refused, HTTP 503)
    /// and makes the relay exit for its service manager to restart it
    /// (`durability.rs`, stall watchdog). 0 turns the watchdog off.
    /// Default 60000 (a healthy flush takes milliseconds; a disk that needs
    /// a minute for one is itself a failure to look at).
    pub stall_ms: u64,
    /// Sinks whose cursors hold frames back from truncation. Filled from the
    /// configured sinks by the relay; a frame is deleted once every one of them
    /// has acknowledged it.
    #[serde(skip)]
    pub sinks: Vec<String>,
    /// Append memos (`memo.rs`) younger than this (commit time, ms) are
    /// kept: the ingest gate rebuilds its identity window from them at
    /// startup. Set by the relay from `ingest.identity_window_ms`; 0 keeps
    /// none past the next group commit.
    #[serde(skip)]
    pub retain_ms: u64,
    /// `retain = "6h"`: frames every sink has confirmed stay in the log this
    /// long (commit time), for rewind and audit (`retention.rs`). They count
    /// against `max_bytes` and are deleted first, oldest first, when an
    /// append needs room, before `when_full` applies: retention never refuses
    /// an append nor drops an undelivered record. Default off.
    pub retain: super::retention::Retain,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            dir: PathBuf::from("walrelay-data"),
            durability: Durability::Sync,
            max_bytes: 10 * 1024 * 1024 * 1024,
            dead_letter_max_bytes: 256 * 1024 * 1024,
            min_free_bytes: 64 * 1024 * 1024,
            when_full: WhenFull::Block,
            block_timeout_ms: 5000,
            cache_bytes: 16 * 1024 * 1024,
            max_frame_records: 1024,
            max_frame_bytes: 256 * 1024,
            segment_bytes: 2 * 1024 * 1024,
            stall_ms: 60_000,
            sinks: Vec::new(),
            retain_ms: 0,
            retain: Default::default(),
        }
    }
}

impl WalConfig {
    /// Defaults with the given directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            ..Default::default()
        }
    }

    /// Registers the sinks that must deliver a frame before it is truncated.
    pub fn with_sinks<S: Into<String>>(mut self, sinks: impl IntoIterator<Item = S>) -> Self {
        self.sinks = sinks.into_iter().map(Into::into).collect();
        self
    }

    pub(crate) fn block_timeout(&self) -> Duration {
        Duration::from_millis(self.block_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses_both_forms_and_rejects_others() {
        #[derive(Deserialize)]
        struct T {
            durability: Durability,
        }
        let t: T = toml::from_str(r#"durability = "sync""#).unwrap();
        assert_eq!(t.durability, Durability::Sync);
        let t: T = toml::from_str("durability = { interval_ms = 25 }").unwrap();
        assert_eq!(t.durability, Durability::Interval { interval_ms: 25 });
        assert!(toml::from_str::<T>(r#"durability = "fast""#).is_err());
        assert!(toml::from_str::<T>("durability = { interval_ms = 0 }").is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<WalConfig>("max_byte = 1").unwrap_err();
        assert!(err.to_string().contains("max_byte"), "{err}");
    }
}
