//! Timescale sink throughput against the database's own limit, same run, on
//! TimescaleDB hypertables where TimescaleDB is installed (the harness
//! preloads it; `WALRELAY_TEST_TIMESCALEDB=off` forces plain PostgreSQL).
//!
//! - `facts/sink`: a 10,000-row batch of mixed bars (three bar kinds and
//!   klines) through `TimescaleSink::deliver` (cached dimension IDs, one
//!   transaction, pipelined `INSERT … SELECT FROM unnest(…) ON CONFLICT DO
//!   NOTHING` per table: the `first_wins` policy).
//! - `facts/sink_last_wins`: the same through a sink whose tables are all
//!   `last_wins` (`ON CONFLICT … DO UPDATE … WHERE … IS DISTINCT FROM`).
//! - `facts/limit_copy_direct`: the physical limit of these tables: the same
//!   rows by binary `COPY` straight into each fact table, with its unique
//!   and time indexes and its three foreign keys checked (and, on
//!   TimescaleDB, routed into chunks), one transaction. No statement form
//!   can write into the same table faster.
//! - `facts/limit_copy_sql`: COPY into a temporary staging table per fact
//!   table, then `INSERT … SELECT … ON CONFLICT DO NOTHING`: the SQL-only way
//!   to get the sink's conflict semantics.
//!
//! Every iteration writes new rows (fresh timestamps), so all measure
//! inserts, not conflicts. The summary prints rows/s and the ratios.
//! `WALRELAY_BENCH_SECS` sets the measurement time per function (default 10).

mod common;
#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::note;
use criterion::{criterion_group, Criterion, Throughput};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use walrelay::db::timescale::schema::FACT_TABLES;
use walrelay::db::timescale::{rows, ConflictPolicy, TimescaleConfig, TimescaleSink};
use walrelay::drain::Sink;
use walrelay::record::{Bar, BarKind, Kline, Record};
use walrelay::{Wal, WalConfig};

/// What the rows went into, for the summary.
static TABLES: Mutex<String> = Mutex::new(String::new());

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
                    symbol: symbol.into(),
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
                    symbol: symbol.into(),
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

/// SQL alone: COPY into staging tables, then INSERT … ON CONFLICT DO
/// NOTHING; or, `direct`, COPY straight into the fact tables. Rows, column
/// lists and types come from the sink's own table descriptions and row
/// builder, so this measures the same rows the sink writes.
async fn load_by_sql(
    client: &mut tokio_postgres::Client,
    rows: &[Record],
    ids: &BTreeMap<String, i32>,
    exchange: i32,
    intervals: &BTreeMap<String, i32>,
    direct: bool,
) {
    let all: Vec<usize> = (0..rows.len()).collect();
    let built = rows::build(
        rows,
        &all,
        |_| ConflictPolicy::FirstWins,
        |s, _, iv| Some((ids[s], exchange, intervals[iv])),
    );
    let tx = client.transaction().await.unwrap();
    for t in &built {
        let table = t.table.name;
        let stage = if direct {
            format!("mart.{table}")
        } else {
            let stage = format!("stage_{table}");
            tx.batch_execute(&format!("CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE mart.{table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")).await.unwrap();
            stage
        };
        let cols = t.table.column_list();
        let sink = tx
            .copy_in(&format!("COPY {stage} ({cols}) FROM STDIN BINARY"))
            .await
            .unwrap();
        let writer = BinaryCopyInWriter::new(sink, &t.table.types());
        pin_mut!(writer);
        for n in 0..t.len() {
            writer.as_mut().write(&t.row(n)).await.unwrap();
        }
        let n = writer.finish().await.unwrap();
        assert_eq!(n as usize, ROWS / 4, "{table}: every row copied");
        if !direct {
            tx.execute(&format!("INSERT INTO mart.{table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING"), &[]).await.unwrap();
        }
    }
    assert_eq!(built.len(), FACT_TABLES.len(), "every fact table loaded");
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
    let mut last_cfg = cfg.clone();
    last_cfg.conflict = toml::from_str(
        "bar__tick_imbalance = \"last_wins\"\nbar__volume_imbalance = \"last_wins\"\nbar__vpin = \"last_wins\"\nbar__kline = \"last_wins\"",
    )
    .unwrap();
    let mut sink = TimescaleSink::new(cfg, wal.meta(), wal.dead_letters()).unwrap();
    // Warm up: schema, dimensions, cache.
    rt.block_on(sink.deliver(&batch(0), 1)).unwrap();
    let mut last_sink = TimescaleSink::new(last_cfg, wal.meta(), wal.dead_letters()).unwrap();
    rt.block_on(last_sink.deliver(&batch(0), 1)).unwrap();
    let hypertables = rt.block_on(server.hypertables("bench"));
    *TABLES.lock().unwrap() = if hypertables.len() == 4 {
        "TimescaleDB hypertables".to_string()
    } else {
        assert!(hypertables.is_empty(), "{hypertables:?}");
        format!(
            "plain PostgreSQL tables ({})",
            pg::timescaledb_missing().unwrap_or_else(|| "TimescaleDB not preloaded".into())
        )
    };
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
    let secs = std::env::var("WALRELAY_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(secs));
    g.throughput(Throughput::Elements(ROWS as u64));
    let mut round = 1i64;
    // The sink under both conflict policies: the same body, timed around
    // `deliver` only.
    for (name, sink) in [("sink", &mut sink), ("sink_last_wins", &mut last_sink)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let rows = batch(round);
                    let t = Instant::now();
                    let d = rt.block_on(sink.deliver(&rows, 1)).unwrap();
                    total += t.elapsed();
                    assert_eq!(d.written, ROWS);
                }
                note(&format!("facts/{name}"), iters * ROWS as u64, total);
                total
            })
        });
    }
    // The limits: COPY straight into the fact table (indexes and foreign
    // keys checked as the sink's rows are), and COPY into a staging table
    // followed by INSERT … ON CONFLICT.
    for (name, direct) in [("limit_copy_direct", true), ("limit_copy_sql", false)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let rows = batch(round);
                    let t = Instant::now();
                    rt.block_on(load_by_sql(
                        &mut client,
                        &rows,
                        &ids,
                        exchange,
                        &intervals,
                        direct,
                    ));
                    total += t.elapsed();
                }
                note(&format!("facts/{name}"), iters * ROWS as u64, total);
                total
            })
        });
    }
    g.finish();
}

fn report() {
    let s = common::summary();
    s.print_rates(
        &format!(
            "walrelay Timescale summary (this run, into {})",
            TABLES.lock().unwrap()
        ),
        26,
        "rows",
    );
    for id in ["facts/sink", "facts/sink_last_wins", "facts/limit_copy_sql"] {
        if let Some(pct) = s.percent_of(id, "facts/limit_copy_direct") {
            println!(
                "{id} is {pct:.1}% of the table's physical limit (direct COPY into the indexed, FK-checked fact tables, same rows)"
            );
        }
    }
}

criterion_group!(benches, facts);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
