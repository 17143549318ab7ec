//! InfluxDB sink throughput.
//!
//! - `encode/trades`: line-protocol encoding of real-sized trades, one core.
//! - `drain/sink`: the sink delivering batches of 5000 trades (encoding, HTTP,
//!   classification) into a real VictoriaMetrics.
//! - `drain/drainer_pipeline_N`: the whole drainer (`drain::drainer::run`)
//!   with `drain.pipeline = N` over the same batches appended to a log: log
//!   read and decode, encoding, HTTP and the cursor, timed from start until
//!   the cursor passes the last frame. N = 1 is one batch at a time.
//! - `drain/limit_plain_http`: the server's own limit measured in the same
//!   run: the same encoded bytes, in the same batch sizes, posted straight to
//!   the server by a plain HTTP client.
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

fn drain(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(vm::Vm::start());
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path()).with_sinks(["influx"])).unwrap();
    const BATCH: usize = 5000;
    const BATCHES: usize = 10;
    let mut g = c.benchmark_group("drain");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
    let mut round = 0i64;
    let server_pid = server.pid().expect("the server runs");

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

    for depth in [1usize, 3] {
        let id = format!("drainer_pipeline_{depth}");
        g.bench_function(&id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
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

    let http = reqwest::Client::new();
    let endpoint = format!(
        "{}/api/v2/write?org=bench&bucket=bench&precision=ns",
        server.url()
    );
    g.bench_function("limit_plain_http", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let bodies: Vec<Vec<u8>> = (0..BATCHES)
                    .map(|k| {
                        let mut body = Vec::new();
                        for r in
                            trades(BATCH, round * 1_000_000_000_000 + k as i64 * 10_000_000_000)
                        {
                            encode(&r, &mut body);
                        }
                        body
                    })
                    .collect();
                let cpu = CpuMark::now(server_pid);
                let t = Instant::now();
                rt.block_on(async {
                    for body in bodies {
                        let r = http.post(&endpoint).body(body).send().await.unwrap();
                        assert_eq!(r.status().as_u16(), 204);
                    }
                });
                total += t.elapsed();
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
    }
    s.print_cpu(28, "lines");
}

criterion_group!(benches, encoding, drain);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
