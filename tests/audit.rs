//! Retention, audit and rewind on real servers: TimescaleDB (hypertables)
//! and InfluxDB 1.6 (`api = "v1"`), with the `walrelay` binary itself.
//!
//! An hour of synthetic records (event times one hour long; trades to
//! InfluxDB, one-minute klines to TimescaleDB) is delivered with
//! `[wal] retain` on; then a window of rows and points is deleted the way a
//! restore from an older backup loses them; `walrelay audit` must name
//! exactly those minutes and series (exit 1), `--repair` must fill them, a
//! second audit must be clean (exit 0), and the databases must hold exactly
//! what was accepted, no duplicates. A SIGKILLed rewind re-run gives the
//! same result. Retention off: exit 2.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::influx1::Influx1;
use common::pg::Pg;
use common::retained::{kline_rows, walrelay, Retaining};

/// This file's relay config (`common::retained`).
fn write_config(dir: &Path, port: u16, influx_url: &str, pg_url: &str, retain: &str) -> PathBuf {
    Retaining {
        port,
        token: TOKEN,
        retain,
        influx_url,
        database: "audit",
        pg_url,
        batch_records: 200,
    }
    .write(dir)
}

/// 2025-11-24T16:00:00Z, a minute boundary.
const T0: i64 = 1_764_000_000_000_000_000;
const MIN: i64 = 60_000_000_000;
const SYMBOLS: [&str; 2] = ["BTCUSDT", "ETHUSDT"];
const TRADES_PER_MINUTE: i64 = 20;

fn trades_json() -> Vec<String> {
    let mut out = Vec::new();
    for m in 0..60 {
        for s in SYMBOLS {
            for i in 0..TRADES_PER_MINUTE {
                out.push(format!(
                    r#"{{"type":"trade","venue":"BINANCE","symbol":"{s}","ts":{},"price":97000.5,"quantity":0.25,"side":"buy","trade_id":"{m}-{i}"}}"#,
                    T0 + m * MIN + i * 1_000_000_000 + 7
                ));
            }
            out.push(format!(
                r#"{{"type":"kline","venue":"OKX","symbol":"{s}","interval":"1m","ts":{},"open":1.0,"high":2.0,"low":0.5,"close":1.5,"volume":3.0}}"#,
                T0 + m * MIN
            ));
        }
    }
    out
}

const TOKEN: &str = "admin-test-token";

async fn wait_drained(url: &str) {
    let c = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = c.get(format!("{url}/status")).send().await {
            if let Ok(s) = r.json::<serde_json::Value>().await {
                if common::http::drained(&s) && s["log"]["retained"]["records"].as_u64().is_some() {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("relay at {url} did not drain");
}

async fn deliver_hour(conf: &Path, port: u16) -> serde_json::Value {
    let (mut relay, status) = start_and_deliver(conf, port).await;
    unsafe { libc::kill(relay.id() as i32, libc::SIGTERM) };
    assert!(relay.wait().unwrap().success());
    status
}

async fn start_and_deliver(conf: &Path, port: u16) -> (std::process::Child, serde_json::Value) {
    let url = format!("http://127.0.0.1:{port}");
    let relay = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["run", "--config", conf.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for _ in 0..200 {
        if c.get(format!("{url}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for chunk in trades_json().chunks(500) {
        let r = c
            .post(format!("{url}/v1/records"))
            .header("Authorization", format!("Token {TOKEN}"))
            .body(chunk.join("\n"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }
    wait_drained(&url).await;
    let status: serde_json::Value = c
        .get(format!("{url}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (relay, status)
}

const ACCEPTED_TRADES: u64 = 60 * 2 * TRADES_PER_MINUTE as u64;
const ACCEPTED_KLINES: i64 = 60 * 2;

/// The differences of an `audit --json` output: (minute, sink, target,
/// symbol, accepted, stored).
fn differences(json: &str) -> BTreeSet<(String, String, String, String, u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["minute"].as_str().unwrap().to_string(),
                d["sink"].as_str().unwrap().to_string(),
                d["target"].as_str().unwrap().to_string(),
                d["symbol"].as_str().unwrap().to_string(),
                d["accepted"].as_u64().unwrap(),
                d["stored"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn minute(m: i64) -> String {
    chrono_free_rfc3339(T0 + m * MIN)
}

/// RFC 3339 of a minute after T0 without a date library: T0 is
/// 2025-11-24T16:00:00Z and the test stays within the same day.
fn chrono_free_rfc3339(ns: i64) -> String {
    let mins = (ns - T0) / MIN;
    format!("2025-11-24T{:02}:{:02}:00Z", 16 + mins / 60, mins % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_names_exactly_the_deleted_minutes_repair_fills_them_and_a_second_audit_is_clean() {
    let pg = Pg::start();
    if !pg.timescale() {
        eprintln!("TimescaleDB is not installed; the hypertable variant needs it");
    }
    let pg_url = pg.create_db("audit").await;
    let ix = Influx1::start().await;
    ix.create_database("audit").await;
    let dir = tempfile::TempDir::new().unwrap();
    let port = common::vm::free_port();
    let conf = write_config(dir.path(), port, &ix.url(), &pg_url, "6h");
    let status = deliver_hour(&conf, port).await;
    let retained = &status["log"]["retained"];
    assert_eq!(
        retained["records"].as_u64().unwrap(),
        ACCEPTED_TRADES + ACCEPTED_KLINES as u64,
        "{status}"
    );
    assert_eq!(retained["oldest_event_ns"].as_i64(), Some(T0));
    if pg.timescale() {
        assert!(pg
            .hypertables("audit")
            .await
            .iter()
            .any(|h| h.contains("bar__kline")));
    }
    assert_eq!(ix.count("audit", None, "trades").await, ACCEPTED_TRADES);
    assert_eq!(
        kline_rows(&pg, "audit").await,
        (ACCEPTED_KLINES, ACCEPTED_KLINES)
    );

    let conf_s = conf.to_str().unwrap();
    let window = [
        "--since",
        "2025-11-24T16:00:00Z",
        "--until",
        "2025-11-24T17:00:00Z",
    ];
    let audit_args = |extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = ["audit", "--config", conf_s]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(window.iter().map(|s| s.to_string()));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |args: Vec<String>| walrelay(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Clean after delivery.
    let (code, out, err) = run(audit_args(&[]));
    assert_eq!(code, 0, "{out}{err}");

    // A restore from an older backup: minutes 20..25 of ETHUSDT trades and
    // minutes 40..43 of BTCUSDT klines are gone.
    ix.query(
        "audit",
        &format!(
            "DELETE FROM \"trades\" WHERE \"symbol\" = 'ETHUSDT' AND time >= {} AND time < {}",
            T0 + 20 * MIN,
            T0 + 25 * MIN
        ),
    )
    .await;
    let c = pg.client("audit").await;
    let deleted = c
        .execute(
            "DELETE FROM mart.bar__kline WHERE time >= to_timestamp($1::float8) AND time < to_timestamp($2::float8) \
             AND symbol_id = (SELECT symbol_id FROM mart.dim_symbol WHERE symbol = 'BTCUSDT')",
            &[&((T0 + 40 * MIN) as f64 / 1e9), &((T0 + 43 * MIN) as f64 / 1e9)],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    assert_eq!(
        ix.count("audit", None, "trades").await,
        ACCEPTED_TRADES - 5 * 20
    );

    let (code, out, err) = run(audit_args(&["--json"]));
    assert_eq!(code, 1, "{out}{err}");
    let mut expected = BTreeSet::new();
    for m in 20..25 {
        expected.insert((
            minute(m),
            "influx".into(),
            "trades".into(),
            "ETHUSDT".into(),
            20,
            0,
        ));
    }
    for m in 40..43 {
        expected.insert((
            minute(m),
            "timescale".into(),
            "bar__kline".into(),
            "BTCUSDT".into(),
            1,
            0,
        ));
    }
    assert_eq!(differences(&out), expected, "{out}");

    // Repair, then a clean audit.
    let (code, out, err) = run(audit_args(&["--repair"]));
    println!("$ walrelay audit --repair ...\n{out}{err}(exit {code})");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("repair: sink influx re-delivered 100 records"),
        "{out}"
    );
    assert!(
        out.contains("repair: sink timescale re-delivered 3 records"),
        "{out}"
    );
    let (code, out, err) = run(audit_args(&[]));
    println!("$ walrelay audit ...\n{out}{err}(exit {code})");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(ix.count("audit", None, "trades").await, ACCEPTED_TRADES);
    assert_eq!(
        kline_rows(&pg, "audit").await,
        (ACCEPTED_KLINES, ACCEPTED_KLINES)
    );

    // A rewind over data already in the databases adds no row and no point.
    let (code, out, err) = walrelay(&[
        "rewind",
        "--config",
        conf_s,
        "--sink",
        "influx",
        "--since",
        "2025-11-24T16:00:00Z",
        "--until",
        "2025-11-24T17:00:00Z",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("re-delivered {ACCEPTED_TRADES} records")),
        "{out}"
    );
    let (code, out, err) = walrelay(&[
        "rewind",
        "--config",
        conf_s,
        "--sink",
        "timescale",
        "--since",
        "-1000d",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(ix.count("audit", None, "trades").await, ACCEPTED_TRADES);
    assert_eq!(
        kline_rows(&pg, "audit").await,
        (ACCEPTED_KLINES, ACCEPTED_KLINES)
    );

    // SIGKILL during a rewind (InfluxDB stopped, so it is stuck retrying),
    // then the same rewind again: the same result.
    ix.query("audit", "DELETE FROM \"trades\"").await;
    let mut ix = ix;
    ix.stop();
    let mut child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args([
            "rewind",
            "--config",
            conf_s,
            "--sink",
            "influx",
            "--since",
            "2025-11-24T16:00:00Z",
            "--until",
            "2025-11-24T17:00:00Z",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    ix.resume().await;
    tokio::time::sleep(Duration::from_millis(rand_ms())).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (code, out, err) = walrelay(&[
        "rewind",
        "--config",
        conf_s,
        "--sink",
        "influx",
        "--since",
        "2025-11-24T16:00:00Z",
        "--until",
        "2025-11-24T17:00:00Z",
    ]);
    println!("after SIGKILL: {out}");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(ix.count("audit", None, "trades").await, ACCEPTED_TRADES);
    let (code, out, err) = run(audit_args(&[]));
    assert_eq!(code, 0, "{out}{err}");

    // Retention off: nothing counted, the audit cannot tell (exit 2).
    let dir2 = tempfile::TempDir::new().unwrap();
    let conf2 = write_config(
        dir2.path(),
        common::vm::free_port(),
        &ix.url(),
        &pg_url,
        "off",
    );
    std::fs::create_dir_all(dir2.path().join("wal")).unwrap();
    let (code, out, err) = walrelay(&[
        "audit",
        "--config",
        conf2.to_str().unwrap(),
        "--since",
        "-1h",
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("past retention"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rewind_refills_a_sink_on_a_running_relay_beside_its_drain_without_moving_the_other()
{
    let pg = Pg::start();
    let pg_url = pg.create_db("audit").await;
    let ix = Influx1::start().await;
    ix.create_database("audit").await;
    let dir = tempfile::TempDir::new().unwrap();
    let port = common::vm::free_port();
    let conf = write_config(dir.path(), port, &ix.url(), &pg_url, "6h");
    let (mut relay, before) = start_and_deliver(&conf, port).await;
    let url = format!("http://127.0.0.1:{port}");
    ix.query(
        "audit",
        &format!(
            "DELETE FROM \"trades\" WHERE time >= {} AND time < {}",
            T0 + 10 * MIN,
            T0 + 30 * MIN
        ),
    )
    .await;
    assert_eq!(
        ix.count("audit", None, "trades").await,
        ACCEPTED_TRADES - 20 * 2 * 20
    );
    let c = reqwest::Client::new();
    let endpoint = format!(
        "{url}/admin/rewind?sink=influx&since=2025-11-24T16:10:00Z&until=2025-11-24T16:30:00Z"
    );
    // Authenticated: no token, a wrong one: refused, nothing started.
    let r = c.post(&endpoint).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&endpoint)
        .header("Authorization", "Token wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&endpoint)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    // Normal ingest goes on meanwhile.
    let extra = r#"{"type":"trade","venue":"BINANCE","symbol":"BTCUSDT","ts":1764003600000000007,"price":1.5,"quantity":1.0,"side":"sell","trade_id":"late"}"#;
    let r = c
        .post(format!("{url}/v1/records"))
        .header("Authorization", format!("Token {TOKEN}"))
        .body(extra)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let mut done = serde_json::Value::Null;
    for _ in 0..300 {
        let s: serde_json::Value = c
            .get(format!("{url}/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["rewinds"]["influx"]["done"] == true && common::http::drained(&s) {
            done = s;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["rewinds"]["influx"]["records"], 20 * 2 * 20, "{done}");
    let delivered = |s: &serde_json::Value, sink: &str| {
        s["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == sink)
            .unwrap()["delivered_records"]
            .as_u64()
            .unwrap()
    };
    // The other sink delivered nothing more (its cursor only passes the late
    // trade's frame, which holds nothing for it); influx took the late trade.
    assert_eq!(
        delivered(&done, "timescale"),
        delivered(&before, "timescale")
    );
    assert_eq!(
        kline_rows(&pg, "audit").await,
        (ACCEPTED_KLINES, ACCEPTED_KLINES)
    );
    assert_eq!(ix.count("audit", None, "trades").await, ACCEPTED_TRADES + 1);
    let metrics = c
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("walrelay_rewind_records{sink=\"influx\"} 800"),
        "{metrics}"
    );
    let r = c.get(format!("{url}/admin/rewind")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    drop(c);
    unsafe { libc::kill(relay.id() as i32, libc::SIGTERM) };
    assert!(relay.wait().unwrap().success());
}

fn rand_ms() -> u64 {
    use rand::Rng;
    rand::thread_rng().gen_range(0..400)
}
