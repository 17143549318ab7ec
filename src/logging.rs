//! The process's own log lines: `tracing` events written to stderr.
//!
//! - `text` (default): one human-readable line per event. ANSI colours only
//!   when stderr is a terminal and `NO_COLOR` is unset, so a file, a pipe or
//!   journald never receives escape codes.
//! - `json`: one JSON object per line, the event's fields at the top level
//!   next to `timestamp`, `level`, `target` and `message` (what journald,
//!   Loki and Vector parse without a custom pattern). Never coloured.
//!
//! The level filter is `RUST_LOG` (default `info`). Secrets cannot reach a
//! log line through a field: tokens and passwords are
//! [`crate::secret::Secret`], whose `Debug` prints `[redacted]` and which has
//! no `Display`.

use std::io::IsTerminal;

use serde::Deserialize;

/// How log lines are written (`[log] format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event; coloured only when stderr is a
    /// terminal (and `NO_COLOR` is unset).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message` and
    /// the event's fields), for journald, Loki or Vector; never coloured.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log format {other:?}: expected \"text\" or \"json\""
            )),
        }
    }
}

/// Whether text lines may carry ANSI colours: only on a terminal, and not
/// when the user asked for none (<https://no-color.org>).
pub fn colours_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init`: a second call (tests that start several relays in one
    // process) keeps the first subscriber instead of panicking.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colours_wanted()).try_init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}
