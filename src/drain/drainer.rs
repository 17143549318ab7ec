//! The drainer loop of one sink: read frames after the sink's cursor, hand the
//! records the sink accepts to it as one batch, and acknowledge the frames
//! only once the sink confirmed every record (written or dead-lettered).
//!
//! Catch-up: after an outage the backlog is read oldest first in batches of
//! `batch_records`, each delivered as soon as the previous one is confirmed,
//! so catching up runs at full batch size; live records queue behind the
//! backlog (order is kept) and their latency is the time to drain what is
//! ahead of them, which `/status` shows as the ETA.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::retry::{Backoff, RetryPolicy};
use super::{ErrorClass, Sink};
use crate::record::Record;
use crate::relay::metrics::Metrics;
use crate::wal::Wal;

/// Health of a sink as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// The last delivery succeeded (or nothing was due yet).
    Healthy,
    /// Transient failures: retrying with backoff.
    Retrying,
    /// Configuration failure (auth, permissions, missing bucket/database):
    /// an operator must act; retrying slowly, nothing dead-lettered.
    Unhealthy,
}

/// Shared, observable state of one drainer.
#[derive(Debug)]
pub struct SinkHealth {
    pub name: &'static str,
    inner: Mutex<HealthInner>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthSnapshot {
    pub state: SinkState,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub delivered_records: u64,
    /// Records/s confirmed over the last deliveries (exponentially smoothed).
    pub drain_rate: f64,
    #[serde(skip)]
    pub since: Option<SystemTime>,
}

#[derive(Debug)]
struct HealthInner {
    snap: HealthSnapshot,
    last_ok: Option<Instant>,
}

impl SinkHealth {
    pub fn new(name: &'static str) -> Self {
        SinkHealth {
            name,
            inner: Mutex::new(HealthInner {
                snap: HealthSnapshot {
                    state: SinkState::Healthy,
                    last_error: None,
                    consecutive_failures: 0,
                    delivered_records: 0,
                    drain_rate: 0.0,
                    since: None,
                },
                last_ok: None,
            }),
        }
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snap
            .clone()
    }

    fn ok(&self, records: usize, took: Duration) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.snap.state != SinkState::Healthy {
            tracing::info!(
                sink = self.name,
                after_failures = g.snap.consecutive_failures,
                "sink healthy again"
            );
        }
        let rate = records as f64 / took.as_secs_f64().max(1e-6);
        g.snap.drain_rate = if g.snap.drain_rate == 0.0 {
            rate
        } else {
            0.8 * g.snap.drain_rate + 0.2 * rate
        };
        g.snap.state = SinkState::Healthy;
        g.snap.consecutive_failures = 0;
        g.snap.delivered_records += records as u64;
        g.last_ok = Some(Instant::now());
    }

    fn failed(&self, class: ErrorClass, message: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let state = if class == ErrorClass::Config {
            SinkState::Unhealthy
        } else {
            SinkState::Retrying
        };
        if g.snap.state != state {
            tracing::warn!(sink = self.name, state = ?state, error = message, "sink state changed");
            g.snap.since = Some(SystemTime::now());
        }
        g.snap.state = state;
        g.snap.last_error = Some(message.to_string());
        g.snap.consecutive_failures += 1;
    }
}

/// Settings of one drainer.
#[derive(Debug, Clone)]
pub struct DrainerSettings {
    /// Records read from the log per delivery (whole frames; at least one).
    pub batch_records: usize,
    pub retry: RetryPolicy,
}

/// Runs until `shutdown` turns true. A delivery in progress is finished
/// first; a wait between retries is cut short (the log keeps the batch).
pub async fn run<S: Sink>(
    wal: Wal,
    mut sink: S,
    settings: DrainerSettings,
    health: Arc<SinkHealth>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = sink.name();
    let wanted = crate::record::RecordKind::ALL
        .iter()
        .filter(|k| sink.accepts(**k))
        .fold(0u16, |m, k| m | k.bit());
    let mut new_frames = wal.watch_last_seq();
    let mut backoff = Backoff::new(settings.retry.clone());
    tracing::info!(
        sink = name,
        cursor = wal.cursor(name).unwrap_or(0),
        "drainer started"
    );
    while !*shutdown.borrow() {
        let w = wal.clone();
        let batch_records = settings.batch_records;
        let read = tokio::task::spawn_blocking(move || {
            let cursor = w.cursor(name)?;
            w.read_for(cursor, batch_records, wanted)
                .map(|(frames, last)| (frames, last, cursor))
        })
        .await;
        let (frames, last_seq, cursor) = match read {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::error!(sink = name, error = %e, "reading the log failed; retrying");
                sleep_or_shutdown(Duration::from_secs(1), &mut shutdown).await;
                continue;
            }
            Err(e) => {
                tracing::error!(sink = name, error = %e, "log reader task failed");
                return;
            }
        };
        if last_seq <= cursor {
            new_frames.borrow_and_update();
            tokio::select! {
                _ = new_frames.changed() => {}
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let batch: Vec<Record> = frames
            .into_iter()
            .flat_map(|f| f.records)
            .filter(|r| sink.accepts(r.kind()))
            .collect();
        if !batch.is_empty() {
            loop {
                let started = Instant::now();
                let result = sink.deliver(&batch).await;
                metrics.observe(
                    "walrelay_sink_write_seconds",
                    &[("sink", name)],
                    started.elapsed(),
                );
                match result {
                    Ok(d) => {
                        health.ok(d.written + d.dead_lettered, started.elapsed());
                        count_delivered(&metrics, name, &batch, d.dead_lettered);
                        backoff.reset();
                        tracing::debug!(
                            sink = name,
                            seq = last_seq,
                            records = batch.len(),
                            dead_lettered = d.dead_lettered,
                            "batch delivered"
                        );
                        break;
                    }
                    Err(f) => {
                        let class = format!("{:?}", f.class).to_lowercase();
                        metrics.add(
                            "walrelay_sink_retries_total",
                            &[("sink", name), ("class", &class)],
                            1,
                        );
                        health.failed(f.class, &f.message);
                        let delay = backoff.next_delay(f.class, f.retry_after);
                        tracing::warn!(sink = name, seq = last_seq, records = batch.len(), attempt = backoff.attempts(), class = %class, delay_ms = delay.as_millis() as u64, error = %f.message, "delivery failed; will retry");
                        if sleep_or_shutdown(delay, &mut shutdown).await {
                            tracing::info!(
                                sink = name,
                                seq = last_seq,
                                "shutdown during retry wait; the log keeps the batch"
                            );
                            return;
                        }
                    }
                }
            }
        }
        if let Err(e) = wal.ack(name, last_seq) {
            tracing::error!(sink = name, seq = last_seq, error = %e, "cursor advance failed; the batch will be delivered again");
        } else {
            metrics.add("walrelay_acknowledged_frames_total", &[("sink", name)], 1);
        }
    }
    tracing::info!(sink = name, "drainer stopped");
}

fn count_delivered(metrics: &Metrics, sink: &'static str, batch: &[Record], dead: usize) {
    let mut per_kind = std::collections::BTreeMap::new();
    for r in batch {
        *per_kind.entry(r.kind().as_str()).or_insert(0u64) += 1;
    }
    for (kind, n) in per_kind {
        metrics.add(
            "walrelay_delivered_records_total",
            &[("sink", sink), ("kind", kind)],
            n,
        );
    }
    metrics.add(
        "walrelay_dead_lettered_records_total",
        &[("sink", sink)],
        dead as u64,
    );
}

/// Sleeps for `d`; returns true if shutdown was signalled meanwhile.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::{Delivery, SinkFailure};
    use crate::record::RecordKind;
    use crate::wal::WalConfig;
    use std::collections::VecDeque;

    /// A sink that answers from a script (then succeeds) and records what it got.
    struct Scripted {
        script: Arc<Mutex<VecDeque<ErrorClass>>>,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn accepts(&self, kind: RecordKind) -> bool {
            kind == RecordKind::Trade
        }
        async fn deliver(&mut self, batch: &[Record]) -> Result<Delivery, SinkFailure> {
            if let Some(class) = self.script.lock().unwrap().pop_front() {
                return Err(SinkFailure {
                    class,
                    message: format!("scripted {class:?}"),
                    retry_after: None,
                });
            }
            let mut got = self.got.lock().unwrap();
            for r in batch {
                if let Record::Trade(t) = r {
                    got.push(t.trade_id.clone());
                }
            }
            Ok(Delivery {
                written: batch.len(),
                dead_lettered: 0,
            })
        }
    }

    fn settings() -> DrainerSettings {
        DrainerSettings {
            batch_records: 7,
            retry: RetryPolicy {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(20),
                config_interval: Duration::from_millis(40),
            },
        }
    }

    async fn wait_for(mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached in 5 s");
    }

    #[tokio::test]
    async fn retries_until_success_and_advances_only_after() {
        let dir = tempfile::TempDir::new().unwrap();
        let wal = Wal::open(WalConfig::new(dir.path()).with_sinks(["scripted"])).unwrap();
        let recs: Vec<Record> = (0..20).map(crate::wal::test_trade).collect();
        let mut mixed = recs.clone();
        mixed.insert(3, crate::record::codec_samples()[7].clone()); // a bar: not for this sink
        wal.append(&mixed).unwrap();
        let script = Arc::new(Mutex::new(VecDeque::from([
            ErrorClass::Transient,
            ErrorClass::Transient,
            ErrorClass::Config,
        ])));
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Scripted {
            script: script.clone(),
            got: got.clone(),
        };
        let health = Arc::new(SinkHealth::new("scripted"));
        let metrics = Arc::new(Metrics::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            wal.clone(),
            sink,
            settings(),
            health.clone(),
            metrics.clone(),
            stop_rx,
        ));
        wait_for(|| got.lock().unwrap().len() == 20).await;
        let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(
            *got.lock().unwrap(),
            want,
            "every record once, in order, after the failures"
        );
        wait_for(|| wal.backlog("scripted").unwrap().records == 0).await;
        assert_eq!(
            metrics.get(
                "walrelay_sink_retries_total",
                &[("sink", "scripted"), ("class", "transient")]
            ),
            2
        );
        assert_eq!(
            metrics.get(
                "walrelay_sink_retries_total",
                &[("sink", "scripted"), ("class", "config")]
            ),
            1
        );
        assert_eq!(
            metrics.get(
                "walrelay_delivered_records_total",
                &[("sink", "scripted"), ("kind", "trade")]
            ),
            20
        );
        assert_eq!(health.snapshot().state, SinkState::Healthy);
        // Live data after catch-up is delivered too.
        wal.append(&[crate::wal::test_trade(99)]).unwrap();
        wait_for(|| got.lock().unwrap().len() == 21).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn unhealthy_sink_keeps_the_batch_and_shutdown_is_prompt() {
        let dir = tempfile::TempDir::new().unwrap();
        let wal = Wal::open(WalConfig::new(dir.path()).with_sinks(["scripted"])).unwrap();
        wal.append(&[crate::wal::test_trade(1), crate::wal::test_trade(2)])
            .unwrap();
        let script = Arc::new(Mutex::new(VecDeque::from(vec![ErrorClass::Config; 1000])));
        let got = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(SinkHealth::new("scripted"));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut s = settings();
        s.retry.config_interval = Duration::from_secs(3600);
        let task = tokio::spawn(run(
            wal.clone(),
            Scripted {
                script,
                got: got.clone(),
            },
            s,
            health.clone(),
            Arc::new(Metrics::default()),
            stop_rx,
        ));
        wait_for(|| health.snapshot().state == SinkState::Unhealthy).await;
        assert_eq!(
            health.snapshot().last_error.as_deref(),
            Some("scripted Config")
        );
        let t0 = Instant::now();
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "shutdown waited out the retry interval"
        );
        assert!(got.lock().unwrap().is_empty());
        assert_eq!(wal.cursor("scripted").unwrap(), 0, "nothing acknowledged");
        assert_eq!(
            wal.backlog("scripted").unwrap().records,
            2,
            "the log keeps the batch"
        );
    }
}
