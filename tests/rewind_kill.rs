//! SIGKILL in the middle of a rewind and of `walrelay audit --repair`, on
//! real servers (TimescaleDB with hypertables where installed, else plain
//! PostgreSQL; InfluxDB 1.6 with `api = "v1"`) with the `walrelay` binary.
//!
//! An hour of synthetic records (trades to InfluxDB, one-minute klines to
//! TimescaleDB, one request and so one frame per minute) is delivered with
//! `[wal] retain` on; a window of points and rows is deleted the way a
//! restore from an older backup loses them. Then each refill is made slow
//! on purpose so that it is really in progress when the process is killed:
//! InfluxDB sits behind the fault-injecting proxy (`Delay`), and the kline
//! table gets a row trigger that sleeps (`pg_sleep`) per inserted row. The
//! test sees progress from the relay (status, metrics, log) and from the
//! database itself (counts growing) before it kills, and that the database
//! is still short afterwards; then the same command runs again and the
//! counts must be exact (points and rows = records accepted, no duplicate
//! key), and a plain `walrelay audit` exits 0.
//!
//! - InfluxDB: `POST /admin/rewind` on a running relay; the relay is
//!   SIGKILLed, restarted, and the same window is posted again: it must say
//!   it resumed after a frame (the progress `rewind/<sink>` in the meta tree).
//! - TimescaleDB: `walrelay rewind` on the stopped relay's log, SIGKILLed,
//!   run again: it must say "resumed after frame".
//! - `audit --repair` keeps no progress (it rewinds chosen minutes and
//!   series): killed mid-way, the next `--repair` audits again and
//!   re-delivers exactly what is still missing.
//!
//! Resuming after the last confirmed batch rests on the progress being out
//! of the process when the batch is confirmed (`wal/durability.rs`, "rewind
//! progress"); the tests check the resumed-after frame against the frames
//! the rewind had reported done before the kill (before that write-out a
//! SIGKILL lost up to a second of progress: killed with 23 frames done, it
//! resumed after frame 15).

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::influx1::Influx1;
use common::pg::Pg;
use common::proxy::{Mode, Proxy};
use common::retained::{kline_rows, walrelay, Retaining};

/// 2025-11-24T16:00:00Z, a minute boundary.
const T0: i64 = 1_764_000_000_000_000_000;
const MIN: i64 = 60_000_000_000;
const SYMBOLS: [&str; 2] = ["BTCUSDT", "ETHUSDT"];
const TRADES_PER_MINUTE: i64 = 20;
const ACCEPTED_TRADES: u64 = 60 * 2 * TRADES_PER_MINUTE as u64;
const ACCEPTED_KLINES: i64 = 60 * 2;
const TOKEN: &str = "admin-test-token";
const SINCE: &str = "2025-11-24T16:00:00Z";
const UNTIL: &str = "2025-11-24T17:00:00Z";
/// Per-row sleep of the slowing trigger, seconds.
const ROW_SLEEP_S: f64 = 0.05;
/// Per-request delay of the proxy in front of InfluxDB.
const INFLUX_DELAY: Duration = Duration::from_millis(400);

/// One request body per minute: 20 trades and one kline per symbol.
fn minutes_json() -> Vec<String> {
    (0..60)
        .map(|m| {
            let mut lines = Vec::new();
            for s in SYMBOLS {
                for i in 0..TRADES_PER_MINUTE {
                    lines.push(format!(
                        r#"{{"type":"trade","venue":"BINANCE","symbol":"{s}","ts":{},"price":97000.5,"quantity":0.25,"side":"buy","trade_id":"{m}-{i}"}}"#,
                        T0 + m * MIN + i * 1_000_000_000 + 7
                    ));
                }
                lines.push(format!(
                    r#"{{"type":"kline","venue":"OKX","symbol":"{s}","interval":"1m","ts":{},"open":1.0,"high":2.0,"low":0.5,"close":1.5,"volume":3.0}}"#,
                    T0 + m * MIN
                ));
            }
            lines.join("\n")
        })
        .collect()
}

/// `batch_records = 20`: a rewind of the hour takes many confirmed batches
/// (one per frame for InfluxDB, one per ten frames for TimescaleDB).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn spawn_relay(conf: &Path, port: u16) -> Child {
    let relay = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["run", "--config", conf.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let c = client();
    for _ in 0..400 {
        if c.get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .is_ok()
        {
            return relay;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("relay on port {port} did not start");
}

async fn status(port: u16) -> serde_json::Value {
    client()
        .get(format!("http://127.0.0.1:{port}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_drained(port: u16) -> serde_json::Value {
    for _ in 0..600 {
        let s = status(port).await;
        if common::http::drained(&s) && s["log"]["retained"]["records"].as_u64().is_some() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("relay on port {port} did not drain");
}

fn sigterm(mut relay: Child) {
    unsafe { libc::kill(relay.id() as i32, libc::SIGTERM) };
    assert!(relay.wait().unwrap().success());
}

/// Rows of the kline table and distinct keys among them.
/// A row trigger that sleeps per inserted row (`on`), or none.
async fn slow_klines(pg: &Pg, on: bool) {
    let c = pg.client("rk").await;
    if on {
        c.batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION public.rk_slow() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep({ROW_SLEEP_S}); RETURN NEW; END $$; \
             CREATE TRIGGER rk_slow BEFORE INSERT ON mart.bar__kline FOR EACH ROW EXECUTE FUNCTION public.rk_slow();"
        ))
        .await
        .unwrap();
    } else {
        c.batch_execute("DROP TRIGGER rk_slow ON mart.bar__kline")
            .await
            .unwrap();
    }
}

/// The servers, a relay's config, and the hour delivered (relay stopped).
struct Setup {
    pg: Pg,
    ix: Influx1,
    proxy: Proxy,
    conf: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn deliver_hour() -> Setup {
        let pg = Pg::start();
        if !pg.timescale() {
            eprintln!("TimescaleDB is not installed: plain PostgreSQL tables, not hypertables");
        }
        let pg_url = pg.create_db("rk").await;
        let ix = Influx1::start().await;
        ix.create_database("rk").await;
        let proxy = Proxy::start(&format!("127.0.0.1:{}", ix.port)).await;
        let dir = tempfile::TempDir::new().unwrap();
        let port = common::vm::free_port();
        let conf = Retaining {
            port,
            token: TOKEN,
            retain: "6h",
            influx_url: &proxy.url(),
            database: "rk",
            pg_url: &pg_url,
            batch_records: 20,
        }
        .write(dir.path());
        let relay = spawn_relay(&conf, port).await;
        let c = client();
        for body in minutes_json() {
            let r = c
                .post(format!("http://127.0.0.1:{port}/v1/records"))
                .header("Authorization", format!("Token {TOKEN}"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{:?}", r.text().await);
        }
        let s = wait_drained(port).await;
        assert_eq!(
            s["log"]["retained"]["records"].as_u64(),
            Some(ACCEPTED_TRADES + ACCEPTED_KLINES as u64),
            "{s}"
        );
        sigterm(relay);
        if pg.timescale() {
            assert!(pg
                .hypertables("rk")
                .await
                .iter()
                .any(|h| h.contains("bar__kline")));
        }
        assert_eq!(ix.count("rk", None, "trades").await, ACCEPTED_TRADES);
        assert_eq!(
            kline_rows(&pg, "rk").await,
            (ACCEPTED_KLINES, ACCEPTED_KLINES)
        );
        Setup {
            pg,
            ix,
            proxy,
            conf,
            port,
            _dir: dir,
        }
    }

    /// Deletes minutes `[from, to)` of every symbol from both databases, as a
    /// restore from an older backup would; returns (points, rows) deleted.
    async fn lose_minutes(&self, from: i64, to: i64) -> (u64, i64) {
        self.ix
            .query(
                "rk",
                &format!(
                    "DELETE FROM \"trades\" WHERE time >= {} AND time < {}",
                    T0 + from * MIN,
                    T0 + to * MIN
                ),
            )
            .await;
        let c = self.pg.client("rk").await;
        let rows = c
            .execute(
                "DELETE FROM mart.bar__kline WHERE time >= to_timestamp($1::float8) AND time < to_timestamp($2::float8)",
                &[&((T0 + from * MIN) as f64 / 1e9), &((T0 + to * MIN) as f64 / 1e9)],
            )
            .await
            .unwrap();
        let points = (to - from) as u64 * 2 * TRADES_PER_MINUTE as u64;
        assert_eq!(rows as i64, (to - from) * 2);
        assert_eq!(
            self.ix.count("rk", None, "trades").await,
            ACCEPTED_TRADES - points
        );
        (points, rows as i64)
    }

    fn conf(&self) -> &str {
        self.conf.to_str().unwrap()
    }

    /// `walrelay audit` over the hour: exit code, stdout, stderr.
    fn audit(&self, extra: &[&str]) -> (i32, String, String) {
        let mut a = vec![
            "audit",
            "--config",
            self.conf(),
            "--since",
            SINCE,
            "--until",
            UNTIL,
        ];
        a.extend_from_slice(extra);
        walrelay(&a)
    }

    /// The final checks: exact counts, no duplicate key, a clean audit.
    async fn assert_exact_and_clean(&self) {
        assert_eq!(self.ix.count("rk", None, "trades").await, ACCEPTED_TRADES);
        assert_eq!(
            kline_rows(&self.pg, "rk").await,
            (ACCEPTED_KLINES, ACCEPTED_KLINES),
            "(rows, distinct keys) of bar__kline"
        );
        let (code, out, err) = self.audit(&["--json"]);
        assert_eq!(code, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["differences"].as_array().map(Vec::len), Some(0), "{out}");
    }
}

/// Polls `cond` every 50 ms for up to `secs`; panics naming `what`.
async fn until<F, Fut>(what: &str, secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 20 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The status' report of the influx rewind.
async fn influx_rewind(port: u16) -> serde_json::Value {
    status(port).await["rewinds"]["influx"].clone()
}

async fn post_rewind(port: u16) {
    let r = client()
        .post(format!(
            "http://127.0.0.1:{port}/admin/rewind?sink=influx&since={SINCE}&until={UNTIL}"
        ))
        .header("Authorization", format!("Token {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_sigkilled_midway_and_run_again_resumes_and_leaves_exact_counts() {
    let s = Setup::deliver_hour().await;
    let (points_lost, rows_lost) = s.lose_minutes(10, 50).await;

    // InfluxDB: the admin endpoint on a running relay, killed mid-rewind.
    let relay = spawn_relay(&s.conf, s.port).await;
    s.proxy.set(Mode::Delay(INFLUX_DELAY));
    post_rewind(s.port).await;
    let short = ACCEPTED_TRADES - points_lost;
    until("the influx rewind to refill some points", 30, || async {
        let r = influx_rewind(s.port).await;
        r["records"].as_u64().unwrap_or(0) > 0 && s.ix.count("rk", None, "trades").await > short
    })
    .await;
    // A few more confirmed batches, still far from the end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = influx_rewind(s.port).await;
    let metrics = client()
        .get(format!("http://127.0.0.1:{}/metrics", s.port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let left: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("walrelay_rewind_frames_left{sink=\"influx\"} "))
        .unwrap_or_else(|| panic!("no frames_left gauge: {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        r["done"] == false && left > 0,
        "not in progress: {r}, {left} frames left"
    );
    // Frames the rewind had confirmed by then (at least: more may finish
    // before the kill lands). The k-th frame of the window has a sequence
    // number >= k, so resuming after a frame below this one lost progress.
    let frames_seen = r["frames"].as_u64().unwrap();
    let mut relay = relay;
    relay.kill().unwrap(); // SIGKILL
    relay.wait().unwrap();
    println!("influx: SIGKILLed the relay during its rewind at {r} ({left} frames left)");
    // Requests the proxy still held reach InfluxDB after the kill.
    tokio::time::sleep(INFLUX_DELAY * 3).await;
    let after_kill = s.ix.count("rk", None, "trades").await;
    assert!(
        short < after_kill && after_kill < ACCEPTED_TRADES,
        "the kill was meant to interrupt the refill: {after_kill} points"
    );
    s.proxy.set(Mode::Pass);
    let relay = spawn_relay(&s.conf, s.port).await;
    post_rewind(s.port).await;
    until("the second influx rewind to finish", 60, || async {
        influx_rewind(s.port).await["done"] == true
    })
    .await;
    let r = influx_rewind(s.port).await;
    println!("influx: the rewind run again: {r}");
    assert!(
        r["resumed_after"].as_u64().is_some_and(|f| f > 0),
        "did not resume: {r}"
    );
    assert!(
        r["resumed_after"].as_u64().unwrap() >= frames_seen,
        "resumed before the last confirmed batch ({frames_seen} frames were done): {r}"
    );
    assert!(
        r["records"].as_u64().unwrap() < ACCEPTED_TRADES,
        "resumed but re-delivered the whole hour: {r}"
    );
    assert_eq!(s.ix.count("rk", None, "trades").await, ACCEPTED_TRADES);
    sigterm(relay);

    // TimescaleDB: `walrelay rewind` on the stopped relay's log, killed.
    slow_klines(&s.pg, true).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args([
            "rewind",
            "--config",
            s.conf(),
            "--sink",
            "timescale",
            "--since",
            SINCE,
            "--until",
            UNTIL,
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let progress = Arc::new(Mutex::new(Vec::<String>::new()));
    let lines = progress.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if l.contains("rewind progress") {
                lines.lock().unwrap().push(l);
            }
        }
    });
    let short = ACCEPTED_KLINES - rows_lost;
    until("the timescale rewind to refill some rows", 60, || async {
        kline_rows(&s.pg, "rk").await.0 > short
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the rewind finished before the kill"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let after_kill = kline_rows(&s.pg, "rk").await.0;
    let seen = progress.lock().unwrap().clone();
    println!(
        "timescale: SIGKILLed `walrelay rewind` with {after_kill} of {ACCEPTED_KLINES} rows, last progress: {:?}",
        seen.last()
    );
    assert!(
        short < after_kill && after_kill < ACCEPTED_KLINES,
        "the kill was meant to interrupt the refill: {after_kill} rows"
    );
    assert!(seen.len() >= 2, "no confirmed batch logged: {seen:?}");
    slow_klines(&s.pg, false).await;
    let (code, out, err) = walrelay(&[
        "rewind",
        "--config",
        s.conf(),
        "--sink",
        "timescale",
        "--since",
        SINCE,
        "--until",
        UNTIL,
    ]);
    println!("timescale: the rewind run again: {out}");
    assert_eq!(code, 0, "{out}{err}");
    let field = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| {
                v.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    let frames_seen = field(seen.last().unwrap(), "frames=");
    let resumed: u64 = out
        .split_once("resumed after frame ")
        .unwrap_or_else(|| panic!("did not resume: {out}"))
        .1
        .trim()
        .parse()
        .unwrap();
    assert!(
        resumed >= frames_seen,
        "resumed after frame {resumed}, before the last confirmed batch ({frames_seen} frames were done): {out}"
    );

    s.assert_exact_and_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_repair_sigkilled_midway_and_run_again_leaves_a_clean_audit_and_exact_counts() {
    let s = Setup::deliver_hour().await;
    let (points_lost, rows_lost) = s.lose_minutes(5, 55).await;
    let (code, out, err) = s.audit(&["--json"]);
    assert_eq!(code, 1, "{out}{err}");

    // Both sinks slow: whichever the repair does first is killed mid-way.
    s.proxy.set(Mode::Delay(INFLUX_DELAY));
    slow_klines(&s.pg, true).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args([
            "audit",
            "--config",
            s.conf(),
            "--since",
            SINCE,
            "--until",
            UNTIL,
            "--repair",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let short_points = ACCEPTED_TRADES - points_lost;
    let short_rows = ACCEPTED_KLINES - rows_lost;
    until("the repair to refill something", 60, || async {
        s.ix.count("rk", None, "trades").await > short_points
            || kline_rows(&s.pg, "rk").await.0 > short_rows
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the repair finished before the kill"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    tokio::time::sleep(INFLUX_DELAY * 3).await;
    let points = s.ix.count("rk", None, "trades").await;
    let rows = kline_rows(&s.pg, "rk").await.0;
    println!("SIGKILLed `audit --repair` with {points} points and {rows} rows");
    assert!(
        points < ACCEPTED_TRADES && rows < ACCEPTED_KLINES,
        "the kill was meant to interrupt the repair: {points} points, {rows} rows"
    );
    assert!(
        points > short_points || rows > short_rows,
        "the repair had refilled nothing"
    );
    s.proxy.set(Mode::Pass);
    slow_klines(&s.pg, false).await;

    let (code, out, err) = s.audit(&["--repair"]);
    println!("$ walrelay audit --repair (again)\n{out}{err}(exit {code})");
    assert_eq!(code, 0, "{out}{err}");
    // Exactly what was still missing, no more (a sink with nothing missing
    // is not rewound, and says nothing).
    for (sink, missing) in [
        ("influx", ACCEPTED_TRADES - points),
        ("timescale", (ACCEPTED_KLINES - rows) as u64),
    ] {
        let line = format!("repair: sink {sink} re-delivered {missing} records");
        if missing == 0 {
            assert!(!out.contains(&format!("repair: sink {sink}")), "{out}");
        } else {
            assert!(out.contains(&line), "expected {line:?}: {out}");
        }
    }
    s.assert_exact_and_clean().await;
}
