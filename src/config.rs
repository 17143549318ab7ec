//! The configuration file: one TOML document. Unknown keys are errors, and
//! every error names the key (`toml` reports the path and line).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::wal::WalConfig;

pub use crate::ingest::config::IngestConfig;
pub use crate::logging::LogFormat;
pub use crate::routes::Routes;
pub use crate::secret::Secret;

/// Everything `walrelay` reads from its config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[wal]`: the write-ahead log.
    #[serde(default)]
    pub wal: WalConfig,
    /// `[ingest]`: the HTTP ingest server.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// `[drain]`: drainer batching and retry cadence.
    #[serde(default)]
    pub drain: DrainConfig,
    /// `[influx]`: the InfluxDB v2 sink (ticks and generic points); absent = disabled.
    #[serde(default)]
    pub influx: Option<crate::db::influx::InfluxConfig>,
    /// `[timescale]`: the TimescaleDB sink (bars and klines); absent = disabled.
    #[serde(default)]
    pub timescale: Option<crate::db::timescale::TimescaleConfig>,
    /// `[grpc]`: subscriptions to gRPC market-data collectors; absent = none.
    #[serde(default)]
    pub grpc: Option<crate::ingest::grpc::GrpcConfig>,
    /// `[log]`: the process's own log lines on stderr.
    #[serde(default)]
    pub log: LogConfig,
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Format of the log lines on stderr. `walrelay --log-format` and
    /// `WALRELAY_LOG_FORMAT` override it. Default `text`.
    pub format: LogFormat,
}

/// Most batches a drainer may keep in flight (`drain.pipeline`).
pub const MAX_PIPELINE: usize = 16;

/// `[drain]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Records read from the log per delivery. Default 5000.
    pub batch_records: usize,
    /// Batches a drainer keeps started and not yet passed by its cursor, at
    /// most (1..=16), plus one read ahead. The Influx sink delivers that many
    /// concurrently; the Timescale sink writes one at a time (log order
    /// decides conflicts) and reads one batch ahead. Each batch in flight
    /// holds its records in memory (about `batch_records` × 300 bytes
    /// decoded). Default 4 (`cargo bench --bench influx`: 4 in flight drain
    /// ~4 points of the server's limit more than 3; docs/PERFORMANCE.md).
    pub pipeline: usize,
    /// First retry wait after a transient failure, ms. Default 100.
    pub retry_initial_ms: u64,
    /// Longest retry wait after transient failures, ms. Default 10000.
    pub retry_max_ms: u64,
    /// Retry cadence while a sink is misconfigured, ms. Default 30000.
    pub retry_config_ms: u64,
    /// How long shutdown waits for drainers to finish their batch, ms. Default 10000.
    pub shutdown_grace_ms: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            batch_records: 5000,
            pipeline: 4,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            retry_config_ms: 30_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl DrainConfig {
    /// Checks the drain settings against their bounds.
    ///
    /// # Errors
    /// A message naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_records == 0 {
            return Err("drain.batch_records must be > 0".into());
        }
        if !(1..=MAX_PIPELINE).contains(&self.pipeline) {
            return Err(format!(
                "drain.pipeline = {} is outside 1..={MAX_PIPELINE} (batches read and not yet confirmed per drainer)",
                self.pipeline
            ));
        }
        Ok(())
    }

    pub(crate) fn retry_policy(&self) -> crate::drain::retry::RetryPolicy {
        use std::time::Duration;
        crate::drain::retry::RetryPolicy {
            initial: Duration::from_millis(self.retry_initial_ms),
            max: Duration::from_millis(self.retry_max_ms),
            config_interval: Duration::from_millis(self.retry_config_ms),
        }
    }
}

impl Config {
    /// Names of the sinks this configuration enables (their log cursors).
    pub fn sink_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.influx.is_some() {
            v.push("influx");
        }
        if self.timescale.is_some() {
            v.push("timescale");
        }
        v
    }

    /// Applies environment overrides for secrets.
    pub fn apply_env(&mut self) {
        if let Ok(t) = std::env::var("WALRELAY_INGEST_TOKEN") {
            self.ingest.token = Some(Secret::new(t));
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong type;
    /// the message names the key and line.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and, for content errors, the key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut c = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })?;
        c.ingest.validate().map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })?;
        c.drain.validate().map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })?;
        if let Some(t) = &c.timescale {
            t.validate().map_err(|message| ConfigError::Parse {
                path: path.into(),
                message,
            })?;
        }
        if let Some(i) = &c.influx {
            i.validate().map_err(|message| ConfigError::Parse {
                path: path.into(),
                message,
            })?;
        }
        if let Some(g) = &c.grpc {
            g.validate().map_err(|message| ConfigError::Parse {
                path: path.into(),
                message,
            })?;
        }
        c.apply_env();
        Ok(c)
    }

    pub(crate) fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[wal]\ndir = \"x\"\nmax_bytez = 3\n").unwrap_err();
        assert!(err.contains("max_bytez"), "{err}");
        let err = Config::parse("[wall]\n").unwrap_err();
        assert!(err.contains("wall"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::parse("[wal]\nmax_bytes = \"big\"\n").unwrap_err();
        assert!(err.contains("max_bytes"), "{err}");
    }

    #[test]
    fn routes_prefer_composite_then_venue_then_default() {
        let mut t = std::collections::BTreeMap::new();
        t.insert("BINANCE_FUTURES:FUNDING".to_string(), "funding-bucket");
        t.insert("BINANCE_FUTURES".to_string(), "binance-bucket");
        let r = Routes::new(t, "default-bucket");
        assert_eq!(
            r.resolve("BINANCE_FUTURES", "FUNDING"),
            (&"funding-bucket", "BINANCE_FUTURES:FUNDING")
        );
        assert_eq!(
            r.resolve("BINANCE_FUTURES", "TRADE"),
            (&"binance-bucket", "BINANCE_FUTURES")
        );
        assert_eq!(r.resolve("OKX", "TRADE"), (&"default-bucket", ""));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = Config::parse("[ingest]\ntoken = \"hunter2\"\n").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("[redacted]"));
        assert_eq!(c.ingest.token.unwrap().expose(), "hunter2");
    }

    #[test]
    fn drain_pipeline_is_bounded() {
        let c = Config::parse("[drain]\npipeline = 4\n").unwrap();
        assert_eq!(c.drain.pipeline, 4);
        c.drain.validate().unwrap();
        assert_eq!(DrainConfig::default().pipeline, 4);
        for bad in [0, MAX_PIPELINE + 1] {
            let c = Config::parse(&format!("[drain]\npipeline = {bad}\n")).unwrap();
            let e = c.drain.validate().unwrap_err();
            assert!(e.contains("drain.pipeline"), "{e}");
        }
    }

    #[test]
    fn ingest_limits_are_checked_against_each_other_and_their_ceilings() {
        let mut c = IngestConfig::default();
        c.validate().unwrap();
        c.memory_budget_bytes = 64 * 1024 * 1024;
        assert!(c.validate().unwrap_err().contains("memory_budget_bytes"));
        let mut c = IngestConfig::default();
        c.limits.max_record_bytes = 17 * 1024 * 1024;
        assert!(c.validate().unwrap_err().contains("max_record_bytes"));
        let mut c = IngestConfig::default();
        c.limits.max_name_bytes = 4096;
        assert!(c.validate().unwrap_err().contains("max_name_bytes"));
        let c = Config::parse("[ingest.limits]\nmax_records_per_request = 10\n").unwrap();
        assert_eq!(c.ingest.limits.max_records_per_request, 10);
        assert!(Config::parse("[ingest.limits]\nmax_recs = 10\n").is_err());
    }

    #[test]
    fn example_file_parses() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/walrelay.example.toml"
        ))
        .unwrap();
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.log.format, LogFormat::Text);
    }

    /// Running the example as it is must never reach into someone's network:
    /// every host it names is loopback or under `.example` (RFC 2606).
    #[test]
    fn example_names_only_loopback_or_dot_example_hosts() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/walrelay.example.toml"
        ))
        .unwrap();
        let mut hosts = Vec::new();
        for quoted in text.split('"').skip(1).step_by(2) {
            let Some((_, rest)) = quoted.split_once("://") else {
                continue;
            };
            let authority = rest.split('/').next().unwrap();
            let host_port = authority.rsplit('@').next().unwrap();
            hosts.push(host_port.split(':').next().unwrap().to_string());
        }
        // listen is an address, not a URL.
        hosts.push(
            Config::parse(&text)
                .unwrap()
                .ingest
                .listen
                .split(':')
                .next()
                .unwrap()
                .into(),
        );
        assert!(hosts.len() >= 5, "{hosts:?}");
        for h in &hosts {
            assert!(
                h == "127.0.0.1" || h == "localhost" || h.ends_with(".example"),
                "{h} in the example config"
            );
        }
        assert!(hosts.iter().any(|h| h.ends_with(".example")), "{hosts:?}");
    }

    #[test]
    fn log_format_key_and_flag_values() {
        let c = Config::parse("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        let err = Config::parse("[log]\nformat = \"xml\"\n").unwrap_err();
        assert!(err.contains("format") || err.contains("xml"), "{err}");
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("JSONL"
            .parse::<LogFormat>()
            .unwrap_err()
            .contains("\"json\""));
    }
}
