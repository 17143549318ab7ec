//! The InfluxDB driver: routes records to destinations, splits them into
//! requests within the line and byte limits, and isolates poison records by
//! bisection.
//!
//! Errors (table in `error.rs`): a data error (400, 413, 422) is bisected
//! down to the line, which is dead-lettered; so is a status the table does
//! not know, which is dead-lettered only if it refuses single lines while
//! others of the delivery are written (it hitting everything makes it
//! configuration). Repeated timeouts halve the lines per request
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
use std::pin::Pin;
use std::time::Duration;

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
}

impl InfluxSink {
    /// # Errors
    /// When the token file cannot be read or the HTTP client cannot be built.
    pub fn new(config: InfluxConfig, dead: DeadLetters) -> Result<InfluxSink, InfluxError> {
        let token = config.resolve_token().map_err(InfluxError::Setup)?;
        let client = Client::new(
            token,
            Duration::from_millis(config.timeout_ms),
            config.gzip,
            config.tls_ca_file.as_deref(),
        )
        .map_err(InfluxError::Setup)?;
        Ok(InfluxSink {
            routes: config.routes(),
            config,
            client,
            dead,
            shrink: Shrink::default(),
            attempted: 0,
        })
    }

    fn destination(&self, r: &Record) -> (String, String, String) {
        let (d, _) = match r.venue() {
            Some(v) => self.routes.resolve(v, r.kind().data_type()),
            None => (self.routes.default(), String::new()),
        };
        (
            d.url.clone().unwrap_or_else(|| self.config.url.clone()),
            d.org.clone().unwrap_or_else(|| self.config.org.clone()),
            d.bucket.clone(),
        )
    }

    /// Writes `idx` (indices into `batch`) to one destination, bisecting on
    /// data errors; records rejected on their own go to `found`.
    fn write_part<'a>(
        &'a self,
        dest: &'a (String, String, String),
        batch: &'a [Record],
        idx: &'a [usize],
        found: &'a mut Found<InfluxError>,
    ) -> Pin<Box<dyn Future<Output = Result<(), InfluxError>> + Send + 'a>> {
        Box::pin(async move {
            let mut body = Vec::with_capacity(idx.len() * 120);
            for &i in idx {
                encode(&batch[i], &mut body);
            }
            match self.client.write(&dest.0, &dest.1, &dest.2, &body).await {
                Ok(()) => {
                    found.written += idx.len();
                    Ok(())
                }
                Err(e)
                    if (e.class() == ErrorClass::Data || e.is_unclassified()) && idx.len() > 1 =>
                {
                    let (a, b) = idx.split_at(idx.len() / 2);
                    self.write_part(dest, batch, a, found).await?;
                    self.write_part(dest, batch, b, found).await
                }
                Err(e) if e.class() == ErrorClass::Data => {
                    let reason = if e.is_too_large() {
                        format!("{e} (this line alone is too large for the server)")
                    } else {
                        e.to_string()
                    };
                    found.rejected.push((idx[0], reason));
                    Ok(())
                }
                Err(e) if e.is_unclassified() => {
                    // Everything fails alike: no line to blame, stop here.
                    found.suspect(idx[0], e)
                }
                Err(e) => Err(e),
            }
        })
    }

    async fn deliver_inner(
        &mut self,
        batch: &[Record],
        attempt: u32,
    ) -> Result<Delivery, InfluxError> {
        // Group by destination, keeping log order within each.
        let mut groups: Vec<((String, String, String), Vec<usize>)> = Vec::new();
        for (i, r) in batch.iter().enumerate() {
            if !self.accepts(r.kind()) {
                continue;
            }
            let d = self.destination(r);
            match groups.iter_mut().find(|(k, _)| *k == d) {
                Some((_, v)) => v.push(i),
                None => groups.push((d, vec![i])),
            }
        }
        let mut found = Found::default();
        let max_lines = self.shrink.limit(self.config.batch_max_lines);
        self.attempted = 0;
        let mut total = 0;
        for (dest, idx) in &groups {
            total += idx.len();
            // Requests within the configured limits.
            let mut start = 0;
            while start < idx.len() {
                let mut end = start;
                let mut bytes = 0;
                let mut scratch = Vec::new();
                while end < idx.len() && end - start < max_lines {
                    scratch.clear();
                    encode(&batch[idx[end]], &mut scratch);
                    if end > start && bytes + scratch.len() > self.config.batch_max_bytes {
                        break;
                    }
                    bytes += scratch.len();
                    end += 1;
                }
                self.attempted = self.attempted.max(end - start);
                self.write_part(dest, batch, &idx[start..end], &mut found)
                    .await?;
                start = end;
            }
        }
        let dead_lettered = found.settle("influx", batch, &self.dead, attempt).await?;
        Ok(Delivery {
            written: total - dead_lettered,
            dead_lettered,
        })
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
        })
    }

    async fn deliver(&mut self, batch: &[Record], attempt: u32) -> Result<Delivery, SinkFailure> {
        match self.deliver_inner(batch, attempt).await {
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
