//! What the `walrelay` subcommands do, so that `main.rs` only parses
//! arguments and calls these (mini-redis style): the synthetic feed loop,
//! `status` (fetched and decoded into [`StatusView`], the typed client side
//! of `GET /status`), `wal verify`, the dead-letter commands (`dlq
//! list/show/replay/purge`), `check` and `init`. Each returns the process
//! exit code, or an error message for the binary to print.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::ingest::synthetic::Synthetic;
use crate::relay::status::StatusView;
use crate::Wal;

/// Loads `config` (defaults and the environment without one).
///
/// # Errors
/// The config error chain, as text.
pub fn load(config: Option<PathBuf>) -> Result<Config, String> {
    match config {
        Some(p) => Config::load(&p).map_err(|e| crate::report::chain(&e)),
        None => {
            let mut c = Config::default();
            c.apply_env();
            Ok(c)
        }
    }
}

/// Options of `walrelay feed`.
#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// Relay base URL.
    pub url: String,
    /// Records per second.
    pub rate: u64,
    /// Seconds to run.
    pub duration: u64,
    /// Number of symbols.
    pub symbols: usize,
    /// Ingest token.
    pub token: Option<String>,
    /// PEM CA certificates to trust for an https URL.
    pub ca_file: Option<PathBuf>,
}

/// The synthetic collector: posts realistic records at `rate` for
/// `duration`; exit code 3 if any were refused.
///
/// # Errors
/// When the HTTP client cannot be built.
pub async fn feed(opts: FeedOptions) -> Result<ExitCode, String> {
    let FeedOptions {
        url,
        rate,
        duration,
        symbols,
        token,
        ca_file,
    } = opts;
    let client = crate::top::http_client(Duration::from_secs(30), ca_file.as_deref())?;
    let mut gen = Synthetic::new(rand_seed(), symbols);
    let started = Instant::now();
    let (mut sent, mut rejected) = (0u64, 0u64);
    let tick = Duration::from_millis(100);
    let endpoint = format!("{}/v1/records", url.trim_end_matches('/'));
    while started.elapsed() < Duration::from_secs(duration) {
        let due = ((started.elapsed().as_secs_f64() + tick.as_secs_f64()) * rate as f64) as u64;
        let n = due.saturating_sub(sent + rejected) as usize;
        if n > 0 {
            let batch = gen.batch(n, crate::record::now_ns());
            let body: String = batch
                .iter()
                .map(|r| serde_json::to_string(r).unwrap() + "\n")
                .collect();
            let mut req = client.post(&endpoint).body(body);
            if let Some(t) = &token {
                req = req.header("Authorization", format!("Token {t}"));
            }
            match req.send().await {
                Ok(r) if r.status().as_u16() == 204 => sent += n as u64,
                Ok(r) => {
                    rejected += n as u64;
                    let status = r.status();
                    eprintln!(
                        "feed: {n} records refused: {status} {}",
                        r.text().await.unwrap_or_default()
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    rejected += n as u64;
                    eprintln!("feed: request failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        tokio::time::sleep(tick).await;
    }
    println!(
        "feed: sent={sent} acknowledged={sent} refused={rejected} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(if rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

fn relay_url(config: Option<PathBuf>, url: Option<String>) -> Result<String, String> {
    match url {
        Some(u) => Ok(u),
        None => {
            let c = load(config)?;
            let scheme = if c.ingest.tls.is_some() {
                "https"
            } else {
                "http"
            };
            Ok(format!("{scheme}://{}", c.ingest.listen))
        }
    }
}

/// `walrelay top`.
///
/// # Errors
/// Config or connection failures, as text.
pub async fn top(
    config: Option<PathBuf>,
    url: Option<String>,
    ca_file: Option<PathBuf>,
    interval_ms: u64,
    once: bool,
) -> Result<ExitCode, String> {
    let opts = crate::top::TopOptions {
        url: relay_url(config, url)?,
        ca_file,
        interval: Duration::from_millis(interval_ms.max(100)),
        once,
    };
    crate::top::run(opts)
        .await
        .map_err(|e| crate::report::chain(&e))?;
    Ok(ExitCode::SUCCESS)
}

/// `walrelay status`: the relay's `/status`, raw (`json`) or as text.
///
/// # Errors
/// Config, connection or decoding failures, as text.
pub async fn status(
    config: Option<PathBuf>,
    url: Option<String>,
    ca_file: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode, String> {
    let url = relay_url(config, url)?;
    let client = crate::top::http_client(Duration::from_secs(5), ca_file.as_deref())?;
    let body = client
        .get(format!("{}/status", url.trim_end_matches('/')))
        .send()
        .await
        .map_err(|e| {
            format!(
                "relay at {url} is not answering: {}",
                crate::report::chain(&e)
            )
        })?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    if json {
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
        return Ok(ExitCode::SUCCESS);
    }
    let v: StatusView = serde_json::from_str(&body)
        .map_err(|e| format!("relay at {url} answered an unexpected /status: {e}"))?;
    print!("{}", v.render());
    Ok(ExitCode::SUCCESS)
}

/// `walrelay wal verify`.
///
/// # Errors
/// Config or log failures, as text.
pub fn verify(config: Option<PathBuf>) -> Result<ExitCode, String> {
    let config = load(config)?;
    if !config.wal.dir.exists() {
        return Err(format!("no log at {}", config.wal.dir.display()));
    }
    let wal = Wal::open(config.wal.clone()).map_err(|e| {
        format!(
            "{e} (is a relay still running on this log? `walrelay wal verify` needs it stopped)"
        )
    })?;
    let (frames, records, bad) = wal.verify().map_err(|e| e.to_string())?;
    let s = wal.stats();
    println!(
        "log {}: {frames} good frames, {records} records, {} bytes",
        config.wal.dir.display(),
        s.bytes
    );
    println!(
        "totals record: {} records in {} frames; last frame {}",
        s.records, s.frames, s.last_seq
    );
    for sink in config.sink_names() {
        let b = wal.backlog(sink).map_err(|e| e.to_string())?;
        println!(
            "cursor {sink}: frame {}, backlog {} records",
            b.cursor, b.records
        );
    }
    for (seq, why) in wal.quarantined().map_err(|e| e.to_string())? {
        println!("quarantined frame {seq}: {why}");
    }
    println!("dead letters: {}", s.dead_letters);
    for (seq, err) in &bad {
        println!("CORRUPT frame {seq}: {err}");
    }
    if bad.is_empty() {
        println!("ok: every frame passed its CRC and decoded");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} corrupt frames: `walrelay run` will quarantine each when a drainer reaches it and continue", bad.len());
        Ok(ExitCode::from(2))
    }
}

fn open_stopped(config: Option<PathBuf>) -> Result<(Config, Wal), String> {
    let config = load(config)?;
    if !config.wal.dir.exists() {
        return Err(format!("no log at {}", config.wal.dir.display()));
    }
    let wal = Wal::open(config.wal.clone().with_sinks(config.sink_names()))
        .map_err(|e| format!("{e} (is a relay still running on this log? stop it first)"))?;
    Ok((config, wal))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("{s:?} is not an id printed by `walrelay dlq list`");
    if s.len() % 2 != 0 {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// `walrelay dlq list`: one line per dead letter (relay stopped).
///
/// # Errors
/// Config or log failures, as text.
pub fn dlq_list(
    config: Option<PathBuf>,
    sink: Option<String>,
    limit: usize,
) -> Result<ExitCode, String> {
    let (_, wal) = open_stopped(config)?;
    let dl = wal.dead_letters();
    let total = dl.count(sink.as_deref()).map_err(|e| e.to_string())?;
    for d in dl.list(sink.as_deref(), limit).map_err(|e| e.to_string())? {
        println!(
            "{}  sink={} kind={} attempts={} at_ns={}  {}",
            hex(&d.id),
            d.sink,
            d.record.kind(),
            d.attempts,
            d.at_ns,
            d.error
        );
    }
    println!(
        "{total} dead letters{}",
        sink.map(|s| format!(" for sink {s}")).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// `walrelay dlq show ID`: one dead letter in full (relay stopped).
///
/// # Errors
/// An id that is not hex or names no dead letter; config or log failures.
pub fn dlq_show(config: Option<PathBuf>, id: &str) -> Result<ExitCode, String> {
    let (_, wal) = open_stopped(config)?;
    let id = unhex(id)?;
    let Some(d) = wal.dead_letters().get(&id).map_err(|e| e.to_string())? else {
        return Err("no dead letter with that id".into());
    };
    let record = serde_json::to_string_pretty(&d.record).unwrap_or_default();
    println!(
        "sink: {}\nattempts: {}\nat_ns: {}\nerror: {}\nrecord: {record}",
        d.sink, d.attempts, d.at_ns, d.error
    );
    Ok(ExitCode::SUCCESS)
}

/// `walrelay dlq replay`: dead letters back into the log through the ingest
/// gate (validated again); refused ones are kept.
///
/// # Errors
/// When any dead letter was refused; config or log failures.
pub fn dlq_replay(config: Option<PathBuf>, sink: Option<String>) -> Result<ExitCode, String> {
    let (config, wal) = open_stopped(config)?;
    let gate = crate::ingest::gate::Gate::new(
        wal,
        config.ingest.limits.clone(),
        config.ingest.identity_window_ms,
    )
    .map_err(|e| e.to_string())?;
    let report = gate
        .replay_dead_letters(sink.as_deref())
        .map_err(|e| e.to_string())?;
    for (id, reason) in &report.refused {
        println!(
            "refused {}: {reason} (kept in the dead-letter store)",
            hex(id)
        );
    }
    println!(
        "replayed {} dead letters into the log; they are delivered when the relay runs",
        report.replayed
    );
    if !report.refused.is_empty() {
        return Err(format!(
            "{} dead letters fail validation and were kept; fix or purge them",
            report.refused.len()
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `walrelay dlq purge --yes`.
///
/// # Errors
/// Without `yes`; config or log failures.
pub fn dlq_purge(
    config: Option<PathBuf>,
    sink: Option<String>,
    yes: bool,
) -> Result<ExitCode, String> {
    if !yes {
        return Err("purge deletes dead letters for good; add --yes to confirm".into());
    }
    let (_, wal) = open_stopped(config)?;
    let n = wal
        .dead_letters()
        .purge(sink.as_deref())
        .map_err(|e| e.to_string())?;
    println!("purged {n} dead letters");
    Ok(ExitCode::SUCCESS)
}

/// `walrelay check`: one line per preflight check.
///
/// # Errors
/// None today; the result type matches the other commands.
pub async fn preflight(config: Option<PathBuf>) -> Result<ExitCode, String> {
    let config = match load(config) {
        Ok(c) => c,
        Err(e) => {
            println!("[FAIL] config                       {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let checks = crate::preflight::run_checks(&config).await;
    for c in &checks {
        println!("{c}");
    }
    let failed = checks
        .iter()
        .filter(|c| c.verdict == crate::preflight::Verdict::Fail)
        .count();
    if failed > 0 {
        println!("{failed} required checks failed");
        Ok(ExitCode::FAILURE)
    } else {
        println!("all required checks passed");
        Ok(ExitCode::SUCCESS)
    }
}

/// `walrelay init`: schema and dimensions.
///
/// # Errors
/// No `[timescale]` section; database failures.
pub async fn init(config: Option<PathBuf>) -> Result<ExitCode, String> {
    let config = load(config)?;
    if config.timescale.is_none() && config.influx.is_none() {
        return Err(
            "no [timescale] or [influx] section in the config: nothing to initialise".into(),
        );
    }
    let mut code = ExitCode::SUCCESS;
    if let Some(ic) = &config.influx {
        if !init_influx(ic).await {
            code = ExitCode::FAILURE;
        }
    }
    let Some(tc) = &config.timescale else {
        return Ok(code);
    };
    let report = crate::db::timescale::init::init(tc)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "schema {} ready ({})",
        tc.schema,
        if report.hypertables {
            "hypertables"
        } else {
            "plain PostgreSQL tables"
        }
    );
    for t in &report.tables {
        println!(
            "{:<13} added {:>4}  existing {:>4}  reactivated {:>4}  soft-deleted {:>4}",
            t.table, t.added, t.existing, t.reactivated, t.soft_deleted
        );
    }
    Ok(code)
}

/// InfluxDB 1.x: creates the configured databases that are missing
/// (`CREATE DATABASE`); a missing retention policy is reported, not created.
async fn init_influx_v1(ic: &crate::db::influx::InfluxConfig, timeout: Duration) -> bool {
    use crate::db::influx::admin::{configured_databases, v1_ensure_database, v1_find, BucketInit};
    let mut ok = true;
    for (url, db, rp) in configured_databases(ic) {
        match v1_ensure_database(ic, &url, &db, timeout).await {
            Ok(BucketInit::Exists) => println!("influx database {db} ({url}): exists"),
            Ok(BucketInit::Created) => println!("influx database {db} ({url}): created"),
            Ok(BucketInit::Refused(why)) => {
                ok = false;
                println!("influx database {db} ({url}): missing, and these credentials may not create it: {why}");
                continue;
            }
            Err(e) => {
                ok = false;
                println!("influx database {db} ({url}): {e}");
                continue;
            }
        }
        if let Some(rp) = rp {
            match v1_find(ic, &url, &db, Some(&rp), timeout).await {
                Ok(None) => println!("influx retention policy {rp} on {db} ({url}): exists"),
                Ok(Some(missing)) => {
                    ok = false;
                    println!("influx retention policy {rp} on {db} ({url}): {missing}; create it with CREATE RETENTION POLICY (its duration is yours to choose)");
                }
                Err(e) => {
                    ok = false;
                    println!("influx retention policy {rp} on {db} ({url}): {e}");
                }
            }
        }
    }
    ok
}

/// Creates the configured buckets that are missing; one line each. Returns
/// false when one is missing and could not be created.
async fn init_influx(ic: &crate::db::influx::InfluxConfig) -> bool {
    use crate::db::influx::admin::{configured_buckets, ensure_bucket, Admin, BucketInit};
    let timeout = Duration::from_millis(ic.timeout_ms.min(10_000));
    if ic.api == crate::db::influx::Api::V1 {
        return init_influx_v1(ic, timeout).await;
    }
    let mut ok = true;
    for (url, org, bucket) in configured_buckets(ic) {
        match ensure_bucket(ic, &url, &org, &bucket, timeout).await {
            Ok(Admin::Influx(BucketInit::Exists)) => println!("influx bucket {bucket} (org {org}, {url}): exists"),
            Ok(Admin::Influx(BucketInit::Created)) => println!("influx bucket {bucket} (org {org}, {url}): created"),
            Ok(Admin::Influx(BucketInit::Refused(why))) => {
                ok = false;
                println!("influx bucket {bucket} (org {org}, {url}): missing, and this token may not create it: {why}");
            }
            Ok(Admin::NotInflux(why)) => println!(
                "influx bucket {bucket} (org {org}, {url}): skipped, the server is not a full InfluxDB 2 ({why}); buckets there need no creation or are managed by that server"
            ),
            Err(e) => {
                ok = false;
                println!("influx bucket {bucket} (org {org}, {url}): {e}");
            }
        }
    }
    ok
}

/// Options of `walrelay audit`.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub since: String,
    pub until: String,
    pub sink: Option<String>,
    pub json: bool,
    /// Rewind the missing minutes and series, then audit again.
    pub repair: bool,
}

/// `walrelay audit` (relay stopped): exit 0 when the databases hold what
/// the log accepted, 1 on any difference, 2 when the window reaches past
/// retention, 3 when the audit itself failed (a database did not answer).
///
/// # Errors
/// Config or log failures, as text.
pub async fn audit(config: Option<PathBuf>, opts: AuditOptions) -> Result<ExitCode, String> {
    use crate::audit::{self, AuditError};
    let (config, wal) = open_stopped(config)?;
    let now = crate::record::now_ns();
    let since = audit::parse_time("--since", &opts.since, now).map_err(|e| e.to_string())?;
    let until = audit::parse_time("--until", &opts.until, now).map_err(|e| e.to_string())?;
    let fail = |e: AuditError| {
        eprintln!("error: {e}");
        Ok(ExitCode::from(match e {
            AuditError::PastRetention { .. } => 2,
            _ => 3,
        }))
    };
    let print = |r: &audit::AuditReport| {
        if opts.json {
            println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        } else {
            print!("{}", r.render());
        }
    };
    let mut report = match audit::audit(&config, &wal, since, until, opts.sink.as_deref()).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    print(&report);
    if opts.repair && !report.clean() {
        let missing = audit::missing(&report);
        for sink in report.sinks.clone() {
            let only: std::collections::BTreeSet<_> = missing
                .iter()
                .filter(|(_, s)| s.sink == sink)
                .cloned()
                .collect();
            if only.is_empty() {
                continue;
            }
            let req = audit::RewindRequest {
                sink: sink.clone(),
                since_ns: since,
                until_ns: until,
                only: Some(only),
            };
            match audit::rewind(&config, &wal, &req, &mut |_| {}).await {
                Ok(r) => println!(
                    "repair: sink {sink} re-delivered {} records from {} frames ({} dead-lettered)",
                    r.records, r.frames, r.dead_lettered
                ),
                Err(e) => return fail(e),
            }
        }
        report = match audit::audit(&config, &wal, since, until, opts.sink.as_deref()).await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        println!("after repair:");
        print(&report);
    }
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `walrelay rewind` (relay stopped): `sink` delivers again the retained
/// records with event times in `[since, until)`; an interrupted rewind of
/// the same window resumes.
///
/// # Errors
/// Bad times, an unknown sink, config, log or sink failures, as text.
pub async fn rewind(
    config: Option<PathBuf>,
    sink: String,
    since: String,
    until: Option<String>,
) -> Result<ExitCode, String> {
    use crate::audit;
    let (config, wal) = open_stopped(config)?;
    let now = crate::record::now_ns();
    let since = audit::parse_time("--since", &since, now).map_err(|e| e.to_string())?;
    let until = match until {
        Some(u) => audit::parse_time("--until", &u, now).map_err(|e| e.to_string())?,
        None => now,
    };
    let req = audit::RewindRequest {
        sink: sink.clone(),
        since_ns: since,
        until_ns: until,
        only: None,
    };
    let started = Instant::now();
    let r = audit::rewind(&config, &wal, &req, &mut |r| {
        tracing::info!(sink = %sink, frames = r.frames, records = r.records, "rewind progress");
    })
    .await
    .map_err(|e| e.to_string())?;
    println!(
        "rewind: sink {sink} re-delivered {} records from {} frames ({} dead-lettered) in {:.1}s{}",
        r.records,
        r.frames,
        r.dead_lettered,
        started.elapsed().as_secs_f64(),
        r.resumed_after
            .map(|s| format!(", resumed after frame {s}"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
