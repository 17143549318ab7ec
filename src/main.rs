//! The `walrelay` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use walrelay::commands::{self, FeedOptions};
use walrelay::config::{Config, LogFormat};

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
    /// Compare, per minute and series, what the log accepted with what the
    /// databases hold (relay stopped). Exit 0 none differ, 1 some differ, 2
    /// the window reaches past retention, 3 the audit failed.
    Audit {
        #[arg(long)]
        config: Option<PathBuf>,
        /// RFC 3339, "now" or relative ("-2h").
        #[arg(long, allow_hyphen_values = true)]
        since: String,
        #[arg(long, allow_hyphen_values = true, default_value = "now")]
        until: String,
        /// Only this sink (influx, timescale).
        #[arg(long)]
        sink: Option<String>,
        #[arg(long)]
        json: bool,
        /// Rewind exactly the missing minutes and series, then audit again.
        #[arg(long)]
        repair: bool,
    },
    /// Deliver the retained records of a window to one sink again (relay stopped).
    Rewind {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        sink: String,
        /// RFC 3339, "now" or relative ("-2h").
        #[arg(long, allow_hyphen_values = true)]
        since: String,
        #[arg(long, allow_hyphen_values = true)]
        until: Option<String>,
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
        /// PEM CA certificates to trust for an https URL (a private CA).
        #[arg(long)]
        ca_file: Option<PathBuf>,
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
        /// PEM CA certificates to trust for an https URL (a private CA).
        #[arg(long)]
        ca_file: Option<PathBuf>,
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
        /// PEM CA certificates to trust for an https URL (a private CA).
        #[arg(long)]
        ca_file: Option<PathBuf>,
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

impl Command {
    /// The `--config` file this command reads, if any.
    fn config_path(&self) -> Option<&PathBuf> {
        match self {
            Command::Run { config }
            | Command::Check { config }
            | Command::Init { config }
            | Command::Status { config, .. }
            | Command::Audit { config, .. }
            | Command::Rewind { config, .. }
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
    // Fail points from the FAILPOINTS environment variable, only in a build
    // with the `failpoints` feature (tests/failpoints.rs drives the binary).
    #[cfg(feature = "failpoints")]
    let _fail_points = fail::FailScenario::setup();
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
            ca_file,
        } => rt.block_on(commands::feed(FeedOptions {
            url,
            rate,
            duration,
            symbols,
            token,
            ca_file,
        })),
        Command::Status {
            config,
            url,
            json,
            ca_file,
        } => rt.block_on(commands::status(config, url, ca_file, json)),
        Command::Top {
            config,
            url,
            interval_ms,
            once,
            ca_file,
        } => rt.block_on(commands::top(config, url, ca_file, interval_ms, once)),
        Command::Wal {
            command: WalCommand::Verify { config },
        } => commands::verify(config),
        Command::Dlq { command } => match command {
            DlqCommand::List {
                config,
                sink,
                limit,
            } => commands::dlq_list(config, sink, limit),
            DlqCommand::Show { config, id } => commands::dlq_show(config, &id),
            DlqCommand::Replay { config, sink } => commands::dlq_replay(config, sink),
            DlqCommand::Purge { config, sink, yes } => commands::dlq_purge(config, sink, yes),
        },
        Command::Check { config } => rt.block_on(commands::preflight(config)),
        Command::Init { config } => rt.block_on(commands::init(config)),
        Command::Audit {
            config,
            since,
            until,
            sink,
            json,
            repair,
        } => rt.block_on(commands::audit(
            config,
            commands::AuditOptions {
                since,
                until,
                sink,
                json,
                repair,
            },
        )),
        Command::Rewind {
            config,
            sink,
            since,
            until,
        } => rt.block_on(commands::rewind(config, sink, since, until)),
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
    let config = commands::load(config)?;
    walrelay::relay::run(config, signals())
        .await
        .map_err(|e| walrelay::report::chain(&e))?;
    Ok(ExitCode::SUCCESS)
}
