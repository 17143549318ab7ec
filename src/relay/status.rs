//! The `/status` view and the gauges of `/metrics`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Relay;
use crate::drain::drainer::HealthSnapshot;

/// Everything `GET /status` and `walrelay status` show.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub log: LogStatus,
    pub sinks: Vec<SinkStatus>,
    /// One row per gRPC subscription (empty without `[grpc]`).
    pub subscriptions: Vec<crate::ingest::grpc::SubscriptionSnapshot>,
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
    /// Bytes held by dead letters (all sinks) and their bound.
    pub dead_letter_bytes: u64,
    pub dead_letter_max_bytes: u64,
    /// Why the log refuses appends (failed after an I/O error, disk full);
    /// absent while it accepts them.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unavailable: Option<String>,
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
                dead_letter_bytes: dl.values().map(|t| t.bytes).sum(),
                dead_letter_max_bytes: self.config.wal.dead_letter_max_bytes,
                unavailable: self.wal_unavailable(),
            },
            sinks,
            subscriptions: self.subscriptions.iter().map(|h| h.snapshot()).collect(),
        }
    }

    /// `/metrics` text: counters plus gauges computed now.
    pub fn render_metrics(&self) -> String {
        let st = self.status();
        let mut g: Vec<(&'static str, &'static str, Vec<(&'static str, String)>, f64)> = vec![
            (
                "walrelay_log_bytes",
                "Bytes held by the log.",
                vec![],
                st.log.bytes as f64,
            ),
            (
                "walrelay_log_max_bytes",
                "Configured log size limit.",
                vec![],
                st.log.max_bytes as f64,
            ),
            (
                "walrelay_log_records",
                "Records held by the log.",
                vec![],
                st.log.records as f64,
            ),
            (
                "walrelay_dropped_records_total",
                "Records deleted by drop_oldest since the log was created.",
                vec![],
                st.log.dropped_records as f64,
            ),
            (
                "walrelay_quarantined_frames",
                "Unreadable frames moved to quarantine.",
                vec![],
                st.log.quarantined_frames as f64,
            ),
            (
                "walrelay_dead_letter_bytes",
                "Bytes held by dead letters, all sinks (bound: wal.dead_letter_max_bytes).",
                vec![],
                st.log.dead_letter_bytes as f64,
            ),
            (
                "walrelay_log_accepting",
                "1 while the log accepts appends, 0 while it refuses them (failed, disk full).",
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
            g.push((
                "walrelay_backlog_records",
                "Records not yet delivered, by sink.",
                l.clone(),
                s.backlog_records as f64,
            ));
            g.push((
                "walrelay_backlog_bytes",
                "Approximate bytes not yet delivered, by sink.",
                l.clone(),
                s.backlog_bytes as f64,
            ));
            g.push((
                "walrelay_oldest_undelivered_age_seconds",
                "Age of the oldest undelivered record, by sink.",
                l.clone(),
                s.oldest_undelivered_age_seconds.unwrap_or(0.0),
            ));
            g.push((
                "walrelay_dead_letters",
                "Dead letters stored, by sink.",
                l.clone(),
                s.dead_letters as f64,
            ));
            g.push((
                "walrelay_dead_letters_dropped_total",
                "Dead letters deleted to keep within wal.dead_letter_max_bytes, by sink.",
                l.clone(),
                s.dead_letters_dropped as f64,
            ));
            let state = match s.health.state {
                crate::drain::drainer::SinkState::Healthy => 0.0,
                crate::drain::drainer::SinkState::Retrying => 1.0,
                crate::drain::drainer::SinkState::Unhealthy => 2.0,
            };
            g.push((
                "walrelay_sink_state",
                "0 healthy, 1 retrying, 2 unhealthy.",
                l,
                state,
            ));
        }
        for s in &st.subscriptions {
            let l = vec![("subscription", s.name.clone())];
            g.push((
                "walrelay_grpc_last_message_age_seconds",
                "Seconds since the subscription's last message (-1: none yet).",
                l.clone(),
                s.last_message_age_seconds.unwrap_or(-1.0),
            ));
            g.push((
                "walrelay_grpc_streaming",
                "1 while the subscription streams, 0 otherwise.",
                l,
                if s.state == "streaming" { 1.0 } else { 0.0 },
            ));
        }
        g.sort_by(|a, b| a.0.cmp(b.0));
        self.metrics.render(&g)
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
