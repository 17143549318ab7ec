//! Rewind: one sink delivers again the retained records whose event time
//! falls in a window (and, for `audit --repair`, only chosen minutes and
//! series), through its own sink code and the drainer's retry classes.
//!
//! - The frames come from the time index (`wal/retention.rs`), in log
//!   order; no other frame is read, and no other sink is touched.
//! - Progress (`rewind/<sink>` in the log's meta tree: the window and the
//!   last frame done) is written after each confirmed batch; a rewind of the
//!   same window started again after a kill resumes after it. Re-delivering
//!   what was done already is harmless by construction (the sinks write
//!   idempotently), so resuming one batch early never changes the result.
//! - Works on a stopped relay's log (the CLI opens it like `dlq replay`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::AuditError;
use crate::config::Config;
use crate::drain::retry::{Backoff, RetryPolicy};
use crate::drain::Sink;
use crate::record::Record;
use crate::wal::{minute_of, series_label, Series, Wal};

/// What to deliver again.
#[derive(Debug, Clone)]
pub struct RewindRequest {
    pub sink: String,
    pub since_ns: i64,
    pub until_ns: i64,
    /// Only these (Unix minute, series); `None`: everything in the window.
    pub only: Option<BTreeSet<(u32, Series)>>,
}

/// What a rewind delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RewindReport {
    pub frames: u64,
    pub records: u64,
    pub dead_lettered: u64,
    /// The frame a resumed rewind started after.
    pub resumed_after: Option<u64>,
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

/// Delivers `req` again; `on_batch` is told the running report after each
/// confirmed batch.
///
/// # Errors
/// [`AuditError::NoSink`], the log's failure, or a sink that kept failing
/// (after 30 attempts of one batch; progress so far is kept).
pub async fn rewind(
    config: &Config,
    wal: &Wal,
    req: &RewindRequest,
    on_batch: &mut (dyn FnMut(&RewindReport) + Send),
) -> Result<RewindReport, AuditError> {
    let sink_err = |detail: String| AuditError::Database {
        sink: if req.sink == "timescale" {
            "timescale"
        } else {
            "influx"
        },
        detail,
    };
    match req.sink.as_str() {
        "influx" if config.influx.is_some() => {
            let ic = config.influx.clone().unwrap_or_else(|| unreachable!());
            let sink = crate::db::influx::InfluxSink::new(ic, wal.dead_letters())
                .map_err(|e| sink_err(e.to_string()))?;
            run(sink, config, wal, req, on_batch).await
        }
        "timescale" if config.timescale.is_some() => {
            let tc = config.timescale.clone().unwrap_or_else(|| unreachable!());
            let sink = crate::db::timescale::TimescaleSink::new(tc, wal.meta(), wal.dead_letters())
                .map_err(|e| sink_err(e.to_string()))?;
            run(sink, config, wal, req, on_batch).await
        }
        other => Err(AuditError::NoSink(
            other.to_string(),
            config.sink_names().join(", "),
        )),
    }
}

async fn run<S: Sink>(
    mut sink: S,
    config: &Config,
    wal: &Wal,
    req: &RewindRequest,
    on_batch: &mut (dyn FnMut(&RewindReport) + Send),
) -> Result<RewindReport, AuditError> {
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
    let batch_records = config.drain.batch_records.max(1);
    let mut batch: Vec<Record> = Vec::with_capacity(batch_records);
    let mut label = String::new();
    let seqs = wal.frames_between(req.since_ns, req.until_ns)?;
    let last = seqs.last().copied().unwrap_or(0);
    for seq in seqs.into_iter().filter(|s| *s > after) {
        let Some(frame) = wal.read_frame(seq)? else {
            continue;
        };
        report.frames += 1;
        for r in frame.records {
            let ts = r.ts();
            if !sink.accepts(r.kind()) || ts < req.since_ns || ts >= req.until_ns {
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
        if batch.len() >= batch_records || seq == last {
            deliver(&mut sink, &mut batch, &mut report).await?;
            if req.only.is_none() {
                let p = Progress {
                    since_ns: req.since_ns,
                    until_ns: req.until_ns,
                    done_seq: seq,
                };
                meta.insert(&key, &serde_json::to_vec(&p).unwrap_or_default())?;
            }
            on_batch(&report);
        }
    }
    if !batch.is_empty() {
        deliver(&mut sink, &mut batch, &mut report).await?;
    }
    if req.only.is_none() {
        meta.remove(&key)?;
    }
    Ok(report)
}

/// Delivers `batch` with the drainer's retry classes and backoff (jittered),
/// giving up after 30 attempts; clears it once confirmed.
async fn deliver<S: Sink>(
    sink: &mut S,
    batch: &mut Vec<Record>,
    report: &mut RewindReport,
) -> Result<(), AuditError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut backoff = Backoff::new(RetryPolicy::default());
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sink.deliver(batch, attempt).await {
            Ok(d) => {
                report.records += d.written as u64;
                report.dead_lettered += d.dead_lettered as u64;
                batch.clear();
                return Ok(());
            }
            Err(f) if attempt >= 30 => {
                return Err(AuditError::Database {
                    sink: sink.name(),
                    detail: format!("rewind gave up after {attempt} attempts: {}", f.message),
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
