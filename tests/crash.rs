//! Crash tests across a process boundary: this test binary re-runs itself as a
//! child (`crash_child`, selected by an environment variable) that appends at
//! full speed from several threads and prints every acknowledged batch. The
//! parent SIGKILLs it at a random moment, reopens the log and checks that every
//! acknowledged record is present exactly once.

#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;

use walrelay::{Record, Wal, WalConfig};

const CHILD_DIR: &str = "WALRELAY_CRASH_DIR";
const CHILD_CYCLE: &str = "WALRELAY_CRASH_CYCLE";
/// Set: the child's log keeps delivered frames and counts them (`retain`).
const CHILD_RETAIN: &str = "WALRELAY_CRASH_RETAIN";
const THREADS: u64 = 4;

fn trade(id: String) -> Record {
    common::records::trade_record("BTCUSDT", id, common::records::TS, 97_000.0, 0.5)
}

/// The child's workload; does nothing unless the parent started it.
#[test]
#[ignore = "run as a child process by the crash tests"]
fn crash_child() {
    let (Ok(dir), Ok(cycle)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_CYCLE)) else {
        return;
    };
    let config = match std::env::var_os(CHILD_RETAIN) {
        Some(_) => retaining(Path::new(&dir)),
        None => WalConfig::new(dir),
    };
    let wal = Wal::open(config).unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = wal.clone();
            let cycle = cycle.clone();
            std::thread::spawn(move || {
                let mut rng = rand::thread_rng();
                for batch in 0u64.. {
                    let n = rng.gen_range(1..=64u64);
                    let recs: Vec<_> = (0..n)
                        .map(|i| trade(format!("{cycle}:{t}:{batch}:{i}")))
                        .collect();
                    let out = wal.append(&recs).unwrap();
                    // One write per line so a kill tears at most the last line.
                    let line = format!("ACK {cycle} {t} {batch} {n} {}\n", out.seq);
                    use std::io::Write;
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(line.as_bytes()).unwrap();
                    stdout.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// A log with retention on (its counts written by the counting thread).
fn retaining(dir: &Path) -> WalConfig {
    WalConfig {
        retain: walrelay::wal::Retain { ms: 3_600_000 },
        ..WalConfig::new(dir)
    }
}

/// An acknowledged batch: (cycle, thread, batch) -> (records, frame seq).
type Acked = HashMap<(u64, u64, u64), (u64, u64)>;

/// Runs the child on `dir` and SIGKILLs it `after` its first acknowledgement;
/// returns what it acknowledged.
fn run_and_kill(dir: &Path, cycle: u64, after: Duration) -> Acked {
    run_and_kill_with(dir, cycle, after, false)
}

/// [`run_and_kill`], the child's log with retention on if `retain`.
fn run_and_kill_with(dir: &Path, cycle: u64, after: Duration, retain: bool) -> Acked {
    let mut command = Command::new(std::env::current_exe().unwrap());
    if retain {
        command.env(CHILD_RETAIN, "1");
    }
    let mut child = command
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_CYCLE, cycle.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (first_ack_tx, first_ack) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut acked = Acked::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 6 && f[0] == "ACK" {
                let n: Vec<u64> = f[1..].iter().map(|x| x.parse().unwrap()).collect();
                acked.insert((n[0], n[1], n[2]), (n[3], n[4]));
                let _ = first_ack_tx.send(());
            }
        }
        acked
    });
    // The random delay counts from the child's first acknowledgement, so the
    // kill always lands while appends are in flight, however long a loaded
    // machine takes to start the child (a fixed delay from spawn sometimes
    // killed it before it had opened the log). A child that never
    // acknowledges is killed after the deadline and the caller's assertion
    // reports it.
    let _ = first_ack.recv_timeout(Duration::from_secs(60));
    std::thread::sleep(after);
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    reader.join().unwrap()
}

/// Every record id in the log, with how often it occurs.
fn present(dir: &Path) -> HashMap<String, u32> {
    let wal = Wal::open(WalConfig::new(dir)).unwrap();
    let mut seen = HashMap::new();
    for f in wal.read_after(0, usize::MAX).unwrap() {
        for r in f.records {
            let Record::Trade(t) = r else {
                panic!("unexpected record")
            };
            *seen.entry(t.trade_id.into()).or_insert(0) += 1;
        }
    }
    seen
}

fn missing(acked: &Acked, seen: &HashMap<String, u32>, skip_seq_from: u64) -> Vec<String> {
    let mut out = Vec::new();
    for (&(c, t, b), &(n, seq)) in acked {
        if seq >= skip_seq_from {
            continue;
        }
        for i in 0..n {
            let id = format!("{c}:{t}:{b}:{i}");
            if seen.get(&id) != Some(&1) {
                out.push(format!("{id} seen {:?} times", seen.get(&id)));
            }
        }
    }
    out
}

#[test]
fn sigkill_loses_no_acknowledged_record() {
    let dir = tempfile::TempDir::new().unwrap();
    let cycles: u64 = std::env::var("WALRELAY_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut all = Acked::new();
    let mut rng = rand::thread_rng();
    for cycle in 0..cycles {
        let acked = run_and_kill(
            dir.path(),
            cycle,
            Duration::from_millis(rng.gen_range(0..550)),
        );
        assert!(
            !acked.is_empty(),
            "cycle {cycle}: the child acknowledged nothing before the kill"
        );
        all.extend(acked);
        let seen = present(dir.path());
        let lost = missing(&all, &seen, u64::MAX);
        assert!(
            lost.is_empty(),
            "cycle {cycle}: {} acknowledged records lost or duplicated: {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        assert!(
            seen.values().all(|&c| c == 1),
            "cycle {cycle}: a record appears twice"
        );
    }
    let records: u64 = all.values().map(|(n, _)| n).sum();
    println!(
        "crash: cycles={cycles} acked_batches={} acked_records={records} lost=0 duplicated=0",
        all.len()
    );
}

/// One message in sled 0.34.7's log file: where it starts and ends.
#[derive(Debug, Clone, Copy)]
struct SledMessage {
    segment: usize,
    start: usize,
    end: usize,
}

/// sled's variable-length u64 (its `serialization.rs`); `None` past the end.
/// With retention on, the counts are written by a thread of their own after
/// the frames, as plain sled inserts (labels, then counts and time index,
/// then the marker `counted_to`): whatever a SIGKILL leaves, the reopened log
/// counts exactly the records it holds (frames past the marker are counted
/// again on open; a marker ahead of its counts would show fewer).
#[test]
fn sigkill_with_retention_leaves_counts_equal_to_the_records_in_the_log() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut all = Acked::new();
    let mut rng = rand::thread_rng();
    let minute = 60_000_000_000;
    for cycle in 0..8 {
        let after = Duration::from_millis(rng.gen_range(0..400));
        all.extend(run_and_kill_with(dir.path(), cycle, after, true));
        let wal = Wal::open(retaining(dir.path())).unwrap();
        let records = wal.stats().records;
        let counted: u64 = wal
            .accepted_counts(common::records::TS - minute, common::records::TS + minute)
            .unwrap()
            .counts
            .values()
            .sum();
        assert_eq!(
            counted, records,
            "cycle {cycle}: counts {counted} against {records} records in the log"
        );
        let acked: u64 = all.values().map(|(n, _)| n).sum();
        assert!(
            records >= acked,
            "cycle {cycle}: {acked} records acknowledged, {records} in the log"
        );
        drop(wal);
    }
}

fn sled_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let b0 = *buf.first()?;
    Some(match b0 {
        0..=240 => (u64::from(b0), 1),
        241..=248 => (
            240 + 256 * (u64::from(b0) - 241) + u64::from(*buf.get(1)?),
            2,
        ),
        249 => (
            2288 + 256 * u64::from(*buf.get(1)?) + u64::from(*buf.get(2)?),
            3,
        ),
        other => {
            let sz = other as usize - 247;
            let mut le = [0u8; 8];
            le[..sz].copy_from_slice(buf.get(1..=sz)?);
            (u64::from_le_bytes(le), sz + 1)
        }
    })
}

/// The last message sled wrote: the newest segment (highest LSN in a segment
/// header whose checksum holds) that has a message, walked message by message
/// the way sled's recovery does (header checksum, message checksum, segment
/// number) up to the first that does not check out. sled reuses freed
/// segments in place, so the newest data is often not at the end of the file,
/// and bytes past the write point of a reused segment are stale messages of
/// an older segment number.
fn last_sled_message(file: &[u8], segment_size: usize) -> SledMessage {
    const SEG_HEADER_LEN: usize = 20;
    const MAX_MSG_HEADER_LEN: usize = 32;
    const XOR: u64 = 0x7FFF_FFFF_FFFF_FFFF;
    let mut segments: Vec<(u64, usize)> = file
        .chunks(segment_size)
        .enumerate()
        .filter(|(_, seg)| seg.len() >= SEG_HEADER_LEN)
        .filter(|(_, seg)| {
            let crc = u32::from_le_bytes(seg[0..4].try_into().unwrap()) ^ 0xFFFF_FFFF;
            crc == crc32fast::hash(&seg[4..20])
        })
        .map(|(i, seg)| {
            let lsn = u64::from_le_bytes(seg[4..12].try_into().unwrap()) ^ XOR;
            (lsn, i * segment_size)
        })
        .collect();
    segments.sort_unstable_by(|a, b| b.cmp(a));
    for (lsn, base) in segments {
        let seg = &file[base..(base + segment_size).min(file.len())];
        let number = lsn / segment_size as u64;
        let mut at = SEG_HEADER_LEN;
        let mut last = None;
        while at + MAX_MSG_HEADER_LEN <= segment_size && at + 5 <= seg.len() {
            let stored_crc = u32::from_le_bytes(seg[at..at + 4].try_into().unwrap());
            let kind = seg[at + 4];
            let mut pos = at + 5;
            let Some((len, n)) = sled_varint(&seg[pos..]) else {
                break;
            };
            pos += n;
            let Some((seg_no, n)) = sled_varint(&seg[pos..]) else {
                break;
            };
            pos += n;
            let Some((_pid, n)) = sled_varint(&seg[pos..]) else {
                break;
            };
            pos += n;
            let end = pos.saturating_add(len as usize);
            // kind 0 is sled's Corrupted (zeroed space), 2 its segment cap.
            if kind == 0 || kind == 2 || end > seg.len() || seg_no != number {
                break;
            }
            let mut h = crc32fast::Hasher::new();
            h.update(&seg[pos..end]);
            h.update(&seg[at + 4..pos]);
            if h.finalize() ^ 0xFFFF_FFFF != stored_crc {
                break;
            }
            last = Some(SledMessage {
                segment: base,
                start: base + at,
                end: base + end,
            });
            at = end;
        }
        if let Some(m) = last {
            return m;
        }
    }
    panic!("no sled message found in the log file");
}

/// sled's contract for a torn tail: when the last write reached the disk only
/// in part, the store still opens and keeps what was written before it.
/// The tear zeroes the last 64 bytes sled wrote, up to the end of its last
/// message, found by walking its segments in LSN order: a reused segment in
/// the middle of the file is as likely to hold it as the file's end (cutting
/// the file's end instead corrupts an older segment, which is bit rot, not a
/// torn write). Tested once, as such.
#[test]
fn torn_tail_of_sled_file_still_opens_and_keeps_earlier_frames() {
    let dir = tempfile::TempDir::new().unwrap();
    let acked = run_and_kill(dir.path(), 0, Duration::from_millis(600));
    assert!(!acked.is_empty());
    let db = dir.path().join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let segment_size = WalConfig::new(dir.path()).segment_bytes;
    let last = last_sled_message(&bytes, segment_size);
    let tear_from = last.end.saturating_sub(64).max(last.segment + 20);
    bytes[tear_from..last.end].fill(0);
    std::fs::write(&db, &bytes).unwrap();
    eprintln!(
        "torn tail: sled file of {} bytes, last message at {}..{}, zeroed from {tear_from}",
        bytes.len(),
        last.start,
        last.end
    );
    let seen = present(dir.path());
    assert!(
        seen.values().all(|&c| c == 1),
        "no duplicates after a torn tail"
    );
    // Every record acknowledged before the last flushed frame survives.
    let last_seq = acked.values().map(|&(_, seq)| seq).max().unwrap();
    let lost = missing(&acked, &seen, last_seq);
    assert!(
        lost.is_empty(),
        "{} records acknowledged before frame {last_seq} lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}
