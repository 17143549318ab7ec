//! The relay as a whole (the `walrelay run` binary, release build).
//!
//! - `ingest_http/accepted`: 4 concurrent writers post line protocol (batches
//!   of 5000 trades) to `/api/v2/write`; time until every request got 204.
//! - `ingest_http/delivered`: the same, timed until both sinks (real
//!   VictoriaMetrics and PostgreSQL) have delivered everything (bars included
//!   through `/v1/records`).
//! - `startup/backlog_10m`: time from spawning the relay on a log holding 10
//!   million undelivered records (four trades to one bar, so both sinks have
//!   a backlog; both sinks down) until `/health` answers.
//!
//! - `tls_ingest/{plain,tls}/{100,1000}`: the relay with no sink (log only,
//!   default `sync` durability), twice in the same run: one plaintext
//!   listener, one `[ingest.tls]` listener (ECDSA P-256 certificate made with
//!   openssl, HTTP/1.1 keep-alive through reqwest/rustls); 4 concurrent
//!   writers post 100- or 1,000-line requests to `/api/v2/write`; time until
//!   every request got 204. The summary adds the ack latency (p50/p99/max,
//!   measured from each request's scheduled start, so a stall is not hidden)
//!   of an open-loop load at 100k records/s against each listener.
//!   `WALRELAY_BENCH_TLS_ONLY=1` runs only this group (no PostgreSQL,
//!   VictoriaMetrics or 10 M-record prefill).
//!
//! The summary also prints the relay's resident memory (VmRSS and peak VmHWM)
//! while those 10 million records are backlogged and both sinks are down,
//! and the machine-level context. Targets: RSS < 150 MiB, startup < 2 s.
//!
//! Memory in the shapes users hit (issue 23; a fresh relay at the example
//! config's defaults for each, both sinks live unless said otherwise; peak
//! and resident RSS printed per phase, sampled every 50 ms):
//! - `burst then steady`: 4 writers post 1,000-line requests as fast as
//!   they are acknowledged for 20 s, then everything is delivered, then 4
//!   writers post 100-line requests at a fixed 100 k records/s for 15 s.
//!   Goal: peak ≤ 128 MiB.
//! - `steady`: 100 k records/s in 100-line requests from a fresh start for
//!   60 s. Goal: ≤ 48 MiB.
//! - `outage then drain`: 10 M records written while VictoriaMetrics is
//!   stopped, then it comes back and the backlog drains, then 50 k
//!   records/s for 60 s. Goal: RSS within 60 s of the drain ≤ 1.25 × steady.
//!
//! `WALRELAY_BENCH_MEMORY_ONLY=1` runs only these; `WALRELAY_BENCH_SKIP_MEMORY=1`
//! skips them; `WALRELAY_BENCH_SMAPS_DIR` keeps each relay's
//! `/proc/<pid>/smaps` at the end of its scenario.
//!
//! `WALRELAY_BENCH_BIN` runs another walrelay binary (e.g. an older commit's
//! release build) in place of this build's, so two builds can be measured
//! back to back; the ingest group then also prints the ack latency of that
//! relay (100-line requests at 100 k records/s, sinks live).
//!
//! `WALRELAY_BENCH_BASELINE_BIN` runs another build beside this one in the
//! ingest group (its own log and database, the same VictoriaMetrics),
//! interleaved: each timed run on this build is followed by the same run on
//! the baseline (`ingest_http/*_baseline` in the summary), and the ack
//! latency is measured in 5 rounds of 2 s alternating between the two, so a
//! before/after comparison does not depend on which came first or on the
//! machine's drift. The summary also prints each relay's CPU per 1000
//! records over both groups (ingest and delivery), steadier between runs
//! than the rates. Example:
//! `WALRELAY_BENCH_INGEST_ONLY=1 WALRELAY_BENCH_SKIP_MEMORY=1
//! WALRELAY_BENCH_BASELINE_BIN=/path/to/old/walrelay cargo bench --bench
//! relay -- --warm-up-time 1 ingest_http`.

#[path = "../tests/common/certs.rs"]
#[allow(dead_code)]
mod certs;
mod common;
#[path = "../tests/common/http.rs"]
#[allow(dead_code)]
mod http;
#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;
#[path = "../tests/common/records.rs"]
#[allow(dead_code)]
mod records;
#[path = "../tests/common/vm.rs"]
#[allow(dead_code)]
mod vm;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{note, remark};
use criterion::{criterion_group, Criterion, Throughput};
use walrelay::record::{Bar, BarKind, Record, Trade};
use walrelay::wal::Durability;
use walrelay::{Wal, WalConfig};

/// The relay binary under test: this build's, or `WALRELAY_BENCH_BIN` (another
/// build of walrelay, e.g. an older commit's, to compare both in one session;
/// its configuration must accept the keys [`config`] writes).
fn relay_bin() -> String {
    std::env::var("WALRELAY_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_walrelay").to_string())
}

/// `WALRELAY_BENCH_WRAP` (e.g. `heaptrack -o /tmp/relay`) runs the relay of
/// the ingest group and of the memory scenarios under a profiler (the ingest
/// group's RSS line is then the wrapper's; the memory scenarios follow the
/// relay itself, see [`relay_pid`]).
fn spawn(conf: &Path, wrapped: bool) -> Child {
    spawn_bin(&relay_bin(), conf, wrapped)
}

/// `WALRELAY_BENCH_BASELINE_BIN`: another build of walrelay (e.g. an older
/// commit's) that the ingest group runs beside this one, interleaved, so
/// that throughput and ack latency before and after a change come from one
/// run.
fn baseline_bin() -> Option<String> {
    std::env::var("WALRELAY_BENCH_BASELINE_BIN").ok()
}

fn spawn_bin(bin: &str, conf: &Path, wrapped: bool) -> Child {
    let wrap = match wrapped {
        true => std::env::var("WALRELAY_BENCH_WRAP").unwrap_or_default(),
        false => String::new(),
    };
    let mut argv: Vec<&str> = wrap.split_whitespace().collect();
    argv.push(bin);
    Command::new(argv[0])
        .args(&argv[1..])
        .args(["run", "--config", conf.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_health(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(url.trim_start_matches("http://")).is_ok() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            if rt.block_on(async {
                reqwest::get(format!("{url}/health"))
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("relay did not start");
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `WALRELAY_BENCH_WAL_CACHE_BYTES` and `WALRELAY_BENCH_WAL_SEGMENT_BYTES`
/// set `wal.cache_bytes` and `wal.segment_bytes` of the relay under test, to
/// measure RSS, ingest and delivery against them in otherwise identical
/// runs; unset, the defaults apply.
fn config(dir: &Path, port: u16, influx: &str, pg: &str) -> std::path::PathBuf {
    let conf = dir.join("walrelay.toml");
    let mut cache = String::new();
    for (env, key) in [
        ("WALRELAY_BENCH_WAL_CACHE_BYTES", "cache_bytes"),
        ("WALRELAY_BENCH_WAL_SEGMENT_BYTES", "segment_bytes"),
    ] {
        if let Ok(v) = std::env::var(env) {
            cache.push_str(&format!("{key} = {v}\n"));
        }
    }
    std::fs::write(
        &conf,
        format!(
            "[wal]\n{cache}dir = \"{}\"\n[ingest]\nlisten = \"127.0.0.1:{port}\"\n[influx]\nurl = \"{influx}\"\norg = \"b\"\nbucket = \"b\"\ntimeout_ms = 2000\n[timescale]\nurl = \"{pg}\"\nconnect_timeout_ms = 1000\n",
            dir.join("wal").display()
        ),
    )
    .unwrap();
    conf
}

/// Returns once every sink's backlog is zero (polled from `/status`).
async fn drained(client: &reqwest::Client, url: &str) {
    loop {
        if http::drained(&http::get_json(client, format!("{url}/status")).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn tls_only() -> bool {
    std::env::var_os("WALRELAY_BENCH_TLS_ONLY").is_some()
}

/// Latency rounds per relay when a baseline runs beside this build.
const LATENCY_ROUNDS: usize = 5;

fn ingest(c: &mut Criterion) {
    if tls_only() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = pg::Pg::start();
    let pg_url = rt.block_on(server.create_db("bench"));
    let vmserver = rt.block_on(vm::Vm::start());
    let dir = tempfile::TempDir::new().unwrap();
    let port = vm::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let conf = config(dir.path(), port, &vmserver.url(), &pg_url);
    let mut relay = spawn(&conf, true);
    wait_health(&url);
    // The baseline relay, if any: its own log and database, the same
    // VictoriaMetrics.
    let base_dir = tempfile::TempDir::new().unwrap();
    let baseline = baseline_bin().map(|bin| {
        let port = vm::free_port();
        let pg_url = rt.block_on(server.create_db("bench_baseline"));
        let conf = config(base_dir.path(), port, &vmserver.url(), &pg_url);
        let child = spawn_bin(&bin, &conf, false);
        let url = format!("http://127.0.0.1:{port}");
        wait_health(&url);
        (child, url)
    });
    let base_url = baseline.as_ref().map(|(_, u)| u.clone());
    const WRITERS: usize = 4;
    const REQUESTS: usize = 10;
    const LINES: usize = 5000;
    const BARS: usize = 500;
    let per_iter = (WRITERS * REQUESTS * (LINES + BARS)) as u64;
    let client = reqwest::Client::new();
    let mut round = 0u64;
    // Records posted to each relay (warm-up included), for its CPU per record.
    let posted: std::cell::RefCell<std::collections::HashMap<String, u64>> = Default::default();
    let mut run = |url: &str, wait_delivery: bool| -> Duration {
        round += 1;
        *posted.borrow_mut().entry(url.to_string()).or_default() += per_iter;
        let bodies: Vec<Vec<(String, String)>> = (0..WRITERS)
            .map(|w| {
                (0..REQUESTS)
                    .map(|r| {
                        let base = 1_700_000_000_000_000_000i64 + (round as i64) * 10_000_000_000_000 + ((w * REQUESTS + r) as i64) * 100_000_000_000;
                        let lp: String = (0..LINES).map(|i| format!("trades,exchange=BINANCE,side=buy,symbol=S{} price={}.5,quantity=0.01 {}\n", i % 16, 30000 + i, base + i as i64 * 1000)).collect();
                        let bars: String = (0..BARS).map(|i| format!("{{\"type\":\"bar\",\"kind\":\"vpin\",\"venue\":\"BINANCE\",\"symbol\":\"S{}\",\"interval\":\"1s\",\"ts\":{},\"open\":1,\"high\":2,\"low\":0.5,\"close\":1.5,\"volume\":1}}\n", i % 16, base + i as i64 * 1_000_000_000)).collect();
                        (lp, bars)
                    })
                    .collect()
            })
            .collect();
        let t = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = bodies
                .into_iter()
                .map(|reqs| {
                    let client = client.clone();
                    let url = url.to_string();
                    tokio::spawn(async move {
                        for (lp, bars) in reqs {
                            let r = client
                                .post(format!("{url}/api/v2/write?bucket=b&org=b"))
                                .body(lp)
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(r.status().as_u16(), 204);
                            let r = client
                                .post(format!("{url}/v1/records"))
                                .body(bars)
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(r.status().as_u16(), 204);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            if wait_delivery {
                drained(&client, url).await;
            }
        });
        t.elapsed()
    };
    // Each relay's CPU over both groups (its ingest and its delivery, the
    // `delivered` group ending with everything delivered): per record, a
    // before/after figure steadier than throughput on a shared machine.
    let cpu_of = |child: &Child| common::cpu_time(child.id()).unwrap_or_default();
    let cpu_start: Vec<Duration> = std::iter::once(cpu_of(&relay))
        .chain(baseline.as_ref().map(|(c, _)| cpu_of(c)))
        .collect();
    let mut g = c.benchmark_group("ingest_http");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(per_iter));
    // With a baseline, each of this build's runs is followed by the same
    // run on the baseline (noted apart, not timed by criterion).
    g.bench_function("accepted", |b| {
        b.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                d += run(&url, false);
                if let Some(base) = &base_url {
                    note("ingest_http/accepted_baseline", per_iter, run(base, false));
                }
            }
            note("ingest_http/accepted", iters * per_iter, d);
            d
        })
    });
    g.bench_function("delivered", |b| {
        b.iter_custom(|iters| {
            // Not timed: what earlier calls (the `accepted` group never
            // waits) left undelivered, so that each timed run delivers
            // exactly what it posted.
            rt.block_on(drained(&client, &url));
            if let Some(base) = &base_url {
                rt.block_on(drained(&client, base));
            }
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                d += run(&url, true);
                if let Some(base) = &base_url {
                    note("ingest_http/delivered_baseline", per_iter, run(base, true));
                }
            }
            note("ingest_http/delivered", iters * per_iter, d);
            d
        })
    });
    g.finish();
    {
        let cpu_end: Vec<Duration> = std::iter::once(cpu_of(&relay))
            .chain(baseline.as_ref().map(|(c, _)| cpu_of(c)))
            .collect();
        let posted = posted.borrow();
        let urls: Vec<(&str, &String)> = std::iter::once(("this build", &url))
            .chain(base_url.as_ref().map(|u| ("baseline", u)))
            .collect();
        let parts: Vec<String> = urls
            .iter()
            .zip(cpu_start.iter().zip(&cpu_end))
            .map(|((name, u), (a, b))| {
                let n = posted.get(*u).copied().unwrap_or(0).max(1);
                format!(
                    "{name} {:.0} µs",
                    b.saturating_sub(*a).as_secs_f64() * 1e9 / n as f64
                )
            })
            .collect();
        remark(format!(
            "ingest_http relay CPU per 1000 records posted (ingest and delivery, both groups): {}",
            parts.join(", ")
        ));
    }
    // Ack latency of this relay, both sinks live, open loop at 100k records/s
    // in 100-line requests (the shape of `tls_ingest`'s latency line), so a
    // build's ingest rate and ack latency come from one run. With a
    // baseline: rounds of 2 s alternating between the two relays.
    let relays: Vec<(&str, String)> = std::iter::once(("this build", url.clone()))
        .chain(base_url.clone().map(|u| ("baseline", u)))
        .collect();
    let (rounds, secs) = match base_url {
        Some(_) => (LATENCY_ROUNDS, 2),
        None => (1, 3),
    };
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); relays.len()];
    let mut round_p50: Vec<Vec<String>> = vec![Vec::new(); relays.len()];
    for r in 0..rounds {
        for (i, (_, u)) in relays.iter().enumerate() {
            let base =
                1_900_000_000_000_000_000 + (r * relays.len() + i) as i64 * 10_000_000_000_000;
            let l = rt.block_on(ack_latency(&client, u, 100, 100_000, secs, base));
            let (p50, ..) = quantiles(l.clone());
            round_p50[i].push(format!("{:.2}", p50.as_secs_f64() * 1e3));
            lat[i].extend(l);
        }
    }
    for (i, (name, _)) in relays.iter().enumerate() {
        let (p50, p99, max, n) = quantiles(std::mem::take(&mut lat[i]));
        let rounds_note = match rounds {
            1 => String::new(),
            _ => format!("; p50 per round {}", round_p50[i].join(", ")),
        };
        remark(format!(
            "ingest_http ack latency ({name}), 100-line requests at 100k records/s for {rounds}x{secs} s, sinks live ({n} requests): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{rounds_note}",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        ));
    }
    if let Some((mut child, _)) = baseline {
        remark(format!(
            "baseline relay binary: {}",
            baseline_bin().unwrap_or_default()
        ));
        let _ = child.kill();
        let _ = child.wait();
    }
    if std::env::var_os("WALRELAY_BENCH_BIN").is_some() {
        remark(format!("relay binary under test: {}", relay_bin()));
    }
    let (rss, hwm) = rss_kib(relay.id());
    remark(format!(
        "relay RSS after the ingest runs (sinks live): {} MiB (peak {} MiB)",
        rss / 1024,
        hwm / 1024
    ));
    if std::env::var_os("WALRELAY_BENCH_WRAP").is_some() {
        // The wrapper's child is the relay: a graceful stop lets the
        // profiler write its data.
        let _ = Command::new("pkill")
            .args([
                "-TERM",
                "-f",
                &format!("{} run --config {}", relay_bin(), conf.display()),
            ])
            .status();
        let _ = relay.wait();
    }
    let _ = relay.kill();
    let _ = relay.wait();
}

/// Skipped when `WALRELAY_BENCH_INGEST_ONLY` is set (its setup writes a
/// 10 M record log even when a filter excludes it).
fn startup(c: &mut Criterion) {
    if std::env::var_os("WALRELAY_BENCH_INGEST_ONLY").is_some() || tls_only() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let records = 10_000_000u64;
    let t = Instant::now();
    {
        let wal = Wal::open(WalConfig {
            durability: Durability::Interval { interval_ms: 200 },
            ..WalConfig::new(dir.path().join("wal"))
        })
        .unwrap();
        for b in 0..records / 1000 {
            // Four trades to one bar, so both drainers have a backlog.
            let recs: Vec<Record> = (0..1000)
                .map(|i| {
                    let n = b * 1000 + i;
                    let ts = 1_700_000_000_000_000_000 + n as i64;
                    if i % 5 == 4 {
                        Record::Bar(Bar {
                            kind: BarKind::TickImbalance,
                            venue: "BINANCE_FUTURES".into(),
                            symbol: "BTCUSDT".into(),
                            interval: "tick_100".into(),
                            ts,
                            open: 37000.0,
                            high: 37010.0,
                            low: 36990.0,
                            close: 37005.0,
                            volume: 12.5,
                            buy_ticks: 60,
                            sell_ticks: 40,
                            total_ticks: 100,
                            theta: 0.5,
                        })
                    } else {
                        Record::Trade(Trade {
                            venue: "BINANCE_FUTURES".into(),
                            symbol: "BTCUSDT".into(),
                            ts,
                            price: 37000.5,
                            quantity: 0.01,
                            side: "buy".into(),
                            trade_id: n.to_string().into(),
                        })
                    }
                })
                .collect();
            wal.append(&recs).unwrap();
        }
        wal.flush().unwrap();
    }
    remark(format!(
        "prefilled {records} records in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    // Both sinks down: nothing listens on these ports.
    let (dead_influx, dead_pg) = (vm::free_port(), vm::free_port());
    let port = vm::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let conf = config(
        dir.path(),
        port,
        &format!("http://127.0.0.1:{dead_influx}"),
        &format!("postgres://postgres@127.0.0.1:{dead_pg}/x"),
    );
    let mut g = c.benchmark_group("startup");
    g.sample_size(10);
    g.bench_function("backlog_10m", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let mut relay = spawn(&conf, false);
                wait_health(&url);
                total += t.elapsed();
                let _ = relay.kill();
                let _ = relay.wait();
            }
            note("startup/backlog_10m", iters, total);
            total
        })
    });
    g.finish();
    // Resident memory while the backlog waits and both sinks fail.
    let mut relay = spawn(&conf, false);
    wait_health(&url);
    std::thread::sleep(Duration::from_secs(5));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s: serde_json::Value = rt.block_on(async {
        reqwest::get(format!("{url}/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let (rss, hwm) = rss_kib(relay.id());
    let backlog: Vec<String> = s["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| format!("{}={} ({})", k["name"], k["backlog_records"], k["state"]))
        .collect();
    remark(format!("relay RSS with a 10M-record backlog, both sinks down for 5 s: {} MiB (peak {} MiB); backlog {}", rss / 1024, hwm / 1024, backlog.join(", ")));
    let _ = relay.kill();
    let _ = relay.wait();
}

/// `lines` trades of line protocol, timestamps from `base` on.
fn trades_body(lines: usize, base: i64) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "trades,exchange=BINANCE,side=buy,symbol=S{} price={}.5,quantity=0.01 {}\n",
                i % 16,
                30000 + i,
                base + i as i64 * 1000
            )
        })
        .collect()
}

/// Posts every body of `bodies` (one vector per writer, writers concurrent,
/// each writer's requests in sequence) and asserts 204 for each.
async fn post_all(client: &reqwest::Client, url: &str, bodies: Vec<Vec<String>>) {
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|reqs| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                for body in reqs {
                    let r = client
                        .post(format!("{url}/api/v2/write?bucket=b&org=b"))
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 204);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Open loop at `rate` records/s in requests of `lines` for `secs`: the ack
/// latency of each request from its scheduled start.
async fn ack_latency(
    client: &reqwest::Client,
    url: &str,
    lines: usize,
    rate: u64,
    secs: u64,
    base: i64,
) -> Vec<Duration> {
    // Warm-up, not measured: 64 requests at once, so the client's pool
    // holds the connections an open loop needs and no handshake (TLS or
    // TCP) falls in the measured window.
    let warm: Vec<Vec<String>> = (0..64)
        .map(|k| vec![trades_body(lines, base - (k + 1) * 1_000_000_000)])
        .collect();
    post_all(client, url, warm).await;
    let per_sec = rate / lines as u64;
    let interval = Duration::from_nanos(1_000_000_000 / per_sec);
    let n = (per_sec * secs) as usize;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let due = start + interval * k as u32;
        tokio::time::sleep_until(due).await;
        let body = trades_body(lines, base + k as i64 * 1_000_000_000);
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{url}/api/v2/write?bucket=b&org=b"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 204);
            due.elapsed()
        }));
    }
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    lat
}

/// (p50, p99, max, count) of `lat`.
fn quantiles(mut lat: Vec<Duration>) -> (Duration, Duration, Duration, usize) {
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (q(0.50), q(0.99), *lat.last().unwrap(), lat.len())
}

/// Skipped when `WALRELAY_BENCH_INGEST_ONLY` is set (it measures this build's
/// binary, and its latency runs would load the machine during the ingest
/// group's).
fn tls_ingest(c: &mut Criterion) {
    if std::env::var_os("WALRELAY_BENCH_INGEST_ONLY").is_some() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let certs = certs::Certs::new();
    certs.ca("ca").leaf("ca", "server", "localhost", false);
    let dir = tempfile::TempDir::new().unwrap();
    let mut relays = Vec::new();
    let mut targets = Vec::new();
    for (name, tls) in [("plain", false), ("tls", true)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let port = vm::free_port();
        let tls_section = match tls {
            true => format!(
                "[ingest.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                certs.path("server.crt").display(),
                certs.path("server.key").display()
            ),
            false => String::new(),
        };
        let conf = d.join("walrelay.toml");
        std::fs::write(
            &conf,
            format!(
                "[wal]\ndir = \"{}\"\n[ingest]\nlisten = \"127.0.0.1:{port}\"\n{tls_section}",
                d.join("wal").display()
            ),
        )
        .unwrap();
        relays.push(spawn(&conf, false));
        let plain_url = format!("http://127.0.0.1:{port}");
        // Up: plain /health, or the TLS listener's 400 to plain HTTP.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(plain_url.trim_start_matches("http://")).is_err() {
            assert!(Instant::now() < deadline, "relay did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let client = match tls {
            true => reqwest::Client::builder()
                .add_root_certificate(
                    reqwest::Certificate::from_pem(&certs.read("ca.crt")).unwrap(),
                )
                .build()
                .unwrap(),
            false => reqwest::Client::new(),
        };
        let url = match tls {
            true => format!("https://127.0.0.1:{port}"),
            false => plain_url,
        };
        targets.push((name, url, client));
    }
    const WRITERS: usize = 4;
    let mut round = 0i64;
    let mut g = c.benchmark_group("tls_ingest");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for lines in [100usize, 1000] {
        let requests = 20_000 / lines;
        let per_iter = (WRITERS * requests * lines) as u64;
        g.throughput(Throughput::Elements(per_iter));
        for (name, url, client) in &targets {
            let id = format!("{name}/{lines}");
            g.bench_function(&id, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        round += 1;
                        let bodies: Vec<Vec<String>> = (0..WRITERS)
                            .map(|w| {
                                (0..requests)
                                    .map(|r| {
                                        let base = 1_700_000_000_000_000_000i64
                                            + round * 10_000_000_000_000
                                            + ((w * requests + r) as i64) * 1_000_000_000;
                                        trades_body(lines, base)
                                    })
                                    .collect()
                            })
                            .collect();
                        let t = Instant::now();
                        rt.block_on(post_all(client, url, bodies));
                        total += t.elapsed();
                    }
                    note(&format!("tls_ingest/{id}"), iters * per_iter, total);
                    total
                })
            });
        }
    }
    g.finish();
    // Ack latency at 100k records/s, each listener in turn, same run.
    for lines in [100usize, 1000] {
        for (name, url, client) in &targets {
            round += 1;
            let base = 1_800_000_000_000_000_000i64 + round * 10_000_000_000_000;
            let (p50, p99, max, n) =
                quantiles(rt.block_on(ack_latency(client, url, lines, 100_000, 3, base)));
            remark(format!(
                "ack latency {name:<5} {lines:>4}-line requests at 100k records/s for 3 s ({n} requests): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            ));
        }
    }
    for mut r in relays {
        let _ = r.kill();
        let _ = r.wait();
    }
}

fn report() {
    let s = common::summary();
    s.print_heading("walrelay relay summary (this run)");
    for (id, v) in s.iter() {
        if id.starts_with("startup") {
            let (starts, d) = v;
            println!(
                "{id:<24} {:>10.1} ms per start",
                d.as_secs_f64() * 1000.0 / starts as f64
            );
        } else {
            s.print_rate(id, 24, v, "records");
        }
    }
    let rate = |id: &str| {
        s.iter()
            .find(|(k, _)| *k == id)
            .map(|(_, (n, d))| n as f64 / d.as_secs_f64())
    };
    for lines in [100, 1000] {
        let plain = rate(&format!("tls_ingest/plain/{lines}"));
        let tls = rate(&format!("tls_ingest/tls/{lines}"));
        if let (Some(p), Some(t)) = (plain, tls) {
            println!(
                "tls_ingest {lines:>4}-line requests: TLS {:.0} / plaintext {:.0} records/s = {:.1} %",
                t,
                p,
                100.0 * t / p
            );
        }
    }
    s.print_remarks();
}

/// The relay's RSS sampled every 50 ms by a thread, with the maximum of the
/// current phase.
struct RssWatch {
    pid: u32,
    phase_max: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        use std::sync::atomic::Ordering;
        let phase_max = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, st) = (phase_max.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                m.fetch_max(rss_kib(pid).0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssWatch {
            pid,
            phase_max,
            stop,
        }
    }

    /// Ends a phase: its maximum RSS, the RSS now and the peak (VmHWM) so
    /// far, in MiB; remarks them under `label`.
    fn phase(&self, label: &str) -> (u64, u64, u64) {
        let max = self
            .phase_max
            .swap(0, std::sync::atomic::Ordering::Relaxed)
            .max(rss_kib(self.pid).0);
        let (now, hwm) = rss_kib(self.pid);
        let mib = |k: u64| k / 1024;
        remark(format!(
            "memory {label}: RSS max {} MiB, now {} MiB, peak (VmHWM) {} MiB",
            mib(max),
            mib(now),
            mib(hwm)
        ));
        (mib(max), mib(now), mib(hwm))
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `writers` writers post `lines`-line requests for `secs`, as fast as they
/// are acknowledged (`rate` None) or at `rate` records/s in all; returns the
/// records acknowledged. Refusals (503) are retried after 10 ms.
async fn load(
    url: &str,
    writers: usize,
    lines: usize,
    rate: Option<u64>,
    secs: f64,
    epoch: i64,
) -> u64 {
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                let mut tick = rate.map(|r| {
                    let per_writer = (r as f64 / writers as f64 / lines as f64).max(1.0);
                    let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / per_writer));
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    t
                });
                let mut sent = 0u64;
                let mut req = 0i64;
                while Instant::now() < until {
                    if let Some(t) = tick.as_mut() {
                        t.tick().await;
                    }
                    let base =
                        epoch + (w as i64) * 1_000_000_000_000_000 + req * lines as i64 * 1000;
                    req += 1;
                    let body = trades_body(lines, base);
                    loop {
                        let r = client
                            .post(format!("{url}/api/v2/write?bucket=b&org=b"))
                            .body(body.clone())
                            .send()
                            .await
                            .unwrap();
                        if r.status().as_u16() == 204 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    sent += lines as u64;
                }
                sent
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

/// A fresh relay (its own log) at the defaults, with both sinks; returns
/// the spawned process, the relay's own pid (see [`relay_pid`]) and its URL.
fn fresh_relay(dir: &Path, influx: &str, pg: &str) -> (Child, u32, String) {
    let port = vm::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let conf = config(dir, port, influx, pg);
    let relay = spawn(&conf, true);
    wait_health(&url);
    let pid = relay_pid(&relay);
    (relay, pid, url)
}

/// The pid of the relay itself: the spawned process's, or, under
/// `WALRELAY_BENCH_WRAP`, the descendant whose executable is the relay
/// binary (heaptrack runs it as a child of its shell script), so RSS is the
/// relay's and not the wrapper's.
fn relay_pid(relay: &Child) -> u32 {
    if std::env::var_os("WALRELAY_BENCH_WRAP").is_none() {
        return relay.id();
    }
    let bin = std::fs::canonicalize(relay_bin()).unwrap();
    let mut todo = vec![relay.id()];
    while let Some(pid) = todo.pop() {
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() == Some(&bin) {
            return pid;
        }
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        todo.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    panic!("no relay process under the wrapper {}", relay.id());
}

/// Ends a memory scenario's relay. `WALRELAY_BENCH_SMAPS_DIR` keeps a copy of
/// its `/proc/<pid>/smaps` at this moment as `<name>.smaps` (what is resident,
/// mapping by mapping). Under a wrapper the relay itself is SIGKILLed, so a
/// heap profiler records what was live at this moment as "leaked" (a graceful
/// stop would free it first); the wrapper then finishes writing and exits.
fn stop_relay(mut relay: Child, pid: u32, name: &str) {
    if let Some(dir) = std::env::var_os("WALRELAY_BENCH_SMAPS_DIR") {
        let _ = std::fs::copy(
            format!("/proc/{pid}/smaps"),
            Path::new(&dir).join(format!("{name}.smaps")),
        );
    }
    if pid != relay.id() {
        // SAFETY: kill(2) on the relay's own pid, a descendant of our child
        // that has not been reaped (its parent, the wrapper, is still alive).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    } else {
        let _ = relay.kill();
    }
    let _ = relay.wait();
}

fn memory(_c: &mut Criterion) {
    if std::env::var_os("WALRELAY_BENCH_SKIP_MEMORY").is_some() || tls_only() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = pg::Pg::start();
    let mut vmserver = rt.block_on(vm::Vm::start());
    let client = reqwest::Client::new();
    let epoch = 1_700_000_000_000_000_000i64;
    let only = |name: &str| {
        std::env::var("WALRELAY_BENCH_MEMORY_SCENARIO")
            .map_or(true, |s| s.split(',').any(|x| x == name))
    };
    let mut steady_mib = None;

    if only("steady") {
        let pg_url = rt.block_on(server.create_db("mem_steady"));
        let dir = tempfile::TempDir::new().unwrap();
        let (relay, pid, url) = fresh_relay(dir.path(), &vmserver.url(), &pg_url);
        let watch = RssWatch::start(pid);
        let n = rt.block_on(load(&url, 4, 100, Some(100_000), 60.0, epoch));
        let (max, _, _) = watch.phase(&format!("steady 100k records/s, 60 s ({n} records)"));
        remark(format!(
            "memory goal steady ≤ 48 MiB: {max} MiB ({})",
            if max <= 48 { "met" } else { "NOT met" }
        ));
        steady_mib = Some(max);
        stop_relay(relay, pid, "steady");
    }

    if only("burst") {
        let pg_url = rt.block_on(server.create_db("mem_burst"));
        let dir = tempfile::TempDir::new().unwrap();
        let (relay, pid, url) = fresh_relay(dir.path(), &vmserver.url(), &pg_url);
        let watch = RssWatch::start(pid);
        let t = Instant::now();
        let n = rt.block_on(load(
            &url,
            4,
            1000,
            None,
            20.0,
            epoch + 10_000_000_000_000_000,
        ));
        watch.phase(&format!(
            "burst: 4 writers x 1000-line requests for 20 s ({} k records/s acknowledged)",
            n as f64 / t.elapsed().as_secs_f64() / 1000.0
        ));
        let t = Instant::now();
        rt.block_on(drained(&client, &url));
        watch.phase(&format!(
            "burst: until delivered ({:.1} s)",
            t.elapsed().as_secs_f64()
        ));
        rt.block_on(load(
            &url,
            4,
            100,
            Some(100_000),
            15.0,
            epoch + 20_000_000_000_000_000,
        ));
        let (_, _, hwm) = watch.phase("burst: then steady 100k records/s for 15 s");
        remark(format!(
            "memory goal burst-then-steady peak ≤ 128 MiB: {hwm} MiB ({})",
            if hwm <= 128 { "met" } else { "NOT met" }
        ));
        stop_relay(relay, pid, "burst");
    }

    if only("outage") {
        let pg_url = rt.block_on(server.create_db("mem_outage"));
        let dir = tempfile::TempDir::new().unwrap();
        let (relay, pid, url) = fresh_relay(dir.path(), &vmserver.url(), &pg_url);
        let watch = RssWatch::start(pid);
        vmserver.stop();
        let t = Instant::now();
        let mut n = 0;
        while n < 10_000_000 {
            n += rt.block_on(load(
                &url,
                4,
                1000,
                None,
                5.0,
                epoch + 30_000_000_000_000_000 + n as i64 * 1000,
            ));
        }
        watch.phase(&format!(
            "outage: {n} records written with the Influx sink down ({:.0} s)",
            t.elapsed().as_secs_f64()
        ));
        rt.block_on(vmserver.resume());
        let t = Instant::now();
        rt.block_on(drained(&client, &url));
        watch.phase(&format!(
            "outage: backlog drained ({:.0} s)",
            t.elapsed().as_secs_f64()
        ));
        let mut after = 0;
        for i in 0..6 {
            rt.block_on(load(
                &url,
                4,
                100,
                Some(50_000),
                10.0,
                epoch + 40_000_000_000_000_000 + i * 10_000_000_000_000,
            ));
            let (max, now, _) = watch.phase(&format!(
                "outage: {} s after the drain at 50k records/s",
                (i + 1) * 10
            ));
            let _ = max;
            after = now;
        }
        if let Some(steady) = steady_mib {
            let limit = steady as f64 * 1.25;
            remark(format!(
                "memory goal after a drained outage ≤ 1.25 x steady ({limit:.0} MiB) within 60 s: {after} MiB ({})",
                if after as f64 <= limit { "met" } else { "NOT met" }
            ));
        }
        stop_relay(relay, pid, "outage");
    }
}

criterion_group!(benches, tls_ingest, ingest, startup);

fn main() {
    if std::env::var_os("WALRELAY_BENCH_MEMORY_ONLY").is_none() {
        benches();
    }
    memory(&mut Criterion::default());
    Criterion::default().configure_from_args().final_summary();
    report();
}
