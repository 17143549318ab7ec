//! Retention's costs (`[wal] retain`), each against its reference in the
//! same run:
//!
//! - `append/sync/{off,on}`: durable appends (`sync`, 4 producers, frames of
//!   ~1000 real-sized trades over 20 symbols) with retention off and on (on:
//!   per-minute, per-series counts and the time index written with every
//!   frame). The goal: on within 5% of off.
//! - `ack_latency/{off,on}`: a fixed offered load (4 producers, each a
//!   request of 100 trades over 20 symbols every 4 ms: 100,000 records/s)
//!   under `sync`, each request timed from its scheduled start until
//!   `append` returned; the summary prints p50 and p99 with retention off and
//!   on (goal: on within 5%, or within the run's own spread).
//! - `audit/accepted_counts`: the log side of `walrelay audit` over one hour
//!   holding `AUDIT_FRAMES` frames of 1024 records (20 symbols, event times
//!   spread over the hour): the time-index range and the counts of every
//!   frame, no record decoded. The summary extrapolates per frame to one hour
//!   at 100,000 records/s (360 M records, 351,563 frames); the goal is < 10 s
//!   (the databases' own `count` queries come on top and are theirs).
//!
//! `cargo bench --bench retention` (about two minutes).

mod common;
#[path = "../tests/common/records.rs"]
#[allow(dead_code)]
mod records;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::note;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use walrelay::wal::{Durability, Retain};
use walrelay::{Record, Wal, WalConfig};

const FRAME_RECORDS: usize = 1000;
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

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let producers = 4;
    let per_batch = FRAME_RECORDS / producers;
    let batches_per_producer = 20;
    let records_per_iter = (per_batch * producers * batches_per_producer) as u64;
    for (name, on) in [("off", false), ("on", true)] {
        let id = format!("sync/{name}");
        g.throughput(Throughput::Elements(records_per_iter));
        g.bench_function(BenchmarkId::from_parameter(&id), |b| {
            let dir = tempfile::TempDir::new().unwrap();
            let wal = Wal::open(config(dir.path(), on)).unwrap();
            let batch: Vec<Record> = (0..per_batch as u64)
                .map(|i| trade(i, records::TS + i as i64 * 1_000_000))
                .collect();
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    std::thread::scope(|s| {
                        for _ in 0..producers {
                            s.spawn(|| {
                                for _ in 0..batches_per_producer {
                                    wal.append(&batch).unwrap();
                                }
                            });
                        }
                    });
                }
                let elapsed = start.elapsed();
                note(&format!("append/{id}"), records_per_iter * iters, elapsed);
                elapsed
            });
        });
    }
    g.finish();
}

static LATENCIES: Mutex<Vec<(bool, Duration)>> = Mutex::new(Vec::new());

fn ack_latency(c: &mut Criterion) {
    const PRODUCERS: usize = 4;
    const LINES: u64 = 100;
    const PERIOD: Duration = Duration::from_millis(4);
    let mut g = c.benchmark_group("ack_latency");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for (name, on) in [("off", false), ("on", true)] {
        g.bench_function(name, |b| {
            let dir = tempfile::TempDir::new().unwrap();
            let wal = Wal::open(config(dir.path(), on)).unwrap();
            let batch: Vec<Record> = (0..LINES)
                .map(|i| trade(i, records::TS + i as i64 * 1_000_000))
                .collect();
            b.iter_custom(|iters| {
                let lat = common::open_loop(PRODUCERS, PERIOD, iters, &|| {
                    wal.append(&batch).unwrap();
                });
                let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
                LATENCIES
                    .lock()
                    .unwrap()
                    .extend(lat.into_iter().map(|l| (on, l)));
                mean * iters as u32
            });
        });
    }
    g.finish();
}

fn percentiles(on: bool) -> Option<(Duration, Duration)> {
    let mut v: Vec<Duration> = LATENCIES
        .lock()
        .unwrap()
        .iter()
        .filter(|(o, _)| *o == on)
        .map(|(_, l)| *l)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    Some((at(0.5), at(0.99)))
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
    s.print_rates(
        "walrelay retention summary (this run)",
        32,
        "records or frames",
    );
    if let (Some(off), Some(on)) = (s.rate("append/sync/off"), s.rate("append/sync/on")) {
        println!(
            "append sync, retention on vs off: {:.0} vs {:.0} records/s ({:+.1}%; goal within 5%)",
            on,
            off,
            (on / off - 1.0) * 100.0
        );
    }
    if let (Some((p50_off, p99_off)), Some((p50_on, p99_on))) =
        (percentiles(false), percentiles(true))
    {
        println!(
            "ack latency at 100k records/s, sync, retention off vs on: p50 {:.2} vs {:.2} ms, p99 {:.2} vs {:.2} ms",
            p50_off.as_secs_f64() * 1e3,
            p50_on.as_secs_f64() * 1e3,
            p99_off.as_secs_f64() * 1e3,
            p99_on.as_secs_f64() * 1e3
        );
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
