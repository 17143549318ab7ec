//! The read side of the log: what drainers and tools read, and what happens
//! to a frame that cannot be read.
//!
//! - [`Wal::read_after`] and [`Wal::read_for`] read frames after a cursor, in
//!   log order, whole frames at a time. `read_for` asks the `frame_kinds`
//!   index first and skips frames holding none of the kinds a sink wants
//!   without loading them; a frame without an index entry is always loaded
//!   (the index rule in the design note in `mod.rs`).
//! - A frame that fails its CRC or does not decode is moved to the
//!   `quarantine` tree with its reason and its raw bytes, removed from the
//!   frames tree together with its share of the log totals (one atomic batch),
//!   counted, logged, and reading goes on with the next frame. Quarantine never
//!   stops a drainer and never deletes a readable frame.
//! - [`Wal::verify`] checks every frame without changing anything (the offline
//!   `walrelay wal verify`); [`Wal::quarantined`] lists what readers set aside.
//!
//! Readers never write frames; the only writes here are the quarantine moves.

use std::sync::atomic::Ordering;

use super::frame::{self, key_seq, peek_header, seq_key};
use super::state::STATE_KEY;
use super::{Frame, FrameError, Shared, Wal, WalError};
use crate::record::Record;

impl Wal {
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
        let mut out = Vec::new();
        let last = self.scan_for(cursor, max_records, wanted, |seq, bytes| {
            let f = frame::decode(seq, bytes)?;
            let n = f.records.len();
            out.push(f);
            Ok(n)
        })?;
        Ok((out, last))
    }

    /// What a drainer reads: like [`Wal::read_for`], but appends only the
    /// records of the `wanted` kinds, decoded straight into `out` (one
    /// vector for the whole batch, no frame in between). Returns the last
    /// sequence examined, as `read_for` does. A frame that does not decode
    /// adds nothing to `out` and is quarantined.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn read_records_for(
        &self,
        cursor: u64,
        max_records: usize,
        wanted: u16,
        out: &mut Vec<Record>,
    ) -> Result<u64, WalError> {
        self.scan_for(cursor, max_records, wanted, |_, bytes| {
            let before = out.len();
            frame::decode_into(bytes, |r| r.kind().bit() & wanted != 0, out)?;
            Ok(out.len() - before)
        })
    }

    /// The walk behind `read_for` and `read_records_for`: frames after
    /// `cursor` whose kinds (by the index) meet `wanted`, handed to `take`
    /// until it has counted `max_records` records (whole frames, at least
    /// one) or 20,000 frames were examined; a frame `take` cannot decode is
    /// quarantined. Returns the last sequence examined.
    fn scan_for(
        &self,
        cursor: u64,
        max_records: usize,
        wanted: u16,
        mut take: impl FnMut(u64, &[u8]) -> Result<usize, FrameError>,
    ) -> Result<u64, WalError> {
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
        let (mut n, mut examined) = (0usize, 0u64);
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
                    match take(seq, &v) {
                        Ok(records) => n += records,
                        Err(e) => shared.quarantine(seq, &v, &e)?,
                    }
                }
            }
            seq += 1;
        }
        Ok(seq - 1)
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
}

impl Shared {
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
