//! The error-class table of both sinks against real servers (PostgreSQL 15;
//! VictoriaMetrics behind the fault-injecting proxy): one record the server
//! refuses never holds the records behind it hostage, an error of unknown
//! class is bisected before it is called configuration, and repeated
//! timeouts shrink the batch instead of retrying it at full size forever.
//! Records are counted exactly.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::drain::{self, wait_until};
use common::pg::Pg;
use common::proxy::{Mode, Proxy};
use common::vm::Vm;
use walrelay::db::influx::{InfluxConfig, InfluxSink};
use walrelay::db::timescale::{TimescaleConfig, TimescaleSink};
use walrelay::drain::SinkState;
use walrelay::drain::{ErrorClass, Sink};
use walrelay::record::Record;
use walrelay::{Wal, WalConfig};

fn kline(symbol: &str, i: i64) -> Record {
    common::records::kline_record(symbol, i, 10.0 + i as f64)
}

fn trade(i: u64, symbol: &str) -> Record {
    common::records::trade_record(
        symbol,
        format!("t{i}"),
        1_700_000_100_000_000_000 + i as i64 * 1_000_000,
        1000.0 + i as f64,
        0.5,
    )
}

/// A symbol too long for PostgreSQL's btree index on `dim_symbol.symbol`
/// (about 2.7 kB) and not compressible below it: SQLSTATE 54000.
fn huge_symbol() -> String {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..4000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'A' + (x % 26) as u8) as char
        })
        .collect()
}

async fn klines_in(pg: &Pg, db: &str) -> i64 {
    pg.client(db)
        .await
        .query_one("SELECT count(*) FROM mart.bar__kline", &[])
        .await
        .unwrap()
        .get(0)
}

/// SQLSTATE 54000 (program limit exceeded) used to be "configuration": the
/// sink retried the batch forever and everything behind it waited. It is a
/// data error: bisected to the record, dead-lettered, the rest delivered.
#[tokio::test]
async fn a_long_dimension_value_is_dead_lettered_and_the_records_behind_it_land() {
    let pg = Pg::start();
    let url = pg.create_db("limits").await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path()).with_sinks(["timescale"])).unwrap();
    let sink =
        TimescaleSink::new(TimescaleConfig::new(&url), wal.meta(), wal.dead_letters()).unwrap();
    let poison = kline(&huge_symbol(), 7);
    // 120 records in 12 appends; the poison one early, in the 1st append.
    let mut sent = 0;
    for a in 0..12i64 {
        let recs: Vec<Record> = (0..10)
            .map(|j| {
                let i = a * 10 + j;
                if i == 7 {
                    poison.clone()
                } else {
                    kline("BTCUSDT", i)
                }
            })
            .collect();
        wal.append(&recs).unwrap();
        sent += recs.len();
    }
    let drain = drain::start(&wal, sink, "timescale", drain::settings(50, 300, 300));
    wait_until("the backlog is delivered", 60, || {
        wal.backlog("timescale").unwrap().records == 0
    })
    .await;
    assert_eq!(drain.health.snapshot().state, SinkState::Healthy);
    drain.stop().await;
    assert_eq!(sent, 120);
    assert_eq!(
        klines_in(&pg, "limits").await,
        119,
        "every other record landed once"
    );
    let dead = wal.dead_letters().list(Some("timescale"), 10).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].record, poison);
    assert!(dead[0].error.contains("54000"), "{}", dead[0].error);
}

/// An SQLSTATE outside the table (here P0001, from an operator's trigger)
/// is bisected: when it refuses one record while the others are written,
/// that record is dead-lettered; when it refuses everything, it is
/// configuration (sink unhealthy, nothing dead-lettered).
#[tokio::test]
async fn an_unknown_sqlstate_is_bisected_before_it_is_called_configuration() {
    let pg = Pg::start();
    let url = pg.create_db("unknown").await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let mut sink =
        TimescaleSink::new(TimescaleConfig::new(&url), wal.meta(), wal.dead_letters()).unwrap();
    sink.deliver(&[kline("BTCUSDT", 1000)], 1).await.unwrap(); // creates the schema
    let admin = pg.client("unknown").await;
    admin
        .batch_execute(
            "CREATE FUNCTION mart.rule() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.volume = 33 OR current_setting('walrelay.refuse_all', true) = 'on' THEN
                 RAISE EXCEPTION 'operator rule refuses volume %', NEW.volume USING ERRCODE = 'P0001';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER rule BEFORE INSERT ON mart.bar__kline FOR EACH ROW EXECUTE FUNCTION mart.rule();",
        )
        .await
        .unwrap();
    let batch: Vec<Record> = (0..40).map(|i| kline("BTCUSDT", i)).collect(); // volume 33 is i = 23
                                                                             // The drainer's third delivery of this batch: the sink keeps no count of
                                                                             // its own and stores the one it is given.
    let d = sink.deliver(&batch, 3).await.unwrap();
    assert_eq!((d.written, d.dead_lettered), (39, 1));
    let dead = wal.dead_letters().list(Some("timescale"), 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record, batch[23]);
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].error.contains("P0001") && dead[0].error.contains("unknown class"),
        "{}",
        dead[0].error
    );
    assert_eq!(klines_in(&pg, "unknown").await, 1 + 39);

    // Now the rule refuses every row: no record to blame.
    admin
        .batch_execute("ALTER DATABASE unknown SET walrelay.refuse_all = 'on'")
        .await
        .unwrap();
    let mut sink =
        TimescaleSink::new(TimescaleConfig::new(&url), wal.meta(), wal.dead_letters()).unwrap();
    let batch: Vec<Record> = (100..140).map(|i| kline("BTCUSDT", i)).collect();
    let f = sink.deliver(&batch, 1).await.unwrap_err();
    assert_eq!(f.class, ErrorClass::Config, "{}", f.message);
    assert!(f.message.contains("P0001"), "{}", f.message);
    assert_eq!(
        wal.dead_letters().count(Some("timescale")).unwrap(),
        1,
        "nothing more dead-lettered"
    );
    assert_eq!(klines_in(&pg, "unknown").await, 40);
}

/// A batch whose transaction cannot finish within statement_timeout (a slow
/// trigger: 20 ms a row, 100 rows, 600 ms allowed) used to be retried at full
/// size forever. Timeouts halve the rows per transaction until it fits.
#[tokio::test]
async fn repeated_timeouts_shrink_the_transaction_until_the_batch_lands() {
    let pg = Pg::start();
    let url = pg.create_db("slow").await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let mut cfg = TimescaleConfig::new(&url);
    cfg.statement_timeout_ms = 600;
    let mut sink = TimescaleSink::new(cfg, wal.meta(), wal.dead_letters()).unwrap();
    sink.deliver(&[kline("BTCUSDT", 1000)], 1).await.unwrap(); // creates the schema
    pg.client("slow")
        .await
        .batch_execute(
            "CREATE FUNCTION mart.slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON mart.bar__kline FOR EACH ROW EXECUTE FUNCTION mart.slow();",
        )
        .await
        .unwrap();
    let batch: Vec<Record> = (0..100).map(|i| kline("BTCUSDT", i)).collect();
    let (delivered, timeouts) = deliver_through_timeouts(&mut sink, &batch, 8, |m| {
        m.contains("timed out") || m.contains("57014")
    })
    .await;
    assert_eq!((delivered.written, delivered.dead_lettered), (100, 0));
    assert!(
        timeouts >= 1,
        "the full batch (2 s of trigger work) cannot fit 600 ms"
    );
    assert_eq!(klines_in(&pg, "slow").await, 101, "every row once");
}

/// Delivers `batch` as the drainer would, attempt after attempt, until it is
/// confirmed; every failure must be transient and match `is_timeout`, and
/// fewer than `max` of them are allowed. Returns the delivery and how many
/// attempts timed out.
async fn deliver_through_timeouts<S: Sink>(
    sink: &mut S,
    batch: &[Record],
    max: u32,
    is_timeout: impl Fn(&str) -> bool,
) -> (walrelay::drain::Delivery, u32) {
    let mut timeouts = 0;
    loop {
        match sink.deliver(batch, timeouts + 1).await {
            Ok(d) => return (d, timeouts),
            Err(f) => {
                assert_eq!(f.class, ErrorClass::Transient, "{}", f.message);
                assert!(is_timeout(&f.message), "{}", f.message);
                timeouts += 1;
                assert!(
                    timeouts < max,
                    "still timing out after {timeouts} attempts: {}",
                    f.message
                );
            }
        }
    }
}

fn influx_sink(url: &str, wal: &Wal, timeout_ms: u64) -> InfluxSink {
    let mut c = InfluxConfig::new(url, "org", "bucket");
    c.timeout_ms = timeout_ms;
    InfluxSink::new(c, wal.dead_letters()).unwrap()
}

async fn prices(vm: &Vm) -> BTreeSet<u64> {
    vm.sample_set("trades_price")
        .await
        .into_iter()
        .map(|(_, _, v)| f64::from_bits(v) as u64)
        .collect()
}

/// A line the server refuses on its own, with 413 (a line over InfluxDB's
/// size limit) or with a status the table does not know (409), is bisected
/// to, dead-lettered, and the lines behind it are delivered. (VictoriaMetrics
/// itself answers 204 and drops a line it cannot take, so the refusal comes
/// from the proxy.) A status that refuses every line is configuration.
#[tokio::test]
async fn an_influx_413_or_unknown_status_line_is_dead_lettered_and_the_lines_behind_it_land() {
    for (status, marker) in [(413u16, "HUGEUSDT"), (409, "ODDUSDT")] {
        let vm = Vm::start().await;
        let proxy = Proxy::start(&format!("127.0.0.1:{}", vm.port)).await;
        proxy.set(Mode::RejectLineWithStatus {
            marker: marker.into(),
            status,
        });
        let dir = tempfile::TempDir::new().unwrap();
        let wal = Wal::open(WalConfig::new(dir.path()).with_sinks(["influx"])).unwrap();
        let mut all = Vec::new();
        for a in 0..8u64 {
            let recs: Vec<Record> = (0..10)
                .map(|j| {
                    let i = a * 10 + j;
                    trade(i, if i == 13 { marker } else { "BTCUSDT" })
                })
                .collect();
            wal.append(&recs).unwrap();
            all.extend(recs);
        }
        let drain = drain::start(
            &wal,
            influx_sink(&proxy.url(), &wal, 5000),
            "influx",
            drain::settings(50, 300, 300),
        );
        wait_until(&format!("{status}: the backlog is delivered"), 60, || {
            wal.backlog("influx").unwrap().records == 0
        })
        .await;
        drain.stop().await;
        let dead = wal.dead_letters().list(Some("influx"), 10).unwrap();
        assert_eq!(dead.len(), 1, "{status}: {dead:?}");
        assert_eq!(dead[0].record, all[13]);
        assert!(
            dead[0].error.contains(&status.to_string()),
            "{}",
            dead[0].error
        );
        let want: BTreeSet<u64> = (0..80).filter(|&i| i != 13).map(|i| 1000 + i).collect();
        assert_eq!(prices(&vm).await, want, "{status}: every other line landed");
    }

    // A status that refuses everything: configuration, nothing dead-lettered.
    let vm = Vm::start().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", vm.port)).await;
    proxy.set(Mode::RejectLineWithStatus {
        marker: "trades".into(),
        status: 409,
    });
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let mut sink = influx_sink(&proxy.url(), &wal, 5000);
    let batch: Vec<Record> = (0..40).map(|i| trade(i, "BTCUSDT")).collect();
    let f = sink.deliver(&batch, 1).await.unwrap_err();
    assert_eq!(f.class, ErrorClass::Config, "{}", f.message);
    assert_eq!(wal.dead_letters().count(None).unwrap(), 0);
}

/// Requests larger than 3 kB take 2 s at the server and the sink allows 1 s:
/// at full size every attempt times out. Timeouts halve the lines per
/// request until the requests fit, and every line lands.
#[tokio::test]
async fn repeated_influx_timeouts_shrink_the_requests_until_the_batch_lands() {
    let vm = Vm::start().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", vm.port)).await;
    proxy.set(Mode::DelayLargerThan {
        bytes: 3000,
        delay: Duration::from_secs(2),
    });
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let mut sink = influx_sink(&proxy.url(), &wal, 1000);
    let batch: Vec<Record> = (0..200).map(|i| trade(i, "BTCUSDT")).collect();
    let (delivered, timeouts) = deliver_through_timeouts(&mut sink, &batch, 10, |_| true).await;
    assert_eq!((delivered.written, delivered.dead_lettered), (200, 0));
    assert!(timeouts >= 1, "a 200-line request is over 3 kB");
    let want: BTreeSet<u64> = (0..200).map(|i| 1000 + i).collect();
    assert_eq!(prices(&vm).await, want);
}

/// The value of `name` (with `label` among its labels, if given) in a
/// Prometheus text exposition.
fn metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let key = l.split_whitespace().next().unwrap_or("");
            (key == name || key.starts_with(&format!("{name}{{")))
                && label.is_none_or(|lb| key.contains(lb))
        })
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("{name} {label:?} not in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

/// A poison stream through a running relay: every refused line is
/// dead-lettered, the dead letters stay within `wal.dead_letter_max_bytes`
/// (the oldest dropped), and `/status` and `/metrics` count exactly what was
/// kept and what was dropped; the good lines all land.
#[tokio::test]
async fn a_dead_letter_flood_through_the_relay_stays_within_its_bound_and_is_counted() {
    const BUDGET: u64 = 40_000;
    let vm = Vm::start().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", vm.port)).await;
    proxy.set(Mode::RejectLineWith {
        marker: "POISON".into(),
    });
    let dir = tempfile::TempDir::new().unwrap();
    let mut config = walrelay::config::Config::default();
    config.wal.dir = dir.path().join("wal");
    config.wal.dead_letter_max_bytes = BUDGET;
    config.ingest.token = Some(walrelay::config::Secret::new("s3cret"));
    config.influx = Some(InfluxConfig::new(proxy.url(), "org", "bucket"));
    let relay = common::relay::ServedRelay::start(config).await;
    let url = relay.url.clone();
    let client = common::http::client();
    // 5 requests of 100 lines: 80 poison and 20 good lines each.
    let (mut poison, mut good) = (0u64, 0u64);
    for r in 0..5u64 {
        let mut body = String::new();
        for j in 0..100u64 {
            let i = r * 100 + j;
            let symbol = if j % 5 == 4 {
                good += 1;
                "GOODUSDT"
            } else {
                poison += 1;
                "POISONUSDT"
            };
            body.push_str(&format!(
                "trades,symbol={symbol},exchange=BINANCE,side=buy price={},quantity=0.1 {}\n",
                1000 + i,
                1_700_000_100_000_000_000u64 + i * 1_000_000
            ));
        }
        let resp = common::http::write(&client, &url, "s3cret", body)
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
    }
    let status = common::http::wait_status(&client, &url, "the backlog is delivered", 60, |s| {
        s["sinks"][0]["backlog_records"] == 0
    })
    .await;
    let sink = &status["sinks"][0];
    assert_eq!(sink["backlog_records"], 0, "{status}");
    let (kept, dropped) = (
        sink["dead_letters"].as_u64().unwrap(),
        sink["dead_letters_dropped"].as_u64().unwrap(),
    );
    assert_eq!(
        kept + dropped,
        poison,
        "every poison line kept or counted: {status}"
    );
    assert!(dropped > 0, "the flood exceeded the budget: {status}");
    assert!(
        status["log"]["dead_letter_bytes"].as_u64().unwrap() <= BUDGET,
        "{status}"
    );
    let text = common::http::get_text(&client, format!("{url}/metrics")).await;
    assert_eq!(
        metric(&text, "walrelay_dead_letters", Some("influx")),
        kept as f64
    );
    assert_eq!(
        metric(&text, "walrelay_dead_letters_dropped_total", Some("influx")),
        dropped as f64
    );
    assert!(metric(&text, "walrelay_dead_letter_bytes", None) <= BUDGET as f64);
    let landed = vm.sample_set("trades_price").await.len() as u64;
    assert_eq!(landed, good, "every good line landed once");
    drop(client);
    relay.stop().await.unwrap();
}
