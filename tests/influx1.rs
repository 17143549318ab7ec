//! The InfluxDB sink through `api = "v1"` against a real InfluxDB 1.6
//! (`tests/common/influx1.rs`): InfluxDB's own semantics that
//! VictoriaMetrics does not have (field types, databases, retention
//! policies, authentication, overwrite of identical points). Every count is
//! the server's own, by InfluxQL (`SELECT count(*) … GROUP BY time(1m)`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::drain::{self, wait_until, Drain};
use common::influx1::{Columns, Influx1};
use walrelay::config::Secret;
use walrelay::db::influx::{InfluxConfig, InfluxSink};
use walrelay::drain::{Sink, SinkState};
use walrelay::ingest::identity::assign_identity_timestamps;
use walrelay::record::{FieldValue, Point, Record};
use walrelay::{Wal, WalConfig};

const DB: &str = "market";

fn v1(url: &str, db: &str) -> InfluxConfig {
    let mut c = InfluxConfig::v1(url, db);
    c.timeout_ms = 5000;
    c
}

fn open_wal(dir: &tempfile::TempDir) -> Wal {
    Wal::open(WalConfig::new(dir.path()).with_sinks(["influx"])).unwrap()
}

fn start_drainer(wal: &Wal, sink: InfluxSink) -> Drain {
    drain::start(wal, sink, "influx", drain::settings(100, 500, 300))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// A generic point `sensor,probe=p<i> v=<value>` at `ts`.
fn sensor(i: usize, v: FieldValue, ts: i64) -> Record {
    Record::Point(Point {
        measurement: "sensor".into(),
        tags: BTreeMap::from([("probe".to_string(), format!("p{i}"))]),
        fields: BTreeMap::from([("v".to_string(), v)]),
        ts,
    })
}

fn trade(i: u64, ts: i64) -> Record {
    common::records::trade_record("BTCUSDT", format!("t{i}"), ts, 1000.0 + i as f64, 0.5)
}

fn fixtures() -> Vec<Record> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/influx_records.jsonl"
    ))
    .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Dead letters of the influx sink: (record, reason).
fn dead(wal: &Wal) -> Vec<(Record, String)> {
    wal.dead_letters()
        .list(Some("influx"), 1000)
        .unwrap()
        .into_iter()
        .map(|d| (d.record, d.error))
        .collect()
}

/// A batch mixing a float and an integer for one field, on a database where
/// the field does not exist yet: InfluxDB 1.x refuses the whole request
/// (`field type conflict`, nothing stored). Bisection finds the type the
/// first written half fixes (float) and dead-letters exactly the lines of the
/// other type with the server's message; every other line is stored, the
/// drainer confirms the batch and goes on with the next.
#[tokio::test]
async fn a_field_type_conflict_inside_one_batch_dead_letters_exactly_the_conflicting_lines() {
    let ix = Influx1::start().await;
    ix.create_database(DB).await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = open_wal(&dir);
    let ts = 1_700_000_000_000_000_000;
    let ints = [10usize, 25];
    let records: Vec<Record> = (0..40)
        .map(|i| {
            let v = if ints.contains(&i) {
                FieldValue::Integer(i as i64)
            } else {
                FieldValue::Float(i as f64 + 0.5)
            };
            sensor(i, v, ts + i as i64 * 1_000_000)
        })
        .collect();
    wal.append(&records).unwrap();
    let d = start_drainer(
        &wal,
        InfluxSink::new(v1(&ix.url(), DB), wal.dead_letters()).unwrap(),
    );
    wait_until("the conflicting batch settled", 20, || {
        wal.backlog("influx").unwrap().records == 0
    })
    .await;
    let got = dead(&wal);
    let want: BTreeSet<String> = ints.iter().map(|i| format!("p{i}")).collect();
    let got_probes: BTreeSet<String> = got
        .iter()
        .map(|(r, _)| match r {
            Record::Point(p) => p.tags["probe"].clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got_probes, want,
        "exactly the integer lines are dead-lettered"
    );
    for (_, reason) in &got {
        assert!(
            reason.contains("400") && reason.contains("field type conflict"),
            "the server's message: {reason}"
        );
    }
    assert_eq!(
        ix.count(DB, None, "sensor").await,
        38,
        "every other line is stored"
    );
    // The drainer goes on: the next batch is delivered.
    let more: Vec<Record> = (40..50)
        .map(|i| sensor(i, FieldValue::Float(1.0), ts + i as i64 * 1_000_000))
        .collect();
    wal.append(&more).unwrap();
    wait_until("the next batch delivered", 20, || {
        wal.backlog("influx").unwrap().records == 0
    })
    .await;
    assert_eq!(ix.count(DB, None, "sensor").await, 48);
    assert_eq!(
        wal.dead_letters().count(Some("influx")).unwrap(),
        2,
        "no new dead letters"
    );
    assert_eq!(d.health.snapshot().state, SinkState::Healthy);
    d.stop().await;
}

/// A batch with integer values for a field already stored as float: a
/// partial write (400 `partial write: field type conflict: … dropped=3`,
/// the other points stored). Exactly the three lines are dead-lettered with
/// the server's message; nothing is sent again afterwards.
#[tokio::test]
async fn a_field_type_conflict_with_stored_data_is_a_partial_write_and_only_the_refused_lines_are_dead_lettered(
) {
    let ix = Influx1::start().await;
    ix.create_database(DB).await;
    let ts = 1_700_000_000_000_000_000;
    let (status, body) = ix
        .write_raw(
            DB,
            &format!("sensor,probe=stored v=1.5 {}\n", ts - 1_000_000_000),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let dir = tempfile::TempDir::new().unwrap();
    let wal = open_wal(&dir);
    let ints = [3usize, 4, 29];
    let records: Vec<Record> = (0..30)
        .map(|i| {
            let v = if ints.contains(&i) {
                FieldValue::Integer(7)
            } else {
                FieldValue::Float(2.5)
            };
            sensor(i, v, ts + i as i64 * 1_000_000)
        })
        .collect();
    let mut sink = InfluxSink::new(v1(&ix.url(), DB), wal.dead_letters()).unwrap();
    let delivery = sink.deliver(&records, 1).await.unwrap();
    assert_eq!((delivery.written, delivery.dead_lettered), (27, 3));
    let got = dead(&wal);
    let want: Vec<Record> = ints.iter().map(|i| records[*i].clone()).collect();
    let mut got_records: Vec<Record> = got.iter().map(|(r, _)| r.clone()).collect();
    got_records.sort_by_key(|r| r.ts());
    assert_eq!(got_records, want);
    for (_, reason) in &got {
        assert!(
            reason.contains("partial write: field type conflict")
                && reason.contains("already exists as type float"),
            "{reason}"
        );
    }
    assert_eq!(ix.count(DB, None, "sensor").await, 1 + 27);
}

/// Points outside the retention policy's window (a policy of 1 h, points
/// from last year): `partial write: points beyond retention policy
/// dropped=N`. The old lines are dead-lettered with that reason, the recent
/// ones are stored in the policy.
#[tokio::test]
async fn points_beyond_the_retention_policy_are_dead_lettered_and_the_rest_stored() {
    let ix = Influx1::start().await;
    ix.create_database(DB).await;
    ix.query(
        DB,
        &format!("CREATE RETENTION POLICY \"hour\" ON \"{DB}\" DURATION 1h REPLICATION 1"),
    )
    .await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = open_wal(&dir);
    let now = now_ns();
    let last_year = now - 365 * 24 * 3600 * 1_000_000_000;
    let old = [0u64, 7, 8];
    let records: Vec<Record> = (0..20)
        .map(|i| {
            let ts = if old.contains(&i) {
                last_year + i as i64
            } else {
                now - 60_000_000_000 + i as i64 * 1_000_000
            };
            trade(i, ts)
        })
        .collect();
    let mut c = v1(&ix.url(), DB);
    c.retention_policy = Some("hour".into());
    let mut sink = InfluxSink::new(c, wal.dead_letters()).unwrap();
    let delivery = sink.deliver(&records, 1).await.unwrap();
    assert_eq!((delivery.written, delivery.dead_lettered), (17, 3));
    let got = dead(&wal);
    let mut got_ts: Vec<i64> = got.iter().map(|(r, _)| r.ts()).collect();
    got_ts.sort();
    assert_eq!(
        got_ts,
        old.iter()
            .map(|i| last_year + *i as i64)
            .collect::<Vec<_>>()
    );
    for (_, reason) in &got {
        assert!(
            reason.contains("points beyond retention policy"),
            "{reason}"
        );
    }
    assert_eq!(ix.count(DB, Some("hour"), "trades").await, 17);
    assert_eq!(
        ix.count(DB, Some("autogen"), "trades").await,
        0,
        "written to the named policy only"
    );
}

/// `auth-enabled = true` and a wrong password: 401, configuration class;
/// nothing dead-lettered or acknowledged, the password in no error. A relay
/// restarted with the right credentials delivers everything.
#[tokio::test]
async fn wrong_credentials_are_configuration_and_delivery_resumes_with_the_right_ones() {
    let ix = Influx1::start_auth("admin", "right-password").await;
    ix.create_database(DB).await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = open_wal(&dir);
    let records: Vec<Record> = (0..10)
        .map(|i| trade(i, 1_700_000_000_000_000_000 + i as i64 * 1_000_000))
        .collect();
    wal.append(&records).unwrap();
    let mut c = v1(&ix.url(), DB);
    c.username = Some("admin".into());
    c.password = Some(Secret::new("wrong-password-x9"));
    let d = start_drainer(
        &wal,
        InfluxSink::new(c.clone(), wal.dead_letters()).unwrap(),
    );
    wait_until("sink unhealthy", 10, || {
        d.health.snapshot().state == SinkState::Unhealthy
    })
    .await;
    let err = d.health.snapshot().last_error.unwrap();
    assert!(
        err.contains("401") && err.contains("authorization failed"),
        "{err}"
    );
    assert!(
        !err.contains("wrong-password-x9"),
        "the password leaked: {err}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        wal.dead_letters().count(None).unwrap(),
        0,
        "nothing dead-lettered"
    );
    assert_eq!(
        wal.backlog("influx").unwrap().records,
        10,
        "nothing acknowledged"
    );
    d.stop().await;
    // Restart with the right credentials.
    c.password = Some(Secret::new("right-password"));
    let d = start_drainer(&wal, InfluxSink::new(c, wal.dead_letters()).unwrap());
    wait_until("delivered", 20, || {
        wal.backlog("influx").unwrap().records == 0
    })
    .await;
    assert_eq!(ix.count(DB, None, "trades").await, 10);
    assert_eq!(wal.dead_letters().count(None).unwrap(), 0);
    d.stop().await;
}

/// The database dropped while the relay runs: 404 `database not found`,
/// configuration class, nothing dead-lettered; once it exists again
/// everything pending is delivered.
#[tokio::test]
async fn a_dropped_database_is_configuration_until_it_exists_again() {
    let ix = Influx1::start().await;
    ix.create_database(DB).await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = open_wal(&dir);
    let d = start_drainer(
        &wal,
        InfluxSink::new(v1(&ix.url(), DB), wal.dead_letters()).unwrap(),
    );
    let ts = 1_700_000_000_000_000_000;
    let first: Vec<Record> = (0..10)
        .map(|i| trade(i, ts + i as i64 * 1_000_000))
        .collect();
    wal.append(&first).unwrap();
    wait_until("first batch", 20, || {
        wal.backlog("influx").unwrap().records == 0
    })
    .await;
    assert_eq!(ix.count(DB, None, "trades").await, 10);
    ix.drop_database(DB).await;
    let pending: Vec<Record> = (10..250)
        .map(|i| trade(i, ts + i as i64 * 1_000_000))
        .collect();
    wal.append(&pending).unwrap();
    wait_until("sink unhealthy", 10, || {
        d.health.snapshot().state == SinkState::Unhealthy
    })
    .await;
    let err = d.health.snapshot().last_error.unwrap();
    assert!(err.contains("database not found"), "{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        wal.dead_letters().count(None).unwrap(),
        0,
        "nothing dead-lettered"
    );
    assert_eq!(
        wal.backlog("influx").unwrap().records,
        240,
        "nothing acknowledged"
    );
    ix.create_database(DB).await;
    wait_until("pending delivered", 20, || {
        wal.backlog("influx").unwrap().records == 0
    })
    .await;
    assert_eq!(ix.count(DB, None, "trades").await, 240);
    assert_eq!(d.health.snapshot().state, SinkState::Healthy);
    d.stop().await;
}

/// What InfluxDB must hold for `r`: (measurement, ts, column → value),
/// derived from the record's fields independently of the encoder.
fn expected(r: &Record) -> (String, i64, Columns) {
    use serde_json::json;
    let s = |v: &str| json!(v);
    let (m, cols): (&str, Vec<(&str, serde_json::Value)>) = match r {
        Record::Trade(t) => (
            "trades",
            vec![
                ("symbol", s(&t.symbol)),
                ("exchange", s(&t.venue)),
                ("side", s(&t.side)),
                ("price", json!(t.price)),
                ("quantity", json!(t.quantity)),
            ],
        ),
        Record::OrderBookTop(t) => (
            "orderbook",
            vec![
                ("symbol", s(&t.symbol)),
                ("exchange", s(&t.venue)),
                ("bid_price", json!(t.bid_price)),
                ("bid_qty", json!(t.bid_qty)),
                ("ask_price", json!(t.ask_price)),
                ("ask_qty", json!(t.ask_qty)),
                ("spread", json!(t.ask_price - t.bid_price)),
                ("mid_price", json!((t.ask_price + t.bid_price) / 2.0)),
                ("imbalance", json!(t.bid_qty / (t.bid_qty + t.ask_qty))),
            ],
        ),
        Record::Funding(t) => (
            "funding_rate",
            vec![
                ("symbol", s(&t.symbol)),
                ("exchange", s(&t.venue)),
                ("rate", json!(t.rate)),
                ("mark_price", json!(t.mark_price)),
                ("index_price", json!(t.index_price)),
                ("next_funding_time", json!(t.next_funding_time)),
            ],
        ),
        Record::Liquidation(t) => (
            "liquidation",
            vec![
                ("symbol", s(&t.symbol)),
                ("exchange", s(&t.venue)),
                ("side", s(&t.side)),
                ("price", json!(t.price)),
                ("quantity", json!(t.quantity)),
            ],
        ),
        Record::OpenInterest(t) => (
            "open_interest",
            vec![
                ("symbol", s(&t.symbol)),
                ("exchange", s(&t.venue)),
                ("open_interest", json!(t.open_interest)),
                ("open_interest_value", json!(t.open_interest_value)),
            ],
        ),
        Record::OptionsTicker(t) => (
            "options_ticker",
            vec![
                ("symbol", s(&t.symbol)),
                ("exchange", s(&t.venue)),
                ("open_interest", json!(t.open_interest)),
                ("mark_iv", json!(t.mark_iv)),
                ("best_bid_price", json!(t.best_bid_price)),
                ("best_ask_price", json!(t.best_ask_price)),
                ("mark_price", json!(t.mark_price)),
                ("underlying_price", json!(t.underlying_price)),
                ("last_price", json!(t.last_price)),
                ("bid_iv", json!(t.bid_iv)),
                ("ask_iv", json!(t.ask_iv)),
            ],
        ),
        Record::PriceIndex(t) => (
            "price_index",
            vec![
                ("index_name", s(&t.index_name)),
                ("exchange", s(&t.venue)),
                ("price", json!(t.price)),
            ],
        ),
        Record::Point(p) => {
            let mut cols: Columns = p.tags.iter().map(|(k, v)| (k.clone(), s(v))).collect();
            for (k, v) in &p.fields {
                cols.insert(
                    k.clone(),
                    match v {
                        FieldValue::Float(f) => json!(f),
                        FieldValue::Integer(i) => json!(i),
                        FieldValue::Unsigned(u) => json!(u),
                        FieldValue::Boolean(b) => json!(b),
                        FieldValue::String(s) => json!(s),
                    },
                );
            }
            return (p.measurement.clone(), r.ts(), cols);
        }
        other => panic!("no Influx measurement for {other:?}"),
    };
    (
        m.to_string(),
        r.ts(),
        cols.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    )
}

/// Numbers compared as f64 (InfluxDB's JSON prints 120.0 as 120).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The seven measurements and a generic point (tags with a space and a
/// comma, a string field with quotes and backslashes (one at its end), a measurement name
/// with a space and a comma) read back column by column through InfluxQL;
/// a replay of the same records (a forced redelivery) overwrites the points:
/// `count(*)` stays the number of records sent.
#[tokio::test]
async fn every_measurement_and_escaping_round_trip_and_a_replay_overwrites() {
    let ix = Influx1::start().await;
    ix.create_database(DB).await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = open_wal(&dir);
    let mut records = fixtures();
    records.push(Record::Point(Point {
        measurement: "odd name,m".into(),
        tags: BTreeMap::from([("k=1 x".to_string(), "v,2 =y".to_string())]),
        fields: BTreeMap::from([
            (
                "s".to_string(),
                FieldValue::String(r#"say "hi" \ back \\ and end\"#.into()),
            ),
            ("f x".to_string(), FieldValue::Float(-0.25)),
        ]),
        ts: 1_700_000_000_131_000_000,
    }));
    let mut sink = InfluxSink::new(v1(&ix.url(), DB), wal.dead_letters()).unwrap();
    let d = sink.deliver(&records, 1).await.unwrap();
    assert_eq!((d.written, d.dead_lettered), (records.len(), 0));
    let mut by_measurement: BTreeMap<String, Vec<(i64, Columns)>> = BTreeMap::new();
    for r in &records {
        let (m, ts, cols) = expected(r);
        by_measurement.entry(m).or_default().push((ts, cols));
    }
    assert_eq!(
        by_measurement.len(),
        9,
        "seven measurements, the fixture point, the odd one"
    );
    for (m, want) in &by_measurement {
        let got = ix.rows(DB, m).await;
        assert_eq!(got.len(), want.len(), "{m}: {got:?}");
        for ((gt, gcols), (wt, wcols)) in got.iter().zip(want) {
            assert_eq!(gt, wt, "{m}: timestamp to the nanosecond");
            assert_eq!(
                gcols.keys().collect::<Vec<_>>(),
                wcols.keys().collect::<Vec<_>>(),
                "{m}: columns"
            );
            for (k, v) in wcols {
                assert!(same(&gcols[k], v), "{m}.{k}: got {} want {v}", gcols[k]);
            }
        }
    }
    let shown = ix.query(DB, "SHOW MEASUREMENTS").await;
    let names: BTreeSet<String> = shown["results"][0]["series"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        by_measurement.keys().cloned().collect::<BTreeSet<_>>(),
        "no other measurement"
    );
    // Forced redelivery: the same batch three more times.
    for _ in 0..3 {
        sink.deliver(&records, 2).await.unwrap();
    }
    for (m, want) in &by_measurement {
        assert_eq!(
            ix.count(DB, None, m).await,
            want.len() as u64,
            "{m} after replays"
        );
    }
}

/// Fifty trades of one millisecond get distinct identity timestamps, all
/// fifty are stored (with 1000 more), and a full redelivery of the same
/// records through the pipelined drainer (`drain.pipeline` 4), compressed
/// this time, leaves `count(*)` at the number of records: overwritten, not
/// duplicated.
#[tokio::test]
async fn identity_timestamps_make_a_pipelined_redelivery_overwrite() {
    let ix = Influx1::start().await;
    ix.create_database(DB).await;
    let ms = 1_700_000_000_555_000_000;
    let mut records: Vec<Record> = (0..50).map(|i| trade(i, ms)).collect();
    assign_identity_timestamps(&mut records);
    let mut more: Vec<Record> = (50..1050)
        .map(|i| trade(i, ms + 1_000_000_000 + i as i64 * 1_000))
        .collect();
    assign_identity_timestamps(&mut more);
    records.extend(more);
    for round in 0..2 {
        // A fresh log each round: the second round is a full redelivery,
        // gzip-compressed (InfluxDB 1.x takes Content-Encoding: gzip).
        let dir = tempfile::TempDir::new().unwrap();
        let wal = open_wal(&dir);
        for chunk in records.chunks(100) {
            wal.append(chunk).unwrap();
        }
        let mut c = v1(&ix.url(), DB);
        c.gzip = round == 1;
        let d = start_drainer(&wal, InfluxSink::new(c, wal.dead_letters()).unwrap());
        wait_until("drained", 30, || {
            wal.backlog("influx").unwrap().records == 0
        })
        .await;
        d.stop().await;
        assert_eq!(
            ix.count(DB, None, "trades").await,
            records.len() as u64,
            "round {round}: every record once"
        );
        assert_eq!(
            wal.dead_letters().count(None).unwrap(),
            0,
            "round {round}: every record written"
        );
    }
}

/// A retention policy that does not exist: InfluxDB 1.6 answers 500
/// `retention policy not found`, which is configuration (not a transient
/// server fault, not the data): unhealthy, nothing dead-lettered; once the
/// policy is created everything is delivered into it.
#[tokio::test]
async fn a_missing_retention_policy_is_configuration_until_it_exists() {
    let ix = Influx1::start().await;
    ix.create_database(DB).await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = open_wal(&dir);
    let records: Vec<Record> = (0..30)
        .map(|i| trade(i, 1_700_000_000_000_000_000 + i as i64 * 1_000_000))
        .collect();
    wal.append(&records).unwrap();
    let mut c = v1(&ix.url(), DB);
    c.retention_policy = Some("forever".into());
    let d = start_drainer(&wal, InfluxSink::new(c, wal.dead_letters()).unwrap());
    wait_until("sink unhealthy", 10, || {
        d.health.snapshot().state == SinkState::Unhealthy
    })
    .await;
    let err = d.health.snapshot().last_error.unwrap();
    assert!(err.contains("retention policy not found"), "{err}");
    assert_eq!(wal.dead_letters().count(None).unwrap(), 0);
    assert_eq!(wal.backlog("influx").unwrap().records, 30);
    ix.query(
        DB,
        &format!("CREATE RETENTION POLICY \"forever\" ON \"{DB}\" DURATION INF REPLICATION 1"),
    )
    .await;
    wait_until("delivered", 20, || {
        wal.backlog("influx").unwrap().records == 0
    })
    .await;
    assert_eq!(ix.count(DB, Some("forever"), "trades").await, 30);
    d.stop().await;
}

/// `walrelay check` and `walrelay init` with `api = "v1"`, on a server with
/// authentication: check pings and names the missing database and retention
/// policy; init creates the databases (default and routed) and reports the
/// policy it does not create; afterwards check passes. Wrong credentials
/// fail check by name, without the password.
#[tokio::test]
async fn check_and_init_ping_find_and_create_databases() {
    use walrelay::preflight::Verdict;
    let ix = Influx1::start_auth("admin", "right-password").await;
    let dir = tempfile::TempDir::new().unwrap();
    let conf = dir.path().join("walrelay.toml");
    let write_conf = |password: &str| {
        std::fs::write(
            &conf,
            format!(
                "[wal]\ndir = \"{}\"\n\n[influx]\nurl = \"{}\"\napi = \"v1\"\ndatabase = \"{DB}\"\nretention_policy = \"hour\"\nusername = \"admin\"\npassword = \"{password}\"\n\n[influx.routes.OKX]\nbucket = \"okx\"\n",
                dir.path().join("wal").display(),
                ix.url()
            ),
        )
        .unwrap();
    };
    let checks = |conf: &std::path::Path| {
        let config = walrelay::config::Config::load(conf).unwrap();
        async move { walrelay::preflight::run_checks(&config).await }
    };
    write_conf("right-password");
    let got = checks(&conf).await;
    let find = |got: &[walrelay::preflight::Check], name: &str, detail: &str| {
        got.iter()
            .find(|c| c.name == name && c.detail.contains(detail))
            .unwrap_or_else(|| panic!("no {name} naming {detail}: {got:?}"))
            .clone()
    };
    let ping = find(&got, "influx ping", "InfluxDB 1.6");
    assert_eq!(ping.verdict, Verdict::Ok);
    assert_eq!(
        find(&got, "influx database exists", "no database \"market\"").verdict,
        Verdict::Fail
    );
    assert_eq!(
        find(&got, "influx database exists", "no database \"okx\"").verdict,
        Verdict::Fail
    );
    assert_eq!(
        find(&got, "influx bucket writable", "database not found").verdict,
        Verdict::Fail
    );

    let init = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .args(["init", "--config", conf.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = init();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("influx database market") && text.contains("created"),
        "{text}"
    );
    assert!(text.contains("influx database okx"), "{text}");
    assert!(
        text.contains("retention policy hour on market") && text.contains("no retention policy"),
        "{text}"
    );
    assert!(!out.status.success(), "a missing policy fails init: {text}");
    let v = ix.query("", "SHOW DATABASES").await;
    let dbs = v["results"][0]["series"][0]["values"].to_string();
    assert!(
        dbs.contains("\"market\"") && dbs.contains("\"okx\""),
        "{dbs}"
    );

    ix.query(
        DB,
        &format!("CREATE RETENTION POLICY \"hour\" ON \"{DB}\" DURATION 1h REPLICATION 1"),
    )
    .await;
    let out = init();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("influx database market (") && text.contains("): exists"),
        "{text}"
    );
    let got = checks(&conf).await;
    for c in got.iter().filter(|c| c.name.starts_with("influx")) {
        assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
    }

    write_conf("wrong-password-x9");
    let got = checks(&conf).await;
    let w = find(&got, "influx bucket writable", "401");
    assert_eq!(w.verdict, Verdict::Fail);
    assert!(
        format!("{got:?}").contains("authorization failed"),
        "{got:?}"
    );
    assert!(
        !format!("{got:?}").contains("wrong-password-x9"),
        "the password leaked"
    );
}

/// A user without the write privilege: 403 (`… not authorized to write to
/// database …`), configuration class, nothing dead-lettered; once the
/// privilege is granted the running relay delivers everything by itself.
#[tokio::test]
async fn a_user_without_write_privilege_is_configuration_until_granted() {
    let ix = Influx1::start_auth("admin", "right-password").await;
    ix.create_database(DB).await;
    ix.query("", "CREATE USER \"writer\" WITH PASSWORD 'writer-password'")
        .await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = open_wal(&dir);
    let records: Vec<Record> = (0..25)
        .map(|i| trade(i, 1_700_000_000_000_000_000 + i as i64 * 1_000_000))
        .collect();
    wal.append(&records).unwrap();
    let mut c = v1(&ix.url(), DB);
    c.username = Some("writer".into());
    c.password = Some(Secret::new("writer-password"));
    let d = start_drainer(&wal, InfluxSink::new(c, wal.dead_letters()).unwrap());
    wait_until("sink unhealthy", 10, || {
        d.health.snapshot().state == SinkState::Unhealthy
    })
    .await;
    let err = d.health.snapshot().last_error.unwrap();
    assert!(
        err.contains("403") && err.contains("not authorized"),
        "{err}"
    );
    println!("influxdb 1.6 answer: {err}");
    assert_eq!(wal.dead_letters().count(None).unwrap(), 0);
    assert_eq!(wal.backlog("influx").unwrap().records, 25);
    ix.query("", &format!("GRANT WRITE ON \"{DB}\" TO \"writer\""))
        .await;
    wait_until("delivered after the grant", 20, || {
        wal.backlog("influx").unwrap().records == 0
    })
    .await;
    assert_eq!(ix.count(DB, None, "trades").await, 25);
    d.stop().await;
}

/// Under `api = "v1"` a route's bucket is `"database"` or
/// `"database/retention_policy"`: OKX trades go to database `okx`, policy
/// `long`; other OKX records to `okx`'s default policy; the rest to the
/// default database.
#[tokio::test]
async fn routes_name_a_database_and_a_retention_policy() {
    let ix = Influx1::start().await;
    for db in [DB, "okx"] {
        ix.create_database(db).await;
    }
    ix.query(
        "okx",
        "CREATE RETENTION POLICY \"long\" ON \"okx\" DURATION 100000h REPLICATION 1",
    )
    .await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = open_wal(&dir);
    let mut c = v1(&ix.url(), DB);
    let dest = |bucket: &str| walrelay::db::influx::Destination {
        bucket: bucket.into(),
        org: None,
        url: None,
    };
    c.routes.insert("OKX".into(), dest("okx"));
    c.routes.insert("OKX:TRADE".into(), dest("okx/long"));
    let ts = 1_700_000_000_000_000_000;
    let mut okx_trade = trade(1, ts);
    let mut okx_liquidation: Record = serde_json::from_str(&format!(
        r#"{{"type":"liquidation","venue":"OKX","symbol":"SOLUSDT","ts":{ts},"side":"sell","price":55.125,"quantity":120.0}}"#
    ))
    .unwrap();
    if let Record::Trade(t) = &mut okx_trade {
        t.venue = "OKX".into();
    }
    if let Record::Liquidation(l) = &mut okx_liquidation {
        l.ts = ts + 1;
    }
    let binance_trade = trade(2, ts + 2);
    let mut sink = InfluxSink::new(c, wal.dead_letters()).unwrap();
    let d = sink
        .deliver(&[okx_trade, okx_liquidation, binance_trade], 1)
        .await
        .unwrap();
    assert_eq!((d.written, d.dead_lettered), (3, 0));
    assert_eq!(ix.count("okx", Some("long"), "trades").await, 1);
    assert_eq!(ix.count("okx", Some("autogen"), "trades").await, 0);
    assert_eq!(ix.count("okx", Some("autogen"), "liquidation").await, 1);
    assert_eq!(ix.count(DB, None, "trades").await, 1);
    assert_eq!(ix.count(DB, None, "liquidation").await, 0);
}
