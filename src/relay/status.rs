//! The `/status` view, InfluxDB's `/health` shape built from it, and the
//! gauges of `/metrics`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Relay;
use crate::drain::{HealthSnapshot, SinkState};
use crate::metrics::{self, Gauge};

/// Everything `GET /status` and `walrelay status` show.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub log: LogStatus,
    pub sinks: Vec<SinkStatus>,
    /// One row per gRPC subscription (empty without `[grpc]`).
    pub subscriptions: Vec<crate::ingest::grpc::SubscriptionSnapshot>,
    /// Rewinds started through `POST /admin/rewind`, by sink.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rewinds: std::collections::BTreeMap<String, crate::drain::rewind::RewindReport>,
}

/// The log's size and counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogStatus {
    pub dir: String,
    pub bytes: u64,
    pub max_bytes: u64,
    pub records: u64,
    pub frames: u64,
    pub last_seq: u64,
    pub appended_records: u64,
    pub dropped_records: u64,
    pub quarantined_frames: u64,
    /// The last append was refused because the log was full (under
    /// `when_full = "block"`); false again once an append is accepted.
    /// Absent from older relays' `/status`, hence the default.
    #[serde(default)]
    pub refusing_full: bool,
    /// Bytes held by dead letters (all sinks) and their bound.
    pub dead_letter_bytes: u64,
    pub dead_letter_max_bytes: u64,
    /// Why the log refuses appends (failed after an I/O error, disk full);
    /// absent while it accepts them.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unavailable: Option<String>,
    /// Delivered frames kept for `[wal] retain`; absent with retention off.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retained: Option<crate::wal::Retained>,
}

/// One sink's progress and health.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStatus {
    pub name: String,
    pub cursor: u64,
    pub backlog_records: u64,
    pub backlog_bytes: u64,
    /// Age of the oldest undelivered record (by commit time), seconds.
    pub oldest_undelivered_age_seconds: Option<f64>,
    /// Backlog divided by the recent drain rate, seconds.
    pub eta_seconds: Option<f64>,
    pub dead_letters: u64,
    /// Dead letters deleted to keep within `wal.dead_letter_max_bytes`.
    pub dead_letters_dropped: u64,
    #[serde(flatten)]
    pub health: HealthSnapshot,
}

/// `GET /health` in InfluxDB's shape (`name`, `message`, `status`,
/// `checks`, `version`, `commit`), with walrelay's facts as checks.
#[derive(Debug, Clone, Serialize)]
pub struct InfluxHealth {
    pub name: &'static str,
    pub message: String,
    /// `pass` or `fail`.
    pub status: &'static str,
    pub checks: Vec<HealthCheck>,
    pub version: &'static str,
    pub commit: &'static str,
}

/// One check of [`InfluxHealth`] (InfluxDB's `HealthCheck` shape).
#[derive(Debug, Clone, Serialize)]
pub struct HealthCheck {
    pub name: String,
    pub message: String,
    /// `pass` or `fail`.
    pub status: &'static str,
    pub checks: Vec<HealthCheck>,
}

fn pass_fail(ok: bool) -> &'static str {
    if ok {
        "pass"
    } else {
        "fail"
    }
}

impl Status {
    /// This status in InfluxDB's `/health` shape. The overall `status`
    /// answers what a writer asks — will a write here be accepted and kept?
    /// — so it is the `log` check's: `fail` only when the log refuses writes:
    /// it is unavailable (failed after an I/O error, disk nearly full; the
    /// reason is the message) or full (the last append was refused as full,
    /// or, under `when_full = "block"`, it holds `max_bytes`). A sink that is
    /// not healthy fails its own
    /// `sink:NAME` check but not the relay: buffering through a sink outage is
    /// the relay's job, and a load balancer that took the relay out of
    /// rotation for it would turn a sink outage into an ingest outage.
    pub fn influx_health(
        &self,
        blocks_when_full: bool,
        version: &'static str,
        commit: &'static str,
    ) -> InfluxHealth {
        let log = &self.log;
        let full = log.refusing_full || (blocks_when_full && log.bytes >= log.max_bytes);
        let refusing = match (&log.unavailable, full) {
            (Some(reason), _) => Some(format!("refuses writes: {reason}")),
            (None, true) => Some("full, writes are refused".to_string()),
            (None, false) => None,
        };
        let pct = if log.max_bytes > 0 {
            log.bytes as f64 * 100.0 / log.max_bytes as f64
        } else {
            0.0
        };
        let mut checks = vec![HealthCheck {
            name: "log".into(),
            message: format!(
                "{}{} of {} bytes ({pct:.1}%), {} records, last seq {}, {} quarantined frames",
                refusing
                    .as_deref()
                    .map(|r| format!("{r}: "))
                    .unwrap_or_default(),
                log.bytes,
                log.max_bytes,
                log.records,
                log.last_seq,
                log.quarantined_frames
            ),
            status: pass_fail(refusing.is_none()),
            checks: Vec::new(),
        }];
        for s in &self.sinks {
            let healthy = s.health.state == SinkState::Healthy;
            let mut message = format!(
                "{}; backlog {} records, {} dead letters",
                serde_json::to_value(s.health.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                s.backlog_records,
                s.dead_letters
            );
            if let (false, Some(e)) = (healthy, &s.health.last_error) {
                message.push_str(&format!("; last error: {e}"));
            }
            checks.push(HealthCheck {
                name: format!("sink:{}", s.name),
                message,
                status: pass_fail(healthy),
                checks: Vec::new(),
            });
        }
        InfluxHealth {
            name: "walrelay",
            message: match &refusing {
                Some(r) => format!("write-ahead log {r}"),
                None => "ready for writes".into(),
            },
            status: pass_fail(refusing.is_none()),
            checks,
            version,
            commit,
        }
    }
}

/// The client side of `GET /status` (what `walrelay status` decodes):
/// [`Status`] itself is not `Deserialize` because its health part is the
/// drainer's snapshot, so this view names the fields the CLI prints, typed.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusView {
    pub log: LogStatus,
    pub sinks: Vec<SinkView>,
}

/// One sink as `GET /status` shows it ([`SinkStatus`] with its health
/// flattened in).
#[derive(Debug, Clone, Deserialize)]
pub struct SinkView {
    pub name: String,
    pub state: String,
    pub cursor: u64,
    pub backlog_records: u64,
    pub backlog_bytes: u64,
    pub oldest_undelivered_age_seconds: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub delivered_records: u64,
    pub dead_letters: u64,
    pub last_error: Option<String>,
}

impl StatusView {
    /// The text `walrelay status` prints, one line for the log and one per sink.
    pub fn render(&self) -> String {
        let log = &self.log;
        let mut out = format!(
            "log {}: {} records in {} frames, {} of {} bytes; appended {} ever, dropped {}, quarantined frames {}\n",
            log.dir,
            log.records,
            log.frames,
            log.bytes,
            log.max_bytes,
            log.appended_records,
            log.dropped_records,
            log.quarantined_frames
        );
        if let Some(why) = &log.unavailable {
            out.push_str(&format!("LOG REFUSES APPENDS: {why}\n"));
        }
        if let Some(r) = &log.retained {
            out.push_str(&format!("{}\n", render_retained(r)));
        }
        for s in &self.sinks {
            let eta = match s.eta_seconds {
                _ if s.backlog_records == 0 => "caught up".into(),
                Some(e) => format!("{e:.1}s"),
                None => "unknown (no recent deliveries)".into(),
            };
            out.push_str(&format!(
                "sink {:<10} {:<9} cursor {:>8}  backlog {:>9} records ({} bytes), oldest {:>7}s, ETA {eta}, delivered {}, dead letters {}{}\n",
                s.name,
                s.state,
                s.cursor,
                s.backlog_records,
                s.backlog_bytes,
                s.oldest_undelivered_age_seconds.map(|a| format!("{a:.1}")).unwrap_or("-".into()),
                s.delivered_records,
                s.dead_letters,
                s.last_error.as_ref().map(|e| format!("\n    last error: {e}")).unwrap_or_default()
            ));
        }
        out
    }
}

/// One line: the retained range (event times in RFC 3339) and its counters.
pub fn render_retained(r: &crate::wal::Retained) -> String {
    let t = |ns: Option<i64>| {
        ns.map(|n| {
            chrono::DateTime::from_timestamp_nanos(n)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|| "-".to_string())
    };
    format!(
        "retained {} records in {} frames (~{} bytes), events {} .. {}, complete since {}, retained dropped for room {}",
        r.records,
        r.frames,
        r.bytes,
        t(r.oldest_event_ns),
        t(r.newest_event_ns),
        if r.horizon_ns == Some(i64::MIN) {
            "the log's start".to_string()
        } else {
            t(r.horizon_ns)
        },
        r.dropped
    )
}

impl Relay {
    /// The current status.
    pub fn status(&self) -> Status {
        let s = self.wal.stats();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // Counters, not scans: cheap however many dead letters there are.
        let dl = self.wal.dead_letters().totals();
        let sinks = self
            .sinks
            .iter()
            .map(|h| {
                let b = self.wal.backlog(h.name).ok();
                let health = h.snapshot();
                let backlog_records = b.map(|b| b.records).unwrap_or(0);
                SinkStatus {
                    name: h.name.to_string(),
                    cursor: b.map(|b| b.cursor).unwrap_or(0),
                    backlog_records,
                    backlog_bytes: b.map(|b| b.bytes).unwrap_or(0),
                    oldest_undelivered_age_seconds: b
                        .and_then(|b| b.oldest_ms)
                        .map(|ms| now_ms.saturating_sub(ms) as f64 / 1000.0),
                    eta_seconds: (health.drain_rate > 0.0)
                        .then(|| backlog_records as f64 / health.drain_rate),
                    dead_letters: dl.get(h.name).map_or(0, |t| t.count),
                    dead_letters_dropped: dl.get(h.name).map_or(0, |t| t.dropped),
                    health,
                }
            })
            .collect();
        Status {
            log: LogStatus {
                dir: self.config.wal.dir.display().to_string(),
                bytes: s.bytes,
                max_bytes: s.max_bytes,
                records: s.records,
                frames: s.frames,
                last_seq: s.last_seq,
                appended_records: s.appended_records,
                dropped_records: s.dropped_records,
                quarantined_frames: s.quarantined_frames,
                refusing_full: self.ingest.refusing_full(),
                dead_letter_bytes: dl.values().map(|t| t.bytes).sum(),
                dead_letter_max_bytes: self.config.wal.dead_letter_max_bytes,
                unavailable: self.wal_unavailable(),
                retained: self
                    .config
                    .wal
                    .retain
                    .on()
                    .then(|| self.wal.retained().ok())
                    .flatten(),
            },
            sinks,
            subscriptions: self.subscriptions.iter().map(|h| h.snapshot()).collect(),
            rewinds: self.rewinds(),
        }
    }

    /// `/metrics` text: counters plus gauges computed now.
    pub fn render_metrics(&self) -> String {
        let st = self.status();
        let mut g: Vec<Gauge> = vec![
            (metrics::LOG_BYTES, vec![], st.log.bytes as f64),
            (metrics::LOG_MAX_BYTES, vec![], st.log.max_bytes as f64),
            (metrics::LOG_RECORDS, vec![], st.log.records as f64),
            (
                metrics::DROPPED_RECORDS,
                vec![],
                st.log.dropped_records as f64,
            ),
            (
                metrics::QUARANTINED_FRAMES,
                vec![],
                st.log.quarantined_frames as f64,
            ),
            (
                metrics::RETAINED_DROPPED,
                vec![],
                st.log.retained.map_or(0, |r| r.dropped) as f64,
            ),
            (
                metrics::RETAINED_RECORDS,
                vec![],
                st.log.retained.map_or(0, |r| r.records) as f64,
            ),
            (
                metrics::DEAD_LETTER_BYTES,
                vec![],
                st.log.dead_letter_bytes as f64,
            ),
            (
                metrics::LOG_ACCEPTING,
                vec![],
                if st.log.unavailable.is_none() {
                    1.0
                } else {
                    0.0
                },
            ),
        ];
        for s in &st.sinks {
            let l = vec![("sink", s.name.clone())];
            if let Some(r) = st.rewinds.get(&s.name) {
                g.push((metrics::REWIND_RECORDS, l.clone(), r.records as f64));
                g.push((
                    metrics::REWIND_FRAMES_LEFT,
                    l.clone(),
                    r.frames_total.saturating_sub(r.frames) as f64,
                ));
            }
            g.push((
                metrics::BACKLOG_RECORDS,
                l.clone(),
                s.backlog_records as f64,
            ));
            g.push((metrics::BACKLOG_BYTES, l.clone(), s.backlog_bytes as f64));
            g.push((
                metrics::OLDEST_UNDELIVERED_AGE,
                l.clone(),
                s.oldest_undelivered_age_seconds.unwrap_or(0.0),
            ));
            g.push((metrics::DEAD_LETTERS, l.clone(), s.dead_letters as f64));
            g.push((
                metrics::DEAD_LETTERS_DROPPED,
                l.clone(),
                s.dead_letters_dropped as f64,
            ));
            let state = match s.health.state {
                SinkState::Healthy => 0.0,
                SinkState::Retrying => 1.0,
                SinkState::Unhealthy => 2.0,
            };
            g.push((metrics::SINK_STATE, l, state));
        }
        for s in &st.subscriptions {
            let l = vec![("subscription", s.name.clone())];
            g.push((
                metrics::GRPC_LAST_MESSAGE_AGE,
                l.clone(),
                s.last_message_age_seconds.unwrap_or(-1.0),
            ));
            g.push((
                metrics::GRPC_STREAMING,
                l,
                if s.state == "streaming" { 1.0 } else { 0.0 },
            ));
        }
        g.sort_by(|a, b| a.0.cmp(b.0));
        self.metrics.render(&g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        bytes: u64,
        max_bytes: u64,
        refusing_full: bool,
        unavailable: Option<&str>,
        sinks: &[(&str, SinkState, Option<&str>)],
    ) -> Status {
        Status {
            log: LogStatus {
                dir: "/var/lib/walrelay".into(),
                bytes,
                max_bytes,
                records: 7,
                frames: 2,
                last_seq: 2,
                appended_records: 7,
                dropped_records: 0,
                quarantined_frames: 0,
                refusing_full,
                dead_letter_bytes: 0,
                dead_letter_max_bytes: 1 << 20,
                unavailable: unavailable.map(str::to_string),
                retained: None,
            },
            sinks: sinks
                .iter()
                .map(|(name, state, err)| SinkStatus {
                    name: name.to_string(),
                    cursor: 0,
                    backlog_records: 5,
                    backlog_bytes: 100,
                    oldest_undelivered_age_seconds: None,
                    eta_seconds: None,
                    dead_letters: 1,
                    dead_letters_dropped: 0,
                    health: HealthSnapshot {
                        state: *state,
                        last_error: err.map(str::to_string),
                        consecutive_failures: 0,
                        delivered_records: 0,
                        drain_rate: 0.0,
                        since: None,
                    },
                })
                .collect(),
            subscriptions: Vec::new(),
            rewinds: Default::default(),
        }
    }

    #[test]
    fn health_passes_while_the_log_takes_writes_even_with_a_sink_down() {
        let st = status(
            1000,
            1 << 20,
            false,
            None,
            &[
                ("influx", SinkState::Healthy, None),
                ("timescale", SinkState::Retrying, Some("connection refused")),
            ],
        );
        let h = st.influx_health(true, "0.1.0", "abc");
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(v["status"], "pass");
        assert_eq!(v["name"], "walrelay");
        assert_eq!(v["version"], "0.1.0");
        assert_eq!(v["commit"], "abc");
        let checks = v["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 3);
        assert_eq!(checks[0]["name"], "log");
        assert_eq!(checks[0]["status"], "pass");
        assert!(checks[0]["message"]
            .as_str()
            .unwrap()
            .contains("1000 of 1048576 bytes"));
        assert_eq!(checks[1]["name"], "sink:influx");
        assert_eq!(checks[1]["status"], "pass");
        assert_eq!(checks[2]["name"], "sink:timescale");
        assert_eq!(checks[2]["status"], "fail");
        let m = checks[2]["message"].as_str().unwrap();
        assert!(
            m.starts_with("retrying; backlog 5 records, 1 dead letters"),
            "{m}"
        );
        assert!(m.contains("last error: connection refused"), "{m}");
        // Every check has InfluxDB's HealthCheck keys, nothing else.
        for c in checks {
            let mut keys: Vec<_> = c.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            assert_eq!(keys, ["checks", "message", "name", "status"]);
        }
    }

    #[test]
    fn health_fails_while_the_log_refuses_writes_as_full() {
        // The last append was refused as full.
        let st = status(4000, 4096, true, None, &[]);
        let h = st.influx_health(true, "0.1.0", "abc");
        assert_eq!(h.status, "fail");
        assert_eq!(h.checks[0].status, "fail");
        assert!(h.message.contains("full"), "{}", h.message);
        assert!(h.checks[0]
            .message
            .starts_with("full, writes are refused: 4000 of 4096"));
        // At max_bytes under block, even before anyone was refused.
        let st = status(4096, 4096, false, None, &[]);
        assert_eq!(st.influx_health(true, "v", "c").status, "fail");
        // Nearly full but taking writes: passes.
        let st = status(4095, 4096, false, None, &[]);
        assert_eq!(st.influx_health(true, "v", "c").status, "pass");
        // Under drop_oldest a full log still takes writes.
        let st = status(4096, 4096, false, None, &[]);
        assert_eq!(st.influx_health(false, "v", "c").status, "pass");
        // A failed log or a nearly full disk: fail, with the reason.
        let st = status(
            10,
            4096,
            false,
            Some("disk under the write-ahead log is nearly full"),
            &[],
        );
        let h = st.influx_health(true, "v", "c");
        assert_eq!(h.status, "fail");
        assert_eq!(h.checks[0].status, "fail");
        assert!(h.message.contains("nearly full"), "{}", h.message);
        assert!(
            h.checks[0]
                .message
                .starts_with("refuses writes: disk under"),
            "{}",
            h.checks[0].message
        );
    }
}

#[cfg(test)]
mod view_tests {
    use super::*;

    #[test]
    fn status_json_decodes_and_renders() {
        let json = r#"{"log":{"dir":"/var/lib/walrelay","bytes":10,"max_bytes":100,"records":3,"frames":2,"last_seq":2,
            "appended_records":5,"dropped_records":2,"quarantined_frames":0,"dead_letter_bytes":0,"dead_letter_max_bytes":9,
            "unavailable":"disk full"},
          "sinks":[{"name":"influx","state":"degraded","cursor":1,"backlog_records":3,"backlog_bytes":30,
            "oldest_undelivered_age_seconds":1.25,"eta_seconds":null,"dead_letters":1,"dead_letters_dropped":0,
            "last_error":"timeout","consecutive_failures":2,"delivered_records":7,"drain_rate":0.0},
            {"name":"timescale","state":"healthy","cursor":2,"backlog_records":0,"backlog_bytes":0,
            "oldest_undelivered_age_seconds":null,"eta_seconds":null,"dead_letters":0,"dead_letters_dropped":0,
            "last_error":null,"consecutive_failures":0,"delivered_records":3,"drain_rate":1.0}],
          "subscriptions":[]}"#;
        let v: StatusView = serde_json::from_str(json).unwrap();
        let text = v.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "log /var/lib/walrelay: 3 records in 2 frames, 10 of 100 bytes; appended 5 ever, dropped 2, quarantined frames 0");
        assert_eq!(lines[1], "LOG REFUSES APPENDS: disk full");
        assert!(lines[2].starts_with("sink influx     degraded  cursor        1  backlog         3 records (30 bytes), oldest     1.2s, ETA unknown (no recent deliveries), delivered 7, dead letters 1"), "{}", lines[2]);
        assert_eq!(lines[3], "    last error: timeout");
        assert!(
            lines[4].contains("ETA caught up, delivered 3, dead letters 0"),
            "{}",
            lines[4]
        );
        assert_eq!(lines.len(), 5);
    }
}
