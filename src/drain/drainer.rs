//! The drainer loop of one sink: read frames after the sink's cursor, hand the
//! records the sink accepts to it as one batch, and acknowledge the frames
//! only once the sink confirmed every record (written or dead-lettered).
//!
//! Pipelining: up to `pipeline` batches are being delivered or confirmed and
//! not yet passed by the cursor, and one more is read ahead; a sink that
//! forks delivers them concurrently, one that does not has one batch in
//! delivery and one read ahead. Invariants:
//! - the cursor moves only to the end of the longest run of batches, from the
//!   oldest in flight, that are all confirmed (never over an unconfirmed one);
//! - a batch stays with one sink instance and one retry loop until confirmed
//!   (or shutdown), so error classes, bisection, dead-lettering and timeout
//!   shrinking are those of a single delivery;
//! - deliveries never run more than `pipeline` batches ahead of the cursor,
//!   and reads at most one batch more, which bounds the memory the drainer
//!   holds to `pipeline + 1` batches.
//!
//! Catch-up: after an outage the backlog is read oldest first in batches of
//! `batch_records`, the next read while the previous is written, so catching
//! up runs at full batch size; live records queue behind the
//! backlog (order is kept) and their latency is the time to drain what is
//! ahead of them, which `/status` shows as the ETA.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::health::SinkHealth;
use super::retry::{Backoff, RetryPolicy};
use super::Sink;
use crate::metrics::{self, Metrics};
use crate::record::Record;
use crate::wal::Wal;

/// Settings of one drainer.
#[derive(Debug, Clone)]
pub struct DrainerSettings {
    /// Records read from the log per delivery (whole frames; at least one).
    pub batch_records: usize,
    /// Batches started and not yet passed by the cursor, at most (at least
    /// one); one more batch is read ahead. Deliveries run concurrently up to
    /// this many when the sink can [`fork`](Sink::fork); otherwise one at a
    /// time, with one batch read ahead.
    pub pipeline: usize,
    pub retry: RetryPolicy,
}

/// Batches read beyond those being delivered.
const READ_AHEAD: usize = 1;

/// One batch read from the log, in log order.
struct Issued {
    /// Last sequence the read examined: the cursor may move to it once this
    /// batch and every batch before it are confirmed.
    last_seq: u64,
    confirmed: bool,
}

/// How the delivery of one batch ended.
enum Outcome {
    Confirmed,
    /// Shutdown during a retry wait: nothing confirmed, the log keeps it.
    Abandoned,
}

/// Delivers one batch with the retry loop: retries by class with backoff
/// until the sink confirms it, or until shutdown cuts a wait short.
async fn deliver_until_confirmed<S: Sink>(
    sink: &mut S,
    batch: &[Record],
    last_seq: u64,
    retry: RetryPolicy,
    health: &SinkHealth,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome {
    let name = sink.name();
    let mut backoff = Backoff::new(retry);
    // Deliveries of this batch so far; the sink stores the count with what
    // it dead-letters.
    let mut attempt: u32 = 0;
    loop {
        attempt = attempt.saturating_add(1);
        let started = Instant::now();
        let result = sink.deliver(batch, attempt).await;
        metrics.observe(
            metrics::SINK_WRITE_SECONDS,
            &[("sink", name)],
            started.elapsed(),
        );
        match result {
            Ok(d) => {
                health.ok(d.written + d.dead_lettered, started.elapsed());
                count_delivered(metrics, name, batch, d.dead_lettered);
                tracing::debug!(
                    sink = name,
                    seq = last_seq,
                    records = batch.len(),
                    dead_lettered = d.dead_lettered,
                    "batch delivered"
                );
                return Outcome::Confirmed;
            }
            Err(f) => {
                let class = f.class.as_str();
                metrics.add(
                    metrics::SINK_RETRIES,
                    &[("sink", name), ("class", class)],
                    1,
                );
                health.failed(f.class, &f.message);
                let delay = backoff.next_delay(f.class, f.retry_after);
                tracing::warn!(sink = name, seq = last_seq, records = batch.len(), attempt, class = %class, delay_ms = delay.as_millis() as u64, error = %f.message, "delivery failed; will retry");
                if sleep_or_shutdown(delay, shutdown).await {
                    tracing::info!(
                        sink = name,
                        seq = last_seq,
                        "shutdown during retry wait; the log keeps the batch"
                    );
                    return Outcome::Abandoned;
                }
            }
        }
    }
}

/// Runs until `shutdown` turns true. Deliveries in progress are finished
/// first; a wait between retries is cut short (the log keeps the batch).
///
/// Pipelining: up to `settings.pipeline` batches are started and not yet
/// passed by the cursor at any time, and one more is read ahead. Reads run
/// ahead of deliveries; deliveries run
/// concurrently on forked sink instances and may complete in any order. The
/// cursor moves only over the longest prefix of batches (in log order) that
/// are all confirmed, so a batch confirmed early waits for every batch before
/// it; a crash meanwhile redelivers from the first unconfirmed one (both sinks
/// write idempotently). Each batch keeps its own retry loop, backoff and sink
/// instance (with its timeout shrinking) until it is confirmed, exactly as a
/// single delivery does.
pub async fn run<S: Sink + 'static>(
    wal: Wal,
    sink: S,
    settings: DrainerSettings,
    health: Arc<SinkHealth>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = sink.name();
    // The sink's failure counters exist at 0 from start (docs/grafana).
    for class in super::ErrorClass::ALL {
        metrics.declare(
            metrics::SINK_RETRIES,
            &[("sink", name), ("class", class.as_str())],
        );
    }
    metrics.declare(metrics::DEAD_LETTERED_RECORDS, &[("sink", name)]);
    let wanted = crate::record::RecordKind::ALL
        .iter()
        .filter(|k| sink.accepts(**k))
        .fold(0u16, |m, k| m | k.bit());
    // Idle sink instances: the given one plus forks, up to the pipeline.
    let mut idle = vec![sink];
    while idle.len() < settings.pipeline.max(1) {
        match idle[0].fork() {
            Some(s) => idle.push(s),
            None => break,
        }
    }
    // Batches started and not yet passed by the cursor: as many as there are
    // instances to deliver them. A sink that does not fork delivers one at a
    // time, so more batches read for it would only wait in memory; it gets
    // the one read ahead like every sink.
    let depth = idle.len();
    let mut new_frames = wal.watch_last_seq();
    let mut read_pos = match wal.cursor(name) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(sink = name, error = %e, "reading the cursor failed; drainer not started");
            return;
        }
    };
    tracing::info!(
        sink = name,
        cursor = read_pos,
        pipeline = depth,
        concurrent_deliveries = idle.len(),
        "drainer started"
    );
    // Batches read and not yet passed by the cursor, in log order, keyed by
    // their issue number.
    let mut issued: std::collections::VecDeque<(u64, Issued)> = Default::default();
    // Batches read but waiting for an idle sink instance.
    let mut ready: std::collections::VecDeque<(u64, Vec<Record>, u64)> = Default::default();
    let mut next_id = 0u64;
    let mut tasks: tokio::task::JoinSet<(u64, S, Outcome)> = tokio::task::JoinSet::new();
    let mut caught_up = false;
    // Set when a delivery gave up its batch (shutdown, or the shutdown
    // sender is gone): the drainer stops as it did with one batch at a time.
    let mut abandoned = false;
    loop {
        let stopping = abandoned || *shutdown.borrow();
        // Start deliveries on idle instances, while fewer than `depth`
        // batches are started and not yet passed by the cursor (the batch
        // read ahead waits in `ready`).
        while !stopping
            && !idle.is_empty()
            && !ready.is_empty()
            && issued.len() - ready.len() < depth
        {
            let (id, batch, last_seq) = ready.pop_front().expect("not empty");
            let mut sink = idle.pop().expect("not empty");
            let (retry, health, metrics, mut stop) = (
                settings.retry.clone(),
                health.clone(),
                metrics.clone(),
                shutdown.clone(),
            );
            tasks.spawn(async move {
                let outcome = deliver_until_confirmed(
                    &mut sink, &batch, last_seq, retry, &health, &metrics, &mut stop,
                )
                .await;
                (id, sink, outcome)
            });
        }
        if stopping && tasks.is_empty() {
            break;
        }
        // Read ahead while the pipeline has room, plus one batch, so that a
        // delivery that ends finds the next batch decoded and starts it at
        // once (the read and decode of ~1 ms per 5000 records no longer
        // sits between two deliveries).
        if !stopping && !caught_up && issued.len() < depth + READ_AHEAD {
            // Frames appended from here on wake a caught-up wait.
            new_frames.borrow_and_update();
            let w = wal.clone();
            let batch_records = settings.batch_records;
            let from = read_pos;
            let read = tokio::task::spawn_blocking(move || {
                // Room for a full batch plus the frame that crosses it.
                let mut batch = Vec::with_capacity(batch_records.saturating_add(1024).min(1 << 20));
                w.read_records_for(from, batch_records, wanted, &mut batch)
                    .map(|last| (batch, last))
            })
            .await;
            let (batch, last_seq) = match read {
                Ok(Ok(b)) => b,
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
            if last_seq <= read_pos {
                caught_up = true;
                continue;
            }
            read_pos = last_seq;
            let id = next_id;
            next_id += 1;
            issued.push_back((
                id,
                Issued {
                    last_seq,
                    confirmed: batch.is_empty(),
                },
            ));
            if batch.is_empty() {
                advance(&wal, name, &metrics, &mut issued);
            } else {
                ready.push_back((id, batch, last_seq));
            }
            continue;
        }
        // Wait for a delivery to finish, new frames, or shutdown.
        tokio::select! {
            done = tasks.join_next(), if !tasks.is_empty() => {
                match done {
                    Some(Ok((id, sink, outcome))) => {
                        idle.push(sink);
                        match outcome {
                            Outcome::Confirmed => {
                                if let Some((_, b)) = issued.iter_mut().find(|(i, _)| *i == id) {
                                    b.confirmed = true;
                                }
                                advance(&wal, name, &metrics, &mut issued);
                            }
                            Outcome::Abandoned => abandoned = true,
                        }
                    }
                    Some(Err(e)) => {
                        tracing::error!(sink = name, error = %e, "delivery task failed; the log keeps its batch");
                        return;
                    }
                    None => {}
                }
            }
            _ = new_frames.changed(), if caught_up => { caught_up = false; }
            _ = shutdown.changed(), if !stopping => {}
            _ = tokio::time::sleep(Duration::from_secs(1)), if caught_up || stopping => { caught_up = false; }
        }
    }
    tracing::info!(sink = name, "drainer stopped");
}

/// Moves the cursor over the confirmed prefix of `issued` (one `ack` for it).
fn advance(
    wal: &Wal,
    name: &'static str,
    metrics: &Metrics,
    issued: &mut std::collections::VecDeque<(u64, Issued)>,
) {
    let mut to = None;
    while issued.front().is_some_and(|(_, b)| b.confirmed) {
        let (_, b) = issued.pop_front().expect("front exists");
        to = Some(b.last_seq);
    }
    let Some(seq) = to else { return };
    if let Err(e) = wal.ack(name, seq) {
        tracing::error!(sink = name, seq, error = %e, "cursor advance failed; the batches will be delivered again after a restart");
    } else {
        metrics.add(metrics::ACKNOWLEDGED_FRAMES, &[("sink", name)], 1);
    }
}

fn count_delivered(metrics: &Metrics, sink: &'static str, batch: &[Record], dead: usize) {
    let mut per_kind = [0u64; crate::record::RecordKind::ALL.len()];
    for r in batch {
        per_kind[r.kind().index()] += 1;
    }
    for (kind, n) in crate::record::RecordKind::ALL.iter().zip(per_kind) {
        if n > 0 {
            metrics.add(
                metrics::DELIVERED_RECORDS,
                &[("sink", sink), ("kind", kind.as_str())],
                n,
            );
        }
    }
    metrics.add(
        metrics::DEAD_LETTERED_RECORDS,
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
    use crate::drain::{Delivery, ErrorClass, SinkFailure, SinkState};
    use crate::record::RecordKind;
    use crate::wal::WalConfig;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// A sink that answers from a script (then succeeds) and records what it got.
    struct Scripted {
        script: Arc<Mutex<VecDeque<ErrorClass>>>,
        got: Arc<Mutex<Vec<String>>>,
        /// The `attempt` of every delivery, in order.
        attempts: Arc<Mutex<Vec<u32>>>,
    }

    impl Sink for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn accepts(&self, kind: RecordKind) -> bool {
            kind == RecordKind::Trade
        }
        async fn deliver(
            &mut self,
            batch: &[Record],
            attempt: u32,
        ) -> Result<Delivery, SinkFailure> {
            self.attempts.lock().unwrap().push(attempt);
            if let Some(class) = self.script.lock().unwrap().pop_front() {
                return Err(SinkFailure {
                    class,
                    message: format!("scripted {}", class.as_str()),
                    retry_after: None,
                });
            }
            let mut got = self.got.lock().unwrap();
            for r in batch {
                if let Record::Trade(t) = r {
                    got.push(t.trade_id.to_string());
                }
            }
            Ok(Delivery {
                written: batch.len(),
                dead_lettered: 0,
            })
        }
    }

    /// A sink that fails (transient) every batch holding trade "0" while
    /// `hold` is set, confirms every other batch, and forks.
    struct Gated {
        hold: Arc<std::sync::atomic::AtomicBool>,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for Gated {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn accepts(&self, kind: RecordKind) -> bool {
            kind == RecordKind::Trade
        }
        fn fork(&self) -> Option<Self> {
            Some(Gated {
                hold: self.hold.clone(),
                got: self.got.clone(),
            })
        }
        async fn deliver(
            &mut self,
            batch: &[Record],
            _attempt: u32,
        ) -> Result<Delivery, SinkFailure> {
            let ids: Vec<String> = batch
                .iter()
                .filter_map(|r| match r {
                    Record::Trade(t) => Some(t.trade_id.to_string()),
                    _ => None,
                })
                .collect();
            if ids.iter().any(|i| i == "0") && self.hold.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                return Err(SinkFailure {
                    class: ErrorClass::Transient,
                    message: "batch 1 held".into(),
                    retry_after: None,
                });
            }
            self.got.lock().unwrap().extend(ids);
            Ok(Delivery {
                written: batch.len(),
                dead_lettered: 0,
            })
        }
    }

    #[tokio::test]
    async fn the_cursor_never_passes_an_unconfirmed_batch_and_a_crash_redelivers_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let open = || Wal::open(WalConfig::new(dir.path()).with_sinks(["scripted"])).unwrap();
        let wal = open();
        // Three frames of 7 trades: one batch each (batch_records = 7).
        for f in 0..3 {
            let recs: Vec<Record> = (f * 7..f * 7 + 7).map(crate::wal::test_trade).collect();
            wal.append(&recs).unwrap();
        }
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut s = settings();
        s.pipeline = 3;
        let metrics = Arc::new(Metrics::default());
        let (_stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            wal.clone(),
            Gated {
                hold: hold.clone(),
                got: got.clone(),
            },
            s.clone(),
            Arc::new(SinkHealth::new("scripted")),
            metrics.clone(),
            stop_rx.clone(),
        ));
        // Batches 2 and 3 are confirmed while batch 1 keeps failing.
        wait_for(|| got.lock().unwrap().len() == 14).await;
        wait_for(|| {
            metrics.get(
                metrics::SINK_RETRIES,
                &[("sink", "scripted"), ("class", "transient")],
            ) >= 3
        })
        .await;
        let mut later: Vec<String> = got.lock().unwrap().clone();
        later.sort_by_key(|i| i.parse::<u32>().unwrap());
        assert_eq!(later, (7..21).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(
            wal.cursor("scripted").unwrap(),
            0,
            "the cursor moved past batch 1, which is not confirmed"
        );
        assert_eq!(
            metrics.get(metrics::ACKNOWLEDGED_FRAMES, &[("sink", "scripted")]),
            0
        );
        // Crash: the drainer dies mid-retry; the log is reopened.
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        drop(wal);
        let wal = open();
        assert_eq!(wal.cursor("scripted").unwrap(), 0);
        assert_eq!(wal.backlog("scripted").unwrap().records, 21);
        hold.store(false, std::sync::atomic::Ordering::SeqCst);
        let again = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            wal.clone(),
            Gated {
                hold,
                got: again.clone(),
            },
            s,
            Arc::new(SinkHealth::new("scripted")),
            Arc::new(Metrics::default()),
            stop_rx,
        ));
        wait_for(|| wal.backlog("scripted").unwrap().records == 0).await;
        let mut all = again.lock().unwrap().clone();
        all.sort_by_key(|i| i.parse::<u32>().unwrap());
        assert_eq!(
            all,
            (0..21).map(|i| i.to_string()).collect::<Vec<_>>(),
            "after the restart batch 1 is delivered (and the unacknowledged 2 and 3 again)"
        );
        assert_eq!(wal.cursor("scripted").unwrap(), 3);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_slow_first_batch_holds_the_cursor_until_it_is_confirmed() {
        let dir = tempfile::TempDir::new().unwrap();
        let wal = Wal::open(WalConfig::new(dir.path()).with_sinks(["scripted"])).unwrap();
        for f in 0..3 {
            let recs: Vec<Record> = (f * 7..f * 7 + 7).map(crate::wal::test_trade).collect();
            wal.append(&recs).unwrap();
        }
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut s = settings();
        s.pipeline = 2;
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            wal.clone(),
            Gated {
                hold: hold.clone(),
                got: got.clone(),
            },
            s,
            Arc::new(SinkHealth::new("scripted")),
            Arc::new(Metrics::default()),
            stop_rx,
        ));
        // Depth 2: batch 2 is confirmed, batch 3 waits for room.
        wait_for(|| got.lock().unwrap().len() == 7).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            got.lock().unwrap().len(),
            7,
            "more than 2 batches in flight"
        );
        assert_eq!(wal.cursor("scripted").unwrap(), 0);
        hold.store(false, std::sync::atomic::Ordering::SeqCst);
        wait_for(|| wal.cursor("scripted").unwrap() == 3).await;
        assert_eq!(got.lock().unwrap().len(), 21, "each record once");
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    fn settings() -> DrainerSettings {
        DrainerSettings {
            batch_records: 7,
            pipeline: 1,
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
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let sink = Scripted {
            script: script.clone(),
            got: got.clone(),
            attempts: attempts.clone(),
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
                metrics::SINK_RETRIES,
                &[("sink", "scripted"), ("class", "transient")]
            ),
            2
        );
        assert_eq!(
            metrics.get(
                metrics::SINK_RETRIES,
                &[("sink", "scripted"), ("class", "config")]
            ),
            1
        );
        assert_eq!(
            metrics.get(
                metrics::DELIVERED_RECORDS,
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
        // The drainer counts the deliveries of each batch: the first batch
        // failed three times and was confirmed on its fourth; the next
        // batch starts again at 1.
        assert_eq!(*attempts.lock().unwrap(), [1, 2, 3, 4, 1]);
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
                attempts: Arc::new(Mutex::new(Vec::new())),
            },
            s,
            health.clone(),
            Arc::new(Metrics::default()),
            stop_rx,
        ));
        wait_for(|| health.snapshot().state == SinkState::Unhealthy).await;
        assert_eq!(
            health.snapshot().last_error.as_deref(),
            Some("scripted config")
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
