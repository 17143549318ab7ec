//! Group commit. Producers on any thread encode their records and hand them to
//! one writer thread over a channel; the writer takes everything waiting,
//! packs it into frames (a request is never split), inserts all frames and the
//! new totals in one atomic sled batch, lets `durability` flush once, and only
//! then answers every producer of the group with its outcome.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use super::frame::{seq_key, FrameBuilder};
use super::state::STATE_KEY;
use super::{Shared, WalError, WhenFull};

/// At most this many payload bytes are committed in one writer round.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// How long the writer waits for concurrent producers to join a group.
const COALESCE_WINDOW: Duration = Duration::from_micros(200);

/// What a durable append reports to its producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The frame holding this append's records.
    pub seq: u64,
    /// The last frame of the group committed with it.
    pub group_last_seq: u64,
    /// Frame bytes written by the whole group (one flush).
    pub group_bytes: u64,
    /// Records of this append.
    pub records: u32,
}

pub(crate) struct Request {
    pub payload: Vec<u8>,
    pub count: u32,
    /// Kinds present (`RecordKind::bit`), for the frame index.
    pub mask: u16,
    pub reply: Sender<Result<AppendOutcome, WalError>>,
}

pub(crate) fn run(shared: Arc<Shared>, rx: Receiver<Request>) {
    let mut builder = FrameBuilder::new();
    let mut last_group_len = 1;
    while let Ok(first) = rx.recv() {
        let mut group_bytes = first.payload.len();
        let mut records = first.count as usize;
        let mut group = vec![first];
        // Coalescing window: right after a flush the producers it released
        // are still encoding their next batch. When the last group had
        // several producers, wait a little (far less than one fsync) for them
        // so one flush covers them all; a lone producer never waits.
        let window = if last_group_len > 1 {
            COALESCE_WINDOW
        } else {
            Duration::ZERO
        };
        let until = Instant::now() + window;
        while group_bytes < MAX_GROUP_BYTES && records < shared.config.max_frame_records {
            let next = match rx.try_recv() {
                Ok(r) => Ok(r),
                Err(_) => match until.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => rx.recv_timeout(left).map_err(|_| ()),
                    _ => Err(()),
                },
            };
            match next {
                Ok(r) => {
                    group_bytes += r.payload.len();
                    records += r.count as usize;
                    group.push(r);
                }
                Err(()) => break,
            }
        }
        // Whatever else is already queued joins too, up to the byte bound.
        while group_bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(r) => {
                    group_bytes += r.payload.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        last_group_len = group.len();
        match commit_group(&shared, &mut builder, &group) {
            Ok(outcomes) => {
                for (req, out) in group.iter().zip(outcomes) {
                    let _ = req.reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = group.len(), "group commit failed; producers get an error");
                for req in &group {
                    let _ = req.reply.send(Err(WalError::Commit {
                        detail: e.to_string(),
                    }));
                }
            }
        }
    }
    if let Err(e) = shared.persist.closing() {
        tracing::error!(error = %e, "final flush failed");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn commit_group(
    shared: &Shared,
    b: &mut FrameBuilder,
    group: &[Request],
) -> Result<Vec<AppendOutcome>, WalError> {
    let cfg = &shared.config;
    let created_ms = now_ms();
    let mut seqs = Vec::with_capacity(group.len());
    let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut masks: Vec<(u64, u16)> = Vec::new();
    let mut frame_mask = 0u16;

    let mut guard = shared.lock_state();
    let mut st = guard.log;
    let mut frame_first = st.next_record;
    for req in group {
        let full = b.count() as usize + req.count as usize > cfg.max_frame_records
            || b.payload_len() + req.payload.len() > cfg.max_frame_bytes;
        if b.count() > 0 && full {
            frames.push((st.next_seq, b.seal(frame_first, created_ms)));
            masks.push((st.next_seq, std::mem::take(&mut frame_mask)));
            st.next_seq += 1;
            frame_first = st.next_record;
        }
        b.push_encoded(&req.payload, req.count);
        frame_mask |= req.mask;
        st.next_record += u64::from(req.count);
        seqs.push(st.next_seq);
    }
    frames.push((st.next_seq, b.seal(frame_first, created_ms)));
    masks.push((st.next_seq, frame_mask));
    st.next_seq += 1;

    let mut batch = sled::Batch::default();
    let mut group_bytes = 0u64;
    for (seq, bytes) in frames {
        group_bytes += bytes.len() as u64 + 8;
        batch.insert(&seq_key(seq)[..], bytes);
    }
    st.bytes += group_bytes;
    st.frames += seqs.last().map(|last| last + 1 - seqs[0]).unwrap_or(0);
    st.records += group.iter().map(|r| u64::from(r.count)).sum::<u64>();

    let dropped = if cfg.when_full == WhenFull::DropOldest && st.bytes > cfg.max_bytes {
        shared.drop_oldest(&mut st, &mut batch)?
    } else {
        None
    };
    batch.insert(STATE_KEY, &st.encode()[..]);
    shared
        .frames
        .apply_batch(batch)
        .map_err(WalError::sled("append frames"))?;
    // The kinds index is written after the frames and flushed with them. A
    // crash between the two leaves frames without an entry, which readers
    // then simply load: a missing entry never hides a frame.
    let mut index = sled::Batch::default();
    for (seq, mask) in &masks {
        index.insert(&seq_key(*seq)[..], &mask.to_le_bytes()[..]);
    }
    shared
        .index
        .apply_batch(index)
        .map_err(WalError::sled("append frame index"))?;
    guard.log = st;
    guard.pending_bytes = guard
        .pending_bytes
        .saturating_sub(group.iter().map(|r| r.payload.len() as u64).sum());
    drop(guard);

    if let Some((last_dropped, records)) = dropped {
        shared.after_drop(last_dropped, records)?;
    }
    shared.persist.frames_inserted()?;
    let last = st.next_seq - 1;
    shared.last_seq.send_replace(last);
    Ok(group
        .iter()
        .zip(seqs)
        .map(|(r, seq)| AppendOutcome {
            seq,
            group_last_seq: last,
            group_bytes,
            records: r.count,
        })
        .collect())
}
