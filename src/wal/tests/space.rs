//! Tests of space management (`wal/space.rs`): truncation at the lowest
//! cursor, `block` waiting for space, exact reservations, `drop_oldest`.

use super::*;
use std::sync::atomic::Ordering;

#[test]
fn cursors_are_independent_and_truncate_at_the_minimum() {
    let dir = TempDir::new().unwrap();
    let wal = Wal::open(small(&dir)).unwrap();
    let mut last = 0;
    for i in 0..6 {
        last = wal.append(&[trade(i)]).unwrap().seq;
    }
    let a_frames = wal.read_after(0, usize::MAX).unwrap();
    wal.ack("a", a_frames.last().unwrap().seq).unwrap();
    assert_eq!(wal.cursor("a").unwrap(), last);
    assert_eq!(wal.cursor("b").unwrap(), 0);
    // b has delivered nothing: every frame is still there for it.
    assert_eq!(
        ids(&wal
            .read_after(wal.cursor("b").unwrap(), usize::MAX)
            .unwrap())
        .len(),
        6
    );
    assert_eq!(wal.backlog("a").unwrap().records, 0);
    assert_eq!(wal.backlog("b").unwrap().records, 6);
    let first_two = &a_frames[..2];
    wal.ack("b", first_two[1].seq).unwrap();
    assert_eq!(wal.backlog("b").unwrap().records, 4);
    // Frames up to min(a, b) are gone, the rest remain.
    assert_eq!(wal.stats().records, 4);
    assert_eq!(
        ids(&wal.read_after(0, usize::MAX).unwrap()),
        vec![2, 3, 4, 5]
    );
    // A cursor never moves back.
    wal.ack("a", 1).unwrap();
    assert_eq!(wal.cursor("a").unwrap(), last);
}

#[test]
fn block_fails_with_full_after_the_deadline_and_resumes_after_truncation() {
    let dir = TempDir::new().unwrap();
    let cfg = WalConfig {
        max_bytes: 600,
        block_timeout_ms: 1500,
        ..small(&dir)
    };
    let wal = Wal::open(cfg).unwrap();
    let mut n = 0;
    let err = loop {
        match wal.append(&[trade(n)]) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 100, "log never filled");
    };
    assert!(matches!(err, WalError::Full { .. }), "{err}");
    assert!(err.is_retriable());
    assert_eq!(wal.stats().records, n, "every acknowledged record is kept");
    // A producer blocked on a full log proceeds as soon as drainers free space.
    let w2 = wal.clone();
    let blocked = std::thread::spawn(move || w2.append(&[trade(1000)]));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !blocked.is_finished(),
        "append must wait while the log is full"
    );
    let last = wal.stats().last_seq;
    wal.ack("a", last).unwrap();
    wal.ack("b", last).unwrap();
    blocked
        .join()
        .unwrap()
        .expect("append proceeds after truncation");
    assert_eq!(ids(&wal.read_after(0, usize::MAX).unwrap()), vec![1000]);
    let too_big: Vec<_> = (0..50).map(trade).collect();
    assert!(matches!(
        wal.append(&too_big),
        Err(WalError::TooLarge { .. })
    ));
}

/// A small log that drains as fast as it fills must accept appends forever:
/// what an append reserves is exactly what its commit settles, so the
/// reservation cannot creep up to `max_bytes` (it used to leak the frame
/// overhead of every append and refuse writes after about 6,000 of them).
#[test]
fn small_log_draining_as_it_fills_never_refuses_tens_of_thousands_of_appends() {
    const APPENDS: u64 = 30_000;
    let dir = TempDir::new().unwrap();
    let cfg = WalConfig {
        max_bytes: 200_000,
        block_timeout_ms: 2_000,
        // The accounting does not depend on the policy; `interval` keeps
        // 30,000 appends from costing 30,000 fdatasyncs.
        durability: Durability::Interval { interval_ms: 50 },
        ..small(&dir)
    };
    let wal = Wal::open(cfg).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drainer = {
        let (wal, stop) = (wal.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut delivered = 0u64;
            loop {
                let done = stop.load(Ordering::Acquire);
                for sink in ["a", "b"] {
                    // `read_for` stops at the last durable frame, as drainers do.
                    let cursor = wal.cursor(sink).unwrap();
                    let (frames, last) = wal.read_for(cursor, 500, u16::MAX).unwrap();
                    if last > cursor {
                        if sink == "a" {
                            delivered += frames.iter().map(|f| f.records.len() as u64).sum::<u64>();
                        }
                        wal.ack(sink, last).unwrap();
                    }
                }
                if done && wal.stats().records == 0 {
                    return delivered;
                }
                std::thread::yield_now();
            }
        })
    };
    for i in 0..APPENDS {
        if let Err(e) = wal.append(&[trade(i)]) {
            panic!("append {i} refused by a log that drains as it fills: {e} ({:?}, {} bytes reserved)", wal.stats(), wal.reserved_bytes());
        }
    }
    stop.store(true, Ordering::Release);
    assert_eq!(
        drainer.join().unwrap(),
        APPENDS,
        "every record delivered once"
    );
    let s = wal.stats();
    assert_eq!((s.records, s.frames, s.bytes), (0, 0, 0), "{s:?}");
    assert_eq!(wal.reserved_bytes(), 0, "idle and empty: nothing reserved");
}

#[test]
fn drop_oldest_counts_exactly_and_moves_cursors() {
    let dir = TempDir::new().unwrap();
    let cfg = WalConfig {
        max_bytes: 1000,
        when_full: WhenFull::DropOldest,
        ..small(&dir)
    };
    let wal = Wal::open(cfg).unwrap();
    for i in 0..100 {
        wal.append(&[trade(i)]).unwrap();
    }
    let s = wal.stats();
    assert!(s.bytes <= 1000, "{s:?}");
    assert_eq!(s.records + s.dropped_records, 100, "{s:?}");
    assert!(s.dropped_records > 0);
    let remaining = ids(&wal.read_after(0, usize::MAX).unwrap());
    assert_eq!(remaining.len() as u64, s.records);
    // The survivors are exactly the newest records.
    assert_eq!(remaining, (s.dropped_records..100).collect::<Vec<_>>());
    let first_seq = wal.read_after(0, 1).unwrap()[0].seq;
    assert_eq!(
        wal.cursor("a").unwrap(),
        first_seq - 1,
        "lagging cursor moved past dropped frames"
    );
    assert_eq!(wal.backlog("a").unwrap().records, s.records);
}
