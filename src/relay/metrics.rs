//! Counters, gauges and histograms, rendered in the Prometheus text format at
//! `GET /metrics`. Updated per request or per batch, never per record, so one
//! mutex is enough.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

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

/// Help text of each metric family.
fn help(name: &str) -> &'static str {
    match name {
        "walrelay_appended_records_total" => "Records durably appended to the log, by kind.",
        "walrelay_delivered_records_total" => {
            "Records a sink confirmed as written, by sink and kind."
        }
        "walrelay_acknowledged_frames_total" => {
            "Frames whose delivery a sink acknowledged (cursor advances)."
        }
        "walrelay_dead_lettered_records_total" => {
            "Records a sink rejected permanently (moved to the dead-letter store)."
        }
        "walrelay_sink_retries_total" => "Failed delivery attempts, by sink and error class.",
        "walrelay_ingest_requests_total" => "Ingest requests, by endpoint and HTTP status.",
        "walrelay_sink_write_seconds" => "Duration of one delivery attempt, by sink.",
        "walrelay_append_ack_seconds" => {
            "Time from handing records to the log until they are durable and acknowledged (group commit and flush included)."
        }
        _ => "",
    }
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(&self, name: &'static str, l: &[(&'static str, &str)], n: u64) {
        if n == 0 {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *g.counters.entry((name, labels(l))).or_insert(0) += n;
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
    pub fn render(
        &self,
        gauges: &[(&'static str, &'static str, Vec<(&'static str, String)>, f64)],
    ) -> String {
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
        for (name, helptext, l, v) in gauges {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {helptext}\n# TYPE {name} gauge");
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
        m.add("walrelay_appended_records_total", &[("kind", "trade")], 3);
        m.add("walrelay_appended_records_total", &[("kind", "trade")], 2);
        m.observe(
            "walrelay_sink_write_seconds",
            &[("sink", "influx")],
            Duration::from_millis(3),
        );
        let text = m.render(&[(
            "walrelay_backlog_records",
            "Undelivered records.",
            vec![("sink", "influx".into())],
            7.0,
        )]);
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
        assert!(text.contains("# TYPE walrelay_backlog_records gauge\nwalrelay_backlog_records{sink=\"influx\"} 7"), "{text}");
        assert_eq!(
            m.get("walrelay_appended_records_total", &[("kind", "trade")]),
            5
        );
    }
}
