//! The write-ahead log: every record is here, durably, before anyone is told
//! it was accepted.
//!
//! # Design
//!
//! One sled store (directory mode 0700) with five trees:
//!
//! ```text
//! frames       u64 BE seq -> frame (see frame.rs: version, CRC32, header, records)
//!              [0]        -> log totals (state.rs), changed atomically with frames
//! cursors      sink name  -> u64 BE: last frame the sink fully delivered
//! dead_letters sink\0ts\0id -> record + reason + attempts (dead_letter.rs)
//!              0xFF "totals" -> per-sink count, bytes, dropped (same batches)
//! meta         owner/key  -> small facts: format version, dimension-ID cache
//! quarantine   u64 BE seq -> reason + raw bytes of an unreadable frame
//! ```
//!
//! Write path: `append` encodes on the caller's thread, refuses at once if
//! the log has failed ([`WalError::Failed`], `durability.rs`) or the disk is
//! below `min_free_bytes` ([`WalError::DiskFull`], `disk.rs`), reserves space
//! (under `block` it waits up to `block_timeout_ms`, then fails with
//! [`WalError::Full`]), and hands the bytes to the writer thread
//! (`writer.rs`), which group-commits and answers after the flush that covers
//! the append (`durability.rs` holds every flush decision).
//!
//! Read path: a drainer calls [`Wal::read_after`] with its cursor, delivers,
//! then [`Wal::ack`]s the last frame; the ack deletes frames that every
//! registered sink has passed. Unreadable frames are quarantined on the way.
//!
//! # Invariants
//!
//! - An append returns `Ok` only after its records are in a frame that the
//!   durability policy considers durable (`sync`: flushed to disk).
//! - Frame sequence numbers only grow, also across restarts and truncation.
//! - A sink's cursor only moves forward; frames after it are never deleted by
//!   truncation, only by `drop_oldest`, which counts every record it drops.
//! - The log totals change in the same atomic batch as the frames.
//! - Space accounting is exact: an append's reservation (payload + frame
//!   overhead) is settled into the log totals by the commit that writes it,
//!   under the state lock, or given back when it is dropped on any other
//!   path (`Reservation`); an idle log has nothing reserved.
//! - Fail-stop: after a failed flush or sled write nothing more is
//!   acknowledged until the log is re-opened.
//! - Opening the log never scans frames (`recovery.rs`).

mod config;
mod dead_letter;
mod disk;
mod durability;
mod error;
mod frame;
mod meta;
mod recovery;
mod state;
mod writer;

pub use config::{Durability, WalConfig, WhenFull};
pub use dead_letter::{DeadLetter, DeadLetterTotals, DeadLetters};
pub use error::WalError;
pub use frame::{Frame, FrameError, FrameHeader};
pub use meta::Meta;
pub use writer::AppendOutcome;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Sender};

use crate::record::{encode_record, Record};
use durability::Persist;
use frame::{key_seq, peek_header, seq_key};
use state::{LogState, STATE_KEY};

/// Per-frame overhead counted against `max_bytes` when reserving space. An
/// append reserves one overhead per frame it may span (see
/// [`reservation_bytes`]), so its reservation bounds what its commit adds.
const FRAME_OVERHEAD: u64 = 8 + frame::HEADER_LEN as u64;

/// Bytes an append of `count` records and `payload` bytes reserves: its
/// payload plus one frame overhead per frame the writer's record-by-record
/// packing can give it. Frames closed by the record limit number at most
/// `count / max_frame_records` (+1 for the frame it joins); a frame closed by
/// the byte limit plus the next record exceed `max_frame_bytes`, so those
/// number at most `2 * payload / max_frame_bytes` (+1). Over-reserving a few
/// dozen bytes per frame is harmless; under-reserving would let a commit
/// overshoot `max_bytes`.
fn reservation_bytes(config: &WalConfig, count: u64, payload: u64) -> u64 {
    let by_records = count / (config.max_frame_records.max(1) as u64);
    let by_bytes = 2 * payload / (config.max_frame_bytes.max(1) as u64);
    payload + FRAME_OVERHEAD * (2 + by_records + by_bytes)
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
}

impl Drop for Inner {
    fn drop(&mut self) {
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

/// Space one append holds against `max_bytes`, from `reserve` until the
/// commit that writes it turns it into log bytes ([`Reservation::settle`]).
/// Whatever was not settled is given back when the reservation is dropped,
/// so every path (commit failure, flush failure, writer gone, send refused)
/// returns exactly what was reserved: reservations cannot drift.
pub(crate) struct Reservation {
    shared: Arc<Shared>,
    bytes: AtomicU64,
}

impl Reservation {
    /// Moves this reservation into the log totals: called under the state
    /// lock by the commit that just added the append's frame bytes to
    /// `g.log.bytes`, so space is never counted twice nor released early.
    pub(crate) fn settle(&self, g: &mut Guarded) {
        let bytes = self.bytes.swap(0, Ordering::Relaxed);
        debug_assert!(g.pending_bytes >= bytes, "reservation released twice");
        g.pending_bytes -= bytes.min(g.pending_bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let bytes = self.bytes.swap(0, Ordering::Relaxed);
        if bytes > 0 {
            let mut g = self.shared.lock_state();
            debug_assert!(g.pending_bytes >= bytes, "reservation released twice");
            g.pending_bytes -= bytes.min(g.pending_bytes);
            drop(g);
            self.shared.space_freed.notify_all();
        }
    }
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
        let (tx, rx) = bounded(1024);
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("walrelay-wal-writer".into())
            .spawn(move || writer::run(writer_shared, rx))
            .map_err(|source| WalError::Dir {
                path: shared.config.dir.clone(),
                source,
            })?;
        Ok(Wal {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                writer: Some(writer),
            }),
        })
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
        self.append_encoded(payload, ends, mask)
    }

    /// Appends records already in the log's binary form: `ends[i]` is the
    /// end offset of record `i` in `payload`, so the writer can split a large
    /// append into several frames (still committed as one unit).
    pub(crate) fn append_encoded(
        &self,
        payload: Vec<u8>,
        ends: Vec<usize>,
        mask: u16,
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
                reservation,
                reply: reply_tx,
            })
            .is_err()
        {
            return Err(WalError::Closed);
        }
        reply_rx.recv().map_err(|_| WalError::Closed)?
    }

    /// Up to about `max_records` records (whole frames, at least one frame) in
    /// frames after `cursor`, in log order. Unreadable frames are quarantined
    /// and skipped.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn read_after(&self, cursor: u64, max_records: usize) -> Result<Vec<Frame>, WalError> {
        let shared = self.shared();
        let mut out = Vec::new();
        let mut n = 0;
        for kv in shared.frames.range(seq_key(cursor.saturating_add(1))..) {
            let (k, v) = kv.map_err(WalError::sled("read frames"))?;
            let Some(seq) = key_seq(&k) else { continue };
            match frame::decode(seq, &v) {
                Ok(f) => {
                    n += f.records.len();
                    out.push(f);
                    if n >= max_records {
                        break;
                    }
                }
                Err(e) => shared.quarantine(seq, &v, &e)?,
            }
        }
        Ok(out)
    }

    /// Like [`Wal::read_after`], for a sink that only wants some record
    /// kinds (`wanted`: a mask of `RecordKind::bit`). Frames holding none of
    /// them are skipped without being loaded (the kinds index answers), so a
    /// sink with little to do never pulls the other sinks' backlog into
    /// memory. Returns the frames and the last sequence examined: everything
    /// up to it that is not among the frames holds nothing the sink wants, so
    /// the sink may acknowledge up to it once it delivered the frames.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn read_for(
        &self,
        cursor: u64,
        max_records: usize,
        wanted: u16,
    ) -> Result<(Vec<Frame>, u64), WalError> {
        const MAX_EXAMINED: u64 = 20_000;
        let shared = self.shared();
        let last = *shared.last_seq.borrow();
        // Start at the first frame still in the log (a new sink's cursor may
        // be far behind truncated history).
        let first_index = shared
            .index
            .range(seq_key(cursor.saturating_add(1))..)
            .keys()
            .next()
            .transpose()
            .map_err(WalError::sled("read frame index"))?;
        let mut seq = cursor.saturating_add(1);
        if let Some(k) = first_index.and_then(|k| key_seq(&k)) {
            // Frames without an index entry (crash between the two writes)
            // can only be the newest; never jump past them.
            let first_frame = shared
                .frames
                .range(seq_key(seq)..)
                .keys()
                .next()
                .transpose()
                .map_err(WalError::sled("read frames"))?
                .and_then(|k| key_seq(&k));
            seq = seq.max(k.min(first_frame.unwrap_or(k)));
        }
        let (mut out, mut n, mut examined) = (Vec::new(), 0usize, 0u64);
        while seq <= last && n < max_records && examined < MAX_EXAMINED {
            examined += 1;
            let mask = shared
                .index
                .get(seq_key(seq))
                .map_err(WalError::sled("read frame index"))?;
            let skip = mask
                .and_then(|m| <[u8; 2]>::try_from(&m[..]).ok())
                .map(|m| u16::from_le_bytes(m) & wanted == 0)
                .unwrap_or(false);
            if !skip {
                if let Some(v) = shared
                    .frames
                    .get(seq_key(seq))
                    .map_err(WalError::sled("read frame"))?
                {
                    match frame::decode(seq, &v) {
                        Ok(f) => {
                            n += f.records.len();
                            out.push(f);
                        }
                        Err(e) => shared.quarantine(seq, &v, &e)?,
                    }
                }
            }
            seq += 1;
        }
        Ok((out, seq - 1))
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

    /// Frames quarantined by readers since this process opened the log.
    pub fn quarantined_since_open(&self) -> u64 {
        self.shared().quarantined_now.load(Ordering::Relaxed)
    }

    /// Every quarantined frame: sequence and reason.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn quarantined(&self) -> Result<Vec<(u64, String)>, WalError> {
        self.shared()
            .quarantine
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(WalError::sled("read quarantine"))?;
                let len = v
                    .get(..4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
                    .unwrap_or(0);
                let reason =
                    String::from_utf8_lossy(v.get(4..4 + len).unwrap_or_default()).into_owned();
                Ok((key_seq(&k).unwrap_or(0), reason))
            })
            .collect()
    }

    /// Checks every frame (CRC and decoding) without changing anything: the
    /// offline `walrelay wal verify`. Returns (good frames, good records, bad frames).
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn verify(&self) -> Result<(u64, u64, Vec<(u64, FrameError)>), WalError> {
        let (mut frames, mut records, mut bad) = (0, 0, Vec::new());
        for kv in self.shared().frames.range(seq_key(0)..) {
            let (k, v) = kv.map_err(WalError::sled("read frames"))?;
            let seq = key_seq(&k).unwrap_or(0);
            match frame::decode(seq, &v) {
                Ok(f) => {
                    frames += 1;
                    records += f.records.len() as u64;
                }
                Err(e) => bad.push((seq, e)),
            }
        }
        Ok((frames, records, bad))
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

    /// Reserves room for an append of `bytes`, waiting under `block`.
    fn reserve(this: &Arc<Shared>, bytes: u64) -> Result<Reservation, WalError> {
        let max = this.config.max_bytes;
        if bytes > max {
            return Err(WalError::TooLarge { bytes, max });
        }
        let mut g = this.lock_state();
        if this.config.when_full == WhenFull::Block {
            let waited_from = Instant::now();
            let deadline = waited_from + this.config.block_timeout();
            while g.log.bytes + g.pending_bytes + bytes > max {
                let now = Instant::now();
                if now >= deadline {
                    return Err(WalError::Full {
                        used: g.log.bytes,
                        max,
                        waited: now - waited_from,
                    });
                }
                g = this
                    .space_freed
                    .wait_timeout(g, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        g.pending_bytes += bytes;
        Ok(Reservation {
            shared: Arc::clone(this),
            bytes: AtomicU64::new(bytes),
        })
    }

    /// Under `drop_oldest`: adds deletes of the oldest frames to `batch` until
    /// `st` fits `max_bytes`. Returns the last dropped seq and dropped records.
    fn drop_oldest(
        &self,
        st: &mut LogState,
        batch: &mut sled::Batch,
    ) -> Result<Option<(u64, u64)>, WalError> {
        let mut last = None;
        let mut records = 0;
        for kv in self.frames.range(seq_key(0)..) {
            if st.bytes <= self.config.max_bytes {
                break;
            }
            let (k, v) = kv.map_err(WalError::sled("read oldest frame"))?;
            let Some(seq) = key_seq(&k) else { continue };
            let count = peek_header(&v).map(|h| u64::from(h.count)).unwrap_or(0);
            batch.remove(k);
            st.remove_frame(v.len() as u64 + 8, count);
            st.dropped_records += count;
            records += count;
            last = Some(seq);
        }
        Ok(last.map(|l| (l, records)))
    }

    /// After `drop_oldest` committed: move lagging cursors past the dropped
    /// frames and say what was lost.
    fn after_drop(&self, last_dropped: u64, records: u64) -> Result<(), WalError> {
        self.prune_index(last_dropped)?;
        for sink in &self.config.sinks {
            let cursor = self.cursor(sink)?;
            if cursor < last_dropped {
                self.cursors
                    .insert(sink.as_bytes(), &seq_key(last_dropped))
                    .map_err(WalError::sled("advance cursor"))?;
                tracing::warn!(sink = %sink, from_seq = cursor, to_seq = last_dropped, "cursor moved past dropped frames");
            }
        }
        self.persist.cursor_advanced()?;
        tracing::warn!(
            records,
            last_seq = last_dropped,
            "log full under drop_oldest: dropped the oldest records"
        );
        Ok(())
    }

    fn truncate(&self) -> Result<(), WalError> {
        if self.config.sinks.is_empty() {
            return Ok(());
        }
        let mut min = u64::MAX;
        for sink in &self.config.sinks {
            min = min.min(self.cursor(sink)?);
        }
        if min == 0 {
            return Ok(());
        }
        let mut g = self.lock_state();
        let mut st = g.log;
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        // Frames younger than `retain_ms` stay (the ingest gate's identity
        // window is rebuilt from them); commit times only grow with seq.
        // Best effort: once the log is half full they go like the others,
        // so retention never costs an append its space.
        let keep_after_ms = if self.config.retain_ms == 0
            || st.bytes + g.pending_bytes > self.config.max_bytes / 2
        {
            u64::MAX
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
                .saturating_sub(self.config.retain_ms)
        };
        let mut last_removed = 0;
        for kv in self.frames.range(seq_key(0)..=seq_key(min)) {
            let (k, v) = kv.map_err(WalError::sled("read frames to truncate"))?;
            let header = peek_header(&v).ok();
            if header.is_some_and(|h| h.created_ms > keep_after_ms) {
                break;
            }
            let count = header.map(|h| u64::from(h.count)).unwrap_or(0);
            last_removed = key_seq(&k).unwrap_or(last_removed);
            batch.remove(k);
            st.remove_frame(v.len() as u64 + 8, count);
            removed += 1;
        }
        let min = last_removed;
        if removed == 0 {
            return Ok(());
        }
        batch.insert(STATE_KEY, &st.encode()[..]);
        self.frames
            .apply_batch(batch)
            .map_err(WalError::sled("truncate"))?;
        g.log = st;
        drop(g);
        self.prune_index(min)?;
        self.space_freed.notify_all();
        tracing::debug!(
            frames = removed,
            up_to_seq = min,
            "truncated delivered frames"
        );
        Ok(())
    }

    /// Removes kinds-index entries of frames up to `seq` (already deleted).
    fn prune_index(&self, seq: u64) -> Result<(), WalError> {
        let mut batch = sled::Batch::default();
        for k in self.index.range(..=seq_key(seq)).keys() {
            batch.remove(k.map_err(WalError::sled("read frame index"))?);
        }
        self.index
            .apply_batch(batch)
            .map_err(WalError::sled("prune frame index"))
    }

    /// Moves an unreadable frame aside, with its reason, and keeps going.
    fn quarantine(&self, seq: u64, raw: &[u8], reason: &FrameError) -> Result<(), WalError> {
        let reason_text = reason.to_string();
        let mut value = Vec::with_capacity(4 + reason_text.len() + raw.len());
        value.extend_from_slice(&(reason_text.len() as u32).to_le_bytes());
        value.extend_from_slice(reason_text.as_bytes());
        value.extend_from_slice(raw);
        self.quarantine
            .insert(seq_key(seq), value)
            .map_err(WalError::sled("quarantine frame"))?;

        let mut g = self.lock_state();
        let mut st = g.log;
        let count = peek_header(raw).map(|h| u64::from(h.count)).unwrap_or(0);
        st.remove_frame(raw.len() as u64 + 8, count);
        let mut batch = sled::Batch::default();
        batch.remove(&seq_key(seq)[..]);
        batch.insert(STATE_KEY, &st.encode()[..]);
        self.frames
            .apply_batch(batch)
            .map_err(WalError::sled("remove quarantined frame"))?;
        g.log = st;
        drop(g);
        self.space_freed.notify_all();
        self.quarantined_now.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(seq, reason = %reason_text, "unreadable frame quarantined; reading continues");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use tests::trade as test_trade;

#[cfg(test)]
mod model_tests;
