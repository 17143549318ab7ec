//! Group commit. Producers on any thread encode their records and hand them to
//! one writer thread over a channel; the writer takes everything waiting,
//! packs it into frames (within the frame limits; a large request spans
//! several frames of the same group), inserts all frames and the
//! new totals in one atomic sled batch, lets `durability` flush once, and only
//! then answers every producer of the group with its outcome.
//!
//! The flush (`durability.rs` says what it is under each policy) runs on a
//! second thread (the syncer) so the writer can apply the next group while
//! the disk works; a producer is answered only by a flush that started after
//! its group was applied. Readers are told about
//! new frames only once they are durable.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use super::frame::{seq_key, FrameBuilder};
use super::retention::{CountFrame, CountJob, CountQueue, Part};
use super::state::STATE_KEY;
use super::{Shared, WalError, WhenFull};

/// At most this many payload bytes are committed in one writer round.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// What a durable append reports to its producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The (last) frame holding this append's records; a large append spans
    /// several frames, all committed in one atomic batch.
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
    /// End offset of each record in `payload` (record boundaries for packing).
    pub ends: Vec<usize>,
    pub count: u32,
    /// Kinds present (`RecordKind::bit`), for the frame index.
    pub mask: u16,
    /// Stored under (commit time, seq) in the memos tree (`memo.rs`).
    pub memo: Option<Vec<u8>>,
    /// Space held for this append; settled by the commit, released on drop.
    pub reservation: super::Reservation,
    pub reply: Sender<Result<AppendOutcome, WalError>>,
}

/// Groups applied to sled but not yet flushed, on their way to the syncer.
struct Applied {
    replies: Vec<(Sender<Result<AppendOutcome, WalError>>, AppendOutcome)>,
    last_seq: u64,
}

pub(crate) fn run(shared: Arc<Shared>, rx: Receiver<Request>) {
    // Pipelined group commit: acknowledgements wait for a flush, so a
    // second thread does the flushing while this one already applies the
    // next group, and encoding and sled's CPU work overlap the disk's wait.
    let (applied_tx, applied_rx) = crossbeam_channel::unbounded::<Applied>();
    let syncer_shared = Arc::clone(&shared);
    let syncer = match std::thread::Builder::new()
        .name("walrelay-wal-sync".into())
        .spawn(move || sync_loop(&syncer_shared, applied_rx))
    {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "no syncer thread; flushing inline");
            None
        }
    };
    // Retention's counts are built and written by a thread of their own
    // (retention.rs), off the acknowledgement path; the channel is bounded,
    // so a counter behind slows appends instead of holding memory.
    let (count_tx, counter) = if shared.config.retain.on() {
        let (tx, count_rx) = crossbeam_channel::bounded::<CountJob>(64);
        let counter_shared = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name("walrelay-wal-count".into())
            .spawn(move || super::retention::count_loop(&counter_shared, count_rx))
        {
            Ok(handle) => (Some(tx), Some(handle)),
            Err(e) => {
                // Without the thread nothing is counted now; the next open
                // counts these frames (after the marker).
                tracing::warn!(error = %e, "no counting thread; counts wait for the next open");
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    let mut builder = FrameBuilder::new();
    while let Ok(first) = rx.recv() {
        let mut group_bytes = first.payload.len();
        let mut group = vec![first];
        while group_bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(r) => {
                    group_bytes += r.payload.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        let counting = count_tx.as_ref().map(|_| &shared.retention.queue);
        // Timed for the stall watchdog (durability.rs).
        let timed = shared.persist.busy(super::durability::Work::Apply);
        let committed = (|| {
            // Fail point (feature `failpoints`): the group's sled write fails
            // (`return`) or takes long (`sleep(ms)`).
            fail::fail_point!("wal::commit", |_| Err(WalError::Corrupt {
                what: "group commit",
                detail: "injected by fail point wal::commit".into(),
            }));
            commit_group(&shared, &mut builder, &group, counting)
        })();
        drop(timed);
        match committed {
            Ok((outcomes, frames, held)) => {
                if let (Some(tx), false) = (&count_tx, frames.is_empty()) {
                    let ends = group
                        .iter_mut()
                        .map(|r| std::mem::take(&mut r.ends))
                        .collect();
                    let job = CountJob { frames, ends, held };
                    if tx.send(job).is_err() {
                        shared.retention.queue.release(held);
                    }
                }
                let applied = Applied {
                    last_seq: outcomes.last().map(|o| o.group_last_seq).unwrap_or(0),
                    replies: group.into_iter().map(|r| r.reply).zip(outcomes).collect(),
                };
                if syncer.is_some() {
                    // The syncer answers once a flush that began after this
                    // apply has completed.
                    let _ = applied_tx.send(applied);
                } else {
                    let flushed = shared.persist.frames_inserted();
                    answer(&shared, vec![applied], flushed);
                }
            }
            Err(e) => {
                // Fail-stop (durability.rs): a sled error on the write path
                // leaves sled refusing writes; nothing after it is acknowledged.
                shared.persist.fail(&e);
                tracing::error!(error = %e, requests = group.len(), "group commit failed; producers get an error");
                for req in &group {
                    let _ = req.reply.send(Err(shared.persist.failed_error()));
                }
            }
        }
    }
    drop(applied_tx);
    if let Some(handle) = syncer {
        let _ = handle.join();
    }
    drop(count_tx);
    if let Some(handle) = counter {
        let _ = handle.join();
    }
    if let Err(e) = shared.persist.closing() {
        tracing::error!(error = %e, "final flush failed");
    }
}

/// Flushes whatever groups have been applied, then answers their producers.
/// Every group taken from the channel was applied before the flush started,
/// so the flush covers it.
fn sync_loop(shared: &Shared, applied: Receiver<Applied>) {
    while let Ok(first) = applied.recv() {
        let mut batch = vec![first];
        batch.extend(applied.try_iter());
        let flushed = shared.persist.frames_inserted();
        answer(shared, batch, flushed);
    }
}

/// Answers the producers of flushed (or failed) groups and, when durable,
/// tells readers about the new frames.
fn answer(shared: &Shared, batch: Vec<Applied>, flushed: Result<(), WalError>) {
    match flushed {
        Ok(()) => {
            if let Some(last) = batch.iter().map(|a| a.last_seq).max() {
                shared.last_seq.send_replace(last);
            }
            for a in batch {
                for (reply, out) in a.replies {
                    let _ = reply.send(Ok(out));
                }
            }
        }
        Err(e) => {
            let requests: usize = batch.iter().map(|a| a.replies.len()).sum();
            tracing::error!(error = %e, requests, "flush failed; producers get an error");
            // `e` is `WalError::Failed`: the flush put the log in the failed state.
            for a in batch {
                for (reply, _) in a.replies {
                    let _ = reply.send(Err(shared.persist.failed_error()));
                }
            }
        }
    }
}

/// Applies each tree's batch, all of them atomically: sled recovers all of a
/// transaction's writes or none. A transaction that only writes never
/// conflicts, so its closure runs once.
pub(super) fn apply_together(trees: Vec<(&sled::Tree, sled::Batch)>) -> Result<(), WalError> {
    use sled::transaction::{TransactionError, Transactional};
    let (handles, batches): (Vec<&sled::Tree>, Vec<sled::Batch>) = trees.into_iter().unzip();
    let applied: Result<(), TransactionError<()>> = handles[..].transaction(|views| {
        for (view, batch) in views.iter().zip(&batches) {
            view.apply_batch(batch)?;
        }
        Ok(())
    });
    applied.map_err(|e| match e {
        TransactionError::Storage(e) => WalError::sled("append group")(e),
        TransactionError::Abort(()) => WalError::Corrupt {
            what: "group commit",
            detail: "sled aborted a write-only transaction".into(),
        },
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Commits one group; with `counting` (retention on) also returns its
/// frames for the counter, with the bytes `counting` let them hold.
fn commit_group(
    shared: &Shared,
    b: &mut FrameBuilder,
    group: &[Request],
    counting: Option<&CountQueue>,
) -> Result<(Vec<AppendOutcome>, Vec<CountFrame>, usize), WalError> {
    let cfg = &shared.config;
    let created_ms = now_ms();
    let mut seqs = Vec::with_capacity(group.len());
    let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut masks: Vec<(u64, u16)> = Vec::new();
    let mut frame_mask = 0u16;
    // Retention's parts per frame (empty with retention off).
    let mut parts: Vec<Vec<Part>> = Vec::new();
    let mut frame_parts: Vec<Part> = Vec::new();

    let mut guard = shared.lock_state();
    let mut st = guard.log;
    let mut frame_first = st.next_record;
    for (append, req) in group.iter().enumerate() {
        // Pack record by record: a frame never exceeds `max_frame_records`
        // or `max_frame_bytes` (except a single record larger than the
        // latter, which gets a frame of its own), however large the
        // request; a request may span several frames, all of them in this
        // group's one atomic batch, so it stays all-or-nothing.
        let (mut rec, mut start) = (0usize, 0usize);
        while rec < req.ends.len() {
            let room_records = cfg.max_frame_records.saturating_sub(b.count() as usize);
            let room_bytes = cfg.max_frame_bytes.saturating_sub(b.payload_len());
            let (mut take, mut end) = (0usize, start);
            while rec + take < req.ends.len()
                && take < room_records
                && req.ends[rec + take] - start <= room_bytes
            {
                end = req.ends[rec + take];
                take += 1;
            }
            if take == 0 {
                if b.count() > 0 {
                    frames.push((st.next_seq, b.seal(frame_first, created_ms)));
                    masks.push((st.next_seq, std::mem::take(&mut frame_mask)));
                    if counting.is_some() {
                        parts.push(std::mem::take(&mut frame_parts));
                    }
                    st.next_seq += 1;
                    frame_first = st.next_record;
                    continue;
                }
                take = 1;
                end = req.ends[rec];
            }
            b.push_encoded(&req.payload[start..end], take as u32);
            frame_mask |= req.mask;
            if counting.is_some() {
                frame_parts.push(Part {
                    append,
                    from: rec,
                    to: rec + take,
                });
            }
            st.next_record += take as u64;
            rec += take;
            start = end;
        }
        seqs.push(st.next_seq);
    }
    frames.push((st.next_seq, b.seal(frame_first, created_ms)));
    masks.push((st.next_seq, frame_mask));
    if counting.is_some() {
        parts.push(frame_parts);
    }
    st.next_seq += 1;

    let mut batch = sled::Batch::default();
    let mut group_bytes = 0u64;
    // With retention on, each frame for the counter: its bytes are a shared
    // reference to the batch's (an `IVec` clone, no copy).
    let mut counted = Vec::with_capacity(parts.len());
    let mut parts = parts.into_iter();
    for (seq, bytes) in frames {
        group_bytes += bytes.len() as u64 + 8;
        let bytes = sled::IVec::from(bytes);
        if let (Some(_), Some(parts)) = (counting, parts.next()) {
            counted.push(CountFrame {
                seq,
                bytes: Some(bytes.clone()),
                parts,
            });
        }
        batch.insert(&seq_key(seq)[..], bytes);
    }
    st.bytes += group_bytes;
    st.frames += masks.len() as u64;
    st.records += group.iter().map(|r| u64::from(r.count)).sum::<u64>();

    let dropped = if cfg.when_full == WhenFull::DropOldest && st.bytes > cfg.max_bytes {
        shared.drop_oldest(&mut st, &mut batch)?
    } else {
        None
    };
    batch.insert(STATE_KEY, &st.encode()[..]);
    // One group, one sled commit: the frames and totals, the append memos
    // and the kinds index go to the disk in one atomic transaction (see
    // "one commit per group" under Crash rules in wal/mod.rs). sled rolls
    // its I/O buffer at every batch it applies, so one batch per tree would
    // cost one buffer write each.
    let mut trees: Vec<(&sled::Tree, sled::Batch)> = vec![(&shared.frames, batch)];
    // A group without memos (line protocol, the in-process API) writes none.
    if group.iter().any(|r| r.memo.is_some()) {
        let mut memos = sled::Batch::default();
        for (req, seq) in group.iter().zip(&seqs) {
            if let Some(m) = &req.memo {
                memos.insert(&super::memo::key(created_ms, *seq)[..], &m[..]);
            }
        }
        trees.push((&shared.memos, memos));
    }
    let mut index = sled::Batch::default();
    for (seq, mask) in &masks {
        index.insert(&seq_key(*seq)[..], &mask.to_le_bytes()[..]);
    }
    trees.push((&shared.index, index));
    apply_together(trees)?;
    guard.log = st;
    for r in group {
        r.reservation.settle(&mut guard);
    }
    drop(guard);

    if let Some((last_dropped, records)) = dropped {
        shared.after_drop(last_dropped, records)?;
    }
    shared.prune_memos(created_ms)?;
    // The counter reads frames from the bytes held here up to the queue's
    // byte bound; past it, from the log.
    let mut held = 0usize;
    if let Some(queue) = counting {
        for f in &mut counted {
            let len = f.bytes.as_ref().map_or(0, |b| b.len());
            if queue.hold(len) {
                held += len;
            } else {
                f.bytes = None;
            }
        }
    }
    let last = st.next_seq - 1;
    let outcomes = group
        .iter()
        .zip(seqs)
        .map(|(r, seq)| AppendOutcome {
            seq,
            group_last_seq: last,
            group_bytes,
            records: r.count,
        })
        .collect();
    Ok((outcomes, counted, held))
}
