//! Rewind rate against the sink's normal drain rate, same run, same server.
//!
//! Issue 25's goal: "rewind of that hour at ≥ the sink's normal drain rate".
//! Both are measured here on one real VictoriaMetrics (the Influx side of
//! the benches, `api/v2/write`; a real TimescaleDB is left to
//! `benches/timescale.rs`'s setup and not measured here), on one log with
//! `[wal] retain` on, with the same records, the same batch size
//! (`BATCH`, the config's default `drain.batch_records`) and the same sink:
//!
//! - `rewind/drain`: each iteration appends `BATCHES` × `BATCH` fresh trades
//!   (a new stretch of event time) and times the whole drainer
//!   (`drain::drainer::run`, `pipeline = 4`, the default) from start until
//!   the cursor passes the last frame: the normal drain rate.
//! - `rewind/rewind`: right after, in the same iteration, the same records
//!   (now retained) are delivered again by `drain::rewind::run` over their
//!   event-time window, timed from start to its report: the rewind rate
//!   (time-index lookup, frame reads and decode, delivery, progress writes),
//!   with `pipeline = 4` as the relay runs it.
//! - `rewind/rewind_pipeline_1`: the same rewind once more, one batch at a
//!   time (how rewinds ran before they were pipelined), for reference.
//! - `rewind/progress_write_out`: one write-out of a meta entry, the cost a
//!   rewind pays per confirmed batch for its SIGKILL-proof progress.
//!
//! The drain always runs first in an iteration (the records must be
//! confirmed before they can be rewound), so the rewind writes samples the
//! server already holds (VictoriaMetrics stores them again; it does not
//! overwrite); the summary prints both rates, the ratio and the goal.
//!
//! `cargo bench --bench rewind` (about a minute).

mod common;
#[path = "../tests/common/vm.rs"]
#[allow(dead_code)]
mod vm;

#[path = "../tests/common/records.rs"]
#[allow(dead_code)]
mod records;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{note, CpuMark};
use criterion::{criterion_group, Criterion, Throughput};
use walrelay::db::influx::{InfluxConfig, InfluxSink};
use walrelay::drain::drainer::{self, DrainerSettings};
use walrelay::drain::retry::RetryPolicy;
use walrelay::drain::rewind::{self, RewindRequest};
use walrelay::drain::SinkHealth;
use walrelay::metrics::Metrics;
use walrelay::record::Record;
use walrelay::wal::{Durability, Retain};
use walrelay::{Wal, WalConfig};

/// Records per delivery (the default `drain.batch_records`) and batches per
/// iteration.
const BATCH: usize = 5000;
const BATCHES: usize = 10;
/// Event-time spacing of the trades, and the stretch each round takes.
const STEP_NS: i64 = 1_000_003;
const ROUND_NS: i64 = 1_000_000_000_000;
const BASE_NS: i64 = 1_700_000_000_000_000_000;

fn trades(round: i64, k: usize) -> Vec<Record> {
    (0..BATCH)
        .map(|i| {
            let n = k * BATCH + i;
            records::market_trade(
                n as u64,
                ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"][n % 4],
                BASE_NS + round * ROUND_NS + n as i64 * STEP_NS,
                37_000.5 + (n % 1000) as f64 * 0.25,
                0.001 * (1 + n % 500) as f64,
            )
        })
        .collect()
}

fn rewind_vs_drain(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    // Retention on; `interval_ms` keeps the appends (untimed) quick.
    let wal = Wal::open(WalConfig {
        durability: Durability::Interval { interval_ms: 100 },
        retain: Retain { ms: 6 * 3_600_000 },
        ..WalConfig::new(dir.path()).with_sinks(["influx"])
    })
    .unwrap();
    let server = rt.block_on(vm::Vm::start());
    let server_pid = server.pid().expect("the server runs");
    let sink = || {
        InfluxSink::new(
            InfluxConfig::new(server.url(), "bench", "bench"),
            wal.dead_letters(),
        )
        .unwrap()
    };
    let per_iter = (BATCH * BATCHES) as u64;
    let mut g = c.benchmark_group("rewind");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(per_iter));
    let mut round = 0i64;
    // One benchmark id whose iterations time both; criterion is given the
    // sum, the summary each part (noted separately).
    g.bench_function("drain_then_rewind", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                for k in 0..BATCHES {
                    wal.append(&trades(round, k)).unwrap();
                }
                let end = wal.stats().last_seq;
                let settings = DrainerSettings {
                    batch_records: BATCH,
                    pipeline: 4,
                    retry: RetryPolicy::default(),
                };
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let cpu = CpuMark::now(server_pid);
                let t = Instant::now();
                let drained = rt.block_on(async {
                    let task = tokio::spawn(drainer::run(
                        wal.clone(),
                        sink(),
                        settings,
                        Arc::new(SinkHealth::new("influx")),
                        Arc::new(Metrics::default()),
                        stop_rx,
                    ));
                    while wal.cursor("influx").unwrap() < end {
                        tokio::time::sleep(Duration::from_micros(500)).await;
                    }
                    let d = t.elapsed();
                    stop_tx.send(true).unwrap();
                    task.await.unwrap();
                    d
                });
                cpu.noted("rewind/drain");
                note("rewind/drain", per_iter, drained);

                let req = RewindRequest {
                    sink: "influx".into(),
                    since_ns: BASE_NS + round * ROUND_NS,
                    until_ns: BASE_NS + (round + 1) * ROUND_NS,
                    only: None,
                };
                // The rewind as it runs (`drain.pipeline` = 4, the default),
                // then one batch at a time (pipeline 1) for reference.
                let mut rewound = Duration::ZERO;
                for (id, depth) in [("rewind/rewind", 4), ("rewind/rewind_pipeline_1", 1)] {
                    let mut s = sink();
                    let cpu = CpuMark::now(server_pid);
                    let t = Instant::now();
                    let report = rt
                        .block_on(rewind::run(&mut s, &wal, &req, BATCH, depth, &mut |_| {}))
                        .unwrap();
                    let d = t.elapsed();
                    cpu.noted(id);
                    assert_eq!(report.records, per_iter, "{report:?}");
                    note(id, per_iter, d);
                    rewound += d;
                }
                // What the rewind's per-batch progress costs on its own: one
                // write-out of the meta entry per batch (`wal/durability.rs`).
                let meta = wal.meta();
                let t = Instant::now();
                for k in 0..BATCHES {
                    meta.insert_progress(b"bench/progress", &k.to_le_bytes())
                        .unwrap();
                }
                note("rewind/progress_write_out", BATCHES as u64, t.elapsed());
                total += drained + rewound;
            }
            total
        })
    });
    g.finish();
    drop(server);
}

fn report() {
    let s = common::summary();
    s.print_rates("walrelay rewind summary (this run)", 26, "records");
    if let (Some(drain), Some(rewind)) = (s.rate("rewind/drain"), s.rate("rewind/rewind")) {
        println!(
            "rewind vs normal drain (VictoriaMetrics, batches of {BATCH}): {rewind:.0} vs {drain:.0} records/s = {:.2}x (goal >= 1.00x)",
            rewind / drain
        );
    }
    if let (Some((n, d)), Some((records, r))) =
        (s.get("rewind/progress_write_out"), s.get("rewind/rewind"))
    {
        let per = d.as_secs_f64() / n as f64;
        let per_batch = r.as_secs_f64() / (records as f64 / BATCH as f64);
        println!(
            "progress write-out: {:.2} ms each, one per batch of {BATCH} ({:.1}% of a rewind batch's {:.1} ms)",
            per * 1e3,
            100.0 * per / per_batch,
            per_batch * 1e3
        );
    }
    if let (Some(drain), Some(one)) = (s.rate("rewind/drain"), s.rate("rewind/rewind_pipeline_1")) {
        println!(
            "rewind one batch at a time vs normal drain: {one:.0} vs {drain:.0} records/s = {:.2}x",
            one / drain
        );
    }
    s.print_cpu(26, "records");
}

criterion_group!(benches, rewind_vs_drain);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
