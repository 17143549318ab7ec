//! The relay's metrics: every metric name, its help text, and the registry
//! that renders them in the Prometheus text format at `GET /metrics`.
//! Updated per request or per batch, never per record, so one mutex is
//! enough.
//!
//! A leaf module: it imports nothing of the crate, so the drainer, the ingest
//! paths and the relay can all count into one registry without importing
//! each other. A metric name is written once, here, as a constant; the help
//! text of each family is in [`FAMILIES`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// `kind`: records durably appended to the log.
pub const APPENDED_RECORDS: &str = "walrelay_appended_records_total";
/// `sink`, `kind`: records a sink confirmed as written.
pub const DELIVERED_RECORDS: &str = "walrelay_delivered_records_total";
/// `sink`: frames whose delivery a sink acknowledged.
pub const ACKNOWLEDGED_FRAMES: &str = "walrelay_acknowledged_frames_total";
/// `sink`, `kind`: records moved to the dead-letter store.
pub const DEAD_LETTERED_RECORDS: &str = "walrelay_dead_lettered_records_total";
/// `sink`, `class` (`transient`, `data`, `config`): failed delivery attempts.
pub const SINK_RETRIES: &str = "walrelay_sink_retries_total";
/// `endpoint`, `status`: ingest requests.
pub const INGEST_REQUESTS: &str = "walrelay_ingest_requests_total";
/// Histogram, `sink`: duration of one delivery attempt.
pub const SINK_WRITE_SECONDS: &str = "walrelay_sink_write_seconds";
/// Histogram: time from handing records to the log until acknowledged.
pub const APPEND_ACK_SECONDS: &str = "walrelay_append_ack_seconds";
/// `subscription`: reconnects of a gRPC subscription.
pub const GRPC_RECONNECTS: &str = "walrelay_grpc_reconnects_total";
/// `subscription`: messages received from a collector.
pub const GRPC_MESSAGES: &str = "walrelay_grpc_messages_total";
/// `reason`: collector messages that are not market data.
pub const GRPC_SKIPPED: &str = "walrelay_grpc_skipped_total";
/// Gauge: bytes held by the log.
pub const LOG_BYTES: &str = "walrelay_log_bytes";
/// Gauge: configured log size limit.
pub const LOG_MAX_BYTES: &str = "walrelay_log_max_bytes";
/// Gauge: records held by the log.
pub const LOG_RECORDS: &str = "walrelay_log_records";
/// Gauge (a count kept by the log): records deleted by `drop_oldest`.
pub const DROPPED_RECORDS: &str = "walrelay_dropped_records_total";
/// Gauge (a count kept by the log since it opened): records of retained
/// (delivered) frames deleted to make room (`[wal] retain`).
pub const RETAINED_DROPPED: &str = "walrelay_retained_dropped_total";
/// Gauge: records of delivered frames kept for `[wal] retain`.
pub const RETAINED_RECORDS: &str = "walrelay_retained_records";
/// Gauge, `sink`: records re-delivered by the last rewind (`POST /admin/rewind`).
pub const REWIND_RECORDS: &str = "walrelay_rewind_records";
/// Gauge, `sink`: frames the last rewind still has to read.
pub const REWIND_FRAMES_LEFT: &str = "walrelay_rewind_frames_left";
/// Gauge: unreadable frames moved to quarantine.
pub const QUARANTINED_FRAMES: &str = "walrelay_quarantined_frames";
/// Gauge: bytes held by dead letters, all sinks.
pub const DEAD_LETTER_BYTES: &str = "walrelay_dead_letter_bytes";
/// Gauge: 1 while the log accepts appends.
pub const LOG_ACCEPTING: &str = "walrelay_log_accepting";
/// Gauge, `sink`: records not yet delivered.
pub const BACKLOG_RECORDS: &str = "walrelay_backlog_records";
/// Gauge, `sink`: approximate bytes not yet delivered.
pub const BACKLOG_BYTES: &str = "walrelay_backlog_bytes";
/// Gauge, `sink`: age of the oldest undelivered record.
pub const OLDEST_UNDELIVERED_AGE: &str = "walrelay_oldest_undelivered_age_seconds";
/// Gauge, `sink`: dead letters stored.
pub const DEAD_LETTERS: &str = "walrelay_dead_letters";
/// Gauge (a count kept by the store), `sink`: dead letters deleted to keep
/// within the budget.
pub const DEAD_LETTERS_DROPPED: &str = "walrelay_dead_letters_dropped_total";
/// Gauge, `sink`: 0 healthy, 1 retrying, 2 unhealthy.
pub const SINK_STATE: &str = "walrelay_sink_state";
/// Gauge, `subscription`: seconds since the last message.
pub const GRPC_LAST_MESSAGE_AGE: &str = "walrelay_grpc_last_message_age_seconds";
/// Gauge, `subscription`: 1 while streaming.
pub const GRPC_STREAMING: &str = "walrelay_grpc_streaming";

/// Every metric family the relay exposes, with its `# HELP` text.
pub const FAMILIES: &[(&str, &str)] = &[
    (APPENDED_RECORDS, "Records durably appended to the log, by kind."),
    (
        DELIVERED_RECORDS,
        "Records a sink confirmed as written, by sink and kind.",
    ),
    (
        ACKNOWLEDGED_FRAMES,
        "Frames whose delivery a sink acknowledged (cursor advances).",
    ),
    (
        DEAD_LETTERED_RECORDS,
        "Records a sink rejected permanently (moved to the dead-letter store).",
    ),
    (SINK_RETRIES, "Failed delivery attempts, by sink and error class."),
    (INGEST_REQUESTS, "Ingest requests, by endpoint and HTTP status."),
    (SINK_WRITE_SECONDS, "Duration of one delivery attempt, by sink."),
    (
        APPEND_ACK_SECONDS,
        "Time from handing records to the log until they are durable and acknowledged (group commit and flush included).",
    ),
    (GRPC_RECONNECTS, "Reconnects of a gRPC subscription, by subscription."),
    (
        GRPC_MESSAGES,
        "Messages received from a gRPC collector, by subscription.",
    ),
    (
        GRPC_SKIPPED,
        "Collector messages that are not market data, by reason.",
    ),
    (LOG_BYTES, "Bytes held by the log."),
    (LOG_MAX_BYTES, "Configured log size limit."),
    (LOG_RECORDS, "Records held by the log."),
    (
        DROPPED_RECORDS,
        "Records deleted by drop_oldest since the log was created.",
    ),
    (
        RETAINED_DROPPED,
        "Records of retained (delivered) frames deleted to make room since the log opened.",
    ),
    (
        RETAINED_RECORDS,
        "Records of delivered frames kept for wal.retain.",
    ),
    (
        REWIND_RECORDS,
        "Records re-delivered by the sink's last rewind, by sink.",
    ),
    (
        REWIND_FRAMES_LEFT,
        "Frames the sink's last rewind still has to read, by sink.",
    ),
    (QUARANTINED_FRAMES, "Unreadable frames moved to quarantine."),
    (
        DEAD_LETTER_BYTES,
        "Bytes held by dead letters, all sinks (bound: wal.dead_letter_max_bytes).",
    ),
    (
        LOG_ACCEPTING,
        "1 while the log accepts appends, 0 while it refuses them (failed, disk full).",
    ),
    (BACKLOG_RECORDS, "Records not yet delivered, by sink."),
    (BACKLOG_BYTES, "Approximate bytes not yet delivered, by sink."),
    (
        OLDEST_UNDELIVERED_AGE,
        "Age of the oldest undelivered record, by sink.",
    ),
    (DEAD_LETTERS, "Dead letters stored, by sink."),
    (
        DEAD_LETTERS_DROPPED,
        "Dead letters deleted to keep within wal.dead_letter_max_bytes, by sink.",
    ),
    (SINK_STATE, "0 healthy, 1 retrying, 2 unhealthy."),
    (
        GRPC_LAST_MESSAGE_AGE,
        "Seconds since the subscription's last message (-1: none yet).",
    ),
    (
        GRPC_STREAMING,
        "1 while the subscription streams, 0 otherwise.",
    ),
];

/// Upper bounds (seconds) of the latency histogram buckets. The sub-millisecond
/// ones resolve acknowledgements under `interval_ms` durability (no fsync).
const BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    counters: BTreeMap<(&'static str, Labels), u64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// The relay's metric registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn render_labels(l: &Labels) -> String {
    if l.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// Help text of a metric family (empty for a name not in [`FAMILIES`]).
fn help(name: &str) -> &'static str {
    FAMILIES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, h)| h)
}

/// One gauge computed at scrape time: name, labels, value.
pub type Gauge = (&'static str, Vec<(&'static str, String)>, f64);

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(&self, name: &'static str, l: &[(&'static str, &str)], n: u64) {
        if n == 0 {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *g.counters.entry((name, labels(l))).or_insert(0) += n;
    }

    /// Exposes a counter's label set at 0 if it has no sample yet, so that
    /// dashboards and `rate()`/`increase()` rules see a series from start
    /// (Prometheus' advice for labelled counters).
    pub fn declare(&self, name: &'static str, l: &[(&'static str, &str)]) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.counters.entry((name, labels(l))).or_insert(0);
    }

    /// The current value of a counter (0 if never incremented).
    pub fn get(&self, name: &'static str, l: &[(&'static str, &str)]) -> u64 {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.counters.get(&(name, labels(l))).copied().unwrap_or(0)
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, name: &'static str, l: &[(&'static str, &str)], d: Duration) {
        let secs = d.as_secs_f64();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let h = g.histograms.entry((name, labels(l))).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Prometheus text exposition of everything recorded, plus `gauges`
    /// computed by the caller at scrape time.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let mut last = "";
        for ((name, l), v) in &g.counters {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} counter", help(name));
                last = name;
            }
            let _ = writeln!(out, "{name}{} {v}", render_labels(l));
        }
        for ((name, l), h) in &g.histograms {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", help(name));
                last = name;
            }
            for (i, b) in BUCKETS.iter().enumerate() {
                let mut bl = l.clone();
                bl.push(("le", b.to_string()));
                let _ = writeln!(out, "{name}_bucket{} {}", render_labels(&bl), h.counts[i]);
            }
            let mut bl = l.clone();
            bl.push(("le", "+Inf".into()));
            let _ = writeln!(out, "{name}_bucket{} {}", render_labels(&bl), h.count);
            let _ = writeln!(out, "{name}_sum{} {}", render_labels(l), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", render_labels(l), h.count);
        }
        for (name, l, v) in gauges {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} gauge", help(name));
                last = name;
            }
            let _ = writeln!(out, "{name}{} {v}", render_labels(l));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.add(APPENDED_RECORDS, &[("kind", "trade")], 3);
        m.add(APPENDED_RECORDS, &[("kind", "trade")], 2);
        m.observe(
            SINK_WRITE_SECONDS,
            &[("sink", "influx")],
            Duration::from_millis(3),
        );
        let text = m.render(&[(BACKLOG_RECORDS, vec![("sink", "influx".into())], 7.0)]);
        assert!(
            text.contains("walrelay_appended_records_total{kind=\"trade\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("walrelay_sink_write_seconds_bucket{sink=\"influx\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("walrelay_sink_write_seconds_bucket{sink=\"influx\",le=\"0.001\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("walrelay_sink_write_seconds_count{sink=\"influx\"} 1"),
            "{text}"
        );
        assert!(text.contains("# HELP walrelay_backlog_records Records not yet delivered, by sink.\n# TYPE walrelay_backlog_records gauge\nwalrelay_backlog_records{sink=\"influx\"} 7"), "{text}");
        assert_eq!(m.get(APPENDED_RECORDS, &[("kind", "trade")]), 5);
    }

    #[test]
    fn every_family_has_one_entry_a_walrelay_name_and_help() {
        let mut seen = std::collections::BTreeSet::new();
        for (name, help) in FAMILIES {
            assert!(seen.insert(*name), "{name} listed twice");
            assert!(name.starts_with("walrelay_"), "{name}");
            assert!(!help.is_empty(), "{name} has no help text");
        }
        assert_eq!(FAMILIES.len(), 30);
    }
}
