//! Timescale sink throughput against the database's own limit, same run.
//!
//! - `facts/sink`: a 10,000-row batch of mixed bars (three bar kinds and
//!   klines) through `TimescaleSink::deliver` (cached dimension IDs, one
//!   transaction, pipelined `INSERT … SELECT FROM unnest(…) ON CONFLICT DO
//!   NOTHING` per table).
//! - `facts/limit_copy_sql`: the same rows loaded by SQL alone: binary COPY
//!   into a temporary staging table per fact table, then the same
//!   `INSERT … SELECT … ON CONFLICT DO NOTHING`, in one transaction.
//!
//! Every iteration writes new rows (fresh timestamps), so both measure
//! inserts, not conflicts. The summary prints rows/s and the ratio.

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, Criterion, Throughput};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use walrelay::db::timescale::{TimescaleConfig, TimescaleSink};
use walrelay::drain::Sink;
use walrelay::record::{Bar, BarKind, Kline, Record};
use walrelay::{Wal, WalConfig};

static MEASURED: Mutex<BTreeMap<String, (u64, Duration)>> = Mutex::new(BTreeMap::new());

fn note(id: &str, n: u64, d: Duration) {
    let mut m = MEASURED.lock().unwrap();
    let e = m.entry(id.into()).or_insert((0, Duration::ZERO));
    e.0 += n;
    e.1 += d;
}

const ROWS: usize = 10_000;
const SYMBOLS: [&str; 8] = [
    "BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "BNBUSDT", "LTCUSDT",
];

fn batch(round: i64) -> Vec<Record> {
    (0..ROWS)
        .map(|i| {
            let ts =
                1_600_000_000_000_000_000 + round * 100_000_000_000_000 + i as i64 * 1_000_000_000;
            let symbol = SYMBOLS[i % SYMBOLS.len()].to_string();
            match i % 4 {
                3 => Record::Kline(Kline {
                    venue: "BINANCE_FUTURES".into(),
                    symbol,
                    interval: "1m".into(),
                    ts,
                    open: 1.0,
                    high: 2.0,
                    low: 0.5,
                    close: 1.5,
                    volume: i as f64,
                }),
                k => Record::Bar(Bar {
                    kind: BarKind::ALL[k],
                    venue: "BINANCE_FUTURES".into(),
                    symbol,
                    interval: "tick_100".into(),
                    ts,
                    open: 1.0,
                    high: 2.0,
                    low: 0.5,
                    close: 1.5,
                    volume: i as f64,
                    buy_ticks: 60,
                    sell_ticks: 40,
                    total_ticks: 100,
                    theta: 0.25,
                }),
            }
        })
        .collect()
}

fn table_of(r: &Record) -> &'static str {
    match r {
        Record::Bar(b) => walrelay::db::timescale::schema::bar_table(b.kind),
        _ => "bar__kline",
    }
}

/// SQL alone: COPY into staging tables, then INSERT … ON CONFLICT DO NOTHING.
async fn load_by_sql(
    client: &mut tokio_postgres::Client,
    rows: &[Record],
    ids: &BTreeMap<String, i32>,
    exchange: i32,
    intervals: &BTreeMap<String, i32>,
) {
    let tx = client.transaction().await.unwrap();
    for (table, imbalance) in walrelay::db::timescale::schema::FACT_TABLES {
        let stage = format!("stage_{table}");
        tx.batch_execute(&format!("CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE mart.{table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")).await.unwrap();
        let mut types = vec![
            Type::TIMESTAMPTZ,
            Type::INT4,
            Type::INT4,
            Type::INT4,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
        ];
        if imbalance {
            types.extend([Type::INT8, Type::INT8, Type::INT8, Type::FLOAT8]);
        }
        let cols = if imbalance {
            "time, symbol_id, exchange_id, interval_id, open, high, low, close, volume, buy_ticks, sell_ticks, total_ticks, theta"
        } else {
            "time, symbol_id, exchange_id, interval_id, open, high, low, close, volume"
        };
        let sink = tx
            .copy_in(&format!("COPY {stage} ({cols}) FROM STDIN BINARY"))
            .await
            .unwrap();
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for r in rows.iter().filter(|r| table_of(r) == table) {
            match r {
                Record::Bar(b) => {
                    let t = UNIX_EPOCH + Duration::from_nanos(b.ts as u64);
                    let (bt, st, tt) = (
                        b.buy_ticks as i64,
                        b.sell_ticks as i64,
                        b.total_ticks as i64,
                    );
                    let row: [&(dyn ToSql + Sync); 13] = [
                        &t,
                        &ids[&b.symbol],
                        &exchange,
                        &intervals[&b.interval],
                        &b.open,
                        &b.high,
                        &b.low,
                        &b.close,
                        &b.volume,
                        &bt,
                        &st,
                        &tt,
                        &b.theta,
                    ];
                    writer.as_mut().write(&row).await.unwrap();
                }
                Record::Kline(k) => {
                    let t: SystemTime = UNIX_EPOCH + Duration::from_nanos(k.ts as u64);
                    let row: [&(dyn ToSql + Sync); 9] = [
                        &t,
                        &ids[&k.symbol],
                        &exchange,
                        &intervals[&k.interval],
                        &k.open,
                        &k.high,
                        &k.low,
                        &k.close,
                        &k.volume,
                    ];
                    writer.as_mut().write(&row).await.unwrap();
                }
                _ => {}
            }
        }
        writer.finish().await.unwrap();
        tx.execute(&format!("INSERT INTO mart.{table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING"), &[]).await.unwrap();
    }
    tx.commit().await.unwrap();
}

fn facts(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = pg::Pg::start();
    let url = rt.block_on(server.create_db("bench"));
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let mut cfg = TimescaleConfig::new(&url);
    cfg.batch_size = ROWS;
    let mut sink = TimescaleSink::new(cfg, wal.meta(), wal.dead_letters()).unwrap();
    // Warm up: schema, dimensions, cache.
    rt.block_on(sink.deliver(&batch(0))).unwrap();
    let mut client = rt.block_on(server.client("bench"));
    let ids: BTreeMap<String, i32> = rt
        .block_on(client.query("SELECT symbol, symbol_id FROM mart.dim_symbol", &[]))
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let intervals: BTreeMap<String, i32> = rt
        .block_on(client.query(
            "SELECT \"interval\", interval_id FROM mart.dim_interval",
            &[],
        ))
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let exchange: i32 = rt
        .block_on(client.query_one(
            "SELECT exchange_id FROM mart.dim_exchange WHERE exchange = 'BINANCE_FUTURES'",
            &[],
        ))
        .unwrap()
        .get(0);

    let mut g = c.benchmark_group("facts");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(ROWS as u64));
    let mut round = 1i64;
    g.bench_function("sink", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let rows = batch(round);
                let t = Instant::now();
                let d = rt.block_on(sink.deliver(&rows)).unwrap();
                total += t.elapsed();
                assert_eq!(d.written, ROWS);
            }
            note("facts/sink", iters * ROWS as u64, total);
            total
        })
    });
    g.bench_function("limit_copy_sql", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let rows = batch(round);
                let t = Instant::now();
                rt.block_on(load_by_sql(&mut client, &rows, &ids, exchange, &intervals));
                total += t.elapsed();
            }
            note("facts/limit_copy_sql", iters * ROWS as u64, total);
            total
        })
    });
    g.finish();
}

fn report() {
    let m = MEASURED.lock().unwrap();
    let rate = |(n, d): &(u64, Duration)| *n as f64 / d.as_secs_f64();
    println!("\n== walrelay Timescale summary (this run) ==");
    for (id, v) in m.iter() {
        println!("{id:<24} {:>10.0} rows/s", rate(v));
    }
    if let (Some(s), Some(l)) = (m.get("facts/sink"), m.get("facts/limit_copy_sql")) {
        println!("facts/sink is {:.1}% of the database's own limit (COPY + INSERT ON CONFLICT, same rows)", 100.0 * rate(s) / rate(l));
    }
}

criterion_group!(benches, facts);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
