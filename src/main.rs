//! The `walrelay` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use walrelay::config::{Config, LogFormat};
use walrelay::ingest::synthetic::Synthetic;
use walrelay::Wal;

#[derive(Parser)]
#[command(
    name = "walrelay",
    version,
    about = "Write-ahead-log buffered relay for market data"
)]
struct Cli {
    /// Log lines on stderr: `text` (coloured only on a terminal) or `json`
    /// (one object per line). Overrides the config's `[log] format`.
    #[arg(
        long,
        global = true,
        env = "WALRELAY_LOG_FORMAT",
        value_name = "text|json"
    )]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay daemon until SIGINT/SIGTERM (a second signal exits at once).
    Run {
        /// Config file (TOML); defaults apply when absent.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Preflight: config, log directory, ingest port, sinks; one line per check.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create the TimescaleDB schema and seed the dimensions from the config.
    Init {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Synthetic collector: post realistic records of every kind to a running relay.
    Feed {
        /// Relay base URL.
        #[arg(long, default_value = "http://127.0.0.1:8429")]
        url: String,
        /// Records per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Number of symbols.
        #[arg(long, default_value_t = 8)]
        symbols: usize,
        /// Ingest token (or WALRELAY_INGEST_TOKEN).
        #[arg(long, env = "WALRELAY_INGEST_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Show a running relay's status (backlogs, sink health, ETA).
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Relay base URL (default: from the config's ingest.listen).
        #[arg(long)]
        url: Option<String>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Live view of a running relay (log, ingest rate, per-sink backlog, drain
    /// rate, ETA, state, dead letters), refreshed every second; `q` quits.
    Top {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Relay base URL (default: from the config's ingest.listen).
        #[arg(long)]
        url: Option<String>,
        /// Refresh interval, milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Print one screen (rates over one interval) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Dead letters: records a sink rejected permanently (relay stopped).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Inspect the write-ahead log of a stopped relay.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// One line per dead letter: id, sink, time, attempts, reason.
    List {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        sink: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// A dead letter in full, with its record as JSON.
    Show {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The id printed by `list`.
        id: String,
    },
    /// Put dead letters back into the log (they are delivered again), then
    /// remove them from the dead-letter store.
    Replay {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        sink: Option<String>,
    },
    /// Delete dead letters for good.
    Purge {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        sink: Option<String>,
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum WalCommand {
    /// Check every frame's CRC and decoding, and report cursors and backlog.
    Verify {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn load(config: Option<PathBuf>) -> Result<Config, String> {
    match config {
        Some(p) => Config::load(&p).map_err(|e| walrelay::report::chain(&e)),
        None => {
            let mut c = Config::default();
            c.apply_env();
            Ok(c)
        }
    }
}

impl Command {
    /// The `--config` file this command reads, if any.
    fn config_path(&self) -> Option<&PathBuf> {
        match self {
            Command::Run { config }
            | Command::Check { config }
            | Command::Init { config }
            | Command::Status { config, .. }
            | Command::Top { config, .. }
            | Command::Wal {
                command: WalCommand::Verify { config },
            } => config.as_ref(),
            Command::Dlq { command } => match command {
                DlqCommand::List { config, .. }
                | DlqCommand::Show { config, .. }
                | DlqCommand::Replay { config, .. }
                | DlqCommand::Purge { config, .. } => config.as_ref(),
            },
            Command::Feed { .. } => None,
        }
    }
}

fn main() -> ExitCode {
    walrelay::ingest::budget::tune_allocator();
    let cli = Cli::parse();
    // The log format must be known before anything logs, so the config's
    // `[log]` is read here too; a config that does not load is reported by
    // the command itself, with the default format.
    let format = cli.log_format.unwrap_or_else(|| {
        cli.command
            .config_path()
            .and_then(|p| Config::load(p).ok())
            .map(|c| c.log.format)
            .unwrap_or_default()
    });
    walrelay::logging::init(format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run { config } => rt.block_on(run(config)),
        Command::Feed {
            url,
            rate,
            duration,
            symbols,
            token,
        } => rt.block_on(feed(url, rate, duration, symbols, token)),
        Command::Status { config, url, json } => rt.block_on(status(config, url, json)),
        Command::Top {
            config,
            url,
            interval_ms,
            once,
        } => rt.block_on(top(config, url, interval_ms, once)),
        Command::Wal {
            command: WalCommand::Verify { config },
        } => verify(config),
        Command::Dlq { command } => dlq(command),
        Command::Check { config } => rt.block_on(preflight(config)),
        Command::Init { config } => rt.block_on(init(config)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits the process at
/// once (the log keeps everything that was acknowledged).
async fn signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutdown requested; a second signal exits at once");
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("second signal: exiting now; the log keeps every acknowledged record");
        std::process::exit(130);
    });
}

async fn run(config: Option<PathBuf>) -> Result<ExitCode, String> {
    let config = load(config)?;
    walrelay::relay::run(config, signals())
        .await
        .map_err(|e| walrelay::report::chain(&e))?;
    Ok(ExitCode::SUCCESS)
}

async fn feed(
    url: String,
    rate: u64,
    duration: u64,
    symbols: usize,
    token: Option<String>,
) -> Result<ExitCode, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let mut gen = Synthetic::new(rand_seed(), symbols);
    let started = Instant::now();
    let (mut sent, mut rejected) = (0u64, 0u64);
    let tick = Duration::from_millis(100);
    let endpoint = format!("{}/v1/records", url.trim_end_matches('/'));
    while started.elapsed() < Duration::from_secs(duration) {
        let due = ((started.elapsed().as_secs_f64() + tick.as_secs_f64()) * rate as f64) as u64;
        let n = due.saturating_sub(sent + rejected) as usize;
        if n > 0 {
            let batch = gen.batch(n, walrelay::record::now_ns());
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
        None => Ok(format!("http://{}", load(config)?.ingest.listen)),
    }
}

async fn top(
    config: Option<PathBuf>,
    url: Option<String>,
    interval_ms: u64,
    once: bool,
) -> Result<ExitCode, String> {
    let opts = walrelay::top::TopOptions {
        url: relay_url(config, url)?,
        interval: Duration::from_millis(interval_ms.max(100)),
        once,
    };
    walrelay::top::run(opts)
        .await
        .map_err(|e| walrelay::report::chain(&e))?;
    Ok(ExitCode::SUCCESS)
}

async fn status(
    config: Option<PathBuf>,
    url: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let url = relay_url(config, url)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = client
        .get(format!("{}/status", url.trim_end_matches('/')))
        .send()
        .await
        .map_err(|e| format!("relay at {url} is not answering: {e}"))?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
        return Ok(ExitCode::SUCCESS);
    }
    let log = &v["log"];
    println!(
        "log {}: {} records in {} frames, {} of {} bytes; appended {} ever, dropped {}, quarantined frames {}",
        log["dir"].as_str().unwrap_or(""),
        log["records"],
        log["frames"],
        log["bytes"],
        log["max_bytes"],
        log["appended_records"],
        log["dropped_records"],
        log["quarantined_frames"]
    );
    if let Some(why) = log["unavailable"].as_str() {
        println!("LOG REFUSES APPENDS: {why}");
    }
    for s in v["sinks"].as_array().into_iter().flatten() {
        let eta = match s["eta_seconds"].as_f64() {
            Some(e) if s["backlog_records"].as_u64() != Some(0) => format!("{e:.1}s"),
            _ if s["backlog_records"].as_u64() == Some(0) => "caught up".into(),
            _ => "unknown (no recent deliveries)".into(),
        };
        println!(
            "sink {:<10} {:<9} cursor {:>8}  backlog {:>9} records ({} bytes), oldest {:>7}s, ETA {eta}, delivered {}, dead letters {}{}",
            s["name"].as_str().unwrap_or(""),
            s["state"].as_str().unwrap_or(""),
            s["cursor"],
            s["backlog_records"],
            s["backlog_bytes"],
            s["oldest_undelivered_age_seconds"].as_f64().map(|a| format!("{a:.1}")).unwrap_or("-".into()),
            s["delivered_records"],
            s["dead_letters"],
            s["last_error"].as_str().map(|e| format!("\n    last error: {e}")).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(config: Option<PathBuf>) -> Result<ExitCode, String> {
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

fn dlq(command: DlqCommand) -> Result<ExitCode, String> {
    match command {
        DlqCommand::List {
            config,
            sink,
            limit,
        } => {
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
        }
        DlqCommand::Show { config, id } => {
            let (_, wal) = open_stopped(config)?;
            let id = unhex(&id)?;
            let found = wal
                .dead_letters()
                .list(None, usize::MAX)
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|d| d.id == id);
            let Some(d) = found else {
                return Err("no dead letter with that id".into());
            };
            let record = serde_json::to_string_pretty(&d.record).unwrap_or_default();
            println!(
                "sink: {}\nattempts: {}\nat_ns: {}\nerror: {}\nrecord: {record}",
                d.sink, d.attempts, d.at_ns, d.error
            );
        }
        DlqCommand::Replay { config, sink } => {
            let (config, wal) = open_stopped(config)?;
            let gate = walrelay::ingest::gate::Gate::new(
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
        }
        DlqCommand::Purge { config, sink, yes } => {
            if !yes {
                return Err("purge deletes dead letters for good; add --yes to confirm".into());
            }
            let (_, wal) = open_stopped(config)?;
            let n = wal
                .dead_letters()
                .purge(sink.as_deref())
                .map_err(|e| e.to_string())?;
            println!("purged {n} dead letters");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn preflight(config: Option<PathBuf>) -> Result<ExitCode, String> {
    let config = match load(config) {
        Ok(c) => c,
        Err(e) => {
            println!("[FAIL] config                       {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let checks = walrelay::preflight::run_checks(&config).await;
    for c in &checks {
        println!("{c}");
    }
    let failed = checks
        .iter()
        .filter(|c| c.verdict == walrelay::preflight::Verdict::Fail)
        .count();
    if failed > 0 {
        println!("{failed} required checks failed");
        Ok(ExitCode::FAILURE)
    } else {
        println!("all required checks passed");
        Ok(ExitCode::SUCCESS)
    }
}

async fn init(config: Option<PathBuf>) -> Result<ExitCode, String> {
    let config = load(config)?;
    let Some(tc) = &config.timescale else {
        return Err("no [timescale] section in the config: nothing to initialise".into());
    };
    let report = walrelay::db::timescale::init::init(tc)
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
    Ok(ExitCode::SUCCESS)
}
