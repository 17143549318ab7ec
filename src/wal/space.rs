//! Space management: how the log stays within `max_bytes`, and how delivered
//! frames leave it.
//!
//! - Reserve: an append reserves its payload plus a frame overhead per frame it
//!   may span ([`reservation_bytes`]) before it reaches the writer. Under
//!   `when_full = "block"` it waits for space up to `block_timeout_ms`, then
//!   fails with [`WalError::Full`]; an append larger than `max_bytes` fails at
//!   once with [`WalError::TooLarge`]. The [`Reservation`] is settled into the
//!   log totals by the commit that writes the append, or given back on drop.
//! - Drop: under `when_full = "drop_oldest"` the commit that would overshoot
//!   deletes the oldest frames in its own batch and counts their records in
//!   the totals ([`Shared::drop_oldest`]); after that commit, lagging cursors
//!   move past them and a warning says what was lost ([`Shared::after_drop`]).
//! - Truncate: once every configured sink's cursor has passed a frame, it is
//!   deleted with its share of the totals in one batch ([`Shared::truncate`]).
//!   (The ingest gate's identity window is rebuilt from append memos,
//!   `memo.rs`, not from delivered frames, so none are kept for it.)
//! - Index pruning: kinds-index entries of deleted frames are removed after the
//!   frames ([`Shared::prune_index`]); a leftover entry points at nothing and is
//!   harmless (see the design note in `mod.rs`).
//!
//! Every change of the totals' `bytes` and of `pending_bytes` happens under
//! the state lock, and every path that frees space (truncation, quarantine, a
//! reservation given back) wakes appends waiting under `block`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::frame::{self, key_seq, peek_header, seq_key};
use super::state::{LogState, STATE_KEY};
use super::{Guarded, Shared, WalConfig, WalError, WhenFull};

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
pub(super) fn reservation_bytes(config: &WalConfig, count: u64, payload: u64) -> u64 {
    let by_records = count / (config.max_frame_records.max(1) as u64);
    let by_bytes = 2 * payload / (config.max_frame_bytes.max(1) as u64);
    payload + FRAME_OVERHEAD * (2 + by_records + by_bytes)
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

impl Shared {
    /// Reserves room for an append of `bytes`, waiting under `block`.
    pub(super) fn reserve(this: &Arc<Shared>, bytes: u64) -> Result<Reservation, WalError> {
        let max = this.config.max_bytes;
        if bytes > max {
            return Err(WalError::TooLarge { bytes, max });
        }
        let mut g = this.lock_state();
        // Retained frames go first, before `when_full` applies (retention.rs).
        this.shed_retained(&mut g, bytes)?;
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
    pub(super) fn drop_oldest(
        &self,
        st: &mut LogState,
        batch: &mut sled::Batch,
    ) -> Result<Option<(u64, u64)>, WalError> {
        let mut last = None;
        let mut records = 0;
        // Frames every sink delivered are retained ones: counted apart.
        let delivered = self.delivered_up_to()?;
        for kv in self.frames.range(seq_key(0)..) {
            if st.bytes <= self.config.max_bytes {
                break;
            }
            let (k, v) = kv.map_err(WalError::sled("read oldest frame"))?;
            let Some(seq) = key_seq(&k) else { continue };
            let count = peek_header(&v).map(|h| u64::from(h.count)).unwrap_or(0);
            batch.remove(k);
            st.remove_frame(v.len() as u64 + 8, count);
            if seq <= delivered {
                self.count_retained_dropped(count);
            } else {
                st.dropped_records += count;
                records += count;
            }
            last = Some(seq);
        }
        Ok(last.map(|l| (l, records)))
    }

    /// After `drop_oldest` committed: move lagging cursors past the dropped
    /// frames and say what was lost.
    pub(super) fn after_drop(&self, last_dropped: u64, records: u64) -> Result<(), WalError> {
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
        if records == 0 {
            // Only retained (delivered) frames went: nothing undelivered lost.
            return Ok(());
        }
        tracing::warn!(
            records,
            last_seq = last_dropped,
            "log full under drop_oldest: dropped the oldest records"
        );
        Ok(())
    }

    pub(super) fn truncate(&self) -> Result<(), WalError> {
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
        // `[wal] retain` keeps delivered frames whatever the fill; a full log
        // deletes them first when an append needs room (retention.rs). The
        // identity window no longer keeps frames (it has memos, memo.rs).
        let keep_after_ms = self.retain_keep_after_ms();
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

    /// Removes kinds-index entries (and retention's counts and time index)
    /// of frames up to `seq` (already deleted).
    pub(super) fn prune_index(&self, seq: u64) -> Result<(), WalError> {
        self.prune_counts(seq)?;
        let mut batch = sled::Batch::default();
        for k in self.index.range(..=seq_key(seq)).keys() {
            batch.remove(k.map_err(WalError::sled("read frame index"))?);
        }
        self.index
            .apply_batch(batch)
            .map_err(WalError::sled("prune frame index"))
    }
}
