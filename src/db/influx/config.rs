//! `[influx]` configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::routes::Routes;
use crate::secret::Secret;

/// Where a routed record goes. Unset `org`/`url` fall back to the sink's own.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub bucket: String,
    #[serde(default)]
    pub org: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

/// `[influx]`: the InfluxDB v2 sink.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    pub org: String,
    /// Default bucket.
    pub bucket: String,
    /// API token. Prefer `token_file` or the `WALRELAY_INFLUX_TOKEN`
    /// environment variable (which wins over both).
    #[serde(default)]
    pub token: Option<Secret>,
    /// File holding the token (first line).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Lines per request. Default 5000.
    #[serde(default = "default_lines")]
    pub batch_max_lines: usize,
    /// Bytes per request (uncompressed). Default 1 MiB.
    #[serde(default = "default_bytes")]
    pub batch_max_bytes: usize,
    /// Deadline of one request, ms. Default 10000.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Compress request bodies with gzip. Default false.
    #[serde(default)]
    pub gzip: bool,
    /// PEM file of CA certificates to trust for `https://` URLs, in addition
    /// to the public web CAs (a self-hosted InfluxDB with a private CA).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Routing table: `"VENUE:DATA_TYPE"`, then `"VENUE"`, then the default
    /// bucket. Data types: TRADE, ORDERBOOK, FUNDING, LIQUIDATION,
    /// OPEN_INTEREST, TICKER, PRICE_INDEX.
    #[serde(default)]
    pub routes: BTreeMap<String, Destination>,
}

fn default_lines() -> usize {
    5000
}
fn default_bytes() -> usize {
    1024 * 1024
}
fn default_timeout() -> u64 {
    10_000
}

impl std::fmt::Debug for InfluxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxConfig")
            .field("url", &self.url)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("token", &self.token)
            .field("token_file", &self.token_file)
            .field("batch_max_lines", &self.batch_max_lines)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("timeout_ms", &self.timeout_ms)
            .field("gzip", &self.gzip)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("routes", &self.routes)
            .finish()
    }
}

impl InfluxConfig {
    /// A config with defaults for everything but the destination.
    pub fn new(url: impl Into<String>, org: impl Into<String>, bucket: impl Into<String>) -> Self {
        InfluxConfig {
            url: url.into(),
            org: org.into(),
            bucket: bucket.into(),
            token: None,
            token_file: None,
            batch_max_lines: default_lines(),
            batch_max_bytes: default_bytes(),
            timeout_ms: default_timeout(),
            gzip: false,
            tls_ca_file: None,
            routes: BTreeMap::new(),
        }
    }

    /// The token: `WALRELAY_INFLUX_TOKEN`, else `token_file`, else `token`.
    ///
    /// # Errors
    /// A message naming the file when `token_file` cannot be read.
    pub fn resolve_token(&self) -> Result<Option<Secret>, String> {
        if let Ok(t) = std::env::var("WALRELAY_INFLUX_TOKEN") {
            return Ok(Some(Secret::new(t)));
        }
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("influx.token_file {}: {e}", path.display()))?;
            return Ok(Some(Secret::new(text.lines().next().unwrap_or("").trim())));
        }
        Ok(self.token.clone())
    }

    /// The routing table with the default destination.
    pub fn routes(&self) -> Routes<Destination> {
        Routes::new(
            self.routes.clone(),
            Destination {
                bucket: self.bucket.clone(),
                org: None,
                url: None,
            },
        )
    }
}
