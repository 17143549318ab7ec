//! The `walrelay` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use walrelay::config::Config;
use walrelay::ingest::synthetic::Synthetic;
use walrelay::Wal;

#[derive(Parser)]
#[command(
    name = "walrelay",
    version,
    about = "Write-ahead-log buffered relay for market data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay: open the log and accept records.
    Run {
        /// Config file (TOML); defaults apply when absent.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Feed the log from the built-in synthetic collector at this many records/s.
        #[arg(long)]
        synthetic_rate: Option<u64>,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Symbols of the synthetic collector.
        #[arg(long, default_value_t = 8)]
        symbols: usize,
    },
    /// Inspect the write-ahead log of a stopped relay.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
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
        Some(p) => Config::load(&p).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            synthetic_rate,
            duration,
            symbols,
        } => run(config, synthetic_rate, duration, symbols),
        Command::Wal {
            command: WalCommand::Verify { config },
        } => verify(config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    config: Option<PathBuf>,
    rate: Option<u64>,
    duration: Option<u64>,
    symbols: usize,
) -> Result<ExitCode, String> {
    let config = load(config)?;
    let wal = Wal::open(config.wal.clone()).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            stop.store(true, Ordering::SeqCst);
        });
    }
    let started = Instant::now();
    let deadline = duration.map(|d| started + Duration::from_secs(d));
    let mut gen = Synthetic::new(42, symbols);
    let mut appended = 0u64;
    let mut next_report = started + Duration::from_secs(1);
    tracing::info!(dir = %config.wal.dir.display(), rate = rate.unwrap_or(0), "relay running (log side only: sinks are not configured)");
    while !stop.load(Ordering::SeqCst) && deadline.map_or(true, |d| Instant::now() < d) {
        if let Some(rate) = rate {
            // Pace in 10 ms ticks so the feed approximates the requested rate.
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            let n = due.saturating_sub(appended).min(10_000) as usize;
            if n > 0 {
                let batch = gen.batch(n, walrelay::record::now_ns());
                wal.append(&batch).map_err(|e| e.to_string())?;
                appended += n as u64;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
        if Instant::now() >= next_report {
            let s = wal.stats();
            tracing::info!(
                appended,
                log_records = s.records,
                log_bytes = s.bytes,
                last_seq = s.last_seq,
                "progress"
            );
            next_report += Duration::from_secs(1);
        }
    }
    wal.flush().map_err(|e| e.to_string())?;
    let s = wal.stats();
    println!(
        "walrelay: appended {appended} records this run; the log at {} holds {} records in {} frames ({} bytes, last frame {})",
        config.wal.dir.display(),
        s.records,
        s.frames,
        s.bytes,
        s.last_seq
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(config: Option<PathBuf>) -> Result<ExitCode, String> {
    let config = load(config)?;
    if !config.wal.dir.exists() {
        return Err(format!("no log at {}", config.wal.dir.display()));
    }
    let wal = Wal::open(config.wal.clone()).map_err(|e| e.to_string())?;
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
