//! WAL throughput against the disk's own limit, measured in the same run.
//!
//! - `append/<durability>/<producers>p`: durable appends of real-sized trades
//!   (~80 bytes encoded), each producer appending batches so that group commit
//!   forms frames of ~1000 records.
//! - `limit/write_fdatasync`: the physical limit, the same bytes per flush
//!   written sequentially to a plain file, each chunk followed by `fdatasync`.
//! - `limit/set_len_fdatasync`, `limit/fallocate_fdatasync`,
//!   `limit/overwrite_fdatasync`: the same writes into a file whose size is
//!   already ahead of the writes: extended sparse with `set_len` (no size
//!   update per sync, blocks still allocated on write), with `fallocate`
//!   (blocks allocated but unwritten: each write converts extents), and
//!   pre-written and synced (pure overwrite: no metadata at all). The gaps
//!   between these and `write_fdatasync` say what the file-size and
//!   allocation metadata cost each `fdatasync` on this filesystem.
//! - `ack_latency/sync_100k`: a fixed offered load, not a closed loop: 4
//!   producers each append a request of 100 trades every 4 ms (1,000
//!   requests/s, 100,000 records/s in all) under `sync`; the latency of
//!   each is timed from its scheduled start (so a late start counts against
//!   it) until `append` returned, i.e. until the group commit covering it was
//!   flushed and synced. The summary prints p50, p99 and max. Criterion's own
//!   figure for this id is the mean latency per request.
//! - `replay/decode`: reading frames after a cursor, decoding included.
//! - `dead_letter_count/<n>`: what `/status` and `/metrics` pay to count the
//!   dead letters (the counters) with 0 and 100,000 stored, against
//!   `dead_letter_scan/<n>`, a scan of the keys (what they did before).
//!
//! At the end the bench prints records/s of each and the ratio of every
//! append variant to the raw limit (`cargo bench --bench wal`).

mod common;
#[path = "../tests/common/records.rs"]
#[allow(dead_code)]
mod records;

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::note;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use walrelay::record::encode_record;
use walrelay::wal::Durability;
use walrelay::{Record, Wal, WalConfig};

const FRAME_RECORDS: usize = 1000;

fn trade(i: u64) -> Record {
    records::market_trade(
        i,
        "BTCUSDT",
        records::TS + i as i64,
        97_000.5 + (i % 100) as f64,
        0.012,
    )
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    let policies = [
        ("sync", Durability::Sync),
        ("interval_50ms", Durability::Interval { interval_ms: 50 }),
    ];
    for (pname, durability) in policies {
        for producers in [1usize, 4] {
            let per_batch = FRAME_RECORDS / producers;
            let batches_per_producer = 20;
            let records_per_iter = (per_batch * producers * batches_per_producer) as u64;
            let id = format!("{pname}/{producers}p");
            g.throughput(Throughput::Elements(records_per_iter));
            g.bench_function(BenchmarkId::from_parameter(&id), |b| {
                let dir = tempfile::TempDir::new().unwrap();
                let wal = Wal::open(WalConfig {
                    durability,
                    ..WalConfig::new(dir.path())
                })
                .unwrap();
                let batch: Vec<Record> = (0..per_batch as u64).map(trade).collect();
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
    }
    g.finish();
}

fn limit(c: &mut Criterion) {
    let mut g = c.benchmark_group("limit");
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    // The same bytes the log writes for one frame of FRAME_RECORDS trades.
    let mut chunk = Vec::new();
    for i in 0..FRAME_RECORDS as u64 {
        encode_record(&trade(i), &mut chunk).unwrap();
    }
    chunk.extend_from_slice(&[0u8; 33]); // frame header + key
    let chunks_per_iter = 20;
    let records_per_iter = (FRAME_RECORDS * chunks_per_iter) as u64;
    g.throughput(Throughput::Elements(records_per_iter));
    g.bench_function("write_fdatasync", |b| {
        let dir = tempfile::TempDir::new().unwrap();
        let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters * chunks_per_iter as u64 {
                f.write_all(&chunk).unwrap();
                f.sync_data().unwrap(); // fdatasync
            }
            let elapsed = start.elapsed();
            note("limit/write_fdatasync", records_per_iter * iters, elapsed);
            elapsed
        });
    });
    // The file is kept ahead of the writes; writes wrap around within it.
    const AHEAD: u64 = 256 * 1024 * 1024;
    for mode in ["set_len", "fallocate", "keep_size", "overwrite"] {
        let id = format!("{mode}_fdatasync");
        g.bench_function(&id, |b| {
            use std::os::unix::fs::FileExt;
            let dir = tempfile::TempDir::new().unwrap();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(dir.path().join("raw"))
                .unwrap();
            match mode {
                "set_len" => f.set_len(AHEAD).unwrap(),
                // Mode 0 allocates and extends the file.
                "fallocate" => allocate(&f, 0, AHEAD),
                // KEEP_SIZE allocates blocks past the end without changing
                // the file's size, so the writes below still grow it (what
                // sled's file would see).
                "keep_size" => allocate(&f, libc::FALLOC_FL_KEEP_SIZE, AHEAD),
                _ => {
                    let zeros = vec![0u8; 1 << 20];
                    for _ in 0..AHEAD >> 20 {
                        f.write_all(&zeros).unwrap();
                    }
                }
            }
            f.sync_all().unwrap();
            let mut at = 0u64;
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters * chunks_per_iter as u64 {
                    if at + chunk.len() as u64 > AHEAD {
                        at = 0;
                        if mode == "keep_size" {
                            // Start growing again: an overwrite would not
                            // measure what a growing file costs.
                            f.set_len(0).unwrap();
                            allocate(&f, libc::FALLOC_FL_KEEP_SIZE, AHEAD);
                        }
                    }
                    f.write_all_at(&chunk, at).unwrap();
                    at += chunk.len() as u64;
                    f.sync_data().unwrap();
                }
                let elapsed = start.elapsed();
                note(&format!("limit/{id}"), records_per_iter * iters, elapsed);
                elapsed
            });
        });
    }
    g.finish();
}

/// `fallocate(2)` of `len` bytes from offset 0 with `mode`.
fn allocate(f: &std::fs::File, mode: i32, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: `f` is an open file, so its descriptor is valid for the call.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, 0, len as i64) };
    assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
}

static LATENCIES: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

fn ack_latency(c: &mut Criterion) {
    const PRODUCERS: usize = 4;
    const LINES: u64 = 100;
    const PERIOD: Duration = Duration::from_millis(4);
    let mut g = c.benchmark_group("ack_latency");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("sync_100k", |b| {
        let dir = tempfile::TempDir::new().unwrap();
        let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
        let batch: Vec<Record> = (0..LINES).map(trade).collect();
        b.iter_custom(|iters| {
            // `iters` requests per producer, on a fixed schedule.
            let lat = common::open_loop(PRODUCERS, PERIOD, iters, &|| {
                wal.append(&batch).unwrap();
            });
            let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
            LATENCIES.lock().unwrap().extend(lat);
            mean * iters as u32
        });
    });
    g.finish();
}

fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let total = 200_000u64;
    for chunk in 0..total / FRAME_RECORDS as u64 {
        let recs: Vec<Record> = (0..FRAME_RECORDS as u64)
            .map(|i| trade(chunk * 1000 + i))
            .collect();
        wal.append(&recs).unwrap();
    }
    g.throughput(Throughput::Elements(total));
    g.bench_function("decode", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut cursor = 0;
                let mut n = 0;
                loop {
                    let frames = wal.read_after(cursor, 10_000).unwrap();
                    let Some(last) = frames.last() else { break };
                    cursor = last.seq;
                    n += frames.iter().map(|f| f.records.len() as u64).sum::<u64>();
                }
                assert_eq!(n, total);
            }
            let elapsed = start.elapsed();
            note("replay/decode", total * iters, elapsed);
            elapsed
        });
    });
    g.finish();
}

fn dead_letters(c: &mut Criterion) {
    let mut g = c.benchmark_group("dead_letters");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for n in [0u64, 100_000] {
        let dir = tempfile::TempDir::new().unwrap();
        let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
        let dl = wal.dead_letters();
        for chunk in 0..n / 1000 {
            let items: Vec<(Record, String)> = (0..1000)
                .map(|i| (trade(chunk * 1000 + i), "400: unable to parse".to_string()))
                .collect();
            dl.put_many("influx", &items, 1).unwrap();
        }
        g.bench_with_input(BenchmarkId::new("dead_letter_count", n), &n, |b, &n| {
            b.iter(|| assert_eq!(dl.count(Some("influx")).unwrap(), n))
        });
        g.bench_with_input(BenchmarkId::new("dead_letter_scan", n), &n, |b, &n| {
            b.iter(|| assert_eq!(dl.count_by_scan(Some("influx")).unwrap(), n))
        });
    }
    g.finish();
}

fn report() {
    let s = common::summary();
    s.print_rates("walrelay WAL summary (this run)", 32, "records");
    let mut lat = LATENCIES.lock().unwrap().clone();
    if !lat.is_empty() {
        lat.sort();
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        println!(
            "ack_latency/sync_100k: {} requests of 100 records at 1,000 requests/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            q(0.5).as_secs_f64() * 1e3,
            q(0.99).as_secs_f64() * 1e3,
            lat[lat.len() - 1].as_secs_f64() * 1e3
        );
    }
    for (id, _) in s.with_prefix("append/").chain(s.with_prefix("limit/")) {
        if let Some(pct) = s.percent_of(id, "limit/write_fdatasync") {
            println!("{id:<32} {pct:>6.1}% of raw write+fdatasync");
        }
    }
}

criterion_group!(benches, limit, append, ack_latency, replay, dead_letters);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
