//! Rewind rate against the sink's normal drain rate, same run, same server.
//!
//! Issue 25's goal: "rewind of that hour at ≥ the sink's normal drain rate".
//! Both are measured here on one real VictoriaMetrics (the Influx side of
//! the benches, `api/v2/write`; a real TimescaleDB is left to
//! `benches/timescale.rs`'s setup and not measured here), on one log with
//! `[wal] retain` on, with the same records, the same batch size
//! (`BATCH`, the config's default `drain.batch_records`) and the same sink:
//!
//! Each iteration appends two rounds of `BATCHES` × `BATCH` fresh trades of
//! the same shape (each a new stretch of event time, same series):
//!
//! - `rewind/drain`: the first round is delivered by the whole drainer
//!   (`drain::drainer::run`, `pipeline = 4`, the default), timed from start
//!   until the cursor passes its last frame: the normal drain rate.
//! - `rewind/rewind`: the second round is confirmed without reaching the
//!   server (the cursor is moved over it: what a restore from an older
//!   backup leaves, the case `audit --repair` exists for), then delivered by
//!   `drain::rewind::run` over its event-time window, timed from start to
//!   its report: the rewind rate (time-index lookup, frame reads and decode,
//!   delivery, progress writes), with `pipeline = 4` as the relay runs it.
//!   The server does the same work for both: new samples of existing series.
//!   Which of the two goes first alternates between iterations.
//! - `rewind/rewind_present`: the first round rewound again, over samples
//!   the server already holds (VictoriaMetrics stores them again; it does
//!   not overwrite), for reference.
//! - `rewind/rewind_pipeline_1`: that rewind once more, one batch at a time
//!   (how rewinds ran before they were pipelined), for reference.
//! - `rewind/progress_write_out`: one write-out of a meta entry, the cost a
//!   rewind pays per confirmed batch for its SIGKILL-proof progress.
//!
//! The summary prints the rates, the ratios and the goal.
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
    let settings = || DrainerSettings {
        batch_records: BATCH,
        pipeline: 4,
        retry: RetryPolicy::default(),
    };
    // Appends one round's records and returns its event-time window.
    let append_round = |round: i64| -> RewindRequest {
        for k in 0..BATCHES {
            wal.append(&trades(round, k)).unwrap();
        }
        RewindRequest {
            sink: "influx".into(),
            since_ns: BASE_NS + round * ROUND_NS,
            until_ns: BASE_NS + (round + 1) * ROUND_NS,
            only: None,
        }
    };
    // The normal drain of what is appended, timed until the cursor passes it.
    let drain = |id: &str| -> Duration {
        let end = wal.stats().last_seq;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let cpu = CpuMark::now(server_pid);
        let t = Instant::now();
        let d = rt.block_on(async {
            let task = tokio::spawn(drainer::run(
                wal.clone(),
                sink(),
                settings(),
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
        cpu.noted(id);
        note(id, per_iter, d);
        d
    };
    // A rewind of `req` at `depth` batches in flight, timed to its report.
    let rewind = |id: &str, req: &RewindRequest, depth: usize| -> Duration {
        let mut s = sink();
        let cpu = CpuMark::now(server_pid);
        let t = Instant::now();
        let report = rt
            .block_on(rewind::run(&mut s, &wal, req, BATCH, depth, &mut |_| {}))
            .unwrap();
        let d = t.elapsed();
        cpu.noted(id);
        assert_eq!(report.records, per_iter, "{report:?}");
        note(id, per_iter, d);
        d
    };
    // One benchmark id whose iterations time all parts; criterion is given
    // the sum, the summary each part (noted separately).
    g.bench_function("drain_and_rewind", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 2;
                // Two rounds of the same shape: one the normal drain delivers
                // (`rewind/drain`), one confirmed without reaching the server,
                // as after a restore from an older backup, that the rewind
                // delivers into the gap (`rewind/rewind`, the repair case).
                // Which goes first alternates.
                let gap_first = (round / 2) % 2 == 0;
                let fill_gap = || {
                    let req = append_round(round + 1);
                    wal.ack("influx", wal.stats().last_seq).unwrap();
                    // Untimed: the counter writes the time index of frames
                    // appended in its last 20 ms round, which a rewind waits
                    // for; a real rewind's window is minutes to hours old.
                    wal.frames_between(req.since_ns, req.until_ns).unwrap();
                    rewind("rewind/rewind", &req, 4)
                };
                let mut part = Duration::ZERO;
                if gap_first {
                    part += fill_gap();
                }
                let drained_req = append_round(round);
                part += drain("rewind/drain");
                if !gap_first {
                    part += fill_gap();
                }
                // For reference: a rewind over records the server already
                // holds (VictoriaMetrics stores them again), as it runs and
                // one batch at a time (how rewinds ran before pipelining).
                part += rewind("rewind/rewind_present", &drained_req, 4);
                part += rewind("rewind/rewind_pipeline_1", &drained_req, 1);
                // What the rewind's per-batch progress costs on its own: one
                // write-out of the meta entry per batch (`wal/durability.rs`).
                let meta = wal.meta();
                let t = Instant::now();
                for k in 0..BATCHES {
                    meta.insert_progress(b"bench/progress", &k.to_le_bytes())
                        .unwrap();
                }
                note("rewind/progress_write_out", BATCHES as u64, t.elapsed());
                total += part;
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
            "rewind into a gap vs normal drain (VictoriaMetrics, batches of {BATCH}): {rewind:.0} vs {drain:.0} records/s = {:.2}x (goal >= 1.00x)",
            rewind / drain
        );
    }
    if let (Some(drain), Some(present)) = (s.rate("rewind/drain"), s.rate("rewind/rewind_present"))
    {
        println!(
            "rewind over records the server holds vs normal drain: {present:.0} vs {drain:.0} records/s = {:.2}x",
            present / drain
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
