//! Rewind: one sink delivers again the retained records whose event time
//! falls in a window (and, for `audit --repair`, only chosen minutes and
//! series), with the drainer's retry classes, beside (never instead of) the
//! sink's normal drain, and without moving any cursor.
//!
//! - The frames come from the log's time index (`wal/retention.rs`), in log
//!   order; no other frame is read, and no other sink is touched.
//! - Progress (`rewind/<sink>` in the log's meta tree: the window and the
//!   last frame done) is written, and written out of the process
//!   (`wal/durability.rs`), after each confirmed batch; a rewind of the same
//!   window started again after a kill, even a SIGKILL, resumes after it.
//!   Re-delivering what was done already is harmless by construction (the
//!   sinks write idempotently), so resuming one batch early never changes
//!   the result.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::retry::{Backoff, RetryPolicy};
use super::Sink;
use crate::record::Record;
use crate::wal::{minute_of, series_label, Series, Wal, WalError};

/// Attempts of one batch before a rewind gives up (its progress is kept).
const MAX_ATTEMPTS: u32 = 30;

/// What to deliver again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewindRequest {
    pub sink: String,
    pub since_ns: i64,
    pub until_ns: i64,
    /// Only these (Unix minute, series); `None`: everything in the window.
    pub only: Option<BTreeSet<(u32, Series)>>,
}

/// What a rewind has delivered so far (and, finished, in all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewindReport {
    /// Frames of the window read so far, and in the window.
    pub frames: u64,
    pub frames_total: u64,
    pub records: u64,
    pub dead_lettered: u64,
    /// The frame a resumed rewind started after.
    pub resumed_after: Option<u64>,
    pub done: bool,
    /// Why it stopped, if it failed.
    pub error: Option<String>,
}

/// Why a rewind stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RewindError {
    /// The log failed.
    #[error("log: {0}")]
    Wal(#[from] WalError),
    /// The sink refused one batch [`MAX_ATTEMPTS`] times.
    #[error("{sink}: rewind gave up after {attempts} attempts: {message}")]
    Sink {
        sink: &'static str,
        attempts: u32,
        message: String,
    },
}

impl RewindError {
    /// `wal` or `sink`.
    pub fn class(&self) -> &'static str {
        match self {
            RewindError::Wal(_) => "wal",
            RewindError::Sink { .. } => "sink",
        }
    }
}

/// Nanoseconds since the epoch of a window bound: RFC 3339
/// (`2026-12-06T07:00:00Z`), `now`, or relative to now (`-2h`, `-90m`,
/// `-30s`, `-1d`).
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_time(value: &str, now_ns: i64) -> Result<i64, String> {
    let v = value.trim();
    let accepted =
        r#"expected RFC 3339 ("2026-12-06T07:00:00Z"), "now" or a relative time ("-2h", "-30m")"#;
    if v == "now" {
        return Ok(now_ns);
    }
    if let Some(rel) = v.strip_prefix('-') {
        let ms = crate::wal::parse_duration_ms(rel).map_err(|_| accepted.to_string())?;
        return Ok(now_ns.saturating_sub((ms as i64).saturating_mul(1_000_000)));
    }
    let t = chrono::DateTime::parse_from_rfc3339(v).map_err(|e| format!("{e}: {accepted}"))?;
    t.timestamp_nanos_opt()
        .ok_or_else(|| "out of range".to_string())
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Progress {
    since_ns: i64,
    until_ns: i64,
    done_seq: u64,
}

fn progress_key(sink: &str) -> Vec<u8> {
    format!("rewind/{sink}").into_bytes()
}

/// Delivers `req` again through `sink`, in batches of `batch_records`, up
/// to `pipeline` batches in flight when the sink can
/// [`fork`](Sink::fork) (as the drainer does; one at a time otherwise);
/// `on_batch` is told the running report after each confirmed batch.
///
/// Batches are confirmed in log order (a later batch that finishes first
/// waits for the ones before it), so the stored progress always names a
/// frame before which everything was delivered, and `frames` in the report
/// counts the frames of confirmed batches only.
///
/// # Errors
/// [`RewindError`]: the log failed, or the sink refused a batch too often.
pub async fn run<S: Sink + 'static>(
    sink: &mut S,
    wal: &Wal,
    req: &RewindRequest,
    batch_records: usize,
    pipeline: usize,
    on_batch: &mut (dyn FnMut(&RewindReport) + Send),
) -> Result<RewindReport, RewindError> {
    use futures_util::{FutureExt, StreamExt};

    let meta = wal.meta();
    let key = progress_key(&req.sink);
    let mut report = RewindReport::default();
    // Resume only a whole-window rewind of the same window.
    let mut after = 0;
    if req.only.is_none() {
        if let Some(p) = meta
            .get(&key)?
            .and_then(|v| serde_json::from_slice::<Progress>(&v).ok())
        {
            if (p.since_ns, p.until_ns) == (req.since_ns, req.until_ns) {
                after = p.done_seq;
                report.resumed_after = Some(after);
                tracing::info!(sink = %req.sink, after_seq = after, "resuming an interrupted rewind");
            }
        }
    }
    let batch_records = batch_records.max(1);
    let depth = if pipeline > 1 && sink.fork().is_some() {
        pipeline
    } else {
        1
    };
    let seqs: Vec<u64> = wal
        .frames_between(req.since_ns, req.until_ns)?
        .into_iter()
        .filter(|s| *s > after)
        .collect();
    report.frames_total = seqs.len() as u64;
    on_batch(&report);
    // The frames are read and decoded on a blocking thread of their own,
    // up to `depth` batches ahead (as the drainer reads ahead), so the
    // reading overlaps the deliveries instead of sitting between them.
    let wanted: Vec<_> = crate::record::RecordKind::ALL
        .into_iter()
        .filter(|k| sink.accepts(*k))
        .collect();
    let (tx, mut batches) = tokio::sync::mpsc::channel::<Result<ReadBatch, WalError>>(depth);
    let reader = {
        let (wal, req) = (wal.clone(), req.clone());
        tokio::task::spawn_blocking(move || {
            read_batches(&wal, &req, &seqs, &wanted, batch_records, &tx)
        })
    };
    // Confirms delivered batches (in log order): counts, then one progress
    // write for the last of them, then the report.
    let mut confirm =
        |report: &mut RewindReport, done: &[(u64, u64, u64, u64)]| -> Result<(), RewindError> {
            let Some(&(seq, ..)) = done.last() else {
                return Ok(());
            };
            for &(_, frames, written, dead) in done {
                report.records += written;
                report.dead_lettered += dead;
                report.frames += frames;
            }
            if req.only.is_none() {
                let p = Progress {
                    since_ns: req.since_ns,
                    until_ns: req.until_ns,
                    done_seq: seq,
                };
                meta.insert_progress(&key, &serde_json::to_vec(&p).unwrap_or_default())?;
            }
            on_batch(report);
            Ok(())
        };
    let mut in_flight = futures_util::stream::FuturesOrdered::new();
    while let Some(read) = batches.recv().await {
        let ReadBatch {
            last_seq: seq,
            frames,
            records,
        } = read?;
        match (depth > 1).then(|| sink.fork()).flatten() {
            Some(mut forked) => {
                // A task of its own, so the batch travels while the next
                // ones are read (a future in `in_flight` only runs when
                // polled); confirmed in order.
                let sink_name = forked.name();
                let task = tokio::spawn(async move {
                    deliver(&mut forked, &records)
                        .await
                        .map(|(w, d)| (seq, frames, w, d))
                });
                in_flight.push_back(async move {
                    task.await.unwrap_or_else(|e| {
                        Err(RewindError::Sink {
                            sink: sink_name,
                            attempts: 0,
                            message: format!("delivery task failed: {e}"),
                        })
                    })
                });
                while in_flight.len() >= depth {
                    let mut done = Vec::new();
                    if let Some(d) = in_flight.next().await {
                        done.push(d?);
                    }
                    // And every later batch already delivered: one
                    // progress write covers them all.
                    while let Some(Some(d)) = in_flight.next().now_or_never() {
                        done.push(d?);
                    }
                    confirm(&mut report, &done)?;
                }
            }
            None => {
                // Batches before this one are confirmed first.
                let mut done = Vec::new();
                while let Some(d) = in_flight.next().await {
                    done.push(d?);
                }
                let (w, d) = deliver(sink, &records).await?;
                done.push((seq, frames, w, d));
                confirm(&mut report, &done)?;
            }
        }
    }
    let mut done = Vec::new();
    while let Some(d) = in_flight.next().await {
        done.push(d?);
    }
    confirm(&mut report, &done)?;
    // The reader ends when its frames are done or (above, on an error
    // returned early) when the channel closes.
    let _ = reader.await;
    if req.only.is_none() {
        meta.remove(&key)?;
    }
    report.done = true;
    on_batch(&report);
    Ok(report)
}

/// One batch of a rewind, read: its records and how many frames, up to and
/// including `last_seq`, it covers.
struct ReadBatch {
    last_seq: u64,
    frames: u64,
    records: Vec<Record>,
}

/// Reads the frames `seqs` (log order) and sends their records in `req`'s
/// window (and chosen minutes and series) and of kinds `wanted`, in batches
/// of at least `batch_records` (the last one: whatever is left). Stops at
/// the first error (sent) or when the receiver is gone.
fn read_batches(
    wal: &Wal,
    req: &RewindRequest,
    seqs: &[u64],
    wanted: &[crate::record::RecordKind],
    batch_records: usize,
    tx: &tokio::sync::mpsc::Sender<Result<ReadBatch, WalError>>,
) {
    let mut batch: Vec<Record> = Vec::with_capacity(batch_records);
    let mut frames = 0u64;
    let mut label = String::new();
    let last = seqs.last().copied().unwrap_or(0);
    for &seq in seqs {
        let frame = match wal.read_frame(seq) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        for r in frame.map(|f| f.records).unwrap_or_default() {
            let ts = r.ts();
            if !wanted.contains(&r.kind()) || ts < req.since_ns || ts >= req.until_ns {
                continue;
            }
            if let Some(only) = &req.only {
                series_label(&r, &mut label);
                let Some(s) = Series::from_label(&label) else {
                    continue;
                };
                if !only.contains(&(minute_of(ts), s)) {
                    continue;
                }
            }
            batch.push(r);
        }
        frames += 1;
        if batch.len() >= batch_records || seq == last {
            let read = ReadBatch {
                last_seq: seq,
                frames: std::mem::take(&mut frames),
                records: std::mem::replace(&mut batch, Vec::with_capacity(batch_records)),
            };
            if tx.blocking_send(Ok(read)).is_err() {
                return;
            }
        }
    }
}

/// Delivers `batch` with the drainer's retry classes and jittered backoff,
/// giving up after [`MAX_ATTEMPTS`]; returns (written, dead-lettered).
async fn deliver<S: Sink>(sink: &mut S, batch: &[Record]) -> Result<(u64, u64), RewindError> {
    if batch.is_empty() {
        return Ok((0, 0));
    }
    let mut backoff = Backoff::new(RetryPolicy::default());
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sink.deliver(batch, attempt).await {
            Ok(d) => return Ok((d.written as u64, d.dead_lettered as u64)),
            Err(f) if attempt >= MAX_ATTEMPTS => {
                return Err(RewindError::Sink {
                    sink: sink.name(),
                    attempts: attempt,
                    message: f.message,
                })
            }
            Err(f) => {
                let delay = backoff.next_delay(f.class, f.retry_after);
                tracing::warn!(sink = sink.name(), attempt, class = f.class.as_str(), delay_ms = delay.as_millis() as u64, error = %f.message, "rewind delivery failed; will retry");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::{Delivery, SinkFailure};
    use crate::record::RecordKind;
    use crate::wal::{Retain, WalConfig};
    use std::sync::{Arc, Mutex};

    /// Confirms `confirm` batches (recording their trade ids), then never
    /// answers: the rewind is stuck there, as when it is killed mid-way.
    struct Stalling {
        confirm: usize,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for Stalling {
        fn name(&self) -> &'static str {
            "influx"
        }
        fn accepts(&self, kind: RecordKind) -> bool {
            kind == RecordKind::Trade
        }
        async fn deliver(
            &mut self,
            batch: &[Record],
            _attempt: u32,
        ) -> Result<Delivery, SinkFailure> {
            if self.confirm == 0 {
                std::future::pending::<()>().await;
            }
            self.confirm -= 1;
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

    /// Forkable: batches finish out of order (the first of every three
    /// takes longest); each delivery records (first trade id, batch len).
    #[derive(Clone)]
    struct Jumbled {
        n: Arc<Mutex<u64>>,
        got: Arc<Mutex<Vec<(u64, usize)>>>,
        in_flight: Arc<Mutex<(usize, usize)>>,
    }

    impl Sink for Jumbled {
        fn name(&self) -> &'static str {
            "influx"
        }
        fn accepts(&self, kind: RecordKind) -> bool {
            kind == RecordKind::Trade
        }
        fn fork(&self) -> Option<Self> {
            Some(self.clone())
        }
        async fn deliver(
            &mut self,
            batch: &[Record],
            _attempt: u32,
        ) -> Result<Delivery, SinkFailure> {
            let k = {
                let mut n = self.n.lock().unwrap();
                *n += 1;
                *n
            };
            {
                let mut f = self.in_flight.lock().unwrap();
                f.0 += 1;
                f.1 = f.1.max(f.0);
            }
            let ms = if k % 3 == 1 { 30 } else { 1 };
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            self.in_flight.lock().unwrap().0 -= 1;
            let first = match &batch[0] {
                Record::Trade(t) => t.trade_id.parse().unwrap(),
                _ => unreachable!(),
            };
            self.got.lock().unwrap().push((first, batch.len()));
            Ok(Delivery {
                written: batch.len(),
                dead_lettered: 0,
            })
        }
    }

    /// A log of 40 trades in frames of 4, all delivered to `influx` and
    /// retained, and a whole-window rewind request over them.
    fn delivered_and_retained(dir: &tempfile::TempDir) -> (Wal, RewindRequest) {
        let wal = Wal::open(WalConfig {
            max_frame_records: 4,
            retain: Retain { ms: 3_600_000 },
            ..WalConfig::new(dir.path()).with_sinks(["influx"])
        })
        .unwrap();
        for i in 0..40 {
            wal.append(&[crate::wal::test_trade(i)]).unwrap();
        }
        wal.ack("influx", wal.stats().last_seq).unwrap();
        let base = crate::wal::test_trade(0).ts();
        let req = RewindRequest {
            sink: "influx".into(),
            since_ns: base,
            until_ns: base + 1_000,
            only: None,
        };
        (wal, req)
    }

    #[tokio::test]
    async fn a_pipelined_rewind_confirms_batches_in_log_order_and_delivers_each_record_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let (wal, req) = delivered_and_retained(&dir);
        let mut sink = Jumbled {
            n: Arc::default(),
            got: Arc::default(),
            in_flight: Arc::default(),
        };
        let key = progress_key("influx");
        let meta = wal.meta();
        let mut seen: Vec<(u64, Option<u64>)> = Vec::new();
        let r = run(&mut sink, &wal, &req, 5, 4, &mut |r| {
            let done = meta
                .get(&key)
                .unwrap()
                .and_then(|v| serde_json::from_slice::<Progress>(&v).ok())
                .map(|p| p.done_seq);
            seen.push((r.frames, done));
        })
        .await
        .unwrap();
        assert_eq!((r.records, r.frames, r.done), (40, 40, true), "{r:?}");
        // Several deliveries were in flight at once, and they finished out
        // of order.
        assert!(sink.in_flight.lock().unwrap().1 > 1);
        let got = sink.got.lock().unwrap().clone();
        let firsts: Vec<u64> = got.iter().map(|g| g.0).collect();
        let mut sorted = firsts.clone();
        sorted.sort();
        assert_ne!(firsts, sorted, "the sink was meant to finish out of order");
        assert_eq!(got.iter().map(|g| g.1).sum::<usize>(), 40);
        sorted.dedup();
        assert_eq!(sorted.len(), got.len(), "a batch was delivered twice");
        // The progress only moves forward, one confirmed batch at a time:
        // after confirming k frames it names the k-th frame of the window
        // (here frame sequence numbers start at 1).
        let confirmed: Vec<(u64, Option<u64>)> = seen
            .iter()
            .copied()
            .filter(|(f, _)| *f > 0 && *f < 40)
            .collect();
        assert!(!confirmed.is_empty());
        for (frames, done) in confirmed {
            assert_eq!(done, Some(frames), "{seen:?}");
        }
    }

    /// What a SIGKILL leaves of an open log: what sled has written to its
    /// files so far (a process crash does not undo writes already made). A
    /// copy of the directory taken while the log is open is that image.
    fn crash_image(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                crash_image(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_rewinds_progress_is_written_out_of_the_process_with_each_confirmed_batch() {
        let dir = tempfile::TempDir::new().unwrap();
        let config = |d: &std::path::Path| WalConfig {
            max_frame_records: 4,
            retain: Retain { ms: 3_600_000 },
            ..WalConfig::new(d).with_sinks(["influx"])
        };
        let wal = Wal::open(config(dir.path())).unwrap();
        for i in 0..40 {
            wal.append(&[crate::wal::test_trade(i)]).unwrap();
        }
        wal.ack("influx", wal.stats().last_seq).unwrap();
        let base = crate::wal::test_trade(0).ts();
        let req = RewindRequest {
            sink: "influx".into(),
            since_ns: base,
            until_ns: base + 1_000,
            only: None,
        };
        let mut stalling = Stalling {
            confirm: 3,
            got: Arc::new(Mutex::new(Vec::new())),
        };
        // Stuck after 3 confirmed batches; well inside sled's background
        // flush period (1 s), so only an explicit write-out gets it out.
        let cut = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            run(&mut stalling, &wal, &req, 5, 1, &mut |_| {}),
        )
        .await;
        assert!(cut.is_err(), "the rewind was meant to be cut off");
        let live = wal.meta().get(&progress_key("influx")).unwrap();
        assert!(live.is_some(), "no progress stored");
        let image = tempfile::TempDir::new().unwrap();
        crash_image(dir.path(), image.path());
        let crashed = Wal::open(config(image.path())).unwrap();
        assert_eq!(
            crashed.meta().get(&progress_key("influx")).unwrap(),
            live,
            "the last confirmed batch's progress would not survive a SIGKILL"
        );
    }

    #[tokio::test]
    async fn an_interrupted_rewind_resumes_after_its_last_confirmed_batch_and_misses_nothing() {
        let dir = tempfile::TempDir::new().unwrap();
        let (wal, req) = delivered_and_retained(&dir);
        let got = Arc::new(Mutex::new(Vec::new()));
        // Killed after 3 confirmed batches of 5: the future is dropped.
        let mut stalling = Stalling {
            confirm: 3,
            got: got.clone(),
        };
        let first = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            run(&mut stalling, &wal, &req, 5, 1, &mut |_| {}),
        )
        .await;
        assert!(first.is_err(), "the rewind was meant to be cut off");
        assert_eq!(got.lock().unwrap().len(), 15);
        let mut rest = Stalling {
            confirm: usize::MAX,
            got: got.clone(),
        };
        let r = run(&mut rest, &wal, &req, 5, 1, &mut |_| {}).await.unwrap();
        assert!(r.resumed_after.is_some(), "{r:?}");
        assert_eq!(r.records, 25, "resumed from the start or skipped a batch");
        let mut ids: Vec<u64> = got
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, (0..40).collect::<Vec<_>>());
        // Done: the progress is gone, a new rewind starts from the beginning.
        let again = run(&mut rest, &wal, &req, 5, 1, &mut |_| {}).await.unwrap();
        assert_eq!((again.resumed_after, again.records), (None, 40));
    }
}
