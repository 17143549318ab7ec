//! In-process tests of the log: write, drop, reopen, assert. The front
//! door's tests are here; the reader's (`reader.rs`: reads, quarantine,
//! verify) and space management's (`space.rs`: reserve, block, drop,
//! truncate, index pruning) are in the files of the same names beside this one.

mod reader;
mod retention;
mod space;

use super::*;
use crate::record::Trade;
use tempfile::TempDir;

pub(crate) fn trade(id: u64) -> Record {
    Record::Trade(Trade {
        venue: "BINANCE".into(),
        symbol: "BTCUSDT".into(),
        ts: 1_764_000_000_000_000_000 + id as i64,
        price: 97_000.0 + id as f64,
        quantity: 0.5,
        side: "buy".into(),
        trade_id: id.to_string().into(),
    })
}

pub(super) fn ids(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .flat_map(|f| &f.records)
        .map(|r| match r {
            Record::Trade(t) => t.trade_id.parse().unwrap(),
            other => panic!("{other:?}"),
        })
        .collect()
}

pub(super) fn small(dir: &TempDir) -> WalConfig {
    WalConfig {
        max_frame_records: 4,
        ..WalConfig::new(dir.path()).with_sinks(["a", "b"])
    }
}

#[test]
fn appends_survive_reopen_in_order() {
    let dir = TempDir::new().unwrap();
    {
        let wal = Wal::open(small(&dir)).unwrap();
        for i in 0..10 {
            let out = wal.append(&[trade(2 * i), trade(2 * i + 1)]).unwrap();
            assert_eq!(out.records, 2);
        }
    }
    let wal = Wal::open(small(&dir)).unwrap();
    let frames = wal.read_after(0, usize::MAX).unwrap();
    assert_eq!(ids(&frames), (0..20).collect::<Vec<_>>());
    assert!(frames.iter().all(|f| f.records.len() <= 4));
    assert_eq!(wal.stats().records, 20);
    assert_eq!(wal.stats().appended_records, 20);
}

#[test]
fn directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("log");
    let _wal = Wal::open(WalConfig::new(&path)).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn totals_persist_without_a_scan() {
    let dir = TempDir::new().unwrap();
    let (bytes, seq) = {
        let wal = Wal::open(small(&dir)).unwrap();
        for i in 0..5 {
            wal.append(&[trade(i)]).unwrap();
        }
        wal.ack("a", 2).unwrap();
        wal.ack("b", 2).unwrap();
        (wal.stats().bytes, wal.stats().last_seq)
    };
    let wal = Wal::open(small(&dir)).unwrap();
    let s = wal.stats();
    assert_eq!(
        (s.records, s.frames, s.bytes, s.last_seq),
        (3, 3, bytes, seq)
    );
    // Sequence numbers keep growing after everything was truncated.
    wal.ack("a", seq).unwrap();
    wal.ack("b", seq).unwrap();
    assert_eq!(wal.stats().records, 0);
    assert_eq!(wal.append(&[trade(9)]).unwrap().seq, seq + 1);
}

/// A poison stream cannot grow the dead letters past their bound: the oldest
/// of the flooding sink are dropped and counted, the counters answer without
/// a scan and agree with one, and they survive a reopen.
#[test]
fn a_dead_letter_flood_stays_within_its_budget_dropping_and_counting_the_oldest() {
    const BUDGET: u64 = 60_000;
    let dir = TempDir::new().unwrap();
    let cfg = WalConfig {
        dead_letter_max_bytes: BUDGET,
        ..small(&dir)
    };
    let wal = Wal::open(cfg.clone()).unwrap();
    let dl = wal.dead_letters();
    for i in 0..3 {
        dl.put("timescale", &trade(1_000_000 + i), "22003: out of range", 1)
            .unwrap();
    }
    let mut next = 0u64;
    for _ in 0..40 {
        let items: Vec<(Record, String)> = (next..next + 250)
            .map(|i| (trade(i), format!("400: bad line {i}")))
            .collect();
        next += 250;
        dl.put_many("influx", &items, 1).unwrap();
    }
    let totals = dl.totals();
    let (influx, ts) = (totals["influx"], totals["timescale"]);
    assert!(influx.bytes + ts.bytes <= BUDGET, "{totals:?}");
    assert_eq!(
        influx.count + influx.dropped,
        10_000,
        "every dead letter kept or counted"
    );
    assert!(influx.dropped > 9_000, "the flood was cut back: {influx:?}");
    assert_eq!(
        (ts.count, ts.dropped),
        (3, 0),
        "the flooding sink pays first"
    );
    // The counters agree with a scan, and the newest are the ones kept.
    let kept = dl.list(Some("influx"), usize::MAX).unwrap();
    assert_eq!(kept.len() as u64, influx.count);
    assert_eq!(dl.count(Some("influx")).unwrap(), influx.count);
    assert_eq!(dl.count(None).unwrap(), influx.count + 3);
    assert_eq!(wal.stats().dead_letters, influx.count + 3);
    assert_eq!(kept.first().unwrap().record, trade(influx.dropped));
    assert_eq!(kept.last().unwrap().record, trade(9_999));
    let scanned: u64 = wal
        .inner
        .shared
        .dead
        .scan_prefix(b"influx\0")
        .map(|kv| kv.map(|(k, v)| (k.len() + v.len()) as u64).unwrap())
        .sum();
    assert_eq!(scanned, influx.bytes);
    // One call larger than the whole budget keeps only its newest entries.
    let items: Vec<(Record, String)> = (10_000..12_000)
        .map(|i| (trade(i), format!("400: bad line {i}")))
        .collect();
    dl.put_many("influx", &items, 1).unwrap();
    let t = dl.totals()["influx"];
    assert!(t.bytes + dl.totals()["timescale"].bytes <= BUDGET, "{t:?}");
    assert_eq!(t.count + t.dropped, 12_000, "{t:?}");
    assert_eq!(
        dl.totals()["timescale"].count,
        0,
        "older dead letters of others went too"
    );
    let kept = dl.list(Some("influx"), usize::MAX).unwrap();
    assert_eq!(kept.len() as u64, t.count);
    assert_eq!(kept.last().unwrap().record, trade(11_999));
    assert_eq!(kept.first().unwrap().record, trade(12_000 - t.count));
    let totals = dl.totals();
    drop((dl, wal));
    let wal = Wal::open(cfg.clone()).unwrap();
    assert_eq!(wal.dead_letters().totals(), totals, "totals persist");

    // A log written before the totals existed is counted once on open.
    wal.inner.shared.dead.remove(b"\xFFtotals").unwrap();
    drop(wal);
    let wal = Wal::open(cfg).unwrap();
    let recounted = wal.dead_letters().totals();
    assert_eq!(recounted["influx"].count, totals["influx"].count);
    assert_eq!(recounted["influx"].bytes, totals["influx"].bytes);
}

#[test]
fn dead_letters_list_take_purge() {
    let dir = TempDir::new().unwrap();
    let wal = Wal::open(small(&dir)).unwrap();
    let dl = wal.dead_letters();
    dl.put("influx", &trade(1), "400: bad line 1", 3).unwrap();
    dl.put("influx", &trade(2), "400: bad line 2", 1).unwrap();
    dl.put("timescale", &trade(3), "22003: out of range", 1)
        .unwrap();
    assert_eq!(dl.count(None).unwrap(), 3);
    assert_eq!(dl.count(Some("influx")).unwrap(), 2);
    let list = dl.list(Some("influx"), 10).unwrap();
    assert_eq!(
        list.iter().map(|d| d.record.clone()).collect::<Vec<_>>(),
        vec![trade(1), trade(2)]
    );
    assert_eq!(list[0].error, "400: bad line 1");
    assert_eq!(list[0].attempts, 3);
    assert_eq!(list[0].sink, "influx");
    // get: the same entry as list, without removing it; unknown ids are None.
    assert_eq!(dl.get(&list[1].id).unwrap().as_ref(), Some(&list[1]));
    assert_eq!(dl.get(b"no such id").unwrap(), None);
    assert_eq!(
        dl.get(b"\xFFtotals").unwrap(),
        None,
        "the totals key is not a dead letter"
    );
    assert_eq!(dl.count(Some("influx")).unwrap(), 2);
    let taken = dl.take(&list[0].id).unwrap().unwrap();
    assert_eq!(taken.record, trade(1));
    assert_eq!(dl.get(&list[0].id).unwrap(), None, "taken");
    assert_eq!(dl.count(Some("influx")).unwrap(), 1);
    assert_eq!(dl.purge(Some("influx")).unwrap(), 1);
    drop(dl);
    drop(wal);
    let wal = Wal::open(small(&dir)).unwrap();
    assert_eq!(
        wal.dead_letters().count(None).unwrap(),
        1,
        "survives reopen"
    );
    assert_eq!(wal.stats().dead_letters, 1);
}

#[test]
fn meta_round_trips_and_survives_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let wal = Wal::open(small(&dir)).unwrap();
        let m = wal.meta();
        m.insert(b"x/1", b"one").unwrap();
        m.insert(b"x/2", b"two").unwrap();
        m.insert(b"y/1", b"other").unwrap();
        assert_eq!(m.get(b"x/1").unwrap().as_deref(), Some(&b"one"[..]));
        wal.flush().unwrap();
    }
    let wal = Wal::open(small(&dir)).unwrap();
    let m = wal.meta();
    assert_eq!(m.scan_prefix(b"x/").unwrap().len(), 2);
    assert_eq!(m.remove_prefix(b"x/").unwrap(), 2);
    assert_eq!(m.get(b"x/1").unwrap(), None);
    assert_eq!(m.get(b"y/1").unwrap().as_deref(), Some(&b"other"[..]));
}

#[test]
fn concurrent_producers_are_group_committed() {
    let dir = TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for b in 0..50u64 {
                    let recs: Vec<_> = (0..10).map(|i| trade(t * 10_000 + b * 10 + i)).collect();
                    wal.append(&recs).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut got = ids(&wal.read_after(0, usize::MAX).unwrap());
    got.sort();
    let mut want: Vec<u64> = (0..4u64)
        .flat_map(|t| (0..500).map(move |i| t * 10_000 + i))
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert!(
        wal.stats().frames < 200,
        "appends were grouped: {:?}",
        wal.stats()
    );
}

#[test]
fn interval_durability_acknowledges_and_keeps_on_clean_close() {
    let dir = TempDir::new().unwrap();
    let cfg = WalConfig {
        durability: Durability::Interval { interval_ms: 50 },
        ..small(&dir)
    };
    {
        let wal = Wal::open(cfg.clone()).unwrap();
        for i in 0..10 {
            wal.append(&[trade(i)]).unwrap();
        }
    }
    let wal = Wal::open(cfg).unwrap();
    assert_eq!(
        ids(&wal.read_after(0, usize::MAX).unwrap()),
        (0..10).collect::<Vec<_>>()
    );
}

#[test]
fn watch_reports_committed_frames() {
    let dir = TempDir::new().unwrap();
    let wal = Wal::open(small(&dir)).unwrap();
    let rx = wal.watch_last_seq();
    let seq = wal.append(&[trade(1)]).unwrap().seq;
    assert_eq!(*rx.borrow(), seq);
}

#[test]
fn large_frames_stored_as_sled_blobs_are_synced_before_the_ack_and_survive_reopen() {
    use crate::record::{FieldValue, Point};
    let dir = TempDir::new().unwrap();
    // A 256 KiB segment makes sled store any item over 64 KiB as a blob file.
    let config = WalConfig {
        segment_bytes: 256 * 1024,
        max_frame_records: 4,
        ..WalConfig::new(dir.path()).with_sinks(["a"])
    };
    let big = |i: i64| {
        Record::Point(Point {
            measurement: "blob".into(),
            tags: Default::default(),
            fields: [(
                "payload".to_string(),
                FieldValue::String("x".repeat(30_000)),
            )]
            .into(),
            ts: 1_764_000_000_000_000_000 + i,
        })
    };
    {
        let wal = Wal::open(config.clone()).unwrap();
        for i in 0..40 {
            wal.append(&[big(2 * i), big(2 * i + 1)]).unwrap();
            // Every blob on disk now has been synced at its current length.
            let synced = wal.shared().persist.blobs_synced.lock().unwrap().clone();
            for entry in std::fs::read_dir(dir.path().join("blobs")).unwrap() {
                let entry = entry.unwrap();
                // sled removes a blob whose item was replaced on its own
                // threads: one listed a moment ago may be gone already (and
                // has nothing left to sync).
                let len = match entry.metadata() {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("{entry:?}: {e}"),
                };
                assert_eq!(
                    synced.get(&entry.file_name()),
                    Some(&len),
                    "{entry:?} after append {i}"
                );
            }
        }
        let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert!(blobs > 0, "the test must make sled write blobs");
    }
    let wal = Wal::open(config).unwrap();
    let frames = wal.read_after(0, usize::MAX).unwrap();
    let ts: Vec<i64> = frames
        .iter()
        .flat_map(|f| &f.records)
        .map(|r| match r {
            Record::Point(p) => p.ts - 1_764_000_000_000_000_000,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ts, (0..80).collect::<Vec<_>>());
}

/// A request never becomes one giant frame: frames stay within
/// `max_frame_records` and `max_frame_bytes` whatever the request size, and
/// the request is still one unit (all its frames or none).
#[test]
fn a_large_append_spans_bounded_frames_and_stays_one_unit() {
    let dir = TempDir::new().unwrap();
    let cfg = WalConfig {
        max_frame_records: 7,
        max_frame_bytes: 300,
        ..WalConfig::new(dir.path()).with_sinks(["a"])
    };
    {
        let wal = Wal::open(cfg.clone()).unwrap();
        wal.append(&[trade(1000)]).unwrap();
        let big: Vec<Record> = (0..500).map(trade).collect();
        let out = wal.append(&big).unwrap();
        assert_eq!(out.records, 500);
        wal.append(&[trade(1001)]).unwrap();
    }
    let wal = Wal::open(cfg.clone()).unwrap();
    let frames = wal.read_after(0, usize::MAX).unwrap();
    let mut want = vec![1000];
    want.extend(0..500);
    want.push(1001);
    assert_eq!(ids(&frames), want);
    assert!(frames.len() > 500 / 7, "{} frames", frames.len());
    for f in &frames {
        let mut payload = Vec::new();
        for r in &f.records {
            crate::record::encode_record(r, &mut payload).unwrap();
        }
        assert!(
            f.records.len() <= 7,
            "frame {} holds {}",
            f.seq,
            f.records.len()
        );
        assert!(
            payload.len() <= 300,
            "frame {} holds {} bytes",
            f.seq,
            payload.len()
        );
    }
    assert_eq!(wal.stats().frames, frames.len() as u64);
}

/// A log keeps the segment size it was created with when the configured
/// default changes (sled refuses to open it with another): new defaults
/// apply to new logs only.
#[test]
fn an_existing_log_opens_with_its_own_segment_size() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut cfg = WalConfig::new(dir.path());
    cfg.segment_bytes = 4 * 1024 * 1024;
    {
        let wal = Wal::open(cfg.clone()).unwrap();
        wal.append(&[trade(1)]).unwrap();
    }
    assert_eq!(
        super::recovery::existing_segment_size(dir.path()),
        Some(4 * 1024 * 1024)
    );
    cfg.segment_bytes = 1024 * 1024;
    let wal = Wal::open(cfg).unwrap();
    assert_eq!(wal.read_after(0, 10).unwrap().len(), 1);
    let fresh = tempfile::TempDir::new().unwrap();
    assert_eq!(super::recovery::existing_segment_size(fresh.path()), None);
}
