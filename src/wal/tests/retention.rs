//! Tests of retention (`wal/retention.rs`): delivered frames kept for
//! `retain`, deleted first (and counted apart) when the log is full, the
//! counts and time index written and removed with their frames.

use super::*;

fn retaining(dir: &TempDir, max_bytes: u64, when_full: WhenFull) -> WalConfig {
    WalConfig {
        max_bytes,
        block_timeout_ms: 200,
        when_full,
        retain: Retain { ms: 3_600_000 },
        ..small(dir)
    }
}

fn ack_all(wal: &Wal) {
    let last = wal.stats().last_seq;
    wal.ack("a", last).unwrap();
    wal.ack("b", last).unwrap();
}

#[test]
fn delivered_frames_stay_for_retain_and_are_counted_per_minute_and_series() {
    let dir = TempDir::new().unwrap();
    let wal = Wal::open(retaining(&dir, 1 << 30, WhenFull::Block)).unwrap();
    for i in 0..10 {
        wal.append(&[trade(i)]).unwrap();
    }
    ack_all(&wal);
    assert_eq!(wal.stats().records, 10, "retained frames were truncated");
    let r = wal.retained().unwrap();
    assert_eq!((r.records, r.frames, r.dropped), (10, 10, 0));
    assert_eq!(r.oldest_event_ns, Some(trade(0).ts()));
    assert_eq!(r.newest_event_ns, Some(trade(9).ts()));
    let base = trade(0).ts();
    let c = wal.accepted_counts(base, base + 60_000_000_000).unwrap();
    assert_eq!(c.counts.len(), 1);
    let ((minute, series), n) = c.counts.iter().next().unwrap();
    assert_eq!((*minute, *n), (minute_of(base), 10));
    assert_eq!(
        (series.sink, series.target.as_str(), series.symbol.as_str()),
        ("influx", "trades", "BTCUSDT")
    );
    assert_eq!(wal.frames_between(base, base + 1).unwrap().len(), 10);
    // Without retention the same acks delete them.
    let dir2 = TempDir::new().unwrap();
    let plain = Wal::open(small(&dir2)).unwrap();
    for i in 0..10 {
        plain.append(&[trade(i)]).unwrap();
    }
    ack_all(&plain);
    assert_eq!(plain.stats().records, 0);
    assert_eq!(
        plain.accepted_counts(base, base + 1).unwrap().counts.len(),
        0
    );
}

#[test]
fn counts_are_whole_whether_the_counter_reads_frames_held_for_it_or_from_the_log() {
    // Every kind (a point among them), in appends that span frames.
    let records: Vec<Record> = (0..40)
        .flat_map(|_| crate::record::codec_samples())
        .chain((0..100).map(trade))
        .collect();
    let base = records.iter().map(Record::ts).min().unwrap();
    let mut want = std::collections::BTreeMap::new();
    for r in &records {
        let mut label = String::new();
        crate::wal::retention::series_label(r, &mut label);
        *want
            .entry((minute_of(r.ts()), Series::from_label(&label).unwrap()))
            .or_insert(0u64) += 1;
    }
    for limit in [usize::MAX, 0] {
        let dir = TempDir::new().unwrap();
        let wal = Wal::open(WalConfig {
            max_frame_records: 64,
            ..retaining(&dir, 1 << 30, WhenFull::Block)
        })
        .unwrap();
        // 0: no frame bytes are held for the counter, it reads them all back.
        wal.shared()
            .retention
            .queue
            .limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
        for chunk in records.chunks(150) {
            wal.append(chunk).unwrap();
        }
        assert!(wal.stats().frames > 8, "appends span frames");
        let c = wal.accepted_counts(base, base + 3_600_000_000_000).unwrap();
        assert_eq!(c.counts, want, "hold limit {limit}");
        assert_eq!(
            wal.frames_between(base, base + 1).unwrap().len() as u64,
            wal.stats().frames,
            "hold limit {limit}"
        );
    }
}

/// Fills the log with undelivered frames until `block` refuses; returns how
/// many single-record appends it took.
fn fill(wal: &Wal, from: u64) -> u64 {
    let mut n = 0;
    loop {
        match wal.append(&[trade(from + n)]) {
            Ok(_) => n += 1,
            Err(WalError::Full { .. }) => return n,
            Err(e) => panic!("{e}"),
        }
        assert!(n < 10_000, "log never filled");
    }
}

#[test]
fn a_full_log_deletes_retained_frames_first_and_never_refuses_an_append_for_them() {
    let dir = TempDir::new().unwrap();
    let wal = Wal::open(retaining(&dir, 2000, WhenFull::Block)).unwrap();
    // Ids of four digits: every record the same size.
    const B: u64 = 1000;
    let n = fill(&wal, B);
    assert!(n > 3);
    ack_all(&wal);
    // Every frame is retained now; the log is still full of them.
    assert_eq!(wal.stats().records, n);
    // As many appends as were delivered fit again: retention refuses none.
    for i in 0..n {
        wal.append(&[trade(B + n + i)])
            .unwrap_or_else(|e| panic!("append {i} of {n} refused for retention: {e}"));
    }
    let r = wal.retained().unwrap();
    assert_eq!(r.dropped, n, "retained records deleted are counted apart");
    assert_eq!(wal.stats().dropped_records, 0);
    // Undelivered records are never deleted for room: `block` applies.
    assert!(matches!(
        wal.append(&[trade(B + 2 * n)]),
        Err(WalError::Full { .. })
    ));
    assert_eq!(
        ids(&wal.read_after(0, usize::MAX).unwrap()),
        (B + n..B + 2 * n).collect::<Vec<_>>()
    );
    // Their counts and time-index entries went with them; the horizon moved.
    assert_eq!(counted_frames(wal.shared()).len() as u64, n);
    let base = trade(0).ts();
    assert_eq!(
        wal.frames_between(base, base + 60_000_000_000)
            .unwrap()
            .len() as u64,
        n
    );
    assert!(wal.retained().unwrap().horizon_ns.unwrap() > trade(B + n - 1).ts());
}

#[test]
fn drop_oldest_deletes_retained_frames_without_counting_them_as_dropped() {
    let dir = TempDir::new().unwrap();
    let wal = Wal::open(retaining(&dir, 2000, WhenFull::DropOldest)).unwrap();
    let mut n = 0;
    while wal.stats().bytes + 200 < 2000 {
        wal.append(&[trade(n)]).unwrap();
        n += 1;
    }
    ack_all(&wal);
    let cursor = wal.cursor("a").unwrap();
    for i in 0..n {
        wal.append(&[trade(n + i)]).unwrap();
    }
    assert_eq!(
        wal.stats().dropped_records,
        0,
        "retained frames counted as lost"
    );
    assert!(wal.retained().unwrap().dropped > 0);
    assert_eq!(
        wal.cursor("a").unwrap(),
        cursor,
        "a cursor moved for retained frames"
    );
    assert_eq!(wal.backlog("a").unwrap().records, n);
}

/// The log's sled database itself, as a crash would leave it (the log closed).
/// The frames the stored counts cover (each run of counts expanded), in
/// log order.
fn counted_frames(s: &Shared) -> Vec<u64> {
    s.retention
        .counts
        .iter()
        .keys()
        .flat_map(|k| {
            let (first, last) = super::super::retention::key_run(&k.unwrap()).unwrap();
            first..=last
        })
        .collect()
}

fn raw_sled(dir: &TempDir) -> sled::Db {
    let segment = super::super::recovery::existing_segment_size(dir.path()).unwrap_or(2 << 20);
    sled::Config::new()
        .path(dir.path())
        .segment_size(segment)
        .open()
        .unwrap()
}

/// Counts are written by the counting thread, after their frames: a crash
/// can leave frames without counts. Simulated by removing the counts, the
/// time index and the marker of a closed log (what a crash before the
/// counter's round leaves); the next open counts those frames again, and
/// counting a frame twice (a marker older than its counts) changes nothing.
#[test]
fn frames_the_counter_had_not_written_are_counted_at_the_next_open() {
    let dir = TempDir::new().unwrap();
    let base = trade(0).ts();
    let window = (base, base + 60_000_000_000);
    let expected = {
        let wal = Wal::open(retaining(&dir, 1 << 30, WhenFull::Block)).unwrap();
        for i in 0..6 {
            wal.append(&[trade(i)]).unwrap();
        }
        wal.append(&[trade(6), trade(7), trade(8)]).unwrap();
        let c = wal.accepted_counts(window.0, window.1).unwrap().counts;
        assert_eq!(c.values().sum::<u64>(), 9);
        c
    };
    {
        // What the counter had written before the crash: the runs of
        // counts that end before frame 5, and a marker at the last of them.
        // Frames 5-7 (at least) have none.
        let db = raw_sled(&dir);
        let (counts, index, meta) = (
            db.open_tree("frame_counts_v2").unwrap(),
            db.open_tree("time_index").unwrap(),
            db.open_tree("meta").unwrap(),
        );
        let last_of = |k: &[u8]| u64::from_be_bytes(k[..8].try_into().unwrap());
        let (mut marker, mut removed) = (0u64, 0);
        for k in counts.iter().keys() {
            let k = k.unwrap();
            assert_eq!(k.len(), 16, "counts are keyed by run (last, first)");
            if last_of(&k) >= 5 {
                counts.remove(k).unwrap();
                removed += 1;
            } else {
                marker = marker.max(last_of(&k));
            }
        }
        for k in index.iter().keys() {
            let k = k.unwrap();
            if last_of(&k[4..]) >= 5 {
                index.remove(k).unwrap();
            }
        }
        meta.insert("retention/counted_to", &marker.to_le_bytes())
            .unwrap();
        assert!(removed > 0);
        db.flush().unwrap();
    }
    let wal = Wal::open(retaining(&dir, 1 << 30, WhenFull::Block)).unwrap();
    let c = wal.accepted_counts(window.0, window.1).unwrap().counts;
    assert_eq!(c, expected, "frames without counts were not counted again");
    assert_eq!(wal.frames_between(window.0, window.1).unwrap().len(), 7);
    drop(wal);
    {
        // A marker older than counts already written: recounted, same result.
        let db = raw_sled(&dir);
        db.open_tree("meta")
            .unwrap()
            .insert("retention/counted_to", &0u64.to_le_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let wal = Wal::open(retaining(&dir, 1 << 30, WhenFull::Block)).unwrap();
    let c = wal.accepted_counts(window.0, window.1).unwrap().counts;
    assert_eq!(c, expected, "counting a frame twice changed the counts");
}

/// A log written before the series numbers kept the labels in every count
/// (tree `frame_counts`). Opening it converts them and drops that tree; the
/// audit's counts and the time index come out as before.
#[test]
fn counts_of_an_older_log_are_converted_on_open() {
    let dir = TempDir::new().unwrap();
    let base = trade(0).ts();
    let window = (base, base + 60_000_000_000);
    let mut eth = trade(9);
    if let Record::Trade(t) = &mut eth {
        t.symbol = "ETHUSDT".into();
    }
    let (expected, frames) = {
        let wal = Wal::open(retaining(&dir, 1 << 30, WhenFull::Block)).unwrap();
        for i in 0..5 {
            wal.append(&[trade(i)]).unwrap();
        }
        wal.append(&[trade(5), eth.clone(), trade(6)]).unwrap();
        let c = wal.accepted_counts(window.0, window.1).unwrap().counts;
        assert_eq!(c.len(), 2, "two series: {c:?}");
        (c, wal.frames_between(window.0, window.1).unwrap())
    };
    {
        // What the older version stored: the same counts, labels inline,
        // and no series numbers.
        let db = raw_sled(&dir);
        let (new, series, old) = (
            db.open_tree("frame_counts_v2").unwrap(),
            db.open_tree("series").unwrap(),
            db.open_tree("frame_counts").unwrap(),
        );
        for kv in new.iter() {
            let (k, v) = kv.unwrap();
            old.insert(k, super::super::retention::counts_as_v1(&v, &series))
                .unwrap();
        }
        new.clear().unwrap();
        series.clear().unwrap();
        db.flush().unwrap();
    }
    let wal = Wal::open(retaining(&dir, 1 << 30, WhenFull::Block)).unwrap();
    let c = wal.accepted_counts(window.0, window.1).unwrap().counts;
    assert_eq!(c, expected, "converted counts differ");
    assert_eq!(wal.frames_between(window.0, window.1).unwrap(), frames);
    let s = wal.shared();
    assert_eq!(counted_frames(s), frames);
    drop(wal);
    let db = raw_sled(&dir);
    assert!(
        !db.tree_names()
            .iter()
            .any(|n| n.as_ref() == b"frame_counts"),
        "the old tree was not dropped"
    );
}

/// A frame deleted before the counter's round (a tiny log under
/// `drop_oldest`) leaves no count behind: the counter skips it under the
/// pruning lock, so the counts tree holds exactly the frames still there.
#[test]
fn no_count_outlives_its_frame() {
    let dir = TempDir::new().unwrap();
    // Appends much faster than a counter round (20 ms), so frames are
    // deleted while their counts are still queued.
    let wal = Wal::open(WalConfig {
        durability: Durability::Interval { interval_ms: 1000 },
        ..retaining(&dir, 2000, WhenFull::DropOldest)
    })
    .unwrap();
    let s = wal.shared();
    for round in 0..20u64 {
        for i in 0..50 {
            wal.append(&[trade(1000 + round * 50 + i)]).unwrap();
        }
        // Right after the counter's round, before a later prune could
        // remove what it wrote: every count belongs to a frame still there.
        s.settle_counts();
        for seq in counted_frames(s) {
            assert!(
                s.frames.contains_key(frame::seq_key(seq)).unwrap(),
                "round {round}: a count of deleted frame {seq} was written"
            );
        }
    }
    let base = trade(0).ts();
    let c = wal.accepted_counts(base, base + 3_600_000_000_000).unwrap();
    let frames = wal.stats().frames;
    assert!(frames < 1000, "nothing was dropped: {frames} frames");
    assert_eq!(
        c.counts.values().sum::<u64>(),
        wal.stats().records,
        "frames left uncounted"
    );
    assert_eq!(counted_frames(s).len() as u64, frames);
}

/// A log written before runs keeps each frame's counts under its 8-byte
/// seq (index keys: minute ++ seq). They read as runs of one frame, new
/// counts go beside them as runs, and they are pruned with their frames.
#[test]
fn counts_kept_per_frame_by_an_older_version_count_and_prune_as_runs_of_one() {
    let dir = TempDir::new().unwrap();
    let base = trade(0).ts();
    let window = (base, base + 60_000_000_000);
    let (expected, frames) = {
        let wal = Wal::open(retaining(&dir, 1 << 30, WhenFull::Block)).unwrap();
        for i in 0..6 {
            wal.append(&[trade(i)]).unwrap();
            // Counted before the next append: a round, and a run, each.
            wal.shared().settle_counts();
        }
        let c = wal.accepted_counts(window.0, window.1).unwrap().counts;
        assert_eq!(c.values().sum::<u64>(), 6);
        (c, wal.frames_between(window.0, window.1).unwrap())
    };
    {
        // What the older version stored: the same counts, keyed by frame.
        let db = raw_sled(&dir);
        let (counts, index) = (
            db.open_tree("frame_counts_v2").unwrap(),
            db.open_tree("time_index").unwrap(),
        );
        let runs: Vec<_> = counts.iter().map(Result::unwrap).collect();
        assert_eq!(runs.len(), 6);
        for (k, v) in runs {
            assert_eq!(k[..8], k[8..], "a run of one frame");
            counts.remove(&k).unwrap();
            counts.insert(&k[..8], v).unwrap();
        }
        let keys: Vec<_> = index.iter().keys().map(Result::unwrap).collect();
        for k in keys {
            index.remove(&k).unwrap();
            index.insert(&k[..12], &[][..]).unwrap();
        }
        db.flush().unwrap();
    }
    let wal = Wal::open(retaining(&dir, 1 << 30, WhenFull::Block)).unwrap();
    let s = wal.shared();
    assert_eq!(
        wal.accepted_counts(window.0, window.1).unwrap().counts,
        expected
    );
    assert_eq!(wal.frames_between(window.0, window.1).unwrap(), frames);
    assert_eq!(counted_frames(s), frames);
    for i in 6..9 {
        wal.append(&[trade(i)]).unwrap();
    }
    let all = wal.frames_between(window.0, window.1).unwrap();
    assert_eq!(all.len(), 9);
    assert_eq!(
        wal.accepted_counts(window.0, window.1)
            .unwrap()
            .counts
            .values()
            .sum::<u64>(),
        9
    );
    // The first three frames deleted: their counts go, the horizon passes
    // their events, the rest still count.
    for &seq in &frames[..3] {
        s.frames.remove(frame::seq_key(seq)).unwrap();
    }
    s.prune_index(frames[2]).unwrap();
    assert_eq!(counted_frames(s), all[3..].to_vec());
    let c = wal.accepted_counts(window.0, window.1).unwrap();
    assert_eq!(c.counts.values().sum::<u64>(), 6);
    assert!(c.horizon_ns.unwrap() >= trade(2).ts());
}
