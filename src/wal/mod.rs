//! The write-ahead log: every record is here, durably, before anyone is told
//! it was accepted.
//!
//! # Design note
//!
//! This note is the one description of the log: its trees, the write, read
//! and delete paths, the crash rules, and what it does not promise. The files
//! below it hold the details; where a file and this note disagree, one of
//! them is a bug.
//!
//! ## Constraints
//!
//! - An append returns `Ok` only after its records are in a frame that the
//!   durability policy considers durable (`sync`: flushed and `fdatasync`ed;
//!   `durability.rs` holds every flush decision and the only call of sled's
//!   `flush()`).
//! - Frame sequence numbers only grow, also across restarts and truncation.
//! - A sink's cursor only moves forward; frames after the lowest configured
//!   cursor are never deleted by truncation, only by `drop_oldest`, which
//!   counts every record it drops.
//! - The log totals change in the same atomic batch as the frames.
//! - Space accounting is exact: an append's reservation (payload + frame
//!   overhead) is settled into the log totals by the commit that writes it,
//!   under the state lock, or given back when it is dropped on any other
//!   path (`Reservation`, `space.rs`); an idle log has nothing reserved.
//! - Fail-stop: after a failed flush or sled write nothing more is
//!   acknowledged until the log is re-opened.
//! - Opening the log never scans frames (`recovery.rs`).
//!
//! ## Files
//!
//! ```text
//! mod.rs         Wal, the front door: open, append, cursors (cursor, ack,
//!                backlog), stats, handles to meta and dead letters; the
//!                stall watchdog's thread and interval mode's flush thread
//! writer.rs      group commit on the writer thread (and the syncer thread)
//! durability.rs  every flush decision; fail-stop; what the watchdog times
//! reader.rs      read_after, read_for, read_records_for, quarantine, verify
//! space.rs       reserve, drop_oldest, truncate, index pruning
//! recovery.rs    opening: directory, sled, format version, totals
//! frame.rs       the frame encoding (version, CRC32, header, records)
//! state.rs       the log totals record
//! dead_letter.rs dead letters and their budget
//! memo.rs        append memos by commit time (the gate's identity slots)
//! meta.rs        small durable facts of other modules
//! disk.rs        the min_free_bytes check
//! ```
//!
//! ## The trees
//!
//! One sled store (directory mode 0700) with nine trees, opened in this order
//! by `recovery.rs`. Sequence keys are `u64` big-endian, so sled's key order
//! is log order.
//!
//! ```text
//! tree          key                  -> value                          owner (writes)
//! frames        u64 BE seq           -> frame: version, CRC32, header,  writer.rs inserts;
//!                                       records (frame.rs)              space.rs, reader.rs delete
//!               [0]                  -> log totals (state.rs), in the   every batch that
//!                                       same batches as the frames      changes frames
//!                                       (1-byte key, sorts first)
//! cursors       sink name            -> u64 BE: last frame the sink     mod.rs (ack);
//!                                       fully delivered                 space.rs (after a drop)
//! meta          owner/key            -> small facts: format version     recovery.rs, meta.rs
//!                                       (wal/format_version), the       (used by db/timescale)
//!                                       Timescale sink's facts
//!                                       (timescale/...)
//! dead_letters  sink 0x00 ts id      -> record + reason + attempts      dead_letter.rs
//!               0xFF "totals"        -> per-sink count, bytes, dropped
//!                                       (same batches as the entries)
//! quarantine    u64 BE seq           -> u32 LE reason length, reason,   reader.rs
//!                                       raw bytes of the frame
//! frame_kinds   u64 BE seq           -> u16 LE mask of the record       writer.rs inserts;
//!                                       kinds in the frame              space.rs prunes;
//!                                                                       reader.rs reads
//! memos         u64 BE commit ms     -> an appender's memo (the gate's  writer.rs inserts
//!               ++ u64 BE last seq      identity slots, 16 B each)      (with the frames);
//!                                                                       memo.rs prunes, reads
//! frame_counts_v2 u64 BE last seq    -> per series number and event     retention.rs (written
//!               ++ u64 BE first seq     minute: records of the run of   by its counting
//!                                       frames ([wal] retain only)      thread, pruned with
//! series        'L' ++ label / 'N'   -> series number / label           frame_kinds; series
//!               ++ u32 BE number        ([wal] retain only)             never pruned)
//! time_index    u32 BE minute ++     -> () ([wal] retain only)
//!               counts key
//! ```
//!
//! With `[wal] retain`, delivered frames stay until older than `retain` or
//! until an append needs their room: `reserve` deletes them first, oldest
//! first, before `when_full` applies (`retention.rs` states the rules).
//!
//! ## Write path
//!
//! 1. `append` encodes the records on the caller's thread and notes their
//!    kinds (a `RecordKind::bit` mask).
//! 2. It refuses at once if the log has failed ([`WalError::Failed`],
//!    `durability.rs`) or the disk has less than `min_free_bytes` free
//!    ([`WalError::DiskFull`], `disk.rs`).
//! 3. It reserves space (`space.rs`): under `block` it waits up to
//!    `block_timeout_ms` and then fails with [`WalError::Full`]; an append
//!    larger than `max_bytes` fails with [`WalError::TooLarge`].
//! 4. It hands the bytes to the writer thread (`writer.rs`), which takes
//!    everything waiting (until about 16 MiB), packs it record by record
//!    into frames within `max_frame_records` and `max_frame_bytes` (one
//!    append may span several frames of the same group), and writes all
//!    frames, the new totals, the appends' memos and the frames' kinds
//!    (`frame_kinds`) in one sled transaction (atomic: sled recovers all of
//!    it or none). Under `drop_oldest`, the deletes of the oldest frames
//!    that make room go into the same transaction.
//! 5. The writer settles the reservations and, with `[wal] retain`, hands the
//!    group's frames and layout to the counting thread (`retention.rs`),
//!    which counts them from their bytes, off the acknowledgement path.
//! 6. `durability.rs` decides when the group is durable: the syncer thread
//!    flushes once for the group (so that the writer applies the next group
//!    meanwhile): sled's flush and `fdatasync` under `sync`, sled's flush
//!    alone (out of the process) under `interval_ms`, whose `fdatasync` runs
//!    every `interval_ms` on a thread of its own. Only then are readers told the new last sequence and
//!    every producer of the group answered with its [`AppendOutcome`]. A
//!    failed write or flush answers the whole group with an error and fails
//!    the log.
//!
//! ## Read path
//!
//! A drainer calls [`Wal::read_after`] (or [`Wal::read_for`], which skips
//! frames whose kinds index says they hold nothing it wants) with its cursor
//! (`reader.rs`), delivers, then [`Wal::ack`]s the last frame. A frame that
//! fails its CRC or does not decode is moved to `quarantine` with its reason
//! and reading continues; `walrelay wal verify` ([`Wal::verify`]) checks
//! every frame offline.
//!
//! ## Delete path
//!
//! Frames leave the log in three ways, each a sled batch that deletes frames
//! and updates the totals together (`space.rs`, `reader.rs`):
//!
//! - Truncation: [`Wal::ack`] advances the sink's cursor (not flushed, see
//!   the crash rules), then deletes every frame up to the lowest cursor of the
//!   configured sinks. Cursors of sinks no longer configured do not hold truncation
//!   back; with no sink configured nothing is truncated.
//! - `drop_oldest`: a commit that would overshoot `max_bytes` deletes the
//!   oldest frames in its own batch, counts their records in the totals
//!   (`dropped_records`), then moves lagging cursors past them and logs a
//!   warning.
//! - Quarantine: an unreadable frame is copied to `quarantine`, then removed
//!   from `frames`.
//!
//! After truncation and `drop_oldest`, the kinds-index entries up to the last
//! deleted frame are pruned in a separate batch. Every path that frees space
//! wakes appends waiting under `block`.
//!
//! ## Crash rules
//!
//! sled recovers a prefix of its operations and discards a torn tail; that is
//! sled's contract, tested once as such (`tests/crash.rs`). On top of it:
//!
//! - Frames and totals change in one batch, so the totals never drift from
//!   the frames and opening needs no scan. Opening reconciles the next
//!   sequence with the last frame key; if they disagree the frames win.
//! - Nothing is acknowledged before the flush that covers it, so every
//!   acknowledged append is in the prefix sled recovers (under `sync`; see
//!   what is not promised for `interval_ms`).
//! - Cursor advances are not flushed: a crash may bring back an older cursor,
//!   and the sink sees those frames again (both sinks write idempotently).
//!   Because sled recovers a prefix, a cursor is never durable while the
//!   frames it passes are not.
//! - Dead letters are flushed before the drainer advances its cursor past
//!   them, so a dead letter is never what a crash loses.
//! - **One commit per group.** A group's frames, totals, memos and kinds
//!   index go to sled in one transaction, so a crash keeps all of them or
//!   none (sled rolls its I/O buffer at every batch, so one per tree would
//!   also cost a buffer write each). Readers still treat a missing kinds
//!   entry as "load the frame", never as "skip it" (logs written by older
//!   builds, which wrote the index in a batch of its own after the frames,
//!   may have frames without one). Entries are pruned only after their
//!   frames were deleted; one left behind by a crash points at nothing, is
//!   skipped, and is pruned by the next truncation.
//! - Retention's counts may lag their frames (`retention.rs`): a crash keeps
//!   frames without counts, never counts without frames, and the next open
//!   counts those frames again.
//! - Quarantine copies before it deletes: a crash between leaves the frame in
//!   both trees, and the next reader quarantines it again (same key).
//! - After a `drop_oldest` commit, a crash before the cursors moved leaves
//!   cursors pointing at deleted frames; readers find nothing there and go on.
//! - After a failed flush or sled write the process acknowledges nothing more
//!   (fail-stop, `durability.rs`); a restart recovers what reached the disk.
//!
//! ## What the log does not promise
//!
//! - Exactly-once delivery: a sink may see a frame again after a crash or a
//!   failed delivery. Delivery is at least once; the sinks deduplicate.
//! - Durability against power loss under `interval_ms`: the appends of the
//!   last interval may be lost (a process crash alone loses nothing).
//! - Keeping undelivered records under `when_full = "drop_oldest"`: the oldest
//!   are deleted to make room, counted and logged, never silently.
//! - Delivering quarantined frames: they are kept with their reason for
//!   inspection, not replayed.
//! - Keeping every dead letter: past `dead_letter_max_bytes` the oldest go,
//!   counted.
//! - Exact backlog bytes: [`Backlog::bytes`] is proportional to records.
//! - Repairing sled's own files: damage inside them beyond a torn tail is
//!   sled's to detect; the log checks only its own frame encoding.

mod config;
mod dead_letter;
pub(crate) mod disk;
mod durability;
mod error;
mod frame;
mod memo;
mod meta;
mod reader;
mod recovery;
mod retention;
mod space;
mod state;
mod writer;

pub use config::{Durability, WalConfig, WhenFull};
pub use dead_letter::{DeadLetter, DeadLetterTotals, DeadLetters};
pub use error::WalError;
pub use frame::{Frame, FrameError, FrameHeader};
pub use meta::Meta;
pub use retention::{
    minute_of, parse_duration_ms, series_label, AcceptedCounts, Retain, Retained, Series,
};
pub use writer::AppendOutcome;

pub(crate) use space::Reservation;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};

use crate::record::{encode_record, Record};
use durability::Persist;
use frame::{key_seq, peek_header, seq_key};
use space::reservation_bytes;
use state::LogState;

/// Interval mode's flush thread: every `every`, the full flush
/// (`Persist::interval_elapsed`) until stopped. A failed flush has put the
/// log in the failed state (logged there); the thread then stops.
fn flush_every(shared: &Shared, stop: &std::sync::atomic::AtomicBool, every: std::time::Duration) {
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::park_timeout(every);
        if shared.persist.interval_elapsed().is_err() {
            return;
        }
    }
}

/// The stall watchdog's loop: checks the timed write path four times per
/// `stall_ms` (at least every second) until stopped; stops checking once it
/// found a stall (the log has failed for good).
fn watch_for_stalls(shared: &Shared, stop: &std::sync::atomic::AtomicBool, stall_ms: u64) {
    let limit = std::time::Duration::from_millis(stall_ms);
    let every = (limit / 4).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    );
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::park_timeout(every);
        if shared.persist.check_stall(limit) {
            tracing::error!(
                stall_ms,
                reason = shared.persist.failed().unwrap_or_default(),
                "write-ahead log stalled: appends are refused; the relay exits to be restarted"
            );
            return;
        }
    }
}

/// The write-ahead log. Cheap to clone; all clones share one writer thread,
/// which stops (after a final flush) when the last clone is dropped.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: Option<Sender<writer::Request>>,
    writer: Option<JoinHandle<()>>,
    /// The stall watchdog and interval mode's flush thread
    /// (`durability.rs`), each with its stop flag.
    background: Vec<(Arc<std::sync::atomic::AtomicBool>, JoinHandle<()>)>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The background threads first: they hold the shared state, which
        // must be gone (sled closed) once the log is dropped.
        for (stop, handle) in self.background.drain(..) {
            stop.store(true, std::sync::atomic::Ordering::Release);
            handle.thread().unpark();
            let _ = handle.join();
        }
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        // Idle: every append has been answered, so nothing may stay reserved.
        debug_assert_eq!(
            self.shared.lock_state().pending_bytes,
            0,
            "space reserved by no append"
        );
    }
}

pub(crate) struct Guarded {
    log: LogState,
    /// Bytes reserved by appends that the writer has not committed yet.
    pending_bytes: u64,
}

pub(crate) struct Shared {
    db: sled::Db,
    frames: sled::Tree,
    cursors: sled::Tree,
    meta: sled::Tree,
    dead: sled::Tree,
    /// Dead-letter totals and budget (dead_letter.rs).
    dead_book: Arc<dead_letter::Book>,
    quarantine: sled::Tree,
    /// seq → u16 mask of the record kinds in the frame (see `read_for`).
    index: sled::Tree,
    /// Append memos by commit time (`memo.rs`).
    memos: sled::Tree,
    /// When memos were last pruned (ms since epoch).
    memos_pruned_ms: AtomicU64,
    /// The first seq whose append could carry a memo.
    memos_from: u64,
    /// Retention's counts and time index (retention.rs).
    retention: retention::Retention,
    persist: Arc<Persist>,
    config: WalConfig,
    state: Mutex<Guarded>,
    space_freed: Condvar,
    last_seq: tokio::sync::watch::Sender<u64>,
    quarantined_now: AtomicU64,
    /// Free space under the log, checked at most every few milliseconds.
    disk: disk::FreeSpace,
}

/// A snapshot of the log's size and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalStats {
    pub bytes: u64,
    pub max_bytes: u64,
    pub records: u64,
    pub frames: u64,
    /// Last committed frame (0 before the first).
    pub last_seq: u64,
    /// Records ever appended.
    pub appended_records: u64,
    /// Records ever deleted by `drop_oldest`.
    pub dropped_records: u64,
    /// Frames currently in quarantine.
    pub quarantined_frames: u64,
    /// Dead letters currently stored, all sinks.
    pub dead_letters: u64,
}

/// What one sink still has to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub cursor: u64,
    /// Records after the cursor (exact, from frame headers).
    pub records: u64,
    /// Bytes after the cursor (approximate: proportional to records).
    pub bytes: u64,
    /// Commit time (ms since epoch) of the oldest undelivered frame.
    pub oldest_ms: Option<u64>,
}

impl Wal {
    /// Opens (or creates) the log in `config.dir` and starts its writer thread.
    ///
    /// # Errors
    /// [`WalError::Dir`] if the directory cannot be prepared, [`WalError::Sled`]
    /// if sled cannot open it, [`WalError::UnsupportedVersion`] for a newer format.
    pub fn open(config: WalConfig) -> Result<Wal, WalError> {
        let store = recovery::open_store(&config)?;
        let persist = Arc::new(Persist::new(
            store.db.clone(),
            &config.dir,
            config.durability,
        )?);
        let dead_book = Arc::new(dead_letter::Book::load(
            &store.dead,
            config.dead_letter_max_bytes,
        )?);
        let (seq_tx, _) = tokio::sync::watch::channel(store.state.next_seq - 1);
        let shared = Arc::new(Shared {
            db: store.db,
            frames: store.frames,
            cursors: store.cursors,
            meta: store.meta,
            dead: store.dead,
            dead_book,
            quarantine: store.quarantine,
            index: store.index,
            memos: store.memos,
            memos_pruned_ms: AtomicU64::new(0),
            memos_from: store.memos_from,
            retention: store.retention,
            persist,
            config,
            state: Mutex::new(Guarded {
                log: store.state,
                pending_bytes: 0,
            }),
            space_freed: Condvar::new(),
            last_seq: seq_tx,
            quarantined_now: AtomicU64::new(0),
            disk: disk::FreeSpace::new(),
        });
        shared.disk.startup(&shared.config);
        let (tx, rx) = bounded(1024);
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("walrelay-wal-writer".into())
            .spawn(move || writer::run(writer_shared, rx))
            .map_err(|source| WalError::Dir {
                path: shared.config.dir.clone(),
                source,
            })?;
        let mut background = Vec::new();
        let spawn =
            |name: &str, run: Box<dyn FnOnce(&Shared, &std::sync::atomic::AtomicBool) + Send>| {
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (shared_, stop_) = (shared.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || run(&shared_, &stop_))
                    .map(|handle| (stop, handle))
                    .map_err(|source| WalError::Dir {
                        path: shared.config.dir.clone(),
                        source,
                    })
            };
        if shared.config.stall_ms > 0 {
            let ms = shared.config.stall_ms;
            background.push(spawn(
                "walrelay-wal-watch",
                Box::new(move |sh, stop| watch_for_stalls(sh, stop, ms)),
            )?);
        }
        if let Some(every) = shared.persist.interval() {
            background.push(spawn(
                "walrelay-wal-fsync",
                Box::new(move |sh, stop| flush_every(sh, stop, every)),
            )?);
        }
        Ok(Wal {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                writer: Some(writer),
                background,
            }),
        })
    }

    /// Whether the stall watchdog found a sled write or flush that does not
    /// return (the log has then failed, [`Wal::failure`] says why): nothing
    /// in this process can finish it, the relay exits to be restarted.
    pub fn stalled(&self) -> bool {
        self.shared().persist.stalled()
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Appends `records` as one unit and returns once they are durable under
    /// the configured policy. Blocks the calling thread; async callers use
    /// `spawn_blocking`. Records must already be validated.
    ///
    /// # Errors
    /// [`WalError::Full`] when `block` waited in vain, [`WalError::TooLarge`]
    /// for an append bigger than `max_bytes`, [`WalError::Failed`] when this
    /// or an earlier group commit or flush failed (nothing of the append is
    /// acknowledged, and the log refuses appends until restarted), and
    /// [`WalError::Closed`] during shutdown.
    pub fn append(&self, records: &[Record]) -> Result<AppendOutcome, WalError> {
        let mut payload = Vec::with_capacity(records.len() * 96);
        let mut ends = Vec::with_capacity(records.len());
        let mut mask = 0u16;
        for r in records {
            encode_record(r, &mut payload)?;
            ends.push(payload.len());
            mask |= r.kind().bit();
        }
        self.append_encoded_with(payload, ends, mask, None)
    }

    /// Appends records already in the log's binary form: `ends[i]` is the
    /// end offset of record `i` in `payload`, so the writer can split a large
    /// append into several frames (still committed as one unit).
    #[allow(dead_code)] // for callers that hold only the encoded form
    pub(crate) fn append_encoded(
        &self,
        payload: Vec<u8>,
        ends: Vec<usize>,
        mask: u16,
    ) -> Result<AppendOutcome, WalError> {
        self.append_encoded_with(payload, ends, mask, None)
    }

    /// [`Wal::append_encoded`] with a memo stored beside the append (written
    /// before its frames, readable by commit time, [`Wal::memos_since`]).
    pub(crate) fn append_encoded_with(
        &self,
        payload: Vec<u8>,
        ends: Vec<usize>,
        mask: u16,
        memo: Option<Vec<u8>>,
    ) -> Result<AppendOutcome, WalError> {
        let shared = self.shared();
        let count = ends.len() as u32;
        if count == 0 {
            let last = *shared.last_seq.borrow();
            return Ok(AppendOutcome {
                seq: last,
                group_last_seq: last,
                group_bytes: 0,
                records: 0,
            });
        }
        if shared.persist.failed().is_some() {
            return Err(shared.persist.failed_error());
        }
        let reserve = reservation_bytes(&shared.config, u64::from(count), payload.len() as u64);
        shared.disk.check(&shared.config, reserve)?;
        let reservation = Shared::reserve(&self.inner.shared, reserve)?;
        let (reply_tx, reply_rx) = bounded(1);
        let tx = self.inner.tx.as_ref().ok_or(WalError::Closed)?;
        if tx
            .send(writer::Request {
                payload,
                ends,
                count,
                mask,
                memo,
                reservation,
                reply: reply_tx,
            })
            .is_err()
        {
            return Err(WalError::Closed);
        }
        reply_rx.recv().map_err(|_| WalError::Closed)?
    }

    /// The last frame `sink` acknowledged (0 if none).
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn cursor(&self, sink: &str) -> Result<u64, WalError> {
        self.shared().cursor(sink)
    }

    /// Records that `sink` has delivered every frame up to `seq`, then deletes
    /// frames that all registered sinks have delivered. A cursor never moves
    /// back: an older `seq` is ignored.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn ack(&self, sink: &str, seq: u64) -> Result<(), WalError> {
        let shared = self.shared();
        let last = *shared.last_seq.borrow();
        let seq = seq.min(last);
        shared
            .cursors
            .fetch_and_update(sink.as_bytes(), |old| {
                let old = old.and_then(key_seq).unwrap_or(0);
                Some(seq_key(old.max(seq)).to_vec())
            })
            .map_err(WalError::sled("advance cursor"))?;
        shared.persist.cursor_advanced()?;
        shared.truncate()
    }

    /// Deletes frames that every registered sink has acknowledged. `ack` does
    /// this already; exposed for tools and tests.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn truncate(&self) -> Result<(), WalError> {
        self.shared().truncate()
    }

    /// What `sink` still has to deliver.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn backlog(&self, sink: &str) -> Result<Backlog, WalError> {
        let shared = self.shared();
        let cursor = shared.cursor(sink)?;
        let st = shared.lock_state().log;
        let first = shared
            .frames
            .range(seq_key(cursor.saturating_add(1))..)
            .next()
            .transpose()
            .map_err(WalError::sled("read backlog"))?;
        let Some((_, v)) = first else {
            return Ok(Backlog {
                cursor,
                records: 0,
                bytes: 0,
                oldest_ms: None,
            });
        };
        let (records, oldest_ms) = match peek_header(&v) {
            Ok(h) => (
                st.next_record.saturating_sub(h.first_record),
                Some(h.created_ms),
            ),
            Err(_) => (st.records, None),
        };
        let bytes = if st.records == 0 {
            0
        } else {
            (st.bytes as u128 * records as u128 / st.records as u128) as u64
        };
        Ok(Backlog {
            cursor,
            records,
            bytes,
            oldest_ms,
        })
    }

    /// Size and counters of the log.
    pub fn stats(&self) -> WalStats {
        let shared = self.shared();
        let st = shared.lock_state().log;
        WalStats {
            bytes: st.bytes,
            max_bytes: shared.config.max_bytes,
            records: st.records,
            frames: st.frames,
            last_seq: st.next_seq - 1,
            appended_records: st.next_record,
            dropped_records: st.dropped_records,
            quarantined_frames: shared.quarantine.len() as u64,
            dead_letters: shared.dead_book_count(),
        }
    }

    /// A receiver of the last committed frame sequence; changes after each
    /// group commit. Drainers wait on it instead of polling.
    pub fn watch_last_seq(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared().last_seq.subscribe()
    }

    /// The meta tree (small durable facts).
    pub fn meta(&self) -> Meta {
        Meta {
            tree: self.shared().meta.clone(),
            persist: self.shared().persist.clone(),
        }
    }

    /// The dead-letter store.
    pub fn dead_letters(&self) -> DeadLetters {
        let s = self.shared();
        DeadLetters {
            tree: s.dead.clone(),
            db: s.db.clone(),
            persist: s.persist.clone(),
            book: s.dead_book.clone(),
        }
    }

    /// Flushes everything to disk now (the writer thread keeps running).
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn flush(&self) -> Result<(), WalError> {
        self.shared().persist.closing()
    }

    /// Why the log refuses appends, if a flush or write has failed in this
    /// process (fail-stop, see `durability.rs`); `None` while healthy.
    pub fn failure(&self) -> Option<String> {
        self.shared().persist.failed().map(str::to_string)
    }

    /// Why appends are refused right now, if they are: the log failed
    /// ([`Wal::failure`], until restart) or the disk under it has less than
    /// `min_free_bytes` free (until space is freed).
    pub fn refusing(&self) -> Option<String> {
        let shared = self.shared();
        self.failure().or_else(|| {
            shared
                .disk
                .check(&shared.config, 0)
                .err()
                .map(|e| e.to_string())
        })
    }

    /// Bytes reserved by appends in flight (0 whenever no append is running).
    #[doc(hidden)]
    pub fn reserved_bytes(&self) -> u64 {
        self.shared().lock_state().pending_bytes
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &WalConfig {
        &self.shared().config
    }

    /// Test seam: stores raw bytes as frame `seq`, bypassing the writer, so
    /// tests can plant corrupt frames.
    #[doc(hidden)]
    pub fn debug_put_raw_frame(&self, seq: u64, bytes: &[u8]) -> Result<(), WalError> {
        self.shared()
            .frames
            .insert(seq_key(seq), bytes)
            .map(drop)
            .map_err(WalError::sled("raw frame"))
    }
}

impl Shared {
    fn dead_book_count(&self) -> u64 {
        self.dead_book.count_all()
    }

    fn lock_state(&self) -> MutexGuard<'_, Guarded> {
        // A panic while holding the lock leaves consistent data (state is
        // assigned only after the sled batch succeeded), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cursor(&self, sink: &str) -> Result<u64, WalError> {
        Ok(self
            .cursors
            .get(sink)
            .map_err(WalError::sled("read cursor"))?
            .and_then(|v| key_seq(&v))
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use tests::trade as test_trade;

#[cfg(test)]
mod model_tests;
