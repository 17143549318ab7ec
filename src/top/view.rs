//! What `walrelay top` shows, computed from two samples of a relay's
//! `/status` and `/metrics`: pure functions, unit-tested without a terminal.
//!
//! Rates (ingest, drain, retries) are differences of counters between the
//! two samples divided by the time between them; with one sample they are
//! unknown and shown as `-`. The ETA is the relay's own (`/status`
//! `eta_seconds`: backlog over its recent drain rate).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

/// One scrape of a relay: its `/status` document and its `/metrics` counters.
#[derive(Debug, Clone)]
pub struct Sample {
    pub status: Value,
    /// Every sample line of `/metrics`: `name{labels}` → value.
    pub metrics: BTreeMap<String, f64>,
}

impl Sample {
    /// Parses what the two endpoints returned.
    ///
    /// # Errors
    /// A message naming what is missing when `status` is not a relay's
    /// `/status` document.
    pub fn parse(status: &str, metrics: &str) -> Result<Sample, String> {
        let status: Value =
            serde_json::from_str(status).map_err(|e| format!("/status is not JSON: {e}"))?;
        if !status["log"].is_object() || !status["sinks"].is_array() {
            return Err("/status has no `log` object or `sinks` array: not a walrelay?".into());
        }
        Ok(Sample {
            status,
            metrics: parse_metrics(metrics),
        })
    }

    /// Sum of every series of metric `name` whose labels include all of `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.metrics
            .iter()
            .filter(|(k, _)| {
                let (n, labels) = k.split_once('{').unwrap_or((k.as_str(), ""));
                n == name
                    && with
                        .iter()
                        .all(|(l, v)| labels.contains(&format!("{l}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn sink(&self, name: &str) -> Option<&Value> {
        self.status["sinks"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
    }
}

/// `name{labels} value` lines of a Prometheus text exposition.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// One sink's row.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkRow {
    pub name: String,
    pub state: String,
    pub backlog_records: u64,
    pub backlog_bytes: u64,
    /// Records/s confirmed between the samples.
    pub drain_rate: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub oldest_age_seconds: Option<f64>,
    pub dead_letters: u64,
    /// Failed attempts/s between the samples.
    pub retry_rate: Option<f64>,
    pub last_error: Option<String>,
}

/// Everything one screen shows.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub log_bytes: u64,
    pub log_max_bytes: u64,
    pub log_records: u64,
    pub dropped_records: u64,
    /// Records/s appended between the samples.
    pub ingest_rate: Option<f64>,
    /// 99th percentile of the acknowledgement latency between the samples
    /// (upper bound of its histogram bucket), seconds.
    pub ack_p99: Option<f64>,
    pub sinks: Vec<SinkRow>,
    /// `[wal] retain`'s range and any rewinds, one line each (empty with
    /// retention off and no rewind).
    pub retention: Vec<String>,
}

/// The retained range and the rewinds of a `/status` document, as lines.
fn retention_lines(status: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let r = &status["log"]["retained"];
    if r.is_object() {
        let t = |v: &Value| {
            v.as_i64()
                .filter(|n| *n != i64::MIN)
                .map(|n| {
                    chrono::DateTime::from_timestamp_nanos(n)
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                })
                .unwrap_or_else(|| "-".into())
        };
        out.push(format!(
            "retain  {} records   {}   events {} .. {}   dropped for room {}",
            count(u(&r["records"])),
            bytes(u(&r["bytes"])),
            t(&r["oldest_event_ns"]),
            t(&r["newest_event_ns"]),
            count(u(&r["dropped"]))
        ));
    }
    if let Some(map) = status["rewinds"].as_object() {
        for (sink, r) in map {
            let state = match (r["done"].as_bool(), r["error"].as_str()) {
                (_, Some(e)) => format!("failed: {e}"),
                (Some(true), _) => "done".to_string(),
                _ => "running".to_string(),
            };
            out.push(format!(
                "rewind  {sink}: {} of {} frames, {} records, {state}",
                count(u(&r["frames"])),
                count(u(&r["frames_total"])),
                count(u(&r["records"]))
            ));
        }
    }
    out
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_f64().map(|f| f as u64))
        .unwrap_or(0)
}

/// The view of `now`, with rates against `before` taken `elapsed` earlier.
pub fn view(before: Option<&Sample>, now: &Sample, elapsed: Duration) -> View {
    let secs = elapsed.as_secs_f64();
    let rate = |a: f64, b: f64| (secs > 0.0).then(|| ((b - a) / secs).max(0.0));
    let log = &now.status["log"];
    let ingest_rate = before.and_then(|b| {
        rate(
            u(&b.status["log"]["appended_records"]) as f64,
            u(&log["appended_records"]) as f64,
        )
    });
    let sinks = now.status["sinks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let name = s["name"].as_str().unwrap_or("?").to_string();
            let prev = before.and_then(|b| b.sink(&name));
            let retries = |x: &Sample| x.sum(crate::metrics::SINK_RETRIES, &[("sink", &name)]);
            SinkRow {
                state: s["state"].as_str().unwrap_or("?").to_string(),
                backlog_records: u(&s["backlog_records"]),
                backlog_bytes: u(&s["backlog_bytes"]),
                drain_rate: prev.and_then(|p| {
                    rate(
                        u(&p["delivered_records"]) as f64,
                        u(&s["delivered_records"]) as f64,
                    )
                }),
                eta_seconds: s["eta_seconds"].as_f64(),
                oldest_age_seconds: s["oldest_undelivered_age_seconds"].as_f64(),
                dead_letters: u(&s["dead_letters"]),
                retry_rate: before.and_then(|b| rate(retries(b), retries(now))),
                last_error: s["last_error"].as_str().map(str::to_string),
                name,
            }
        })
        .collect();
    View {
        log_bytes: u(&log["bytes"]),
        log_max_bytes: u(&log["max_bytes"]),
        log_records: u(&log["records"]),
        dropped_records: u(&log["dropped_records"]),
        ingest_rate,
        ack_p99: before.and_then(|b| ack_p99(b, now)),
        sinks,
        retention: retention_lines(&now.status),
    }
}

/// The 99th percentile of `walrelay_append_ack_seconds` over the appends
/// between two samples: the upper bound of the first bucket holding 99 % of
/// them (as Prometheus' `histogram_quantile` would bound it).
fn ack_p99(before: &Sample, now: &Sample) -> Option<f64> {
    let name = "walrelay_append_ack_seconds_bucket{le=\"";
    let mut buckets: Vec<(f64, f64)> = now
        .metrics
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(name)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, v - before.metrics.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, n)| *n >= 0.99 * total)
        .map(|(b, _)| *b)
}

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units with one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Seconds as `45s`, `12m05s`, `3h20m`, `2d04h`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn rate(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 100.0 => count(r.round() as u64),
        Some(r) => format!("{r:.1}"),
        None => "-".into(),
    }
}

fn latency(s: f64) -> String {
    if s.is_infinite() {
        "> 10 s".into()
    } else if s < 1.0 {
        format!("≤ {} ms", s * 1000.0)
    } else {
        format!("≤ {s} s")
    }
}

/// The screen's lines, each at most `width` characters.
pub fn render(v: &View, url: &str, header: &str, width: usize) -> Vec<String> {
    let fill = if v.log_max_bytes > 0 {
        format!(
            " ({:.1}%)",
            v.log_bytes as f64 * 100.0 / v.log_max_bytes as f64
        )
    } else {
        String::new()
    };
    let mut lines = vec![
        format!("walrelay top  {url}  {header}"),
        String::new(),
        format!(
            "log     {} of {}{fill}   {} records   dropped {}",
            bytes(v.log_bytes),
            bytes(v.log_max_bytes),
            count(v.log_records),
            count(v.dropped_records)
        ),
        format!(
            "ingest  {} records/s   ack p99 {}",
            rate(v.ingest_rate),
            v.ack_p99.map(latency).unwrap_or_else(|| "-".into())
        ),
    ];
    lines.extend(v.retention.iter().cloned());
    lines.extend([
        String::new(),
        format!(
            "{:<10} {:<10} {:>12} {:>10} {:>10} {:>10} {:>9} {:>8} {:>9}",
            "SINK", "STATE", "BACKLOG", "BYTES", "DRAIN/s", "ETA", "OLDEST", "DEAD", "RETRY/s"
        ),
    ]);
    for s in &v.sinks {
        let eta = if s.backlog_records == 0 {
            "caught up".to_string()
        } else {
            s.eta_seconds.map(duration).unwrap_or_else(|| "-".into())
        };
        lines.push(format!(
            "{:<10} {:<10} {:>12} {:>10} {:>10} {:>10} {:>9} {:>8} {:>9}",
            s.name,
            s.state,
            count(s.backlog_records),
            bytes(s.backlog_bytes),
            rate(s.drain_rate),
            eta,
            s.oldest_age_seconds
                .filter(|_| s.backlog_records > 0)
                .map(duration)
                .unwrap_or_else(|| "-".into()),
            count(s.dead_letters),
            rate(s.retry_rate),
        ));
        if let Some(e) = &s.last_error {
            if s.state != "healthy" {
                lines.push(format!("  last error: {e}"));
            }
        }
    }
    if v.sinks.is_empty() {
        lines.push("(no sink configured: records stay in the log)".into());
    }
    lines
        .into_iter()
        .map(|l| l.chars().take(width).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(appended: u64, delivered: u64, retries: u64, ack: &[(&str, u64)]) -> Sample {
        let status = serde_json::json!({
            "log": {"bytes": 3 * 1024 * 1024, "max_bytes": 10u64 << 30, "records": 1500,
                    "appended_records": appended, "dropped_records": 0},
            "sinks": [
                {"name": "influx", "state": "healthy", "backlog_records": 0, "backlog_bytes": 0,
                 "delivered_records": delivered, "dead_letters": 0, "eta_seconds": null,
                 "oldest_undelivered_age_seconds": null, "last_error": null},
                {"name": "timescale", "state": "retrying", "backlog_records": 1500,
                 "backlog_bytes": 90000, "delivered_records": 0, "dead_letters": 2,
                 "eta_seconds": 754.0, "oldest_undelivered_age_seconds": 61.2,
                 "last_error": "cannot reach PostgreSQL at db.example: refused"}
            ]
        });
        let mut m = format!(
            "# TYPE walrelay_sink_retries_total counter\n\
             walrelay_sink_retries_total{{sink=\"timescale\",class=\"transient\"}} {retries}\n\
             walrelay_sink_retries_total{{sink=\"timescale\",class=\"config\"}} 1\n"
        );
        for (le, n) in ack {
            m.push_str(&format!(
                "walrelay_append_ack_seconds_bucket{{le=\"{le}\"}} {n}\n"
            ));
        }
        Sample::parse(&status.to_string(), &m).unwrap()
    }

    #[test]
    fn rates_are_counter_differences_over_the_interval() {
        let a = sample(1000, 400, 10, &[("0.001", 10), ("0.01", 10), ("+Inf", 10)]);
        let b = sample(
            3000,
            1400,
            14,
            &[("0.001", 20), ("0.01", 110), ("+Inf", 110)],
        );
        let v = view(Some(&a), &b, Duration::from_secs(2));
        assert_eq!(v.ingest_rate, Some(1000.0));
        assert_eq!(v.sinks[0].drain_rate, Some(500.0));
        assert_eq!(v.sinks[1].retry_rate, Some(2.0), "both classes summed");
        assert_eq!(v.sinks[0].retry_rate, Some(0.0));
        // 100 appends between the samples, 10 within 1 ms: p99 is ≤ 10 ms.
        assert_eq!(v.ack_p99, Some(0.01));
        let first = view(None, &b, Duration::ZERO);
        assert_eq!((first.ingest_rate, first.sinks[0].drain_rate), (None, None));
        assert_eq!(first.ack_p99, None);
    }

    #[test]
    fn render_shows_the_retained_range_and_a_rewind() {
        let mut b = sample(3000, 1400, 14, &[]);
        b.status["log"]["retained"] = serde_json::json!({
            "frames": 3, "records": 2520, "bytes": 200000, "dropped": 7,
            "oldest_event_ns": 1_764_000_000_000_000_000i64,
            "newest_event_ns": 1_764_003_540_000_000_000i64, "horizon_ns": null});
        b.status["rewinds"] = serde_json::json!({"influx": {"frames": 2, "frames_total": 6,
            "records": 800, "dead_lettered": 0, "resumed_after": null, "done": false, "error": null}});
        let text = render(&view(None, &b, Duration::from_secs(2)), "u", "h", 200).join("\n");
        assert!(
            text.contains("retain  2,520 records   195.3 KiB   events 2025-11-24T16:00:00Z .. 2025-11-24T16:59:00Z   dropped for room 7"),
            "{text}"
        );
        assert!(
            text.contains("rewind  influx: 2 of 6 frames, 800 records, running"),
            "{text}"
        );
        // Retention off: no line.
        let plain = render(
            &view(None, &sample(1, 1, 1, &[]), Duration::from_secs(2)),
            "u",
            "h",
            200,
        );
        assert!(!plain.join("\n").contains("retain "));
    }

    #[test]
    fn render_shows_every_column_and_the_last_error_of_an_unhealthy_sink() {
        let a = sample(1000, 400, 10, &[]);
        let b = sample(3000, 1400, 14, &[]);
        let lines = render(
            &view(Some(&a), &b, Duration::from_secs(2)),
            "http://127.0.0.1:8429",
            "12:00:00",
            200,
        );
        let text = lines.join("\n");
        assert!(
            text.contains("log     3.0 MiB of 10.0 GiB (0.0%)   1,500 records"),
            "{text}"
        );
        assert!(text.contains("ingest  1,000 records/s"), "{text}");
        let influx = lines.iter().find(|l| l.starts_with("influx")).unwrap();
        assert!(
            influx.contains("healthy") && influx.contains("caught up") && influx.contains(" 500"),
            "{influx}"
        );
        let ts = lines.iter().find(|l| l.starts_with("timescale")).unwrap();
        for want in [
            "retrying", "1,500", "87.9 KiB", "12m34s", "1m01s", " 2 ", "2.0",
        ] {
            assert!(ts.contains(want), "{want:?} missing: {ts}");
        }
        assert!(
            text.contains("  last error: cannot reach PostgreSQL at db.example: refused"),
            "{text}"
        );
        assert!(render(&view(None, &b, Duration::ZERO), "u", "c", 30)
            .iter()
            .all(|l| l.chars().count() <= 30));
    }

    #[test]
    fn formats() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(59.4), "59s");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(duration(90_000.0), "1d01h");
        assert_eq!(duration(f64::INFINITY), "-");
        assert!(Sample::parse("{}", "").is_err());
        assert!(Sample::parse("not json", "").is_err());
    }
}
