//! A drainer run in-process over a test's log and sink, with the waits the
//! sink tests poll it with.

use std::sync::Arc;
use std::time::Duration;

use walrelay::drain::drainer::{self, DrainerSettings};
use walrelay::drain::retry::RetryPolicy;
use walrelay::drain::Sink;
use walrelay::drain::SinkHealth;
use walrelay::metrics::Metrics;
use walrelay::Wal;

/// A running drainer: its health to poll, and a stop.
pub struct Drain {
    pub health: Arc<SinkHealth>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Drainer settings with the default pipeline, a 50 ms first retry wait and
/// the given batch size, largest retry wait and misconfiguration interval.
pub fn settings(
    batch_records: usize,
    retry_max_ms: u64,
    config_interval_ms: u64,
) -> DrainerSettings {
    DrainerSettings {
        batch_records,
        pipeline: walrelay::config::DrainConfig::default().pipeline,
        retry: RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(retry_max_ms),
            config_interval: Duration::from_millis(config_interval_ms),
        },
    }
}

/// Spawns `drainer::run` for `sink` (named `name` in its health) over `wal`.
pub fn start<S: Sink + 'static>(
    wal: &Wal,
    sink: S,
    name: &'static str,
    settings: DrainerSettings,
) -> Drain {
    let health = Arc::new(SinkHealth::new(name));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(drainer::run(
        wal.clone(),
        sink,
        settings,
        health.clone(),
        Arc::new(Metrics::default()),
        rx,
    ));
    Drain { health, stop, task }
}

impl Drain {
    /// Signals the stop and waits for the drainer to return; fails the test
    /// when the drainer had already ended or panicked.
    pub async fn stop(self) {
        self.stop.send(true).expect("the drainer was still running");
        self.task.await.unwrap();
    }
}

/// Polls `cond` every 50 ms for up to `secs` seconds; panics naming `what`
/// when it never holds.
pub async fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    for _ in 0..secs * 20 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}
