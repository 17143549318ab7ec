//! The Timescale sink against a real PostgreSQL 15. Where TimescaleDB is
//! installed, `Pg::start` preloads it and the sink writes into hypertables;
//! tests that must also hold on plain PostgreSQL run once per flavour
//! (`Pg::each_flavour`). Without TimescaleDB the hypertable-only checks print
//! `SKIPPED` and the reason.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::drain;
use common::pg::Pg;
use walrelay::db::timescale::{init::init, schema, TimescaleConfig, TimescaleSink};
use walrelay::drain::Sink;
use walrelay::record::{Bar, BarKind, Record};
use walrelay::{Wal, WalConfig};

fn bar(kind: BarKind, symbol: &str, i: i64, high: f64) -> Record {
    Record::Bar(Bar {
        kind,
        venue: "BINANCE_FUTURES".into(),
        symbol: symbol.into(),
        interval: "tick_100".into(),
        ts: 1_700_000_000_000_000_000 + i * 1_000_000_000,
        open: 10.0,
        high,
        low: 9.0,
        close: 10.5,
        volume: 100.0 + i as f64,
        buy_ticks: 60,
        sell_ticks: 40,
        total_ticks: 100,
        theta: 0.5,
    })
}

fn kline(symbol: &str, i: i64) -> Record {
    common::records::kline_record(symbol, i, 10.0)
}

fn mixed(n: i64) -> Vec<Record> {
    (0..n)
        .map(|i| match i % 4 {
            0 => bar(BarKind::TickImbalance, "BTCUSDT", i, 11.0),
            1 => bar(BarKind::VolumeImbalance, "ETHUSDT", i, 11.0),
            2 => bar(BarKind::Vpin, "SOLUSDT", i, 11.0),
            _ => kline("BTCUSDT", i),
        })
        .collect()
}

async fn count(pg: &Pg, db: &str, table: &str) -> i64 {
    pg.client(db)
        .await
        .query_one(&format!("SELECT count(*) FROM mart.{table}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn total(pg: &Pg, db: &str) -> i64 {
    let mut n = 0;
    for t in &schema::FACT_TABLES {
        n += count(pg, db, t.name).await;
    }
    n
}

const FOUR_HYPERTABLES: [&str; 4] = [
    "bar__kline(time)",
    "bar__tick_imbalance(time)",
    "bar__volume_imbalance(time)",
    "bar__vpin(time)",
];

#[tokio::test]
async fn schema_creation_is_idempotent_and_safe_concurrently() {
    for pg in Pg::each_flavour() {
        let flavour = pg.flavour();
        let url = pg.create_db("twice").await;
        let cfg = TimescaleConfig::new(&url);
        let (mut a, mut b) = (
            walrelay::db::timescale::connect(&cfg).await.unwrap(),
            walrelay::db::timescale::connect(&cfg).await.unwrap(),
        );
        // Two relays at once on a fresh database, then once more.
        let (ra, rb) = tokio::join!(
            schema::ensure(&mut a, "mart", false),
            schema::ensure(&mut b, "mart", false)
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(
            (ra, rb),
            (pg.timescale(), pg.timescale()),
            "{flavour}: hypertables exactly when TimescaleDB is preloaded"
        );
        assert_eq!(schema::ensure(&mut a, "mart", false).await.unwrap(), ra);
        if pg.timescale() {
            assert_eq!(pg.hypertables("twice").await, FOUR_HYPERTABLES);
            // Required and present: fine, and still idempotent.
            assert!(schema::ensure(&mut a, "mart", true).await.unwrap());
            assert_eq!(pg.hypertables("twice").await, FOUR_HYPERTABLES);
        } else {
            assert!(pg.hypertables("twice").await.is_empty(), "{flavour}");
            // Required TimescaleDB on a server without it is a clear startup
            // error, naming what to do.
            let err = schema::ensure(&mut a, "mart", true)
                .await
                .unwrap_err()
                .to_string();
            let expected = if common::pg::timescaledb_installed() {
                "shared_preload_libraries = 'timescaledb'"
            } else {
                "require_timescaledb"
            };
            assert!(
                err.contains("TimescaleDB") && err.contains(expected),
                "{flavour}: {err}"
            );
        }
    }
}

/// Columns, constraints and indexes of schema `mart`, and on TimescaleDB
/// which tables are hypertables partitioned by which column, as comparable
/// text.
async fn catalog(pg: &Pg, db: &str) -> Vec<String> {
    let c = pg.client(db).await;
    let mut out = Vec::new();
    for row in c
        .query(
            "SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '') FROM information_schema.columns WHERE table_schema = 'mart' ORDER BY table_name, ordinal_position",
            &[],
        )
        .await
        .unwrap()
    {
        out.push(format!("column {}.{} {} null={} default={}", row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2), row.get::<_, String>(3), row.get::<_, String>(4)));
    }
    for row in c
        .query("SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'mart'::regnamespace ORDER BY 1, 2", &[])
        .await
        .unwrap()
    {
        out.push(format!("constraint {} {} {}", row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2)));
    }
    for row in c.query("SELECT tablename::text, indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'mart' ORDER BY 1, 2", &[]).await.unwrap() {
        out.push(format!("index {} {} {}", row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2)));
    }
    for h in pg.hypertables(db).await {
        out.push(format!("hypertable {h}"));
    }
    out
}

#[tokio::test]
async fn reference_ddl_and_code_produce_the_same_catalog() {
    for pg in Pg::each_flavour() {
        let flavour = pg.flavour();
        pg.create_db("from_sql").await;
        let url = pg.create_db("from_code").await;
        let c = pg.client("from_sql").await;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort_by_key(|p| (!p.ends_with("create_dimensions.sql"), p.clone()));
        // Twice: the reference DDL is idempotent too.
        for f in files.iter().chain(&files) {
            c.batch_execute(&std::fs::read_to_string(f).unwrap())
                .await
                .unwrap_or_else(|e| panic!("{flavour}: {}: {e}", f.display()));
        }
        let mut code = walrelay::db::timescale::connect(&TimescaleConfig::new(&url))
            .await
            .unwrap();
        schema::ensure(&mut code, "mart", false).await.unwrap();
        let (a, b) = (
            catalog(&pg, "from_sql").await,
            catalog(&pg, "from_code").await,
        );
        assert!(
            a.len() > 40,
            "{flavour}: catalog too small to mean anything: {a:?}"
        );
        assert!(
            a.iter()
                .any(|l| l.contains("bar__vpin_keys_time_idx") && l.contains("\"time\" DESC")),
            "{flavour}: {a:?}"
        );
        assert!(
            a.iter()
                .any(|l| l.contains("UNIQUE (\"time\", symbol_id, exchange_id, interval_id)")),
            "{flavour}: {a:?}"
        );
        for name in [
            "dim_symbol.symbol",
            "dim_exchange.exchange",
            "dim_interval.interval",
        ] {
            assert!(
                a.iter()
                    .any(|l| l.starts_with(&format!("column {name} text null=NO"))),
                "{flavour}: {name} is NOT NULL: {a:?}"
            );
        }
        let hypertables: Vec<String> = a
            .iter()
            .filter_map(|l| l.strip_prefix("hypertable "))
            .map(String::from)
            .collect();
        if pg.timescale() {
            assert_eq!(
                hypertables, FOUR_HYPERTABLES,
                "{flavour}: sql/ makes hypertables"
            );
        } else {
            assert!(hypertables.is_empty(), "{flavour}: {hypertables:?}");
        }
        assert_eq!(a, b, "{flavour}: sql/ and schema.rs drifted apart");
    }
}

#[tokio::test]
async fn dimension_names_of_an_older_database_become_not_null() {
    let pg = Pg::start();
    let nullable = |t: &str, c: &str| {
        format!("SELECT NOT attnotnull FROM pg_attribute WHERE attrelid = 'mart.{t}'::regclass AND attname = '{c}'")
    };
    for (db, null_symbol) in [("older", false), ("older_with_null", true)] {
        let url = pg.create_db(db).await;
        let c = pg.client(db).await;
        // The dimension tables as earlier versions created them.
        c.batch_execute(
            "CREATE SCHEMA mart; \
             CREATE TABLE mart.dim_symbol (symbol_id SERIAL PRIMARY KEY, symbol TEXT UNIQUE, is_deleted BOOLEAN NOT NULL DEFAULT FALSE, deleted_date TIMESTAMPTZ NULL); \
             CREATE TABLE mart.dim_exchange (exchange_id SERIAL PRIMARY KEY, exchange TEXT UNIQUE); \
             CREATE TABLE mart.dim_interval (interval_id SERIAL PRIMARY KEY, \"interval\" TEXT UNIQUE); \
             INSERT INTO mart.dim_symbol (symbol) VALUES ('BTCUSDT')",
        )
        .await
        .unwrap();
        if null_symbol {
            c.batch_execute("INSERT INTO mart.dim_symbol (symbol) VALUES (NULL)")
                .await
                .unwrap();
        }
        let mut code = walrelay::db::timescale::connect(&TimescaleConfig::new(&url))
            .await
            .unwrap();
        schema::ensure(&mut code, "mart", false)
            .await
            .unwrap_or_else(|e| panic!("{db}: {e}"));
        for (t, col) in [
            ("dim_symbol", "symbol"),
            ("dim_exchange", "exchange"),
            ("dim_interval", "interval"),
        ] {
            let still: bool = c.query_one(&nullable(t, col), &[]).await.unwrap().get(0);
            // A stored NULL symbol keeps that one column nullable (with a
            // warning) instead of failing the relay's startup.
            assert_eq!(still, null_symbol && t == "dim_symbol", "{db}: {t}.{col}");
        }
    }
}

/// Captures tracing output of the current thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

#[tokio::test]
async fn init_adds_reactivates_and_soft_deletes_with_exact_log_lines() {
    let pg = Pg::start();
    let url = pg.create_db("seed").await;
    let logs = Captured::default();
    let w = logs.clone();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_writer(move || w.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(sub);
    let mut cfg = TimescaleConfig::new(&url);
    cfg.dimensions.symbols = vec!["BTCUSDT".into(), "ETHUSDT".into()];
    cfg.dimensions.exchanges = vec!["BINANCE".into()];
    cfg.dimensions.intervals = vec!["1m".into()];
    let r = init(&cfg).await.unwrap();
    assert_eq!(
        (r.tables[0].added, r.tables[1].added, r.tables[2].added),
        (2, 1, 1)
    );
    let out = logs.take();
    assert!(
        out.contains("INFO DIMENSION_ADDED table=\"dim_symbol\" value=BTCUSDT"),
        "{out}"
    );
    assert!(
        out.contains("INFO DIMENSION_ADDED table=\"dim_exchange\" value=BINANCE"),
        "{out}"
    );
    assert!(out.contains("INFO DIMENSION_SUMMARY table=\"dim_symbol\" added=2 existing=0 reactivated=0 soft_deleted=0"), "{out}");

    cfg.dimensions.symbols = vec!["ETHUSDT".into(), "SOLUSDT".into()];
    let r = init(&cfg).await.unwrap();
    assert_eq!(
        (
            r.tables[0].added,
            r.tables[0].existing,
            r.tables[0].soft_deleted
        ),
        (1, 1, 1)
    );
    let out = logs.take();
    assert!(
        out.contains("INFO DIMENSION_SOFT_DELETED table=\"dim_symbol\" value=BTCUSDT"),
        "{out}"
    );
    assert!(
        out.contains("INFO DIMENSION_ADDED table=\"dim_symbol\" value=SOLUSDT"),
        "{out}"
    );
    let c = pg.client("seed").await;
    let row = c.query_one("SELECT is_deleted, deleted_date IS NOT NULL FROM mart.dim_symbol WHERE symbol = 'BTCUSDT'", &[]).await.unwrap();
    assert!(
        row.get::<_, bool>(0) && row.get::<_, bool>(1),
        "soft-deleted, never removed"
    );

    cfg.dimensions.symbols = vec!["BTCUSDT".into(), "ETHUSDT".into(), "SOLUSDT".into()];
    let r = init(&cfg).await.unwrap();
    assert_eq!((r.tables[0].reactivated, r.tables[0].existing), (1, 2));
    assert!(logs
        .take()
        .contains("INFO DIMENSION_REACTIVATED table=\"dim_symbol\" value=BTCUSDT"));

    // A second run with the same config changes nothing.
    let r = init(&cfg).await.unwrap();
    assert!(
        r.tables
            .iter()
            .all(|t| t.added + t.reactivated + t.soft_deleted == 0),
        "{r:?}"
    );
    let out = logs.take();
    assert!(
        !out.contains("DIMENSION_ADDED")
            && !out.contains("DIMENSION_REACTIVATED")
            && !out.contains("DIMENSION_SOFT_DELETED"),
        "{out}"
    );
    assert!(out.contains("INFO DIMENSION_SUMMARY table=\"dim_symbol\" added=0 existing=3 reactivated=0 soft_deleted=0"), "{out}");
}

#[tokio::test]
async fn replays_write_each_row_once_and_the_cache_survives_a_reopen() {
    let pg = Pg::start();
    let url = pg.create_db("replay").await;
    let dir = tempfile::TempDir::new().unwrap();
    let batch = mixed(400);
    {
        let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
        let mut sink =
            TimescaleSink::new(TimescaleConfig::new(&url), wal.meta(), wal.dead_letters()).unwrap();
        for _ in 0..3 {
            let d = sink.deliver(&batch, 1).await.unwrap();
            assert_eq!((d.written, d.dead_lettered), (400, 0));
        }
        assert_eq!(
            sink.dimension_round_trips(),
            1,
            "all keys of the batch in one round trip, then cache hits"
        );
    }
    assert_eq!(
        total(&pg, "replay").await,
        400,
        "three replays, one row per key"
    );
    for (t, n) in [
        ("bar__tick_imbalance", 100),
        ("bar__volume_imbalance", 100),
        ("bar__vpin", 100),
        ("bar__kline", 100),
    ] {
        assert_eq!(count(&pg, "replay", t).await, n, "{t}");
    }
    // Reopen the log: known keys resolve without a dimension round trip.
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let mut sink =
        TimescaleSink::new(TimescaleConfig::new(&url), wal.meta(), wal.dead_letters()).unwrap();
    let more: Vec<Record> = (400..480)
        .map(|i| bar(BarKind::Vpin, "SOLUSDT", i, 11.0))
        .collect();
    sink.deliver(&more, 1).await.unwrap();
    assert_eq!(
        sink.dimension_round_trips(),
        0,
        "restart needed no dimension lookup"
    );
    assert_eq!(count(&pg, "replay", "bar__vpin").await, 180);
}

#[tokio::test]
async fn a_different_database_clears_the_cache() {
    let pg = Pg::start();
    let url_a = pg.create_db("ident_a").await;
    let url_b = pg.create_db("ident_b").await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    // Make B's IDs differ from A's: B already has other symbols.
    let mut seed = TimescaleConfig::new(&url_b);
    seed.dimensions.symbols = vec!["AAA".into(), "BBB".into(), "CCC".into()];
    init(&seed).await.unwrap();
    let mut a =
        TimescaleSink::new(TimescaleConfig::new(&url_a), wal.meta(), wal.dead_letters()).unwrap();
    a.deliver(&[kline("BTCUSDT", 1)], 1).await.unwrap();
    drop(a);
    let mut b =
        TimescaleSink::new(TimescaleConfig::new(&url_b), wal.meta(), wal.dead_letters()).unwrap();
    b.deliver(&[kline("BTCUSDT", 1)], 1).await.unwrap();
    assert_eq!(
        b.dimension_round_trips(),
        1,
        "cache from database A was not reused for B"
    );
    let c = pg.client("ident_b").await;
    let row = c
        .query_one(
            "SELECT s.symbol FROM mart.bar__kline k JOIN mart.dim_symbol s USING (symbol_id)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "BTCUSDT",
        "fact points at B's own symbol id"
    );
}

#[tokio::test]
async fn a_poison_record_is_dead_lettered_while_its_batch_mates_land() {
    let pg = Pg::start();
    let url = pg.create_db("poison").await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let mut sink =
        TimescaleSink::new(TimescaleConfig::new(&url), wal.meta(), wal.dead_letters()).unwrap();
    sink.deliver(&[kline("BTCUSDT", 0)], 1).await.unwrap(); // creates the schema
                                                            // An operator's rule the relay does not know: bars must have high >= low.
    pg.client("poison")
        .await
        .batch_execute("ALTER TABLE mart.bar__vpin ADD CONSTRAINT sane_range CHECK (high >= low)")
        .await
        .unwrap();
    let mut batch: Vec<Record> = (1..=40)
        .map(|i| bar(BarKind::Vpin, "BTCUSDT", i, 11.0))
        .collect();
    batch[22] = bar(BarKind::Vpin, "BTCUSDT", 23, 1.0); // high < low
    let d = sink.deliver(&batch, 1).await.unwrap();
    assert_eq!((d.written, d.dead_lettered), (39, 1));
    let dead = wal.dead_letters().list(Some("timescale"), 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record, batch[22]);
    assert!(
        dead[0].error.contains("23514") && dead[0].error.contains("sane_range"),
        "{}",
        dead[0].error
    );
    assert_eq!(count(&pg, "poison", "bar__vpin").await, 39);
}

/// Asserts that mart's four fact tables are hypertables where the cluster
/// preloads TimescaleDB, and plain tables where it does not.
async fn assert_table_kind(pg: &Pg, db: &str) {
    let h = pg.hypertables(db).await;
    if pg.timescale() {
        assert_eq!(h, FOUR_HYPERTABLES, "ran against hypertables");
    } else {
        assert!(h.is_empty(), "plain tables: {h:?}");
    }
}

#[tokio::test]
async fn first_wins_dead_letters_a_different_row_for_a_held_key_and_not_a_replay() {
    for pg in Pg::each_flavour() {
        first_wins(&pg).await;
    }
}

/// The default policy, `first_wins`, on every fact table.
async fn first_wins(pg: &Pg) {
    let url = pg.create_db("conflicts").await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let mut sink =
        TimescaleSink::new(TimescaleConfig::new(&url), wal.meta(), wal.dead_letters()).unwrap();
    let first = bar(BarKind::TickImbalance, "BTCUSDT", 5, 11.0);
    let rival = bar(BarKind::TickImbalance, "BTCUSDT", 5, 12.0); // same key, other high
    let other = bar(BarKind::TickImbalance, "BTCUSDT", 6, 11.0);

    // Two different bars for one key in one batch: one row, one dead letter.
    let d = sink
        .deliver(
            &[
                first.clone(),
                rival.clone(),
                other.clone(),
                kline("ETHUSDT", 1),
            ],
            1,
        )
        .await
        .unwrap();
    assert_eq!((d.written, d.dead_lettered), (3, 1));
    let dead = wal.dead_letters().list(Some("timescale"), 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record, rival);
    assert!(
        dead[0].error.contains("bar__tick_imbalance")
            && dead[0].error.contains("already holds a different row")
            && dead[0].error.contains("first_wins"),
        "{}",
        dead[0].error
    );
    let high: f64 = pg
        .client("conflicts")
        .await
        .query_one(
            "SELECT high FROM mart.bar__tick_imbalance WHERE time = to_timestamp(1700000005)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(high, 11.0, "the first write is kept");

    // A replay (same rows again) is done, not dead-lettered.
    let d = sink
        .deliver(&[first.clone(), other.clone(), kline("ETHUSDT", 1)], 1)
        .await
        .unwrap();
    assert_eq!((d.written, d.dead_lettered), (3, 0));

    // A later different kline for a held key is dead-lettered too.
    let mut k = kline("ETHUSDT", 1);
    if let Record::Kline(k) = &mut k {
        k.close += 1.0;
    }
    let d = sink
        .deliver(&[k.clone(), kline("ETHUSDT", 2)], 1)
        .await
        .unwrap();
    assert_eq!((d.written, d.dead_lettered), (1, 1));
    let dead = wal.dead_letters().list(Some("timescale"), 10).unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead
        .iter()
        .any(|l| l.record == k && l.error.contains("bar__kline")));
    assert_eq!(count(pg, "conflicts", "bar__tick_imbalance").await, 2);
    assert_eq!(count(pg, "conflicts", "bar__kline").await, 2);
    assert_table_kind(pg, "conflicts").await;
}

#[tokio::test]
async fn last_wins_replaces_the_row_and_a_replay_rewrites_nothing() {
    for pg in Pg::each_flavour() {
        last_wins(&pg).await;
    }
}

/// `last_wins` on klines (a forming candle streamed repeatedly) while the
/// bars keep `first_wins`.
async fn last_wins(pg: &Pg) {
    let url = pg.create_db("last_wins").await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let mut cfg = TimescaleConfig::new(&url);
    cfg.conflict = toml::from_str("bar__kline = \"last_wins\"").unwrap();
    let mut sink = TimescaleSink::new(cfg, wal.meta(), wal.dead_letters()).unwrap();
    let forming = |i: i64, close: f64, nanos: i64| {
        let mut k = kline("ETHUSDT", i);
        if let Record::Kline(k) = &mut k {
            k.close = close;
            k.high = close.max(k.high);
            k.ts += nanos;
        }
        k
    };
    let c = pg.client("last_wins").await;
    let row = |i: i64| {
        let c = &c;
        async move {
            let r = c
                .query_one(
                    "SELECT close, high, xmin::text FROM mart.bar__kline WHERE time = to_timestamp($1::float8)",
                    &[&(1_700_000_000.0 + i as f64 * 60.0)],
                )
                .await
                .unwrap();
            (
                r.get::<_, f64>(0),
                r.get::<_, f64>(1),
                r.get::<_, String>(2),
            )
        }
    };

    // The candle of minute 1 forms: four updates in one batch, the last two
    // within one microsecond (one key to PostgreSQL), plus minute 2.
    let d = sink
        .deliver(
            &[
                forming(1, 1.1, 0),
                forming(1, 1.2, 0),
                forming(2, 7.0, 0),
                forming(1, 1.3, 0),
                forming(1, 2.5, 999),
            ],
            1,
        )
        .await
        .unwrap();
    assert_eq!((d.written, d.dead_lettered), (5, 0));
    assert_eq!(count(pg, "last_wins", "bar__kline").await, 2);
    let (close, high, _) = row(1).await;
    assert_eq!(
        (close, high),
        (2.5, 2.5),
        "the last record of the key in the batch"
    );

    // A later batch updates it again: the row is replaced, not dead-lettered.
    let d = sink.deliver(&[forming(1, 1.9, 0)], 1).await.unwrap();
    assert_eq!((d.written, d.dead_lettered), (1, 0));
    let (close, high, version) = row(1).await;
    assert_eq!((close, high), (1.9, 2.0));

    // A replay of the same record rewrites nothing: the row version (xmin)
    // stays, thanks to WHERE … IS DISTINCT FROM.
    let d = sink.deliver(&[forming(1, 1.9, 0)], 1).await.unwrap();
    assert_eq!((d.written, d.dead_lettered), (1, 0));
    assert_eq!(
        row(1).await,
        (1.9, 2.0, version),
        "identical replay is not an update"
    );
    assert_eq!(wal.dead_letters().count(None).unwrap(), 0);

    // Bars in the same sink still keep the first write.
    let first = bar(BarKind::Vpin, "BTCUSDT", 5, 11.0);
    let rival = bar(BarKind::Vpin, "BTCUSDT", 5, 12.0);
    let d = sink.deliver(&[first, rival.clone()], 1).await.unwrap();
    assert_eq!((d.written, d.dead_lettered), (1, 1));
    let dead = wal.dead_letters().list(Some("timescale"), 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record, rival);
    assert_eq!(count(pg, "last_wins", "bar__kline").await, 2);
    assert_table_kind(pg, "last_wins").await;
}

#[tokio::test]
async fn a_dimension_row_deleted_behind_our_back_is_re_resolved() {
    let pg = Pg::start();
    let url = pg.create_db("fk").await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let mut sink =
        TimescaleSink::new(TimescaleConfig::new(&url), wal.meta(), wal.dead_letters()).unwrap();
    sink.deliver(&[kline("XRPUSDT", 0)], 1).await.unwrap();
    pg.client("fk")
        .await
        .batch_execute(
            "DELETE FROM mart.bar__kline; DELETE FROM mart.dim_symbol WHERE symbol = 'XRPUSDT'",
        )
        .await
        .unwrap();
    let d = sink
        .deliver(&[kline("XRPUSDT", 1), kline("XRPUSDT", 2)], 1)
        .await
        .unwrap();
    assert_eq!((d.written, d.dead_lettered), (2, 0));
    assert_eq!(count(&pg, "fk", "bar__kline").await, 2);
    assert_eq!(wal.dead_letters().count(None).unwrap(), 0);
}

#[tokio::test]
async fn database_killed_mid_batch_and_restarted_loses_nothing() {
    let mut pg = Pg::start();
    let url = pg.create_db("crash").await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path()).with_sinks(["timescale"])).unwrap();
    let n = 60_000;
    let all = mixed(n);
    for chunk in all.chunks(1000) {
        wal.append(chunk).unwrap();
    }
    let mut cfg = TimescaleConfig::new(&url);
    cfg.batch_size = 2000;
    cfg.connect_timeout_ms = 1000;
    let sink = TimescaleSink::new(cfg, wal.meta(), wal.dead_letters()).unwrap();
    let drain = drain::start(&wal, sink, "timescale", drain::settings(5000, 500, 500));
    // Kill the database while batches are in flight.
    for _ in 0..400 {
        if wal.backlog("timescale").unwrap().records < n as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pg.stop_immediate();
    let left_at_kill = wal.backlog("timescale").unwrap().records;
    assert!(
        left_at_kill > 0,
        "the database died after everything was delivered; the test proved nothing"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        drain.health.snapshot().consecutive_failures > 0,
        "the sink noticed the outage"
    );
    pg.restart();
    for _ in 0..600 {
        if wal.backlog("timescale").unwrap().records == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        wal.backlog("timescale").unwrap().records,
        0,
        "backlog drained after restart"
    );
    assert_eq!(total(&pg, "crash").await, n, "every record exactly once");
    if pg.timescale() {
        assert_eq!(
            pg.hypertables("crash").await,
            FOUR_HYPERTABLES,
            "the crash ran against hypertables"
        );
    } else {
        eprintln!(
            "database_killed_mid_batch_and_restarted_loses_nothing ran on plain tables: {}",
            common::pg::timescaledb_missing().unwrap_or_default()
        );
    }
    drain.stop().await;
}

#[tokio::test]
async fn hypertables_when_timescaledb_is_installed() {
    if let Some(why) = common::pg::timescaledb_missing() {
        eprintln!("SKIPPED hypertables_when_timescaledb_is_installed: {why}");
        return;
    }
    let pg = Pg::start();
    let url = pg.create_db("hyper").await;
    let mut client = walrelay::db::timescale::connect(&TimescaleConfig::new(&url))
        .await
        .unwrap();
    assert!(schema::ensure(&mut client, "mart", true).await.unwrap());
    assert_eq!(pg.hypertables("hyper").await, FOUR_HYPERTABLES);
    // Rows 30 days apart cannot share a chunk (7-day chunks): inserts create
    // exactly one chunk per timestamp, and the parent table stays empty.
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let mut sink =
        TimescaleSink::new(TimescaleConfig::new(&url), wal.meta(), wal.dead_letters()).unwrap();
    let month = 30 * 24 * 3600;
    let rows: Vec<Record> = (0..3)
        .flat_map(|m| {
            [
                bar(BarKind::Vpin, "BTCUSDT", m * month, 11.0),
                bar(BarKind::Vpin, "ETHUSDT", m * month, 11.0),
            ]
        })
        .collect();
    let d = sink.deliver(&rows, 1).await.unwrap();
    assert_eq!((d.written, d.dead_lettered), (6, 0));
    let c = pg.client("hyper").await;
    let chunks: i64 = c
        .query_one(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_schema = 'mart' AND hypertable_name = 'bar__vpin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(chunks, 3, "one chunk per month of rows");
    let (all, parent): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM mart.bar__vpin), (SELECT count(*) FROM ONLY mart.bar__vpin)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((all, parent), (6, 0), "rows live in chunks, not the parent");
    for t in ["bar__kline", "bar__tick_imbalance", "bar__volume_imbalance"] {
        assert_eq!(count(&pg, "hyper", t).await, 0);
    }
}
