//! `[timescale]` configuration.

use std::path::PathBuf;

use serde::Deserialize;

use super::pg_url::{redact_url, tls_mode};
use crate::secret::Secret;

/// Natural keys seeded by `walrelay init`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DimensionLists {
    pub symbols: Vec<String>,
    pub exchanges: Vec<String>,
    pub intervals: Vec<String>,
}

/// What a fact table does with a record whose key (time, symbol, exchange,
/// interval) already holds a row with *different* values. A record equal to
/// the stored row (a replay of the log) writes nothing under either policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConflictPolicy {
    /// The stored row stays; the later record is dead-lettered with the
    /// reason (`ON CONFLICT DO NOTHING`, then one compare query when the
    /// insert added fewer rows than it was given). Right for bars, which are
    /// emitted once, at close: a second, different bar for a key is a fault
    /// upstream that someone should see.
    #[default]
    FirstWins,
    /// The later record replaces the stored row (`ON CONFLICT … DO UPDATE …
    /// WHERE row IS DISTINCT FROM`), so the row ends as the last record of
    /// that key in log order; a replay re-applies the same sequence and ends
    /// at the same row. Within one batch only the last record of a key is
    /// sent. For klines a collector streams repeatedly while they form.
    LastWins,
}

impl ConflictPolicy {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::FirstWins => "first_wins",
            ConflictPolicy::LastWins => "last_wins",
        }
    }
}

/// `[timescale.conflict]`: the [`ConflictPolicy`] of each fact table, keyed
/// by table name. Every table defaults to `first_wins`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConflictPolicies {
    #[serde(rename = "bar__tick_imbalance")]
    pub tick_imbalance: ConflictPolicy,
    #[serde(rename = "bar__volume_imbalance")]
    pub volume_imbalance: ConflictPolicy,
    #[serde(rename = "bar__vpin")]
    pub vpin: ConflictPolicy,
    #[serde(rename = "bar__kline")]
    pub kline: ConflictPolicy,
}

impl ConflictPolicies {
    /// The policy of fact table `table` (`first_wins` for a name that is not
    /// a fact table).
    pub fn of(&self, table: &str) -> ConflictPolicy {
        match table {
            "bar__tick_imbalance" => self.tick_imbalance,
            "bar__volume_imbalance" => self.volume_imbalance,
            "bar__vpin" => self.vpin,
            "bar__kline" => self.kline,
            _ => ConflictPolicy::FirstWins,
        }
    }
}

/// `[timescale]`: the TimescaleDB (or plain PostgreSQL) sink for bars and klines.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimescaleConfig {
    /// `postgres://user[:password]@host:port/db[?sslmode=require]` or a
    /// key/value string (`host=… user=… dbname=…`). `sslmode` as in libpq:
    /// `disable`; `prefer` (default) and `require` encrypt (rustls) without
    /// checking the server's certificate unless `tls_ca_file` is set;
    /// `verify-ca` checks it chains to a trusted CA; `verify-full` also
    /// checks the host name.
    pub url: String,
    /// PEM file of the CA certificates to trust for the server's certificate
    /// (libpq's `sslrootcert`). Without it, `verify-ca`/`verify-full` trust
    /// the public web CAs (managed databases).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Password, if not in the URL. `WALRELAY_PG_PASSWORD` wins, then
    /// `password_file`, then this.
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Schema of the star schema. Default `mart`; a plain SQL identifier.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Rows per transaction. Default 5000.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// `statement_timeout` of the sink's session and the deadline of every
    /// call, ms. Default 30000.
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout_ms: u64,
    /// Connect deadline, ms. Default 5000.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Refuse to start without the TimescaleDB extension. Default false (plain
    /// tables, with a warning).
    #[serde(default)]
    pub require_timescaledb: bool,
    /// What `walrelay init` seeds.
    #[serde(default)]
    pub dimensions: DimensionLists,
    /// `[timescale.conflict]`: per fact table, `first_wins` (default) or
    /// `last_wins`.
    #[serde(default)]
    pub conflict: ConflictPolicies,
}

fn default_schema() -> String {
    "mart".into()
}
fn default_batch() -> usize {
    5000
}
fn default_statement_timeout() -> u64 {
    30_000
}
fn default_connect_timeout() -> u64 {
    5_000
}

impl std::fmt::Debug for TimescaleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimescaleConfig")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password)
            .field("password_file", &self.password_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("schema", &self.schema)
            .field("batch_size", &self.batch_size)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("require_timescaledb", &self.require_timescaledb)
            .field("dimensions", &self.dimensions)
            .field("conflict", &self.conflict)
            .finish()
    }
}

impl TimescaleConfig {
    /// Defaults with the given connection string.
    pub fn new(url: impl Into<String>) -> Self {
        TimescaleConfig {
            url: url.into(),
            password: None,
            password_file: None,
            tls_ca_file: None,
            schema: default_schema(),
            batch_size: default_batch(),
            statement_timeout_ms: default_statement_timeout(),
            connect_timeout_ms: default_connect_timeout(),
            require_timescaledb: false,
            dimensions: DimensionLists::default(),
            conflict: ConflictPolicies::default(),
        }
    }

    /// Checks what can be checked offline.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.schema;
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(format!("timescale.schema {s:?} must be a plain SQL identifier: lowercase letters, digits and _, not starting with a digit, at most 63 characters"));
        }
        let (url, _) = tls_mode(&self.url);
        url.parse::<tokio_postgres::Config>().map_err(|e| {
            format!("timescale.url is not a valid PostgreSQL connection string: {e}")
        })?;
        if self.batch_size == 0 {
            return Err("timescale.batch_size must be > 0".into());
        }
        Ok(())
    }

    /// The password, if one is configured outside the URL.
    ///
    /// # Errors
    /// A message naming the file when `password_file` cannot be read.
    pub fn resolve_password(&self) -> Result<Option<Secret>, String> {
        if let Ok(p) = std::env::var("WALRELAY_PG_PASSWORD") {
            return Ok(Some(Secret::new(p)));
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("timescale.password_file {}: {e}", path.display()))?;
            return Ok(Some(Secret::new(text.lines().next().unwrap_or("").trim())));
        }
        Ok(self.password.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://bob:hunter2@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(
            redact_url("host=db user=bob password=hunter2 dbname=x"),
            "host=db user=bob password=*** dbname=x"
        );
        let mut c = TimescaleConfig::new("postgres://bob:hunter2@db/x");
        c.password = Some(Secret::new("hunter3"));
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("hunter3"),
            "{dbg}"
        );
    }

    #[test]
    fn conflict_policies_default_to_first_wins_and_name_unknown_tables() {
        let c: TimescaleConfig = toml::from_str("url = \"postgres://u@h/d\"").unwrap();
        for t in [
            "bar__tick_imbalance",
            "bar__volume_imbalance",
            "bar__vpin",
            "bar__kline",
        ] {
            assert_eq!(c.conflict.of(t), ConflictPolicy::FirstWins, "{t}");
        }
        let c: TimescaleConfig =
            toml::from_str("url = \"postgres://u@h/d\"\n[conflict]\nbar__kline = \"last_wins\"\n")
                .unwrap();
        assert_eq!(c.conflict.of("bar__kline"), ConflictPolicy::LastWins);
        assert_eq!(c.conflict.of("bar__vpin"), ConflictPolicy::FirstWins);
        let err = toml::from_str::<TimescaleConfig>(
            "url = \"postgres://u@h/d\"\n[conflict]\nbar__klines = \"last_wins\"\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("bar__klines") && err.contains("bar__kline"),
            "{err}"
        );
        let err = toml::from_str::<TimescaleConfig>(
            "url = \"postgres://u@h/d\"\n[conflict]\nbar__kline = \"newest\"\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("newest") && err.contains("last_wins"), "{err}");
    }

    #[test]
    fn schema_must_be_an_identifier() {
        let mut c = TimescaleConfig::new("postgres://u@h/d");
        c.validate().unwrap();
        for bad in ["", "Mart", "1mart", "mart; drop", "ma-rt"] {
            c.schema = bad.into();
            assert!(
                c.validate().unwrap_err().contains("timescale.schema"),
                "{bad}"
            );
        }
    }
}
