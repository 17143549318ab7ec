//! The InfluxDB driver: routes records to destinations, splits them into
//! requests within the line and byte limits, and isolates poison records by
//! bisection.
//!
//! Errors (table in `error.rs`): a data error (400, 413, 422) is bisected
//! down to the line, which is dead-lettered; so is a status the table does
//! not know, which is dead-lettered only if it refuses single lines while
//! others of the delivery are written (it hitting everything makes it
//! configuration). InfluxDB 1.x's partial write (400 `partial write: …
//! dropped=N`, the other points already stored) is a data error like any
//! other: bisection finds exactly the refused lines, and the stored lines it
//! re-sends overwrite themselves (identity timestamps), so no parsing of the
//! server's message is needed. Repeated timeouts halve the lines per request
//! (`drain::retry::Shrink`) before a batch is retried at full size.
//!
//! Pipelining: [`Sink::fork`] gives the drainer further instances sharing
//! the connection pool, so several batches are encoded and posted at once.
//!
//! A batch is confirmed (`Ok`) only when every record is written or
//! dead-lettered. Dead letters found during an attempt are stored only when
//! the whole attempt succeeds, so a retry after a transient failure never
//! dead-letters the same record twice; re-sent good lines overwrite the
//! identical points.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use super::client::Client;
use super::config::{Destination, InfluxConfig};
use super::encode::encode;
use super::error::InfluxError;
use crate::drain::retry::Shrink;
use crate::drain::verdict::Found;
use crate::drain::{Delivery, ErrorClass, Sink, SinkFailure};
use crate::record::{Record, RecordKind};
use crate::routes::Routes;
use crate::wal::DeadLetters;

/// The InfluxDB v2 sink.
pub struct InfluxSink {
    config: InfluxConfig,
    routes: Routes<Destination>,
    client: Client,
    dead: DeadLetters,
    /// Lines per request after timeouts.
    shrink: Shrink,
    /// Most lines the last delivery put in one request.
    attempted: usize,
    /// Encoding buffers of earlier deliveries, cleared, kept for the next
    /// (at most [`SPARE_LINES`]); growing a fresh buffer for every batch
    /// cost a page fault per 4 KiB and copies as it grew.
    spare: Vec<Lines>,
}

/// Smallest capacity (in elements) a spare buffer is cut back to.
const SPARE_FLOOR: usize = 16 * 1024;

/// Empties `v`; if its capacity is over four times what it held (and over
/// [`SPARE_FLOOR`]), gives the excess back to the allocator.
fn fit<T>(v: &mut Vec<T>) {
    let keep = (v.len() * 2).max(SPARE_FLOOR);
    v.clear();
    if v.capacity() > 2 * keep {
        v.shrink_to(keep);
    }
}

/// Encoding buffers one sink instance keeps between deliveries: one per
/// destination of a typical batch. Each holds about one batch of encoded
/// lines (the drainer's `batch_records`), so an idle instance keeps at most
/// this many batches' worth of bytes.
const SPARE_LINES: usize = 4;

impl InfluxSink {
    /// # Errors
    /// When the config is inconsistent (`InfluxConfig::validate`), the token
    /// file cannot be read or the HTTP client cannot be built.
    pub fn new(config: InfluxConfig, dead: DeadLetters) -> Result<InfluxSink, InfluxError> {
        config.validate().map_err(InfluxError::Setup)?;
        let client = Client::from_config(
            &config,
            Duration::from_millis(config.timeout_ms),
            config.gzip,
        )
        .map_err(InfluxError::Setup)?;
        Ok(InfluxSink {
            routes: config.routes(),
            config,
            client,
            dead,
            shrink: Shrink::default(),
            attempted: 0,
            spare: Vec::new(),
        })
    }

    /// Where `r` goes: (url, org, bucket), borrowed from the configuration.
    fn destination(&self, r: &Record) -> Dest<'_> {
        let d = match r.venue() {
            Some(v) => self.routes.resolve(v, r.kind().data_type()).0,
            None => self.routes.default(),
        };
        (
            d.url.as_deref().unwrap_or(&self.config.url),
            d.org.as_deref().unwrap_or(&self.config.org),
            &d.bucket,
        )
    }

    /// Writes lines `range` of `lines` to one destination, bisecting on data
    /// errors; records rejected on their own go to `found`.
    fn write_part<'a>(
        &'a self,
        dest: Dest<'a>,
        lines: &'a Lines,
        range: Range<usize>,
        found: &'a mut Found<InfluxError>,
    ) -> Pin<Box<dyn Future<Output = Result<(), InfluxError>> + Send + 'a>> {
        Box::pin(async move {
            let n = range.len();
            match self
                .client
                .write(dest.0, dest.1, dest.2, lines.body(range.clone()))
                .await
            {
                Ok(()) => {
                    found.written += n;
                    Ok(())
                }
                Err(e) if (e.class() == ErrorClass::Data || e.is_unclassified()) && n > 1 => {
                    let mid = range.start + n / 2;
                    self.write_part(dest, lines, range.start..mid, found)
                        .await?;
                    self.write_part(dest, lines, mid..range.end, found).await
                }
                Err(e) if e.class() == ErrorClass::Data => {
                    let reason = if e.is_too_large() {
                        format!("{e} (this line alone is too large for the server)")
                    } else {
                        e.to_string()
                    };
                    found.rejected.push((lines.record[range.start], reason));
                    Ok(())
                }
                Err(e) if e.is_unclassified() => {
                    // Everything fails alike: no line to blame, stop here.
                    found.suspect(lines.record[range.start], e)
                }
                Err(e) => Err(e),
            }
        })
    }

    /// `attempted` is set to the most lines put in one request; `spare`
    /// lends encoding buffers and gets back those the requests released.
    async fn deliver_inner(
        &self,
        batch: &[Record],
        attempt: u32,
        attempted: &mut usize,
        spare: &mut Vec<Lines>,
    ) -> Result<Delivery, InfluxError> {
        // Group by destination, keeping log order within each; every line is
        // encoded once, and requests and bisection halves are slices of it.
        let mut groups: Vec<(Dest<'_>, Lines)> = Vec::new();
        let result = self
            .deliver_groups(batch, attempt, attempted, spare, &mut groups)
            .await;
        for (_, lines) in groups {
            if spare.len() < SPARE_LINES {
                if let Some(l) = lines.recycle() {
                    spare.push(l);
                }
            }
        }
        result
    }

    async fn deliver_groups<'a>(
        &'a self,
        batch: &[Record],
        attempt: u32,
        attempted: &mut usize,
        spare: &mut Vec<Lines>,
        groups: &mut Vec<(Dest<'a>, Lines)>,
    ) -> Result<Delivery, InfluxError> {
        for (i, r) in batch.iter().enumerate() {
            if !self.accepts(r.kind()) {
                continue;
            }
            let d = self.destination(r);
            let at = match groups.iter().position(|(k, _)| *k == d) {
                Some(at) => at,
                None => {
                    groups.push((d, spare.pop().unwrap_or_default()));
                    groups.len() - 1
                }
            };
            groups[at].1.push(i, r);
        }
        for (_, lines) in groups.iter_mut() {
            lines.freeze();
        }
        let mut found = Found::default();
        let max_lines = self.shrink.limit(self.config.batch_max_lines);
        *attempted = 0;
        let mut total = 0;
        for (dest, lines) in groups.iter() {
            total += lines.record.len();
            for range in lines.requests(max_lines, self.config.batch_max_bytes) {
                *attempted = (*attempted).max(range.len());
                self.write_part(*dest, lines, range, &mut found).await?;
            }
        }
        let dead_lettered = found.settle("influx", batch, &self.dead, attempt).await?;
        Ok(Delivery {
            written: total - dead_lettered,
            dead_lettered,
        })
    }
}

/// (url, org, bucket) of one request.
type Dest<'a> = (&'a str, &'a str, &'a str);

/// The lines of one destination, encoded once: line `k` is record
/// `record[k]` of the batch and ends at `end[k]` in the encoded bytes.
/// Encoded into `buf`, then frozen into `sent`, whose slices are the request
/// bodies (shared, not copied); once the requests let go of them the buffer
/// is taken back for the next batch.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
    sent: Bytes,
    end: Vec<usize>,
    record: Vec<usize>,
}

impl Lines {
    fn push(&mut self, i: usize, r: &Record) {
        encode(r, &mut self.buf);
        self.end.push(self.buf.len());
        self.record.push(i);
    }

    /// Ends encoding: from here on [`Lines::body`] hands out slices.
    fn freeze(&mut self) {
        self.sent = Bytes::from(std::mem::take(&mut self.buf));
    }

    /// The bytes of lines `range`, contiguous, sharing the frozen buffer.
    fn body(&self, range: Range<usize>) -> Bytes {
        let from = match range.start {
            0 => 0,
            k => self.end[k - 1],
        };
        self.sent.slice(from..self.end[range.end - 1])
    }

    /// Empty lines keeping their buffers' capacity, if no request still
    /// holds a slice of the encoded bytes (otherwise the buffer is left to
    /// the request and dropped with it).
    fn recycle(self) -> Option<Lines> {
        let Lines {
            sent,
            mut end,
            mut record,
            ..
        } = self;
        let mut buf = Vec::from(sent.try_into_mut().ok()?);
        // A buffer grown by a backlog's full batches is cut back once
        // batches are small again (issue 23: the spares of a pipeline kept
        // ~8 MiB resident after a drain); while batches stay large the
        // capacity is kept, so a drain does not reallocate.
        fit(&mut buf);
        fit(&mut end);
        fit(&mut record);
        Some(Lines {
            buf,
            sent: Bytes::new(),
            end,
            record,
        })
    }

    /// Consecutive requests of at most `max_lines` lines and `max_bytes`
    /// bytes (a single longer line goes alone; the server judges it).
    fn requests(&self, max_lines: usize, max_bytes: usize) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        while start < self.end.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < self.end.len() && end - start < max_lines.max(1) {
                let len = self.body(end..end + 1).len();
                if end > start && bytes + len > max_bytes {
                    break;
                }
                bytes += len;
                end += 1;
            }
            out.push(start..end);
            start = end;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    /// Spare buffers keep their capacity while batches stay large and give
    /// it back once they are small again.
    #[test]
    fn spare_buffers_are_cut_back_after_large_batches() {
        let mut v: Vec<u8> = Vec::with_capacity(1 << 20);
        v.resize(900 * 1024, b'x');
        super::fit(&mut v);
        assert!(
            v.is_empty() && v.capacity() >= 900 * 1024,
            "kept while full"
        );
        v.resize(1000, b'x');
        super::fit(&mut v);
        assert!(v.is_empty());
        assert!(v.capacity() <= 2 * super::SPARE_FLOOR, "{}", v.capacity());
        // Never below the floor's worth of reuse.
        let mut w: Vec<u64> = Vec::with_capacity(super::SPARE_FLOOR);
        super::fit(&mut w);
        assert_eq!(w.capacity(), super::SPARE_FLOOR);
    }

    use super::*;
    use crate::record::{Record, Trade};

    fn trade(i: usize) -> Record {
        Record::Trade(Trade {
            venue: "binance".into(),
            symbol: format!("S{i}").into(),
            side: "buy".into(),
            price: 1.5,
            quantity: 2.0,
            trade_id: format!("{i}").into(),
            ts: 1_700_000_000_000_000_000 + i as i64,
        })
    }

    fn lines(n: usize) -> Lines {
        let mut l = Lines::default();
        for i in 0..n {
            l.push(i * 2, &trade(i));
        }
        l.freeze();
        l
    }

    #[test]
    fn each_line_is_its_own_slice_and_ranges_are_contiguous() {
        let l = lines(5);
        let all = l.body(0..5);
        let all = std::str::from_utf8(&all).unwrap();
        assert_eq!(all.lines().count(), 5);
        for k in 0..5 {
            let one = l.body(k..k + 1);
            let one = std::str::from_utf8(&one).unwrap();
            assert_eq!(one.matches('\n').count(), 1, "{one}");
            assert!(one.contains(&format!("symbol=S{k}")), "{one}");
        }
        assert_eq!(l.body(1..3).len(), l.body(1..2).len() + l.body(2..3).len());
        assert_eq!(l.record, vec![0, 2, 4, 6, 8]);
    }

    #[test]
    fn a_buffer_is_taken_back_only_when_no_request_holds_it() {
        let l = lines(100);
        let held = l.body(10..20);
        assert!(l.recycle().is_none(), "a body slice is still alive");
        drop(held);

        let l = lines(100);
        let (ptr_before, encoded) = (l.sent.as_ptr(), l.sent.len());
        let body = l.body(0..100);
        drop(body);
        let back = l.recycle().expect("nothing holds the bytes");
        assert!(back.buf.is_empty() && back.end.is_empty() && back.record.is_empty());
        assert_eq!(
            back.buf.as_ptr(),
            ptr_before,
            "the same allocation, not a copy"
        );
        assert!(back.buf.capacity() >= encoded);
        // Reused: the next batch encodes into it without reallocating.
        let mut again = back;
        let cap_before = again.buf.capacity();
        for i in 0..10 {
            again.push(i, &trade(i));
        }
        assert_eq!(again.buf.as_ptr(), ptr_before);
        assert_eq!(again.buf.capacity(), cap_before);
    }

    #[test]
    fn requests_respect_both_limits_and_cover_every_line_once() {
        let l = lines(10);
        let line = l.body(0..1).len();
        // By lines.
        let r = l.requests(4, usize::MAX);
        assert_eq!(r, vec![0..4, 4..8, 8..10]);
        // By bytes: room for two and a half lines means two per request.
        let r = l.requests(100, line * 5 / 2);
        assert_eq!(r.len(), 5);
        for x in &r {
            assert_eq!(x.len(), 2);
            assert!(l.body(x.clone()).len() <= line * 5 / 2);
        }
        // A line longer than the byte limit still goes, alone.
        let r = l.requests(100, 1);
        assert_eq!(r, (0..10).map(|k| k..k + 1).collect::<Vec<_>>());
    }
}

impl Sink for InfluxSink {
    fn name(&self) -> &'static str {
        "influx"
    }

    fn accepts(&self, kind: RecordKind) -> bool {
        !kind.is_warehouse()
    }

    /// Shares the HTTP connection pool and the dead-letter store; keeps its
    /// own timeout shrinking, which belongs to the batch it is delivering
    /// (the drainer counts that batch's attempts). Concurrent batches may land in any order: a point
    /// written twice with different fields (same series and timestamp in two
    /// batches in flight) may end with either; a replay of identical points
    /// is unaffected.
    fn fork(&self) -> Option<Self> {
        Some(InfluxSink {
            config: self.config.clone(),
            routes: self.routes.clone(),
            client: self.client.clone(),
            dead: self.dead.clone(),
            shrink: Shrink::default(),
            attempted: 0,
            spare: Vec::new(),
        })
    }

    async fn deliver(&mut self, batch: &[Record], attempt: u32) -> Result<Delivery, SinkFailure> {
        let mut attempted = 0;
        let mut spare = std::mem::take(&mut self.spare);
        let result = self
            .deliver_inner(batch, attempt, &mut attempted, &mut spare)
            .await;
        self.spare = spare;
        self.attempted = attempted;
        match result {
            Ok(d) => {
                self.shrink.succeeded(self.config.batch_max_lines);
                Ok(d)
            }
            Err(e) => {
                if e.is_timeout() {
                    let lines = self.shrink.timed_out(self.attempted);
                    tracing::warn!(
                        sink = "influx",
                        lines_per_request = lines,
                        "timed out: retrying with smaller requests"
                    );
                }
                Err(SinkFailure {
                    class: e.class(),
                    message: e.to_string(),
                    retry_after: e.retry_after(),
                })
            }
        }
    }
}
