//! The `/status` view and the gauges of `/metrics`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

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
#[derive(Debug, Clone, Serialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
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
