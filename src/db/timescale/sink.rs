//! Fact writes: one transaction per batch, one `INSERT … SELECT FROM unnest(…)
//! ON CONFLICT DO NOTHING` per fact table (pipelined on one connection), so a
//! replay of the same frames is a no-op.
//!
//! Why UNNEST rather than binary COPY into a staging table: both need one
//! round trip per table, and COPY additionally needs a temporary table per
//! transaction and a second statement; `benches/timescale.rs` measures both.
//!
//! Confirmation: `Ok` means every record is in its table or dead-lettered.
//! Data errors (SQLSTATE 22, 23, 54; the table is in `error.rs`) are
//! isolated by bisection; so is an SQLSTATE the table does not know, which
//! is dead-lettered only if it hits single records while others of the
//! delivery are written (it hitting everything makes it configuration). Dead
//! letters are stored only when the whole delivery succeeds, so a retry
//! never dead-letters a record twice. Repeated timeouts halve the rows per
//! transaction (`drain::retry::Shrink`) before a batch is retried at full size.
//!
//! Conflicts: a fact key holds one row; what happens to a record whose key
//! is already held is the table's [`ConflictPolicy`] (`[timescale.conflict]`).
//! - `first_wins` (default): `ON CONFLICT DO NOTHING`. When an insert adds
//!   fewer rows than it was given (the count costs nothing), one more query in
//!   the same transaction finds the given rows whose key is held by a row with
//!   *different* values: those records are dead-lettered with the reason,
//!   never dropped unseen. Rows equal to the stored one (a replay) are simply
//!   done.
//! - `last_wins`: `ON CONFLICT (key) DO UPDATE SET … WHERE (stored values) IS
//!   DISTINCT FROM (new values)`, so an identical replay rewrites nothing and
//!   a changed record replaces the row. PostgreSQL refuses to update one row
//!   twice in a statement, so within a batch only the last record of a key
//!   (in log order; the key's time compared at PostgreSQL's microsecond
//!   precision) is sent; the earlier ones count as written, superseded.

//!
//! Pipelining: this sink does not [`fork`](Sink::fork). The conflict
//! policies are defined in log order (which record of a key is first or
//! last), and two transactions in flight could apply a later batch first;
//! the drainer still reads the next batch ahead while one is written.

use std::future::Future;
use std::pin::Pin;

use tokio_postgres::Client;

use super::config::TimescaleConfig;
use super::conn::{connect, deadline};
use super::dim_cache::{identity, Dim, DimCache};
use super::error::TimescaleError;
use super::rows::{build, dim_names as keys};
use super::schema::ensure;
use crate::drain::retry::Shrink;
use crate::drain::verdict::Found;
use crate::drain::{Delivery, ErrorClass, Sink, SinkFailure};
use crate::record::{Record, RecordKind};
use crate::wal::{DeadLetters, Meta};

/// The TimescaleDB sink.
pub struct TimescaleSink {
    cfg: TimescaleConfig,
    client: Option<Client>,
    cache: DimCache,
    dead: DeadLetters,
    schema_ready: bool,
    /// Rows per transaction after timeouts.
    shrink: Shrink,
    /// Most rows the last delivery put in one transaction.
    attempted: usize,
}

impl TimescaleSink {
    /// Loads the dimension cache from the log; does not touch the database.
    ///
    /// # Errors
    /// [`TimescaleError::Config`] for an invalid config, `Wal` if the cache cannot be read.
    pub fn new(
        cfg: TimescaleConfig,
        meta: Meta,
        dead: DeadLetters,
    ) -> Result<TimescaleSink, TimescaleError> {
        cfg.validate().map_err(TimescaleError::Config)?;
        let cache = DimCache::load(meta)?;
        tracing::info!(
            cached_dimension_ids = cache.len(),
            "timescale sink: dimension-ID cache loaded"
        );
        Ok(TimescaleSink {
            cfg,
            client: None,
            cache,
            dead,
            schema_ready: false,
            shrink: Shrink::default(),
            attempted: 0,
        })
    }

    /// Dimension round trips made so far.
    pub fn dimension_round_trips(&self) -> u64 {
        self.cache.round_trips
    }

    async fn connected(&mut self) -> Result<(), TimescaleError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.client = None;
        let mut client = connect(&self.cfg).await?;
        if !self.schema_ready {
            ensure(&mut client, &self.cfg.schema, self.cfg.require_timescaledb).await?;
            self.schema_ready = true;
        }
        let id = identity(&client, &self.cfg.schema).await?;
        self.cache.bind_identity(&id)?;
        self.client = Some(client);
        Ok(())
    }

    fn drop_if_broken(&mut self, e: &TimescaleError) {
        if e.class() == ErrorClass::Transient {
            self.client = None;
        }
    }

    async fn resolve(&mut self, batch: &[Record], idx: &[usize]) -> Result<(), TimescaleError> {
        let mut need = Vec::with_capacity(idx.len() * 3);
        for &i in idx {
            if let Some((s, e, iv)) = keys(&batch[i]) {
                need.push((Dim::Symbol, s.to_string()));
                need.push((Dim::Exchange, e.to_string()));
                need.push((Dim::Interval, iv.to_string()));
            }
        }
        let client = self.client.as_ref().expect("connected");
        self.cache
            .resolve(
                client,
                &self.cfg.schema,
                self.cfg.statement_timeout_ms,
                &need,
            )
            .await
    }

    /// Writes the records at `idx` in one transaction; returns the records
    /// whose key already holds a different row, with the reason.
    async fn write_rows(
        &mut self,
        batch: &[Record],
        idx: &[usize],
    ) -> Result<Vec<(usize, String)>, TimescaleError> {
        self.resolve(batch, idx).await?;
        let cache = &self.cache;
        let conflict = &self.cfg.conflict;
        let tables = build(
            batch,
            idx,
            |table| conflict.of(table),
            |s, e, iv| {
                // `resolve` above either resolved every key or failed: a
                // record skipped here would count as written unseen.
                let id = |d, v: &str| cache.get(d, v).expect("resolved above");
                Some((
                    id(Dim::Symbol, s),
                    id(Dim::Exchange, e),
                    id(Dim::Interval, iv),
                ))
            },
        );
        let schema = &self.cfg.schema;
        let timeout = self.cfg.statement_timeout_ms;
        let client = self.client.as_mut().expect("connected");
        let tx = deadline(timeout, "begin", client.transaction()).await?;
        let statements: Vec<String> = tables
            .iter()
            .map(|t| t.table.insert_sql(schema, conflict.of(t.table.name)))
            .collect();
        let params: Vec<_> = tables.iter().map(|t| t.params()).collect();
        // Pipelined: all inserts are in flight at once on the one connection.
        let inserts = statements
            .iter()
            .zip(&params)
            .map(|(sql, params)| tx.execute(sql.as_str(), params));
        let inserted = deadline(timeout, "insert facts", async {
            futures_util::future::try_join_all(inserts).await
        })
        .await?;
        let mut conflicts = Vec::new();
        for ((rows, params), n) in tables.iter().zip(&params).zip(&inserted) {
            // Under last_wins a short count means identical rows: nothing to
            // report.
            if *n as usize == rows.len() || rows.dedups() {
                continue;
            }
            let table = rows.table.name;
            let sql = rows.table.conflict_sql(schema);
            let differing = deadline(
                timeout,
                "compare conflicting facts",
                tx.query(sql.as_str(), params),
            )
            .await?;
            for row in differing {
                let ord: i64 = row.get(0);
                let i = rows.rows[(ord - 1) as usize];
                let (s, e, iv) = keys(&batch[i]).expect("a fact record");
                conflicts.push((
                    i,
                    format!("{table}: the key (time, symbol {s}, exchange {e}, interval {iv}) already holds a different row; the first write is kept (timescale.conflict.{table} = \"first_wins\")"),
                ));
            }
        }
        deadline(timeout, "commit", tx.commit()).await?;
        Ok(conflicts)
    }

    /// Writes `idx`, retrying once after re-resolving on a foreign-key
    /// violation and bisecting on data and unclassified errors.
    fn write_part<'a>(
        &'a mut self,
        batch: &'a [Record],
        idx: &'a [usize],
        found: &'a mut Found<TimescaleError>,
    ) -> Pin<Box<dyn Future<Output = Result<(), TimescaleError>> + Send + 'a>> {
        Box::pin(async move {
            let mut result = self.write_rows(batch, idx).await;
            if matches!(&result, Err(e) if e.is_foreign_key()) {
                tracing::warn!(
                    sink = "timescale",
                    records = idx.len(),
                    "foreign-key violation: a dimension row vanished; re-resolving once"
                );
                let stale: Vec<(Dim, String)> = idx
                    .iter()
                    .filter_map(|&i| keys(&batch[i]))
                    .flat_map(|(s, e, iv)| {
                        [
                            (Dim::Symbol, s.to_string()),
                            (Dim::Exchange, e.to_string()),
                            (Dim::Interval, iv.to_string()),
                        ]
                    })
                    .collect();
                self.cache.forget(&stale);
                result = self.write_rows(batch, idx).await;
            }
            match result {
                Ok(conflicts) => {
                    found.written += idx.len() - conflicts.len();
                    found.rejected.extend(conflicts);
                    Ok(())
                }
                Err(e)
                    if (e.class() == ErrorClass::Data || e.is_unclassified()) && idx.len() > 1 =>
                {
                    let (a, b) = idx.split_at(idx.len() / 2);
                    self.write_part(batch, a, found).await?;
                    self.write_part(batch, b, found).await
                }
                Err(e) if e.class() == ErrorClass::Data => {
                    found.rejected.push((idx[0], e.to_string()));
                    Ok(())
                }
                Err(e) if e.is_unclassified() => {
                    // Everything fails alike: no record to blame, stop here.
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
    ) -> Result<Delivery, TimescaleError> {
        self.connected().await?;
        let idx: Vec<usize> = (0..batch.len())
            .filter(|&i| keys(&batch[i]).is_some())
            .collect();
        let mut found = Found::default();
        let rows = self.shrink.limit(self.cfg.batch_size);
        self.attempted = rows.min(idx.len());
        for chunk in idx.chunks(rows) {
            self.write_part(batch, chunk, &mut found).await?;
        }
        let dead_lettered = found
            .settle("timescale", batch, &self.dead, attempt)
            .await?;
        Ok(Delivery {
            written: idx.len() - dead_lettered,
            dead_lettered,
        })
    }
}

impl Sink for TimescaleSink {
    fn name(&self) -> &'static str {
        "timescale"
    }

    fn accepts(&self, kind: RecordKind) -> bool {
        kind.is_warehouse()
    }

    async fn deliver(&mut self, batch: &[Record], attempt: u32) -> Result<Delivery, SinkFailure> {
        match self.deliver_inner(batch, attempt).await {
            Ok(d) => {
                self.shrink.succeeded(self.cfg.batch_size);
                Ok(d)
            }
            Err(e) => {
                self.drop_if_broken(&e);
                if e.is_timeout() {
                    let rows = self.shrink.timed_out(self.attempted);
                    tracing::warn!(
                        sink = "timescale",
                        rows_per_transaction = rows,
                        "timed out: retrying with smaller transactions"
                    );
                }
                Err(SinkFailure {
                    class: e.class(),
                    message: e.to_string(),
                    retry_after: None,
                })
            }
        }
    }
}
