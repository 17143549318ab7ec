//! Every durability decision of the log, in one place. Nothing else in the
//! crate calls sled's `flush()`.
//!
//! | event                 | `sync`                      | `interval_ms = N`                          |
//! |-----------------------|-----------------------------|--------------------------------------------|
//! | frames inserted       | flush + fdatasync, then ack | sled's flush (out of the process), then ack |
//! | every N ms            | —                           | flush + fdatasync (the power-loss part)    |
//! | cursor advanced       | no flush (see below)        | no flush                                   |
//! | dimension cache write | no flush (see below)        | no flush                                   |
//! | dead letter written   | flush + fdatasync           | flush + fdatasync                          |
//! | rewind progress       | sled's flush (write-out)    | sled's flush (write-out)                   |
//! | log closed            | flush + fdatasync           | flush + fdatasync                          |
//!
//! The promise of each policy, as `tests/crash_durability.rs` checks it by
//! SIGKILLing the real binary under load:
//! - `sync`: an acknowledged append survives a crash of the relay and a
//!   power loss (on a disk that honours flushes).
//! - `interval_ms = N`: an acknowledged append survives a crash of the relay
//!   (nothing is acknowledged before sled has written its group out of the
//!   process, into the kernel's page cache, which a process crash does not
//!   touch); a power loss or a kernel crash may lose the appends acknowledged
//!   in the last N ms (plus the group being written then). It is faster than
//!   `sync` because the ack waits for sled's write-out only, not for the
//!   `fdatasync` that commits the file to the device (docs/PERFORMANCE.md
//!   has both in one run).
//!
//! Why interval mode no longer acknowledges right after the in-memory insert
//! (as it did until issue 22): sled keeps a group in its own I/O buffers
//! until its next flush, so a SIGKILL lost acknowledged appends (measured:
//! 4 of 8 trials lost 200–3,200 records). A promise that breaks under a plain
//! crash is worse than a slower one that holds.
//!
//! Why cursor advances are not flushed: a lost advance only makes the sink see
//! the same frames again after a crash, and both sinks write idempotently. sled
//! recovers a prefix of its operations, so a cursor can never be durable while
//! the frames it points past are not. The background flusher (every second
//! under `sync`) bounds how much is redelivered.
//!
//! Why dimension-cache writes are not flushed: the cache is rebuilt from the
//! database on a miss; losing an entry costs one round trip.
//!
//! What "flush" means here: sled 0.34's `flush()` writes its buffers and
//! calls `sync_file_range` on Linux, which pushes the pages to the device but
//! neither persists the file's metadata (its size grows as the log grows) nor
//! empties the drive's volatile write cache; only sled's background thread
//! calls `fsync`. That survives a process crash but not a power cut. So every
//! flush here is followed by `fdatasync` on our own handle to sled's data file
//! (`<dir>/db`): an acknowledged append then survives losing power as well.
//! sled stores an item larger than a quarter of a segment (a consolidated
//! tree node of several large frames can be) as its own file under
//! `<dir>/blobs/`, written without any sync; the log only points to it. So a
//! flush also syncs every blob file it has not synced yet, and the `blobs`
//! directory, before anything is acknowledged.
//!
//! Why rewind progress is written out (not left to the background flusher,
//! and not fdatasynced): a whole-window rewind (drain/rewind.rs) stores the
//! last frame of each confirmed batch and, started again after a kill,
//! resumes after it. Unflushed, a SIGKILL lost up to a second of progress
//! (measured by tests/rewind_kill.rs: killed with 23 frames done, resumed
//! after frame 15), so the resumption was not "after the last confirmed
//! batch" as promised. sled's flush takes the entry out of the process,
//! which a process crash does not undo; one flush per batch of up to
//! `drain.batch_records` records is small beside the batch's round trip
//! (benches/rewind.rs). A power loss may still lose it: the rewind then
//! redoes a few batches, which is harmless (the sinks write idempotently).
//!
//! Why dead letters are flushed: the drainer advances its cursor right after
//! dead-lettering; the dead letter must not be the one thing a crash loses.
//!
//! Fail-stop: the first flush that fails (sled's `flush()`, our `fdatasync`,
//! a blob sync) or a sled error on the write path puts the log in a failed
//! state for the rest of the process: every later flush fails at once,
//! appends are refused before they reserve space ([`WalError::Failed`], HTTP
//! 503), `/ready` and `walrelay status` say why. Why not retry the flush: on
//! Linux a failed `fdatasync` may already have dropped the dirty pages it
//! could not write and cleared the error, so a later sync can succeed over a
//! hole; acknowledging anything after that would rest on data that is not on
//! disk (PostgreSQL's "fsyncgate", 2018, answered the same way: stop). A
//! restart re-opens sled, which recovers the prefix that did reach the disk;
//! every acknowledged append is in that prefix because nothing was
//! acknowledged without a successful flush. Drainers keep delivering what was
//! acknowledged before the failure (reads and cursor advances stay allowed).
//!
//! Stall watchdog: a group's sled write (writer.rs) and the flush that
//! acknowledges it are timed ([`Persist::busy`]); a thread of the log checks
//! them ([`Persist::check_stall`]) and, once one has not returned for
//! `wal.stall_ms` (default 60 s), puts the log in the failed state with
//! [`WalError::Stalled`] and logs why. Why: sled 0.34.7 can deadlock (its
//! writer waits, holding the segment lock, for a file truncation queued
//! behind I/O tasks that wait for that lock); nothing in-process recovers
//! from that, so new appends are refused at once instead of hanging, and the
//! relay exits for its service manager to restart it (relay/mod.rs). Nothing
//! acknowledged is at risk: the stalled groups were never acknowledged.
//!
//! Fail points (feature `failpoints`, tests/failpoints.rs): `wal::fdatasync`
//! makes the `fdatasync` after sled's flush fail; `wal::commit` (writer.rs)
//! makes a group's sled write fail before anything is applied (or, with
//! `sleep(ms)`, take that long, which the stall test uses).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{config::Durability, WalError};

/// The timed operations of the write path, each with its own slot.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Work {
    /// A group's sled write (the writer thread).
    Apply = 0,
    /// The flush that acknowledges applied groups (the syncer thread).
    Flush = 1,
    /// Under `interval_ms`: the periodic flush + fdatasync.
    Periodic = 2,
}

impl Work {
    fn name(i: usize) -> &'static str {
        match i {
            0 => "group write to sled",
            1 => "flush",
            _ => "periodic flush",
        }
    }
}

/// While alive, its slot holds the time the operation began.
pub(crate) struct Busy<'a> {
    slot: &'a AtomicU64,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.slot.store(0, Ordering::Release);
    }
}

pub(crate) struct Persist {
    db: sled::Db,
    /// sled's data file, opened by us only to `fdatasync` it.
    data_file: std::fs::File,
    data_path: std::path::PathBuf,
    blobs_dir: std::path::PathBuf,
    /// Blob files already synced, by name and length: a blob listed while
    /// sled was still writing it has a different length next time and is
    /// synced again.
    pub(super) blobs_synced: std::sync::Mutex<std::collections::HashMap<std::ffi::OsString, u64>>,
    policy: Durability,
    /// Set once, by the first failed flush or write: why the log stopped.
    failed: std::sync::OnceLock<String>,
    /// Start of the operation in progress per [`Work`] slot, in ms since
    /// `opened` plus one, 0 when none. Monotonic: a wall-clock step (NTP)
    /// neither fakes a stall nor hides one.
    busy_since_ms: [AtomicU64; 3],
    opened: Instant,
    /// Set once the watchdog found a stalled operation.
    stalled: AtomicBool,
}

impl Persist {
    /// `dir` is the log directory sled was opened in.
    pub(crate) fn new(
        db: sled::Db,
        dir: &std::path::Path,
        policy: Durability,
    ) -> Result<Self, WalError> {
        let path = dir.join("db");
        let data_file = std::fs::File::open(&path).map_err(|source| WalError::Sync {
            op: "open sled's data file",
            path: path.clone(),
            source,
        })?;
        Ok(Persist {
            db,
            data_file,
            data_path: path,
            blobs_dir: dir.join("blobs"),
            blobs_synced: std::sync::Mutex::new(std::collections::HashMap::new()),
            policy,
            failed: std::sync::OnceLock::new(),
            busy_since_ms: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            opened: Instant::now(),
            stalled: AtomicBool::new(false),
        })
    }

    /// sled's own background flush period (its thread also cleans
    /// segments). The power-loss part of `interval_ms` is ours
    /// ([`Persist::interval`], [`Persist::interval_elapsed`]), so sled's
    /// thread runs at the same pace under both policies.
    pub(crate) fn background_flush_ms(_policy: Durability) -> u64 {
        1000
    }

    /// Under `interval_ms = N`, how often [`Persist::interval_elapsed`] must
    /// run; `None` under `sync`.
    pub(crate) fn interval(&self) -> Option<Duration> {
        match self.policy {
            Durability::Sync => None,
            Durability::Interval { interval_ms } => Some(Duration::from_millis(interval_ms)),
        }
    }

    /// Called after one or more groups of frames were applied and before
    /// acknowledging their producers (by the syncer thread).
    pub(crate) fn frames_inserted(&self) -> Result<(), WalError> {
        let _timed = self.busy(Work::Flush);
        match self.policy {
            Durability::Sync => self.flush("flush after append"),
            // Out of the process before the ack; to the device within N ms.
            Durability::Interval { .. } => self.write_out("write-out after append"),
        }
    }

    /// Under `interval_ms = N`, called every N ms (a thread of the log): the
    /// full flush that makes what was acknowledged since survive power loss.
    pub(crate) fn interval_elapsed(&self) -> Result<(), WalError> {
        let _timed = self.busy(Work::Periodic);
        self.flush("periodic flush")
    }

    /// Called after a sink's cursor moved forward.
    pub(crate) fn cursor_advanced(&self) -> Result<(), WalError> {
        Ok(())
    }

    /// Called after a meta entry (dimension cache) changed.
    pub(crate) fn meta_written(&self) -> Result<(), WalError> {
        Ok(())
    }

    /// Called after a rewind's progress was stored, before the rewind goes
    /// on to its next batch.
    pub(crate) fn rewind_progressed(&self) -> Result<(), WalError> {
        self.write_out("write-out after rewind progress")
    }

    /// Called after a dead letter was stored, before the caller moves on.
    pub(crate) fn dead_lettered(&self) -> Result<(), WalError> {
        self.flush("flush after dead letter")
    }

    /// Called when the log closes.
    pub(crate) fn closing(&self) -> Result<(), WalError> {
        self.flush("flush on close")
    }

    /// Times `work` until the returned guard is dropped (the watchdog reads
    /// it). One operation per slot at a time: the writer applies, the syncer
    /// flushes.
    pub(crate) fn busy(&self, work: Work) -> Busy<'_> {
        let slot = &self.busy_since_ms[work as usize];
        slot.store(self.now_ms(), Ordering::Release);
        Busy { slot }
    }

    /// The watchdog's check: if a timed operation has run longer than
    /// `limit`, fails the log with [`WalError::Stalled`] (once) and returns
    /// true; later calls keep returning true.
    pub(crate) fn check_stall(&self, limit: Duration) -> bool {
        if self.stalled.load(Ordering::Acquire) {
            return true;
        }
        let now = self.now_ms();
        for (i, slot) in self.busy_since_ms.iter().enumerate() {
            let since = slot.load(Ordering::Acquire);
            let running = Duration::from_millis(now.saturating_sub(since));
            if since != 0 && running > limit {
                self.stalled.store(true, Ordering::Release);
                self.fail(&WalError::Stalled {
                    what: Work::name(i),
                    secs: running.as_secs(),
                });
                return true;
            }
        }
        false
    }

    /// Milliseconds since the log was opened, plus one (0 means idle).
    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64 + 1
    }

    /// Whether the watchdog found the write path stalled.
    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }

    /// Why the log stopped accepting appends, once a flush or write failed.
    pub(crate) fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Puts the log in the failed state (see the module doc); the first
    /// reason is kept. Returns the error appends get from now on.
    pub(crate) fn fail(&self, cause: &WalError) -> WalError {
        let reason = format!("{cause}; restart walrelay to re-open and recover the log");
        if self.failed.set(reason).is_ok() {
            tracing::error!(error = %cause, "write-ahead log failed: refusing appends until restart");
        }
        self.failed_error()
    }

    /// The error for an operation refused because the log has failed.
    pub(crate) fn failed_error(&self) -> WalError {
        WalError::Failed {
            reason: self.failed().unwrap_or_default().to_string(),
        }
    }

    /// sled's flush alone: its buffers written to the file (and, with
    /// `sync_file_range`, started towards the device), without our
    /// `fdatasync` nor the blob syncs. Enough for a process crash.
    fn write_out(&self, op: &'static str) -> Result<(), WalError> {
        if self.failed().is_some() {
            return Err(self.failed_error());
        }
        self.db
            .flush()
            .map(|_| ())
            .map_err(WalError::sled(op))
            .map_err(|e| self.fail(&e))
    }

    fn flush(&self, op: &'static str) -> Result<(), WalError> {
        if self.failed().is_some() {
            return Err(self.failed_error());
        }
        self.flush_once(op).map_err(|e| self.fail(&e))
    }

    fn flush_once(&self, op: &'static str) -> Result<(), WalError> {
        self.db.flush().map_err(WalError::sled(op))?;
        fail::fail_point!("wal::fdatasync", |_| Err(WalError::Sync {
            op,
            path: self.data_path.clone(),
            source: std::io::Error::other("injected by fail point wal::fdatasync"),
        }));
        // See the module doc: sled's flush alone is not power-loss durable.
        self.data_file
            .sync_data()
            .map_err(|source| WalError::Sync {
                op,
                path: self.data_path.clone(),
                source,
            })?;
        self.sync_new_blobs(op)
    }

    /// Syncs blob files written since the last call, then their directory.
    /// Usually there are none and this is one small `readdir`.
    fn sync_new_blobs(&self, op: &'static str) -> Result<(), WalError> {
        let err = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| WalError::Sync { op, path, source }
        };
        let mut synced = self
            .blobs_synced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err(&self.blobs_dir)(e)),
        };
        let mut seen = std::collections::HashMap::with_capacity(synced.len());
        let mut any_new = false;
        for entry in entries {
            let entry = entry.map_err(err(&self.blobs_dir))?;
            let path = entry.path();
            let len = match entry.metadata() {
                Ok(meta) => meta.len(),
                // Collected by sled since the listing: nothing left to persist.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(&path)(e)),
            };
            let name = entry.file_name();
            if synced.get(&name) != Some(&len) {
                match std::fs::File::open(&path) {
                    Ok(file) => file.sync_data().map_err(err(&path))?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(err(&path)(e)),
                }
                any_new = true;
            }
            seen.insert(name, len);
        }
        if any_new {
            std::fs::File::open(&self.blobs_dir)
                .and_then(|dir| dir.sync_all())
                .map_err(err(&self.blobs_dir))?;
        }
        // Forget blobs sled has collected.
        *synced = seen;
        Ok(())
    }
}
