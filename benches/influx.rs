//! InfluxDB sink throughput.
//!
//! - `encode/trades`: line-protocol encoding of real-sized trades, one core.
//! - `drain/sink`: the sink delivering batches of 5000 trades (encoding, HTTP,
//!   classification) into a real VictoriaMetrics.
//! - `drain/drainer_pipeline_N`: the whole drainer (`drain::drainer::run`)
//!   with `drain.pipeline = N` over the same batches appended to a log: log
//!   read and decode, encoding, HTTP and the cursor, timed from start until
//!   the cursor passes the last frame. N = 1 is one batch at a time, 4 the
//!   default, 3 and 6 its neighbours.
//! - `drain/limit_plain_http`: the server's own limit measured in the same
//!   run: the same encoded bytes, in the same batch sizes, posted straight to
//!   the server by a plain HTTP client.
//!
//! Each `drain/*` id runs on its own fresh VictoriaMetrics (same flags,
//! empty storage), so none is measured on a server the ids before it filled.
//!
//! The summary at the end prints lines/s and the sink's ratio to the limit.

mod common;
#[path = "../tests/common/vm.rs"]
#[allow(dead_code)]
mod vm;

#[path = "../tests/common/records.rs"]
#[allow(dead_code)]
mod records;

use std::time::{Duration, Instant};

use common::{note, CpuMark};
use criterion::{criterion_group, Criterion, Throughput};
use std::sync::Arc;
use walrelay::db::influx::{encode, InfluxConfig, InfluxSink};
use walrelay::drain::drainer::{self, DrainerSettings};
use walrelay::drain::retry::RetryPolicy;
use walrelay::drain::Sink;
use walrelay::drain::SinkHealth;
use walrelay::metrics::Metrics;
use walrelay::record::Record;
use walrelay::{Wal, WalConfig};

fn trades(n: usize, offset: i64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            records::market_trade(
                i as u64,
                ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"][i % 4],
                1_700_000_000_000_000_000 + offset + i as i64 * 1_000_003,
                37_000.5 + (i % 1000) as f64 * 0.25,
                0.001 * (1 + i % 500) as f64,
            )
        })
        .collect()
}

fn encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let batch = trades(10_000, 0);
    g.throughput(Throughput::Elements(batch.len() as u64));
    let mut buf = Vec::with_capacity(2 << 20);
    g.bench_function("trades", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                buf.clear();
                for r in &batch {
                    encode(r, &mut buf);
                }
                std::hint::black_box(&buf);
            }
            let d = t.elapsed();
            note("encode/trades", iters * batch.len() as u64, d);
            d
        })
    });
    g.finish();
}

/// A fresh VictoriaMetrics for one benchmark id, and its pid: a server
/// slows down as it accumulates data (background merges), so each id starts
/// on an empty one instead of inheriting what the ids before it wrote (the
/// limit, measured last, would otherwise be measured on the fullest server).
fn fresh_server(rt: &tokio::runtime::Runtime) -> (vm::Vm, u32) {
    let server = rt.block_on(vm::Vm::start());
    let pid = server.pid().expect("the server runs");
    (server, pid)
}

/// The limit's request bodies for `round`: `BATCHES` bodies of `BATCH`
/// trades, encoded before anything is timed.
fn plain_bodies(round: i64) -> Vec<Vec<u8>> {
    (0..BATCHES)
        .map(|k| {
            let mut body = Vec::new();
            for r in trades(BATCH, round * 1_000_000_000_000 + k as i64 * 10_000_000_000) {
                encode(&r, &mut body);
            }
            body
        })
        .collect()
}

/// The server's limit, once: `bodies` posted one after the other by a plain
/// client. Returns the time of the posts alone.
fn post_plain(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    endpoint: &str,
    bodies: Vec<Vec<u8>>,
) -> Duration {
    let t = Instant::now();
    rt.block_on(async {
        for body in bodies {
            let r = http.post(endpoint).body(body).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 204);
        }
    });
    t.elapsed()
}

/// Lines per batch and batches per iteration of every `drain/*` id.
const BATCH: usize = 5000;
const BATCHES: usize = 10;

fn endpoint(server: &vm::Vm) -> String {
    format!(
        "{}/api/v2/write?org=bench&bucket=bench&precision=ns",
        server.url()
    )
}

fn drain(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path()).with_sinks(["influx"])).unwrap();
    let http = reqwest::Client::new();
    let mut g = c.benchmark_group("drain");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
    let mut round = 0i64;

    let (server, server_pid) = fresh_server(&rt);
    let mut sink = InfluxSink::new(
        InfluxConfig::new(server.url(), "bench", "bench"),
        wal.dead_letters(),
    )
    .unwrap();
    g.bench_function("sink", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let batches: Vec<Vec<Record>> = (0..BATCHES)
                    .map(|k| trades(BATCH, round * 1_000_000_000_000 + k as i64 * 10_000_000_000))
                    .collect();
                let cpu = CpuMark::now(server_pid);
                let t = Instant::now();
                rt.block_on(async {
                    for b in &batches {
                        sink.deliver(b, 1).await.unwrap();
                    }
                });
                total += t.elapsed();
                cpu.noted("drain/sink");
            }
            note("drain/sink", iters * (BATCH * BATCHES) as u64, total);
            total
        })
    });

    drop(server);
    for depth in [1usize, 3, 4, 6] {
        let (server, server_pid) = fresh_server(&rt);
        let id = format!("drainer_pipeline_{depth}");
        g.bench_function(&id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    round += 1;
                    // The paired limit: the plain client on the same server
                    // in the same iteration, before or after the drainer in
                    // turn, so the ratio does not depend on how fast the
                    // server happened to be at another moment of the run.
                    let limit_first = i % 2 == 1;
                    let paired = |round: i64| {
                        let d = post_plain(&rt, &http, &endpoint(&server), plain_bodies(round));
                        note(
                            &format!("drain/limit_paired_{depth}"),
                            (BATCH * BATCHES) as u64,
                            d,
                        );
                    };
                    if limit_first {
                        round += 1;
                        paired(round);
                    }
                    for k in 0..BATCHES {
                        wal.append(&trades(
                            BATCH,
                            round * 1_000_000_000_000 + k as i64 * 10_000_000_000,
                        ))
                        .unwrap();
                    }
                    let end = wal.stats().last_seq;
                    let sink = InfluxSink::new(
                        InfluxConfig::new(server.url(), "bench", "bench"),
                        wal.dead_letters(),
                    )
                    .unwrap();
                    let settings = DrainerSettings {
                        batch_records: BATCH,
                        pipeline: depth,
                        retry: RetryPolicy::default(),
                    };
                    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                    let cpu = CpuMark::now(server_pid);
                    let t = Instant::now();
                    rt.block_on(async {
                        let task = tokio::spawn(drainer::run(
                            wal.clone(),
                            sink,
                            settings,
                            Arc::new(SinkHealth::new("influx")),
                            Arc::new(Metrics::default()),
                            stop_rx,
                        ));
                        while wal.cursor("influx").unwrap() < end {
                            tokio::time::sleep(Duration::from_micros(500)).await;
                        }
                        total += t.elapsed();
                        cpu.noted(&format!("drain/{id}"));
                        stop_tx.send(true).unwrap();
                        task.await.unwrap();
                    });
                    if !limit_first {
                        round += 1;
                        paired(round);
                    }
                }
                note(
                    &format!("drain/{id}"),
                    iters * (BATCH * BATCHES) as u64,
                    total,
                );
                total
            })
        });
    }

    let (server, server_pid) = fresh_server(&rt);
    let to = endpoint(&server);
    g.bench_function("limit_plain_http", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let bodies = plain_bodies(round);
                let cpu = CpuMark::now(server_pid);
                total += post_plain(&rt, &http, &to, bodies);
                cpu.noted("drain/limit_plain_http");
            }
            note(
                "drain/limit_plain_http",
                iters * (BATCH * BATCHES) as u64,
                total,
            );
            total
        })
    });
    g.finish();
}

fn report() {
    const LIMIT: &str = "drain/limit_plain_http";
    let s = common::summary();
    s.print_rates("walrelay Influx summary (this run)", 28, "lines");
    if let Some(pct) = s.percent_of("drain/sink", LIMIT) {
        println!(
            "drain/sink is {pct:.1}% of the server's limit (plain HTTP, same bytes and batch sizes)"
        );
    }
    for (id, _) in s.with_prefix("drain/drainer_") {
        if let Some(pct) = s.percent_of(id, LIMIT) {
            println!("{id} is {pct:.1}% of the server's limit (includes log read and decode)");
        }
        let depth = id.trim_start_matches("drain/drainer_pipeline_");
        if let Some(pct) = s.percent_of(id, &format!("drain/limit_paired_{depth}")) {
            println!(
                "{id} is {pct:.1}% of the limit paired with it (same server, same iterations)"
            );
        }
    }
    s.print_cpu(28, "lines");
}

criterion_group!(benches, encoding, drain);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
