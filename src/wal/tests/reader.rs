//! Tests of the read side (`wal/reader.rs`): reads after a cursor, the
//! kinds index, quarantine of unreadable frames, offline verify.

use super::*;

#[test]
fn corrupt_frames_are_quarantined_and_reading_continues() {
    let dir = TempDir::new().unwrap();
    let wal = Wal::open(small(&dir)).unwrap();
    let s1 = wal.append(&[trade(1)]).unwrap().seq;
    let s2 = wal.append(&[trade(2)]).unwrap().seq;
    let s3 = wal.append(&[trade(3)]).unwrap().seq;
    // Flip one byte of frame s2's payload.
    let mut raw = wal
        .inner
        .shared
        .frames
        .get(seq_key(s2))
        .unwrap()
        .unwrap()
        .to_vec();
    let last = raw.len() - 1;
    raw[last] ^= 0xFF;
    wal.debug_put_raw_frame(s2, &raw).unwrap();
    let frames = wal.read_after(0, usize::MAX).unwrap();
    assert_eq!(
        frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
        vec![s1, s3]
    );
    assert_eq!(ids(&frames), vec![1, 3]);
    let q = wal.quarantined().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0, s2);
    assert!(q[0].1.contains("crc"), "{}", q[0].1);
    assert_eq!(wal.quarantined_since_open(), 1);
    assert_eq!(wal.stats().records, 2);
    // A zeroed header and a truncated frame are handled the same way.
    wal.debug_put_raw_frame(s3 + 10, &[0u8; 40]).unwrap();
    wal.debug_put_raw_frame(s3 + 11, &[1u8; 3]).unwrap();
    assert_eq!(ids(&wal.read_after(0, usize::MAX).unwrap()), vec![1, 3]);
    assert_eq!(wal.quarantined().unwrap().len(), 3);
}

#[test]
fn verify_reports_bad_frames_without_changing_them() {
    let dir = TempDir::new().unwrap();
    let wal = Wal::open(small(&dir)).unwrap();
    wal.append(&[trade(1), trade(2)]).unwrap();
    wal.debug_put_raw_frame(99, b"garbage-frame-bytes-garbage-frame-bytes")
        .unwrap();
    let (frames, records, bad) = wal.verify().unwrap();
    assert_eq!((frames, records, bad.len()), (1, 2, 1));
    assert_eq!(bad[0].0, 99);
    assert_eq!(
        wal.verify().unwrap().2.len(),
        1,
        "verify does not quarantine"
    );
}

#[test]
fn read_for_skips_unwanted_frames_and_never_hides_unindexed_ones() {
    use crate::record::RecordKind;
    let dir = TempDir::new().unwrap();
    let wal = Wal::open(small(&dir)).unwrap();
    let bar = crate::record::codec_samples()[7].clone();
    let s1 = wal.append(&[trade(1)]).unwrap().seq;
    let s2 = wal.append(std::slice::from_ref(&bar)).unwrap().seq;
    let s3 = wal.append(&[trade(3)]).unwrap().seq;
    let s4 = wal.append(&[trade(4), bar.clone()]).unwrap().seq;
    let s5 = wal.append(&[trade(5)]).unwrap().seq;
    let bars = RecordKind::Bar.bit() | RecordKind::Kline.bit();
    let (frames, last) = wal.read_for(0, usize::MAX, bars).unwrap();
    assert_eq!(
        frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
        vec![s2, s4]
    );
    assert_eq!(last, s5, "everything examined may be acknowledged");
    let (frames, last) = wal.read_for(s4, usize::MAX, bars).unwrap();
    assert!(frames.is_empty());
    assert_eq!(last, s5);
    // A frame whose index entry is missing (crash between the two writes) is loaded.
    wal.inner.shared.index.remove(seq_key(s3)).unwrap();
    let (frames, _) = wal.read_for(0, usize::MAX, bars).unwrap();
    assert_eq!(
        frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
        vec![s2, s3, s4]
    );
    // Trades wanted: every frame with a trade.
    let (frames, _) = wal
        .read_for(0, usize::MAX, RecordKind::Trade.bit())
        .unwrap();
    assert_eq!(
        frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
        vec![s1, s3, s4, s5]
    );
    // What drainers read: the same frames, only the wanted records, in log
    // order, in one vector; the same last sequence.
    let mut out = Vec::new();
    let last = wal
        .read_records_for(0, usize::MAX, RecordKind::Trade.bit(), &mut out)
        .unwrap();
    assert_eq!(last, s5);
    assert_eq!(out, vec![trade(1), trade(3), trade(4), trade(5)]);
    let mut out = Vec::new();
    wal.read_records_for(0, usize::MAX, bars, &mut out).unwrap();
    assert_eq!(out, vec![bar.clone(), bar.clone()]);
    // `max_records` counts wanted records, whole frames at a time.
    let mut out = Vec::new();
    let last = wal
        .read_records_for(0, 2, RecordKind::Trade.bit(), &mut out)
        .unwrap();
    assert_eq!((out.len(), last), (2, s3));
    // Truncation prunes the index.
    let last = wal.stats().last_seq;
    wal.ack("a", last).unwrap();
    wal.ack("b", last).unwrap();
    assert_eq!(wal.inner.shared.index.len(), 0);
}
