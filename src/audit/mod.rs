//! Audit and rewind: prove that a database holds everything the log
//! accepted, and refill it from the retained frames.
//!
//! - [`audit`]: per minute and per series, the count the log accepted (from
//!   the counts kept with the frames, `wal/retention.rs`; no record is
//!   decoded) against the count the database holds, asked of the database
//!   itself: SQL `count(*)` grouped by minute and dimensions on each
//!   TimescaleDB fact table, InfluxQL `count(*)` over `/query` grouped by
//!   `time(1m)` and the tags (InfluxDB 1.x and 2.x both answer it).
//! - [`rewind`] (`rewind.rs`): one sink delivers again the retained records
//!   of a window (or of chosen minutes and series), through its own sink code,
//!   so re-delivery is as harmless as any retry: TimescaleDB's
//!   `first_wins`/`last_wins` keep one row per key, InfluxDB overwrites the
//!   point with the same identity.
//!
//! Invariants:
//! - The window is whole minutes: `since` rounds down, `until` up.
//! - A window that starts before the log's horizon (events before it may be
//!   missing from the log, or retention is off) is [`AuditError::PastRetention`],
//!   never a report that could hide a gap.
//! - Counting compares records, not keys: two accepted records with the same
//!   database key (a duplicate the sink folds into one row or point) show as
//!   one missing. The identity timestamps of typed ingest keep Influx points
//!   apart; TimescaleDB keys are the bar's (time, symbol, exchange, interval).
//! - Only the default InfluxDB destination is queried (`[influx.routes]` to
//!   other buckets are not audited).

mod rewind;
mod time;

pub use rewind::{rewind, RewindReport, RewindRequest};
pub use time::parse_time;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::db::influx::{Api, InfluxConfig};
use crate::db::timescale::table::FACT_TABLES;
use crate::db::timescale::TimescaleConfig;
use crate::wal::{minute_of, Series, Wal};

const MINUTE_NS: i64 = 60_000_000_000;

/// What goes wrong while auditing or rewinding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The window reaches before what the log holds completely (or
    /// retention is off): the audit cannot tell.
    #[error("the window starts at {since} but the log is complete only from {horizon}: it reaches past retention")]
    PastRetention { since: String, horizon: String },
    /// A time argument that is neither RFC 3339 nor relative (`-2h`).
    #[error("{what} {value:?}: {detail}")]
    BadTime {
        what: &'static str,
        value: String,
        detail: String,
    },
    /// A sink name that is not configured.
    #[error("no sink {0:?} is configured (configured: {1})")]
    NoSink(String, String),
    /// The log failed.
    #[error("log: {0}")]
    Wal(#[from] crate::wal::WalError),
    /// The database refused or did not answer the count query.
    #[error("{sink}: {detail}")]
    Database { sink: &'static str, detail: String },
}

impl AuditError {
    /// The error's class, for exit codes: `past_retention` (exit 2) or
    /// `failed`.
    pub fn class(&self) -> &'static str {
        match self {
            AuditError::PastRetention { .. } => "past_retention",
            _ => "failed",
        }
    }
}

/// One minute of one series where the log and the database disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Start of the minute, RFC 3339.
    pub minute: String,
    /// Unix minute.
    pub unix_minute: u32,
    #[serde(flatten)]
    pub series: Series,
    /// Records the log accepted.
    pub accepted: u64,
    /// Rows or points the database holds.
    pub stored: u64,
}

impl Difference {
    /// Fewer in the database than the log accepted.
    pub fn missing(&self) -> bool {
        self.stored < self.accepted
    }
}

/// The outcome of one audit.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub since: String,
    pub until: String,
    pub sinks: Vec<String>,
    pub series: usize,
    pub accepted: u64,
    pub stored: u64,
    pub differences: Vec<Difference>,
}

impl AuditReport {
    /// Whether the database matches the log in every minute and series.
    pub fn clean(&self) -> bool {
        self.differences.is_empty()
    }

    /// The text `walrelay audit` prints.
    pub fn render(&self) -> String {
        let mut out = format!(
            "audit {} .. {} ({}): {} series, {} records accepted, {} stored\n",
            self.since,
            self.until,
            self.sinks.join(", "),
            self.series,
            self.accepted,
            self.stored
        );
        for d in &self.differences {
            out.push_str(&format!(
                "{} {} {}: accepted {}, stored {} ({} {})\n",
                if d.missing() { "MISSING" } else { "EXTRA  " },
                d.minute,
                d.series,
                d.accepted,
                d.stored,
                d.accepted.abs_diff(d.stored),
                if d.missing() { "missing" } else { "extra" },
            ));
        }
        out.push_str(&if self.clean() {
            "no differences\n".to_string()
        } else {
            format!("{} minutes × series differ\n", self.differences.len())
        });
        out
    }
}

fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The sinks an audit or rewind covers: `only`, or every configured one.
fn sinks_of(config: &Config, only: Option<&str>) -> Result<Vec<&'static str>, AuditError> {
    let all = config.sink_names();
    match only {
        None => Ok(all),
        Some(s) => all
            .iter()
            .find(|n| **n == s)
            .map(|n| vec![*n])
            .ok_or_else(|| AuditError::NoSink(s.to_string(), all.join(", "))),
    }
}

/// The whole-minute window `[since, until)` as Unix minutes `from..=to`.
fn minutes(since_ns: i64, until_ns: i64) -> (u32, u32) {
    (
        minute_of(since_ns),
        minute_of(until_ns.saturating_sub(1).max(since_ns)),
    )
}

/// Audits `[since_ns, until_ns)` of `sink` (or every sink): see the module doc.
///
/// # Errors
/// [`AuditError::PastRetention`] when the log cannot tell (exit 2), else the
/// log's or a database's failure.
pub async fn audit(
    config: &Config,
    wal: &Wal,
    since_ns: i64,
    until_ns: i64,
    sink: Option<&str>,
) -> Result<AuditReport, AuditError> {
    let sinks = sinks_of(config, sink)?;
    let (from, to) = minutes(since_ns, until_ns);
    let (since, until) = (i64::from(from) * MINUTE_NS, (i64::from(to) + 1) * MINUTE_NS);
    let accepted = wal.accepted_counts(since, until)?;
    match accepted.horizon_ns {
        Some(h) if h <= since => {}
        other => {
            return Err(AuditError::PastRetention {
                since: rfc3339(since),
                horizon: other.map_or("never (retention is off: [wal] retain)".into(), rfc3339),
            })
        }
    }
    let mut log: BTreeMap<(u32, Series), u64> = BTreeMap::new();
    for ((m, s), n) in accepted.counts {
        if sinks.contains(&s.sink) {
            log.insert((m, s), n);
        }
    }
    let mut db: BTreeMap<(u32, Series), u64> = BTreeMap::new();
    for s in &sinks {
        match *s {
            "timescale" => {
                if let Some(tc) = &config.timescale {
                    db.extend(timescale_counts(tc, since, until).await?);
                }
            }
            "influx" => {
                if let Some(ic) = &config.influx {
                    let mut ms: BTreeSet<String> =
                        INFLUX_MEASUREMENTS.iter().map(|m| m.to_string()).collect();
                    ms.extend(
                        log.keys()
                            .filter(|(_, s)| s.sink == "influx")
                            .map(|(_, s)| s.target.clone()),
                    );
                    db.extend(influx_counts(ic, &ms, since, until).await?);
                }
            }
            _ => {}
        }
    }
    let keys: BTreeSet<&(u32, Series)> = log.keys().chain(db.keys()).collect();
    let mut differences = Vec::new();
    for k in &keys {
        let (a, d) = (
            log.get(k).copied().unwrap_or(0),
            db.get(k).copied().unwrap_or(0),
        );
        if a != d {
            differences.push(Difference {
                minute: rfc3339(i64::from(k.0) * MINUTE_NS),
                unix_minute: k.0,
                series: k.1.clone(),
                accepted: a,
                stored: d,
            });
        }
    }
    Ok(AuditReport {
        since: rfc3339(since),
        until: rfc3339(until),
        sinks: sinks.iter().map(|s| s.to_string()).collect(),
        series: keys.iter().map(|k| &k.1).collect::<BTreeSet<_>>().len(),
        accepted: log.values().sum(),
        stored: db.values().sum(),
        differences,
    })
}

/// The measurements of the typed records (points add their own).
const INFLUX_MEASUREMENTS: [&str; 7] = [
    "trades",
    "orderbook",
    "funding_rate",
    "liquidation",
    "open_interest",
    "options_ticker",
    "price_index",
];

fn db_err(sink: &'static str) -> impl Fn(String) -> AuditError {
    move |detail| AuditError::Database { sink, detail }
}

/// Rows per minute and series in every fact table, counted by the database.
async fn timescale_counts(
    tc: &TimescaleConfig,
    since_ns: i64,
    until_ns: i64,
) -> Result<BTreeMap<(u32, Series), u64>, AuditError> {
    let err = db_err("timescale");
    let client = crate::db::timescale::connect(tc)
        .await
        .map_err(|e| err(e.to_string()))?;
    let schema = &tc.schema;
    let mut out = BTreeMap::new();
    for table in &FACT_TABLES {
        let sql = format!(
            "SELECT (floor(extract(epoch FROM f.time) / 60))::bigint, e.exchange, s.symbol, i.\"interval\", count(*)::bigint \
             FROM {schema}.{t} f \
             JOIN {schema}.dim_symbol s ON s.symbol_id = f.symbol_id \
             JOIN {schema}.dim_exchange e ON e.exchange_id = f.exchange_id \
             JOIN {schema}.dim_interval i ON i.interval_id = f.interval_id \
             WHERE f.time >= 'epoch'::timestamptz + $1::bigint * interval '1 microsecond' \
               AND f.time < 'epoch'::timestamptz + $2::bigint * interval '1 microsecond' \
             GROUP BY 1, 2, 3, 4",
            t = table.name
        );
        let rows = tokio::time::timeout(
            Duration::from_millis(tc.statement_timeout_ms.max(1000) * 4),
            client.query(&sql, &[&(since_ns / 1000), &(until_ns / 1000)]),
        )
        .await
        .map_err(|_| err(format!("count on {} timed out", table.name)))?
        .map_err(|e| err(format!("count on {}: {e}", table.name)))?;
        for r in rows {
            let minute: i64 = r.get(0);
            let series = Series {
                sink: "timescale",
                target: table.name.to_string(),
                exchange: r.get(1),
                symbol: r.get(2),
                interval: r.get(3),
            };
            let n: i64 = r.get(4);
            *out.entry((minute.max(0) as u32, series)).or_default() += n as u64;
        }
    }
    Ok(out)
}

/// Points per minute and series in `measurements` of the default
/// destination, counted by InfluxQL over `/query`.
async fn influx_counts(
    ic: &InfluxConfig,
    measurements: &BTreeSet<String>,
    since_ns: i64,
    until_ns: i64,
) -> Result<BTreeMap<(u32, Series), u64>, AuditError> {
    let err = db_err("influx");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(ic.timeout_ms.max(1000) * 4))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let bucket = ic.default_bucket();
    let (db, rp) = match ic.api {
        Api::V1 => match bucket.split_once('/') {
            Some((d, r)) => (d, Some(r)),
            None => (bucket.as_str(), None),
        },
        Api::V2 => (bucket.as_str(), None),
    };
    let mut out = BTreeMap::new();
    for m in measurements {
        let q = format!(
            "SELECT count(*) FROM \"{}\" WHERE time >= {since_ns} AND time < {until_ns} GROUP BY time(1m), * fill(none)",
            m.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let mut req = http
            .get(format!("{}/query", ic.url.trim_end_matches('/')))
            .query(&[("db", db), ("q", q.as_str()), ("epoch", "ns")]);
        if let Some(rp) = rp {
            req = req.query(&[("rp", rp)]);
        }
        if let (Some(user), Some(pw)) = (&ic.username, ic.resolve_password()) {
            req = req.basic_auth(user, Some(pw.expose()));
        } else if let Some(t) = ic.resolve_token().map_err(&err)? {
            req = req.header("Authorization", format!("Token {}", t.expose()));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| err(format!("query {m}: {e}")))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| err(format!("query {m}: HTTP {status}: {e}")))?;
        if !status.is_success() {
            return Err(err(format!("query {m}: HTTP {status}: {body}")));
        }
        for result in body["results"].as_array().into_iter().flatten() {
            if let Some(e) = result["error"].as_str() {
                return Err(err(format!("query {m}: {e}")));
            }
            for s in result["series"].as_array().into_iter().flatten() {
                let tag = |k: &str| s["tags"][k].as_str().unwrap_or("").to_string();
                let symbol = if m == "price_index" {
                    tag("index_name")
                } else {
                    tag("symbol")
                };
                let series = Series {
                    sink: "influx",
                    target: m.clone(),
                    exchange: tag("exchange"),
                    symbol,
                    interval: String::new(),
                };
                for row in s["values"].as_array().into_iter().flatten() {
                    let Some(row) = row.as_array() else { continue };
                    let t = row.first().and_then(|v| v.as_i64()).unwrap_or(0);
                    // count(*) answers one column per field; a point has them all.
                    let n = row[1..]
                        .iter()
                        .filter_map(|v| v.as_u64())
                        .max()
                        .unwrap_or(0);
                    if n > 0 {
                        *out.entry((minute_of(t), series.clone())).or_default() += n;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The minutes and series an audit found missing, for `--repair`.
pub fn missing(report: &AuditReport) -> BTreeSet<(u32, Series)> {
    report
        .differences
        .iter()
        .filter(|d| d.missing())
        .map(|d| (d.unix_minute, d.series.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_tables_and_measurements_the_sinks_write() {
        let mut label = String::new();
        for r in crate::record::codec_samples() {
            crate::wal::series_label(&r, &mut label);
            let s = Series::from_label(&label).unwrap();
            match crate::db::timescale::table::FactTable::of(&r) {
                Some(t) => assert_eq!((s.sink, s.target.as_str()), ("timescale", t.name)),
                None => assert_eq!(
                    (s.sink, s.target.as_str()),
                    ("influx", crate::db::influx::measurement(&r))
                ),
            }
        }
    }
}
