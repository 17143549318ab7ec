//! Model-based property test: any sequence of appends, drains (read + ack),
//! flushes, truncations and reopenings delivers every appended record exactly
//! once to each sink, in order. Frame limits are shrunk so frame boundaries
//! are crossed constantly.

use proptest::prelude::*;
use tempfile::TempDir;

use super::tests::trade;
use super::*;

const SINKS: [&str; 2] = ["influx", "timescale"];

#[derive(Debug, Clone)]
enum Action {
    Append(u8),
    Drain { sink: usize, max_records: usize },
    Flush,
    Truncate,
    Reopen,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (1u8..6).prop_map(Action::Append),
        3 => (0usize..2, 1usize..9).prop_map(|(sink, max_records)| Action::Drain { sink, max_records }),
        1 => Just(Action::Flush),
        1 => Just(Action::Truncate),
        1 => Just(Action::Reopen),
    ]
}

fn config(dir: &TempDir) -> WalConfig {
    WalConfig {
        max_frame_records: 3,
        max_frame_bytes: 400,
        ..WalConfig::new(dir.path()).with_sinks(SINKS)
    }
}

fn trade_id(r: &Record) -> u64 {
    match r {
        Record::Trade(t) => t.trade_id.parse().unwrap(),
        other => panic!("{other:?}"),
    }
}

/// Reads everything after the sink's cursor, acknowledging as it goes.
fn drain(wal: &Wal, sink: &str, max_records: usize, delivered: &mut Vec<u64>) {
    let frames = wal
        .read_after(wal.cursor(sink).unwrap(), max_records)
        .unwrap();
    if let Some(last) = frames.last() {
        delivered.extend(frames.iter().flat_map(|f| &f.records).map(trade_id));
        wal.ack(sink, last.seq).unwrap();
    }
}

proptest! {
    // Regressions live beside this file (the repository's top level is fixed).
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_record_reaches_every_sink_once_in_order(actions in prop::collection::vec(action(), 1..60)) {
        let dir = TempDir::new().unwrap();
        let mut wal = Some(Wal::open(config(&dir)).unwrap());
        let mut next_id = 0u64;
        let mut appended: Vec<u64> = Vec::new();
        let mut delivered: [Vec<u64>; 2] = [Vec::new(), Vec::new()];

        for a in actions {
            let w = wal.as_ref().unwrap();
            match a {
                Action::Append(n) => {
                    let recs: Vec<_> = (0..n).map(|i| trade(next_id + u64::from(i))).collect();
                    w.append(&recs).unwrap();
                    appended.extend(next_id..next_id + u64::from(n));
                    next_id += u64::from(n);
                }
                Action::Drain { sink, max_records } => drain(w, SINKS[sink], max_records, &mut delivered[sink]),
                Action::Flush => w.flush().unwrap(),
                Action::Truncate => w.truncate().unwrap(),
                Action::Reopen => {
                    drop(wal.take());
                    wal = Some(Wal::open(config(&dir)).unwrap());
                }
            }
            // Idle between actions: nothing may stay reserved, and an empty
            // log holds no bytes (space accounting cannot drift).
            prop_assert_eq!(wal.as_ref().unwrap().reserved_bytes(), 0);
            let s = wal.as_ref().unwrap().stats();
            if s.records == 0 {
                prop_assert_eq!((s.frames, s.bytes), (0, 0));
            }
            // The log holds exactly what the slowest sink has not delivered.
            let min_delivered = delivered.iter().map(Vec::len).min().unwrap();
            let stats = wal.as_ref().unwrap().stats();
            prop_assert_eq!(stats.records as usize, appended.len() - min_delivered);
            prop_assert_eq!(stats.appended_records as usize, appended.len());
            for (i, sink) in SINKS.iter().enumerate() {
                prop_assert_eq!(
                    wal.as_ref().unwrap().backlog(sink).unwrap().records as usize,
                    appended.len() - delivered[i].len()
                );
            }
        }
        let w = wal.as_ref().unwrap();
        for (i, sink) in SINKS.iter().enumerate() {
            drain(w, sink, usize::MAX, &mut delivered[i]);
            prop_assert_eq!(&delivered[i], &appended, "sink {}", sink);
        }
        prop_assert_eq!(w.stats().records, 0);
    }
}
