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

/// `WALRELAY_BENCH_WRAP` (e.g. `heaptrack -o /tmp/relay`) runs the relay of
/// the ingest group under a profiler (its RSS line is then the wrapper's).
fn spawn(conf: &Path, wrapped: bool) -> Child {
    let bin = env!("CARGO_BIN_EXE_walrelay");
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
    const WRITERS: usize = 4;
    const REQUESTS: usize = 10;
    const LINES: usize = 5000;
    const BARS: usize = 500;
    let per_iter = (WRITERS * REQUESTS * (LINES + BARS)) as u64;
    let client = reqwest::Client::new();
    let mut round = 0u64;
    let mut run = |wait_delivery: bool| -> Duration {
        round += 1;
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
                    let url = url.clone();
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
                drained(&client, &url).await;
            }
        });
        t.elapsed()
    };
    let mut g = c.benchmark_group("ingest_http");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(per_iter));
    g.bench_function("accepted", |b| {
        b.iter_custom(|iters| {
            let d: Duration = (0..iters).map(|_| run(false)).sum();
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
            let d: Duration = (0..iters).map(|_| run(true)).sum();
            note("ingest_http/delivered", iters * per_iter, d);
            d
        })
    });
    g.finish();
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
                &format!(
                    "{} run --config {}",
                    env!("CARGO_BIN_EXE_walrelay"),
                    conf.display()
                ),
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
/// latency of each request from its scheduled start; (p50, p99, max, count).
async fn ack_latency(
    client: &reqwest::Client,
    url: &str,
    lines: usize,
    rate: u64,
    secs: u64,
    base: i64,
) -> (Duration, Duration, Duration, usize) {
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
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (q(0.50), q(0.99), *lat.last().unwrap(), lat.len())
}

fn tls_ingest(c: &mut Criterion) {
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
            let (p50, p99, max, n) = rt.block_on(ack_latency(client, url, lines, 100_000, 3, base));
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

criterion_group!(benches, tls_ingest, ingest, startup);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
