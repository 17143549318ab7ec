//! The one way into the log. Every path that appends records (HTTP line
//! protocol, `/v1/records`, gRPC subscriptions, the in-process
//! `Relay::append`, `walrelay dlq replay`) calls [`Gate::admit`], which in
//! this order:
//!
//! 1. refuses a request of more than `max_records_per_request` records;
//! 2. validates every record under the [`Limits`] (the first failure names
//!    the line or record index and the field);
//! 3. for typed records, assigns identity timestamps against the
//!    cross-request window (`identity.rs`);
//! 4. encodes every record in the log's binary form and refuses one over
//!    `max_record_bytes` (far below the codec's decode limit, so nothing
//!    reaches the log that the log cannot give back);
//! 5. appends the whole request as one unit and returns once it is durable.
//!
//! Invariants: a refusal at any step appends nothing; the log only ever holds
//! records that passed steps 2 and 4. Appends are blocking: async callers run
//! the gate on a blocking thread.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::IngestError;
use super::identity::{stored_slot, IdentityWindow};
use crate::record::{encode_record, now_ns, Limits, Record};
use crate::wal::{AppendOutcome, Wal, WalError};

/// How the records of a request arrived; decides step 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// Line-protocol points: timestamps are kept exactly as written.
    LineProtocol,
    /// Typed records (JSON, gRPC, in-process): identity timestamps assigned.
    Typed,
    /// Records that were in the log before (a dead-letter replay): their
    /// timestamps were assigned then; validated again, not reassigned.
    Replay,
}

/// The ingest gate: limits, identity window and the log.
pub struct Gate {
    wal: Wal,
    limits: Limits,
    identities: Mutex<IdentityWindow>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Gate {
    /// A gate in front of `wal`. Rebuilds the identity window from the
    /// memos of the appends committed within the last `identity_window_ms`
    /// (`wal/memo.rs`): the cost is what the window holds, whatever the
    /// backlog. Frames written before the log had memos (an older walrelay)
    /// are read back from the log's tail as before, once.
    ///
    /// # Errors
    /// [`WalError`] if the log's tail or its memos cannot be read.
    pub fn new(wal: Wal, limits: Limits, identity_window_ms: u64) -> Result<Gate, WalError> {
        let mut window = IdentityWindow::new(identity_window_ms);
        let cutoff = now_ms().saturating_sub(identity_window_ms);
        let memos_from = wal.memos_from_seq();
        // Frames from before memos: walk back from the newest of them while
        // they are young enough, reading at most as many records as the
        // window can hold. Only the slots are kept. Past one window after
        // the upgrade this stops at the first frame.
        let mut frames = 0u64;
        let mut seq = memos_from - 1;
        let mut slots = Vec::new();
        let mut examined = 0usize;
        while seq > 0 && examined < super::identity::MAX_SLOTS {
            let Some(f) = wal.read_after(seq - 1, 1)?.into_iter().next() else {
                break;
            };
            if f.seq != seq || f.header.created_ms < cutoff {
                break;
            }
            examined += f.records.len();
            for r in f.records.iter().rev() {
                if let Some((key, id)) = stored_slot(r) {
                    slots.push((key, id, f.header.created_ms));
                }
            }
            frames += 1;
            seq -= 1;
        }
        for (key, id, at_ms) in slots.into_iter().rev() {
            window.remember_slot(key, id, at_ms);
        }
        let memos = wal.memos_since(cutoff, super::identity::MAX_SLOTS * 16)?;
        for (at_ms, memo) in &memos {
            window.remember_memo(memo, *at_ms);
        }
        if frames > 0 || !memos.is_empty() {
            tracing::info!(
                frames,
                memos = memos.len(),
                slots = window.len(),
                "identity window rebuilt"
            );
        }
        Ok(Gate {
            wal,
            limits,
            identities: Mutex::new(window),
        })
    }

    /// The limits this gate applies.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Steps 2 and 4 for one record: what a caller that dead-letters bad
    /// records one by one (gRPC subscriptions) asks before building a batch.
    /// Returns the offending field and the reason.
    ///
    /// # Errors
    /// `(field, message)` of the first problem.
    pub fn check_record(&self, r: &Record, now_ns: i64) -> Result<(), (String, String)> {
        r.validate_with(now_ns, &self.limits)
            .map_err(|e| (e.field().to_string(), e.to_string()))?;
        let mut buf = Vec::new();
        encode_record(r, &mut buf).map_err(|e| ("record".to_string(), e.to_string()))?;
        if buf.len() > self.limits.max_record_bytes {
            return Err((
                "record".into(),
                format!(
                    "the record's encoded size is {} bytes, over the limit of {} (ingest.limits.max_record_bytes)",
                    buf.len(),
                    self.limits.max_record_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Steps 1 and 2 only: the request-level and record-level checks.
    /// `lines[i]` is the line of record `i` (record index + 1 when absent).
    ///
    /// # Errors
    /// [`IngestError::OverLimit`] or [`IngestError::BadRecord`].
    pub fn check(&self, records: &[Record], lines: Option<&[usize]>) -> Result<(), IngestError> {
        let line = |i: usize| lines.and_then(|l| l.get(i).copied()).unwrap_or(i + 1);
        let max = self.limits.max_records_per_request;
        if records.len() > max {
            return Err(IngestError::OverLimit {
                line: line(max),
                what: "the number of records in the request",
                value: records.len(),
                max,
                limit: "ingest.limits.max_records_per_request",
            });
        }
        let now = now_ns();
        for (i, r) in records.iter().enumerate() {
            r.validate_with(now, &self.limits)
                .map_err(|e| IngestError::BadRecord {
                    line: line(i),
                    field: e.field().to_string(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Checks, stamps, encodes and durably appends one request as a unit.
    /// Blocks until durable.
    ///
    /// # Errors
    /// [`IngestError::OverLimit`] / [`IngestError::BadRecord`] (nothing
    /// appended), [`IngestError::Full`] when the log stayed full,
    /// [`IngestError::Wal`] when the log failed.
    pub fn admit(
        &self,
        mut records: Vec<Record>,
        lines: Option<&[usize]>,
        origin: Origin,
    ) -> Result<AppendOutcome, IngestError> {
        self.check(&records, lines)?;
        // The slots this append holds, stored with it for the rebuild.
        let memo = match origin {
            Origin::Typed => Some(
                self.identities
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .assign(&mut records, now_ms()),
            ),
            Origin::Replay => Some(super::identity::memo_of(&records)),
            Origin::LineProtocol => None,
        }
        .filter(|m| !m.is_empty());
        let line = |i: usize| lines.and_then(|l| l.get(i).copied()).unwrap_or(i + 1);
        let mut payload = Vec::with_capacity(records.len() * 96);
        let mut ends = Vec::with_capacity(records.len());
        let mut mask = 0u16;
        for (i, r) in records.iter().enumerate() {
            let start = payload.len();
            encode_record(r, &mut payload).map_err(|e| IngestError::BadRecord {
                line: line(i),
                field: "record".into(),
                message: e.to_string(),
            })?;
            let len = payload.len() - start;
            if len > self.limits.max_record_bytes {
                return Err(IngestError::OverLimit {
                    line: line(i),
                    what: "the record's encoded size in bytes",
                    value: len,
                    max: self.limits.max_record_bytes,
                    limit: "ingest.limits.max_record_bytes",
                });
            }
            ends.push(payload.len());
            mask |= r.kind().bit();
        }
        // The records are not needed past their binary form (retention
        // counts from the frames): not held while the append is flushed.
        drop(records);
        self.wal
            .append_encoded_with(payload, ends, mask, memo)
            .map_err(|e| match e {
                WalError::Full { .. } => IngestError::Full {
                    retry_after: std::time::Duration::from_secs(1),
                },
                WalError::TooLarge { .. } => IngestError::TooLarge {
                    limit: self.wal.config().max_bytes as usize,
                },
                e @ WalError::Failed { .. } => IngestError::Unavailable {
                    reason: e.to_string(),
                    retry_after: std::time::Duration::from_secs(30),
                },
                e @ WalError::DiskFull { .. } => IngestError::Unavailable {
                    reason: e.to_string(),
                    retry_after: std::time::Duration::from_secs(5),
                },
                other => IngestError::Wal(other),
            })
    }

    /// `walrelay dlq replay`: puts dead letters (of `sink`, or all) back into
    /// the log through the gate. A dead letter that fails the gate's checks
    /// is refused and kept, with the reason in the report; the others are
    /// appended one by one and then removed (a crash in between replays one
    /// twice, which the idempotent sinks absorb, and never loses it).
    /// Records dead-lettered by a gRPC subscription never reached the log, so
    /// they get identity timestamps now; the others keep theirs.
    ///
    /// # Errors
    /// [`IngestError::Wal`] when the log fails; [`IngestError::Full`] when it
    /// is full (what was replayed so far stays replayed).
    pub fn replay_dead_letters(&self, sink: Option<&str>) -> Result<ReplayReport, IngestError> {
        let dl = self.wal.dead_letters();
        let mut report = ReplayReport::default();
        for d in dl.list(sink, usize::MAX)? {
            let origin = if d.sink == "grpc" {
                Origin::Typed
            } else {
                Origin::Replay
            };
            match self.admit(vec![d.record.clone()], None, origin) {
                Ok(_) => {
                    dl.take(&d.id)?;
                    report.replayed += 1;
                }
                Err(
                    e @ (IngestError::BadRecord { .. }
                    | IngestError::OverLimit { .. }
                    | IngestError::TooLarge { .. }),
                ) => report.refused.push((d.id.clone(), e.to_string())),
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }
}

/// What [`Gate::replay_dead_letters`] did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Dead letters appended to the log (and removed from the store).
    pub replayed: u64,
    /// Dead letters refused by the gate and kept: id and reason.
    pub refused: Vec<(Vec<u8>, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Trade;
    use crate::wal::WalConfig;

    fn trade(id: &str) -> Record {
        Record::Trade(Trade {
            venue: "BINANCE".into(),
            symbol: "BTCUSDT".into(),
            ts: 1_764_000_000_123_000_000,
            price: 1.5,
            quantity: 2.0,
            side: "buy".into(),
            trade_id: id.into(),
        })
    }

    fn slots(gate: &Gate) -> usize {
        gate.identities.lock().unwrap().len()
    }

    /// The window comes back from memos after a restart; a log written
    /// before memos existed (frames only, no meta key) is read from its
    /// tail instead, and keeps being until its frames leave the window.
    #[test]
    fn the_window_is_rebuilt_from_memos_and_from_a_log_without_them() {
        let dir = tempfile::TempDir::new().unwrap();
        let cfg = WalConfig::new(dir.path());
        // An older walrelay's log: stamped trades appended without memos.
        {
            let wal = Wal::open(cfg.clone()).unwrap();
            let mut old = vec![trade("a"), trade("b")];
            crate::ingest::identity::assign_identity_timestamps(&mut old);
            wal.append(&old).unwrap();
            // What tells an older build's log: no memos-start key.
            wal.meta().remove(b"wal/memos_from_seq").unwrap();
            wal.flush().unwrap();
        }
        let wal = Wal::open(cfg.clone()).unwrap();
        let gate = Gate::new(wal.clone(), Limits::default(), 10_000).unwrap();
        assert_eq!(slots(&gate), 2, "read from the tail of a log without memos");
        // New appends store memos; line protocol holds no slot.
        gate.admit(
            vec![trade("c"), trade("d"), trade("e")],
            None,
            Origin::Typed,
        )
        .unwrap();
        gate.admit(vec![trade("f")], None, Origin::LineProtocol)
            .unwrap();
        assert_eq!(slots(&gate), 5);
        drop(gate);
        drop(wal);
        let wal = Wal::open(cfg).unwrap();
        let gate = Gate::new(wal, Limits::default(), 10_000).unwrap();
        assert_eq!(
            slots(&gate),
            5,
            "old frames from the tail, new ones from memos"
        );
        // A window of 0: nothing is young enough.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let wal = gate.wal.clone();
        drop(gate);
        let gate = Gate::new(wal, Limits::default(), 0).unwrap();
        assert_eq!(slots(&gate), 0);
    }
}
