//! `[influx]` configuration.
//!
//! Two write APIs (`api`): `"v2"` (default) posts to `/api/v2/write` with
//! `org` and `bucket` (InfluxDB 2.x, 3, VictoriaMetrics); `"v1"` posts to
//! `/write?db=…&rp=…` with `database` and `retention_policy` (InfluxDB 1.x,
//! and the 1.x compatibility endpoint of 2.x and 3). Under v1 a destination's
//! `bucket` is `"database"` or `"database/retention_policy"`, InfluxDB's own
//! convention for mapping one onto the other. Invariant, checked by
//! [`InfluxConfig::validate`]: the keys of the other API are not set, so a
//! config never means something it does not say.

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

/// Which write API the sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `POST /api/v2/write?org=…&bucket=…` (InfluxDB 2.x, 3, VictoriaMetrics).
    #[default]
    V2,
    /// `POST /write?db=…&rp=…` (InfluxDB 1.x; 2.x and 3 accept it too).
    V1,
}

/// `[influx]`: the InfluxDB sink.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    /// `"v2"` (default) or `"v1"`.
    #[serde(default)]
    pub api: Api,
    /// v2: the organisation.
    #[serde(default)]
    pub org: String,
    /// v2: default bucket.
    #[serde(default)]
    pub bucket: String,
    /// v1: default database.
    #[serde(default)]
    pub database: Option<String>,
    /// v1: retention policy of the default database; unset = the database's
    /// default policy.
    #[serde(default)]
    pub retention_policy: Option<String>,
    /// v1: user name, sent with `password` as HTTP Basic authentication
    /// (never in the URL, so it cannot end up in a proxy's access log).
    #[serde(default)]
    pub username: Option<String>,
    /// v1: password. `WALRELAY_INFLUX_PASSWORD` wins over it.
    #[serde(default)]
    pub password: Option<Secret>,
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
            .field("api", &self.api)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("database", &self.database)
            .field("retention_policy", &self.retention_policy)
            .field("username", &self.username)
            .field("password", &self.password)
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
            api: Api::V2,
            org: org.into(),
            bucket: bucket.into(),
            database: None,
            retention_policy: None,
            username: None,
            password: None,
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

    /// A v1 config (InfluxDB 1.x `/write`) for `database` at `url`, with
    /// defaults for everything else.
    pub fn v1(url: impl Into<String>, database: impl Into<String>) -> Self {
        let mut c = InfluxConfig::new(url, "", "");
        c.api = Api::V1;
        c.database = Some(database.into());
        c
    }

    /// Checks that the keys belong to the chosen API and that v1 buckets
    /// name `database` or `database/retention_policy`.
    ///
    /// # Errors
    /// A message naming the offending key (or route).
    pub fn validate(&self) -> Result<(), String> {
        match self.api {
            Api::V2 => {
                for (key, set) in [
                    ("database", self.database.is_some()),
                    ("retention_policy", self.retention_policy.is_some()),
                    ("username", self.username.is_some()),
                    ("password", self.password.is_some()),
                ] {
                    if set {
                        return Err(format!("influx.{key} is a key of api = \"v1\"; with api = \"v2\" (the default) set influx.org and influx.bucket"));
                    }
                }
                if self.org.is_empty() || self.bucket.is_empty() {
                    return Err("influx.org and influx.bucket are required with api = \"v2\" (the default; set api = \"v1\" and influx.database for InfluxDB 1.x)".into());
                }
            }
            Api::V1 => {
                if !self.org.is_empty() || !self.bucket.is_empty() {
                    return Err("influx.org and influx.bucket are keys of api = \"v2\"; with api = \"v1\" set influx.database (and influx.retention_policy)".into());
                }
                match &self.database {
                    None => return Err("influx.database is required with api = \"v1\"".into()),
                    Some(d) if d.is_empty() || d.contains('/') => {
                        return Err(format!(
                            "influx.database = {d:?} must be a non-empty name without '/'"
                        ))
                    }
                    _ => {}
                }
                if matches!(&self.retention_policy, Some(rp) if rp.is_empty() || rp.contains('/')) {
                    return Err("influx.retention_policy must be a non-empty name without '/' (or unset for the database's default)".into());
                }
                if self.username.is_some() != self.password.is_some() {
                    return Err("influx.username and influx.password go together (HTTP Basic authentication)".into());
                }
                if self.username.is_some() && (self.token.is_some() || self.token_file.is_some()) {
                    return Err(
                        "set either influx.username/password or influx.token, not both".into(),
                    );
                }
                for (route, d) in &self.routes {
                    if d.org.is_some() {
                        return Err(format!(
                            "influx.routes.\"{route}\".org is a key of api = \"v2\""
                        ));
                    }
                    if split_bucket(&d.bucket).is_none() {
                        return Err(format!("influx.routes.\"{route}\".bucket = {:?}: with api = \"v1\" it names \"database\" or \"database/retention_policy\"", d.bucket));
                    }
                }
            }
        }
        Ok(())
    }

    /// The password: `WALRELAY_INFLUX_PASSWORD`, else `password`.
    pub fn resolve_password(&self) -> Option<Secret> {
        match std::env::var("WALRELAY_INFLUX_PASSWORD") {
            Ok(p) => Some(Secret::new(p)),
            Err(_) => self.password.clone(),
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

    /// The default destination's bucket: `bucket` (v2), or `database` or
    /// `database/retention_policy` (v1).
    pub fn default_bucket(&self) -> String {
        match (self.api, &self.database, &self.retention_policy) {
            (Api::V2, _, _) => self.bucket.clone(),
            (Api::V1, Some(db), Some(rp)) => format!("{db}/{rp}"),
            (Api::V1, Some(db), None) => db.clone(),
            (Api::V1, None, _) => String::new(),
        }
    }

    /// The routing table with the default destination.
    pub fn routes(&self) -> Routes<Destination> {
        Routes::new(
            self.routes.clone(),
            Destination {
                bucket: self.default_bucket(),
                org: None,
                url: None,
            },
        )
    }
}

/// A v1 bucket, `"database"` or `"database/retention_policy"`, as (database,
/// retention policy); `None` when a part is empty or there are more.
pub fn split_bucket(bucket: &str) -> Option<(&str, Option<&str>)> {
    let mut parts = bucket.split('/');
    let db = parts.next().filter(|d| !d.is_empty())?;
    let rp = match parts.next() {
        None => None,
        Some(rp) if !rp.is_empty() => Some(rp),
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((db, rp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_buckets_name_a_database_and_maybe_a_retention_policy() {
        assert_eq!(split_bucket("market"), Some(("market", None)));
        assert_eq!(
            split_bucket("market/hourly"),
            Some(("market", Some("hourly")))
        );
        for bad in ["", "/x", "x/", "a/b/c"] {
            assert_eq!(split_bucket(bad), None, "{bad}");
        }
        let mut c = InfluxConfig::v1("http://influx.example:8086", "market");
        assert_eq!(c.default_bucket(), "market");
        c.retention_policy = Some("hourly".into());
        assert_eq!(c.default_bucket(), "market/hourly");
        c.validate().unwrap();
    }

    #[test]
    fn keys_of_the_other_api_are_refused_by_name() {
        let mut c = InfluxConfig::v1("http://influx.example:8086", "market");
        c.bucket = "b".into();
        assert!(c.validate().unwrap_err().contains("influx.bucket"));
        let mut c = InfluxConfig::v1("http://influx.example:8086", "market");
        c.username = Some("u".into());
        assert!(c.validate().unwrap_err().contains("influx.password"));
        c.password = Some(Secret::new("hunter2"));
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("hunter2"), "password in Debug");
        c.token = Some(Secret::new("t"));
        assert!(c.validate().unwrap_err().contains("not both"));
        let mut c = InfluxConfig::v1("http://influx.example:8086", "market");
        c.routes.insert(
            "BINANCE".into(),
            Destination {
                bucket: "a/b/c".into(),
                org: None,
                url: None,
            },
        );
        let e = c.validate().unwrap_err();
        assert!(e.contains("routes.\"BINANCE\".bucket"), "{e}");
        let mut c = InfluxConfig::new("http://influx.example:8086", "acme", "market");
        c.validate().unwrap();
        c.database = Some("d".into());
        assert!(c.validate().unwrap_err().contains("influx.database"));
        let c = InfluxConfig::new("http://influx.example:8086", "", "market");
        assert!(c.validate().unwrap_err().contains("influx.org"));
    }
}
