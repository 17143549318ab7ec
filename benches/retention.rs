//! Retention's costs (`[wal] retain`), each against its reference in the
//! same run:
//!
//! - `append/sync/interleaved`: durable appends (`sync`, 4 producers, frames
//!   of ~1000 real-sized trades over 20 symbols) on two logs open at once,
//!   one with retention off and one with it on (on: per-minute, per-series
//!   counts and the time index written for every frame), a fresh pair for
//!   each criterion sample (the one opened first alternating). Each iteration
//!   runs one round of 100,000 records on each, the first arm alternating,
//!   so drift of the disk or the machine falls on both arms alike. The summary prints both
//!   rates over all rounds and the quartiles of the pairs' ratios. The goal:
//!   on within 5% of off.
//! - `ack_latency/interleaved`: a fixed offered load (4 producers, each a
//!   request of 100 trades over 20 symbols every 4 ms: 100,000 records/s)
//!   under `sync`, 0.4 s on each of three logs per iteration (retention
//!   off, on, and a control with it off), the order rotating; each request
//!   timed from its scheduled start until `append` returned; after the
//!   `on` window the counter is settled and every log flushed after its
//!   window (the counter's last round and its write-out fall in no arm's
//!   window). The summary prints p50, p90, p95 and p99 of each arm
//!   pooled over the run, on and the control against off: the control is
//!   the ratios' own noise in the same run (goal: on within 5%).
//! - `audit/accepted_counts`: the log side of `walrelay audit` over one hour
//!   holding `AUDIT_FRAMES` frames of 1024 records (20 symbols, event times
//!   spread over the hour, counted two frames per counter round as at
//!   100,000 records/s): the time-index range and the counts of every run
//!   of frames, no record decoded. The summary extrapolates per frame to one hour
//!   at 100,000 records/s (360 M records, 351,563 frames); the goal is < 10 s
//!   (the databases' own `count` queries come on top and are theirs).
//!
//! `cargo bench --bench retention` (about five minutes).
//! `WALRELAY_BENCH_AA=1` runs the same with retention off on both logs (an
//! A/A run): the ratios it prints are the benches' own noise floor, to
//! judge the 5% goals by.

mod common;
#[path = "../tests/common/records.rs"]
#[allow(dead_code)]
mod records;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::note;
use criterion::{criterion_group, Criterion, Throughput};
use walrelay::wal::{Durability, Retain};
use walrelay::{Record, Wal, WalConfig};

const FRAME_RECORDS: usize = 1000;
/// Records of one round of the append group (4 producers, a frame's worth
/// per round of theirs).
const ROUND_RECORDS: usize = 100 * FRAME_RECORDS;
const AUDIT_FRAMES: u64 = 3000;
const HOUR_NS: i64 = 3_600_000_000_000;

const SYMBOLS: [&str; 20] = [
    "BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT", "TRXUSDT",
    "AVAXUSDT", "LINKUSDT", "DOTUSDT", "LTCUSDT", "BCHUSDT", "NEARUSDT", "APTUSDT", "ARBUSDT",
    "OPUSDT", "SUIUSDT", "TONUSDT", "ATOMUSDT",
];

fn trade(i: u64, ts: i64) -> Record {
    records::market_trade(
        i,
        SYMBOLS[(i % SYMBOLS.len() as u64) as usize],
        ts,
        97_000.5 + (i % 100) as f64,
        0.012,
    )
}

fn config(dir: &std::path::Path, retain: bool) -> WalConfig {
    WalConfig {
        durability: Durability::Sync,
        retain: Retain {
            ms: if retain { 6 * 3_600_000 } else { 0 },
        },
        ..WalConfig::new(dir).with_sinks(["influx"])
    }
}

/// Samples run so far (which log is opened first alternates).
static SAMPLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Pairs run so far (which arm goes first alternates).
static PAIRS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Per interleaved pair of rounds: (off, on) CPU of the whole process.
static CPU_ROUNDS: Mutex<Vec<(Duration, Duration)>> = Mutex::new(Vec::new());

/// Per interleaved pair of rounds: (off, on) durations of the same appends.
static ROUNDS: Mutex<Vec<(Duration, Duration)>> = Mutex::new(Vec::new());

/// Waits until `wal`'s counter has written the counts of every frame
/// committed so far (`frames_between` settles the counts first).
fn settle(wal: &Wal) {
    wal.frames_between(i64::MIN, i64::MIN + 1).unwrap();
}

/// Whether this is an A/A run (`WALRELAY_BENCH_AA` set and not empty).
fn aa() -> bool {
    std::env::var("WALRELAY_BENCH_AA").is_ok_and(|v| !v.is_empty())
}

/// Two fresh logs open at once, retention off (`[0]`) and on (`[1]`; off
/// too in an A/A run), with the directories that hold them; `on_first`
/// opens (and creates) the one with retention first.
fn two_logs(on_first: bool) -> ([tempfile::TempDir; 2], [Wal; 2]) {
    let dirs = [
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    ];
    let open = |i: usize| Wal::open(config(dirs[i].path(), i == 1 && !aa())).unwrap();
    let wals = if on_first {
        let on = open(1);
        [open(0), on]
    } else {
        let off = open(0);
        [off, open(1)]
    };
    (dirs, wals)
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(10).measurement_time(Duration::from_secs(16));
    let producers = 4;
    let per_batch = FRAME_RECORDS / producers;
    let batches_per_producer = ROUND_RECORDS / FRAME_RECORDS;
    let records_per_round = (per_batch * producers * batches_per_producer) as u64;
    // Two logs open at once; each iteration runs one round on the log
    // without retention and the same round on the log with it, so drift
    // (disk, page cache, the rest of the machine) falls on both arms alike.
    // After an `on` round the counter is settled outside its timed window
    // (at most one 20 ms counter round), inside its CPU.
    let batch: Vec<Record> = (0..per_batch as u64)
        .map(|i| trade(i, records::TS + i as i64 * 1_000_000))
        .collect();
    // One round: its wall time, and the CPU the whole process spent on it
    // (producers, writer, syncer, sled's threads and, with retention, the
    // counter until it has written the round's counts: that wait is
    // outside the wall time, so the next round starts with nothing left
    // over from this one).
    let pid = std::process::id();
    let round = |wal: &Wal, on: bool| -> (Duration, Duration) {
        let cpu_before = common::cpu_time(pid).unwrap_or_default();
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..producers {
                s.spawn(|| {
                    for _ in 0..batches_per_producer {
                        wal.append(&batch).unwrap();
                    }
                });
            }
        });
        let wall = start.elapsed();
        if on {
            settle(wal);
        }
        let cpu = common::cpu_time(pid)
            .unwrap_or_default()
            .saturating_sub(cpu_before);
        (wall, cpu)
    };
    g.throughput(Throughput::Elements(2 * records_per_round));
    g.bench_function("sync/interleaved", |b| {
        b.iter_custom(|iters| {
            // A fresh pair of logs for each sample (created untimed, the
            // arm opened first alternating): a run's figure then averages
            // over as many pairs of logs as samples, not one pair's files
            // (runs of one pair each spread from -1% to -9%).
            let sample = SAMPLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (_dirs, wals) = two_logs(sample % 2 == 1);
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Alternate which arm goes first, so that what one round
                // leaves behind (the kernel's writeback) falls on each arm
                // alike.
                let first_off = PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2 == 0;
                let ((off, off_cpu), (on, on_cpu)) = if first_off {
                    let off = round(&wals[0], false);
                    (off, round(&wals[1], true))
                } else {
                    let on = round(&wals[1], true);
                    (round(&wals[0], false), on)
                };
                note("append/sync/off", records_per_round, off);
                note("append/sync/on", records_per_round, on);
                ROUNDS.lock().unwrap().push((off, on));
                CPU_ROUNDS.lock().unwrap().push((off_cpu, on_cpu));
                total += off + on;
            }
            total
        });
    });
    g.finish();
}

/// Every request's latency, by arm: 0 off, 1 on, 2 the control (off).
static LATENCIES: Mutex<Vec<(usize, Duration)>> = Mutex::new(Vec::new());

/// Three fresh logs open at once: retention off (`[0]`), on (`[1]`; off in
/// an A/A run) and a control without it (`[2]`), opened in an order that
/// rotates with `turn`.
fn three_logs(turn: u64) -> ([tempfile::TempDir; 3], [Wal; 3]) {
    let dirs = [(); 3].map(|_| tempfile::TempDir::new().unwrap());
    let mut wals: [Option<Wal>; 3] = [None, None, None];
    for k in 0..3 {
        let i = (k + turn as usize) % 3;
        wals[i] = Some(Wal::open(config(dirs[i].path(), i == 1 && !aa())).unwrap());
    }
    (dirs, wals.map(Option::unwrap))
}

fn ack_latency(c: &mut Criterion) {
    const PRODUCERS: usize = 4;
    const LINES: u64 = 100;
    const PERIOD: Duration = Duration::from_millis(4);
    /// Periods per arm and iteration (0.4 s).
    const PERIODS: u64 = 100;
    let mut g = c.benchmark_group("ack_latency");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    // Interleaved as `append`, with a third arm: each iteration offers the
    // load for 0.4 s to each of three logs (off, on, and a control that is
    // off too), the order rotating, on a fresh triple per sample. The
    // control against off is the ratio's noise floor in the same run.
    let batch: Vec<Record> = (0..LINES)
        .map(|i| trade(i, records::TS + i as i64 * 1_000_000))
        .collect();
    g.bench_function("interleaved", |b| {
        b.iter_custom(|iters| {
            let sample = SAMPLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (_dirs, wals) = three_logs(sample);
            let mut total = Duration::ZERO;
            for i in 0..iters {
                for k in 0..3 {
                    let arm = (k + (sample + i) as usize) % 3;
                    let wal = &wals[arm];
                    let lat = common::open_loop(PRODUCERS, PERIOD, PERIODS, &|| {
                        wal.append(&batch).unwrap();
                    });
                    total += lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
                    if arm == 1 {
                        // Its last counter round runs here, not in the
                        // next arm's window.
                        settle(wal);
                    }
                    // Nor does sled's write-out of it (every arm alike).
                    wal.flush().unwrap();
                    LATENCIES
                        .lock()
                        .unwrap()
                        .extend(lat.into_iter().map(|l| (arm, l)));
                }
            }
            total
        });
    });
    g.finish();
}

fn audit(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit");
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig {
        durability: Durability::Interval { interval_ms: 100 },
        max_frame_records: 1024,
        ..config(dir.path(), true)
    })
    .unwrap();
    let total = AUDIT_FRAMES * 1024;
    let step = HOUR_NS / total as i64;
    for f in 0..AUDIT_FRAMES {
        let batch: Vec<Record> = (0..1024)
            .map(|k| {
                let i = f * 1024 + k;
                trade(i, records::TS + i as i64 * step)
            })
            .collect();
        wal.append(&batch).unwrap();
        if f % 2 == 1 {
            // Counted as at 100k records/s: two such frames per counter
            // round (20 ms), so the counts come in runs of two frames, not
            // in the long runs of a bulk load.
            settle(&wal);
        }
    }
    wal.ack("influx", wal.stats().last_seq).unwrap();
    let frames = AUDIT_FRAMES;
    g.throughput(Throughput::Elements(frames));
    g.bench_function("accepted_counts", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let c = wal
                    .accepted_counts(records::TS, records::TS + HOUR_NS)
                    .unwrap();
                let n: u64 = c.counts.values().sum();
                assert_eq!(n, total);
            }
            let elapsed = start.elapsed();
            note("audit/accepted_counts_frames", frames * iters, elapsed);
            elapsed
        });
    });
    g.finish();
}

fn report() {
    let s = common::summary();
    if aa() {
        println!("A/A run (WALRELAY_BENCH_AA): both logs without retention; \"on\" is the second of them");
    }
    s.print_rates(
        "walrelay retention summary (this run)",
        32,
        "records or frames",
    );
    if let (Some(off), Some(on)) = (s.rate("append/sync/off"), s.rate("append/sync/on")) {
        // The spread of the pairs: their ratios' quartiles.
        let mut ratios: Vec<f64> = ROUNDS
            .lock()
            .unwrap()
            .iter()
            .map(|(off, on)| off.as_secs_f64() / on.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        let q = |p: f64| ratios[((ratios.len() - 1) as f64 * p).round() as usize];
        println!(
            "append sync, retention on vs off, {} interleaved pairs: {:.0} vs {:.0} records/s ({:+.1}%; pairs' quartiles {:+.1}% / {:+.1}% / {:+.1}%; goal within 5%)",
            ratios.len(),
            on,
            off,
            (on / off - 1.0) * 100.0,
            (q(0.25) - 1.0) * 100.0,
            (q(0.5) - 1.0) * 100.0,
            (q(0.75) - 1.0) * 100.0,
        );
    }
    let cpu = CPU_ROUNDS.lock().unwrap().clone();
    if !cpu.is_empty() {
        let records = (cpu.len() * ROUND_RECORDS) as f64;
        let (off, on) = cpu.iter().fold((0.0, 0.0), |(a, b), (o, n)| {
            (a + o.as_secs_f64(), b + n.as_secs_f64())
        });
        println!(
            "append sync, CPU per 1000 records (the whole process, with the counter's catch-up): off {:.0} µs, on {:.0} µs ({:+.1}%)",
            off / records * 1e9,
            on / records * 1e9,
            (on / off - 1.0) * 100.0
        );
    }
    let all = LATENCIES.lock().unwrap().clone();
    if !all.is_empty() {
        // Pooled per arm over the run. The tail past p95 follows the few
        // stalls of a run (a fsync or sled's segment work of tens of ms):
        // its A/A spread is tens of percent, so p90 and p95 say what a
        // producer usually sees, and the control says what of a ratio is
        // noise.
        let arm = |a: usize| {
            let mut v: Vec<Duration> = all
                .iter()
                .filter(|(x, _)| *x == a)
                .map(|(_, l)| *l)
                .collect();
            v.sort();
            v
        };
        let arms = [arm(0), arm(1), arm(2)];
        let at =
            |a: usize, q: f64| arms[a][((arms[a].len() - 1) as f64 * q) as usize].as_secs_f64();
        let mut line = String::new();
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)] {
            let (off, on, ctl) = (at(0, q), at(1, q), at(2, q));
            line += &format!(
                "\n  {name}: off {:.2} ms, on {:.2} ms ({:+.1}%), control {:.2} ms ({:+.1}%)",
                off * 1e3,
                on * 1e3,
                (on / off - 1.0) * 100.0,
                ctl * 1e3,
                (ctl / off - 1.0) * 100.0
            );
        }
        println!("ack latency at 100k records/s, sync, retention on and the control (off) against off (goal: on within 5%):{line}");
    }
    if let Some(per_s) = s.rate("audit/accepted_counts_frames") {
        let hour_frames = 360_000_000f64 / 1024.0;
        println!(
            "audit, log side: {per_s:.0} frames/s; one hour at 100k records/s ({hour_frames:.0} frames) ≈ {:.1} s (goal < 10 s)",
            hour_frames / per_s
        );
    }
}

criterion_group!(benches, append, ack_latency, audit);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
