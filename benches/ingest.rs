//! What accepting a line-protocol request costs the relay's CPU, before the
//! log: `parse/trades` parses a 5,000-line body of trades (three tags, two
//! float fields, a timestamp; what the relay bench's writers post) and
//! `parse_classify/trades` also turns each point into its typed record as it
//! is parsed, as `POST /api/v2/write` does. One core, no I/O; the figure to hold against
//! the log's append rate (`cargo bench --bench wal`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walrelay::ingest::line_protocol::{parse, parse_each, Precision};
use walrelay::ingest::typed::classify;

const LINES: usize = 5000;

fn body() -> String {
    (0..LINES)
        .map(|i| {
            format!(
                "trades,exchange=BINANCE,side=buy,symbol=S{} price={}.5,quantity=0.01 {}\n",
                i % 16,
                30000 + i,
                1_700_000_000_000_000_000i64 + i as i64 * 1000
            )
        })
        .collect()
}

fn parsing(c: &mut Criterion) {
    let body = body();
    let now = 1_700_000_000_000_000_000i64;
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(LINES as u64));
    g.bench_function("parse/trades", |b| {
        b.iter(|| parse(&body, Precision::Nanoseconds, now).unwrap())
    });
    g.bench_function("parse_classify/trades", |b| {
        b.iter(|| {
            let mut records = Vec::with_capacity(LINES);
            parse_each(&body, Precision::Nanoseconds, now, |_, p| {
                records.push(classify(p, now))
            })
            .unwrap();
            records
        })
    });
    g.finish();
}

criterion_group!(benches, parsing);
criterion_main!(benches);
