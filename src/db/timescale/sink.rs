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
//! the drainer still reads the next batches ahead while one is written.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::config::{ConflictPolicy, TimescaleConfig};
use super::conn::{connect, deadline};
use super::dim_cache::{identity, Dim, DimCache};
use super::error::TimescaleError;
use super::schema::{bar_table, ensure};
use crate::drain::retry::Shrink;
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
    attempts: u32,
    /// Rows per transaction after timeouts.
    shrink: Shrink,
    /// Most rows the last delivery put in one transaction.
    attempted: usize,
}

/// Unclassified errors on single records, tolerated while nothing of the
/// delivery was written before they are taken as configuration.
const MAX_SUSPECTS_WITHOUT_WRITES: usize = 8;

/// What the bisection of one delivery found.
#[derive(Default)]
struct Found {
    /// Records refused for a data reason, with it.
    rejected: Vec<(usize, String)>,
    /// Records refused alone with an unclassified error.
    suspects: Vec<(usize, TimescaleError)>,
    /// Records written.
    written: usize,
}

fn time(ts: i64) -> SystemTime {
    if ts >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ts as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ts.unsigned_abs())
    }
}

fn keys(r: &Record) -> Option<(&str, &str, &str)> {
    match r {
        Record::Bar(b) => Some((&b.symbol, &b.venue, &b.interval)),
        Record::Kline(k) => Some((&k.symbol, &k.venue, &k.interval)),
        _ => None,
    }
}

/// The value columns of a fact table after its four key columns, and the
/// typed unnest of all its parameters ($1..$4 are the keys). Shared by the
/// insert and by the conflict check, which bind the same arrays.
fn shape(imbalance: bool) -> (&'static str, &'static str) {
    if imbalance {
        (
            "open, high, low, close, volume, buy_ticks, sell_ticks, total_ticks, theta",
            "unnest($1::timestamptz[], $2::int4[], $3::int4[], $4::int4[], $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::int8[], $11::int8[], $12::int8[], $13::float8[])",
        )
    } else {
        (
            "open, high, low, close, volume",
            "unnest($1::timestamptz[], $2::int4[], $3::int4[], $4::int4[], $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[])",
        )
    }
}

/// `INSERT` of one fact table's unnested arrays under `policy`.
fn insert_sql(schema: &str, table: &str, imbalance: bool, policy: ConflictPolicy) -> String {
    let (values, unnest) = shape(imbalance);
    let on_conflict = match policy {
        ConflictPolicy::FirstWins => "ON CONFLICT DO NOTHING".to_string(),
        ConflictPolicy::LastWins => format!(
            "ON CONFLICT (time, symbol_id, exchange_id, interval_id) DO UPDATE \
             SET ({values}) = ({excluded}) WHERE ({stored}) IS DISTINCT FROM ({excluded})",
            excluded = prefixed("EXCLUDED.", values),
            stored = prefixed("t.", values),
        ),
    };
    format!(
        "INSERT INTO {schema}.{table} AS t (time, symbol_id, exchange_id, interval_id, {values}) \
         SELECT * FROM {unnest} {on_conflict}"
    )
}

/// `a, b` → `p.a, p.b`.
fn prefixed(p: &str, columns: &str) -> String {
    columns
        .split(", ")
        .map(|c| format!("{p}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A fact key as PostgreSQL stores it: the time in microseconds since
/// 2000-01-01, truncated toward zero as tokio-postgres converts it, and the
/// three dimension IDs. Two records that differ only below a microsecond are
/// the same key to the database.
type StoredKey = (i64, i32, i32, i32);

fn stored_micros(ts: i64) -> i64 {
    const PG_EPOCH_NS: i64 = 946_684_800 * 1_000_000_000;
    (ts - PG_EPOCH_NS) / 1000
}

/// Column arrays of one fact table.
#[derive(Default)]
struct Columns {
    time: Vec<SystemTime>,
    symbol: Vec<i32>,
    exchange: Vec<i32>,
    interval: Vec<i32>,
    open: Vec<f64>,
    high: Vec<f64>,
    low: Vec<f64>,
    close: Vec<f64>,
    volume: Vec<f64>,
    buy: Vec<i64>,
    sell: Vec<i64>,
    total: Vec<i64>,
    theta: Vec<f64>,
    /// Batch index of each row.
    rows: Vec<usize>,
    /// `last_wins` only: the row of each key so far, so that a later record
    /// of the key replaces it in place.
    by_key: Option<std::collections::HashMap<StoredKey, usize>>,
}

impl Columns {
    fn new(policy: ConflictPolicy) -> Columns {
        Columns {
            by_key: (policy == ConflictPolicy::LastWins).then(Default::default),
            ..Default::default()
        }
    }

    /// Appends record `i` (a bar or a kline) with its dimension IDs, or,
    /// under `last_wins`, overwrites the row of its key.
    fn put(&mut self, i: usize, r: &Record, ids: (i32, i32, i32)) {
        let ts = match r {
            Record::Bar(b) => b.ts,
            Record::Kline(k) => k.ts,
            _ => return,
        };
        let at = match &mut self.by_key {
            Some(m) => {
                let n = self.rows.len();
                *m.entry((stored_micros(ts), ids.0, ids.1, ids.2))
                    .or_insert(n)
            }
            None => self.rows.len(),
        };
        if at == self.rows.len() {
            self.rows.push(i);
            self.time.push(time(ts));
            self.symbol.push(ids.0);
            self.exchange.push(ids.1);
            self.interval.push(ids.2);
            self.open.push(0.0);
            self.high.push(0.0);
            self.low.push(0.0);
            self.close.push(0.0);
            self.volume.push(0.0);
            if matches!(r, Record::Bar(_)) {
                self.buy.push(0);
                self.sell.push(0);
                self.total.push(0);
                self.theta.push(0.0);
            }
        } else {
            self.rows[at] = i;
            // Same stored key; keep the later record's exact time too.
            self.time[at] = time(ts);
        }
        match r {
            Record::Bar(b) => {
                self.open[at] = b.open;
                self.high[at] = b.high;
                self.low[at] = b.low;
                self.close[at] = b.close;
                self.volume[at] = b.volume;
                self.buy[at] = b.buy_ticks as i64;
                self.sell[at] = b.sell_ticks as i64;
                self.total[at] = b.total_ticks as i64;
                self.theta[at] = b.theta;
            }
            Record::Kline(k) => {
                self.open[at] = k.open;
                self.high[at] = k.high;
                self.low[at] = k.low;
                self.close[at] = k.close;
                self.volume[at] = k.volume;
            }
            _ => {}
        }
    }
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
            attempts: 0,
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
        let mut tables: Vec<(&'static str, bool, Columns)> = Vec::new();
        for &i in idx {
            let (table, imbalance) = match &batch[i] {
                Record::Bar(b) => (bar_table(b.kind), true),
                Record::Kline(_) => ("bar__kline", false),
                _ => continue,
            };
            let pos = match tables.iter().position(|(t, _, _)| *t == table) {
                Some(p) => p,
                None => {
                    let policy = self.cfg.conflict.of(table);
                    tables.push((table, imbalance, Columns::new(policy)));
                    tables.len() - 1
                }
            };
            let (s, e, iv) = keys(&batch[i]).unwrap();
            let id = |d, v: &str| self.cache.get(d, v).expect("resolved above");
            let ids = (
                id(Dim::Symbol, s),
                id(Dim::Exchange, e),
                id(Dim::Interval, iv),
            );
            tables[pos].2.put(i, &batch[i], ids);
        }
        let schema = self.cfg.schema.clone();
        let timeout = self.cfg.statement_timeout_ms;
        let client = self.client.as_mut().expect("connected");
        let tx = deadline(timeout, "begin", client.transaction()).await?;
        let statements: Vec<(String, Vec<&(dyn ToSql + Sync)>)> = tables
            .iter()
            .map(|(table, imbalance, c)| {
                let sql = insert_sql(&schema, table, *imbalance, self.cfg.conflict.of(table));
                let mut params: Vec<&(dyn ToSql + Sync)> = vec![
                    &c.time,
                    &c.symbol,
                    &c.exchange,
                    &c.interval,
                    &c.open,
                    &c.high,
                    &c.low,
                    &c.close,
                    &c.volume,
                ];
                if *imbalance {
                    params.extend([&c.buy as &(dyn ToSql + Sync), &c.sell, &c.total, &c.theta]);
                }
                (sql, params)
            })
            .collect();
        // Pipelined: all inserts are in flight at once on the one connection.
        let inserts = statements
            .iter()
            .map(|(sql, params)| tx.execute(sql.as_str(), params));
        let inserted = deadline(timeout, "insert facts", async {
            futures_util::future::try_join_all(inserts).await
        })
        .await?;
        let mut conflicts = Vec::new();
        for (((table, imbalance, c), (_, params)), n) in
            tables.iter().zip(&statements).zip(&inserted)
        {
            // Under last_wins a short count means identical rows: nothing to
            // report.
            if *n as usize == c.rows.len() || c.by_key.is_some() {
                continue;
            }
            let (values, unnest) = shape(*imbalance);
            let sql = format!(
                "SELECT k.ord FROM {unnest} \
                 WITH ORDINALITY AS k(time, symbol_id, exchange_id, interval_id, {values}, ord) \
                 JOIN {schema}.{table} t USING (time, symbol_id, exchange_id, interval_id) \
                 WHERE (t.{cols_t}) IS DISTINCT FROM (k.{cols_k})",
                cols_t = values.replace(", ", ", t."),
                cols_k = values.replace(", ", ", k."),
            );
            let differing = deadline(
                timeout,
                "compare conflicting facts",
                tx.query(sql.as_str(), params),
            )
            .await?;
            for row in differing {
                let ord: i64 = row.get(0);
                let i = c.rows[(ord - 1) as usize];
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
        found: &'a mut Found,
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
                    if found.written == 0 && found.suspects.len() >= MAX_SUSPECTS_WITHOUT_WRITES {
                        return Err(e);
                    }
                    found.suspects.push((idx[0], e));
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
    }

    async fn deliver_inner(&mut self, batch: &[Record]) -> Result<Delivery, TimescaleError> {
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
        let Found {
            mut rejected,
            suspects,
            written,
        } = found;
        if let Some((_, first)) = suspects.first() {
            if written == 0 {
                // It hit every record it met: not about the data. Unhealthy
                // (configuration) until an operator looks.
                let (_, e) = suspects.into_iter().next().expect("first exists");
                return Err(e);
            }
            tracing::warn!(sink = "timescale", records = suspects.len(), written, error = %first, "an unclassified error hit single records while the rest were written: dead-lettering them");
            rejected.extend(suspects.into_iter().map(|(i, e)| {
                (
                    i,
                    format!("{e} (an error of unknown class that refused this record alone while {written} others of its batch were written)"),
                )
            }));
        }
        // One atomic write and one flush for the delivery, off the async workers.
        let items: Vec<(Record, String)> = rejected
            .iter()
            .map(|(i, reason)| (batch[*i].clone(), reason.clone()))
            .collect();
        self.dead
            .put_many_async("timescale", items, self.attempts)
            .await
            .map_err(|e| TimescaleError::Wal(e.to_string()))?;
        for (i, reason) in &rejected {
            tracing::warn!(sink = "timescale", kind = %batch[*i].kind(), reason = %reason, "record dead-lettered");
        }
        Ok(Delivery {
            written: idx.len() - rejected.len(),
            dead_lettered: rejected.len(),
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

    async fn deliver(&mut self, batch: &[Record]) -> Result<Delivery, SinkFailure> {
        self.attempts += 1;
        match self.deliver_inner(batch).await {
            Ok(d) => {
                self.attempts = 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Kline;

    fn kline(ts: i64, close: f64) -> Record {
        Record::Kline(Kline {
            venue: "OKX".into(),
            symbol: "BTCUSDT".into(),
            interval: "1m".into(),
            ts,
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close,
            volume: 10.0,
        })
    }

    #[test]
    fn statements_per_policy() {
        let first = insert_sql("mart", "bar__kline", false, ConflictPolicy::FirstWins);
        assert!(first.ends_with("ON CONFLICT DO NOTHING"), "{first}");
        let last = insert_sql("mart", "bar__kline", false, ConflictPolicy::LastWins);
        assert!(
            last.ends_with(
                "ON CONFLICT (time, symbol_id, exchange_id, interval_id) DO UPDATE \
                 SET (open, high, low, close, volume) = (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume) \
                 WHERE (t.open, t.high, t.low, t.close, t.volume) IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume)"
            ),
            "{last}"
        );
        let bars = insert_sql("m", "bar__vpin", true, ConflictPolicy::LastWins);
        assert!(
            bars.contains("EXCLUDED.theta") && bars.starts_with("INSERT INTO m.bar__vpin AS t"),
            "{bars}"
        );
    }

    #[test]
    fn stored_key_is_postgres_microseconds_truncated_toward_zero() {
        // tokio-postgres sends (time - 2000-01-01) in whole microseconds,
        // truncated toward zero on both sides of that epoch.
        let pg_epoch = 946_684_800 * 1_000_000_000i64;
        assert_eq!(stored_micros(pg_epoch), 0);
        assert_eq!(stored_micros(pg_epoch + 1_999), 1);
        assert_eq!(stored_micros(pg_epoch - 1_999), -1);
        assert_eq!(stored_micros(0), -946_684_800_000_000);
        assert_eq!(
            stored_micros(1_700_000_000_000_000_999),
            stored_micros(1_700_000_000_000_000_000)
        );
    }

    #[test]
    fn last_wins_keeps_one_row_per_stored_key_and_first_wins_keeps_all() {
        let t = 1_700_000_000_000_000_000;
        let batch = [
            kline(t, 1.0),
            kline(t + 60_000_000_000, 5.0),
            kline(t + 999, 2.0),
            kline(t + 1_000, 3.0),
        ];
        let mut last = Columns::new(ConflictPolicy::LastWins);
        let mut first = Columns::new(ConflictPolicy::FirstWins);
        for (i, r) in batch.iter().enumerate() {
            last.put(i, r, (1, 2, 3));
            first.put(i, r, (1, 2, 3));
        }
        // t and t+999 ns are one key at microsecond precision: record 2 replaced record 0.
        assert_eq!(last.rows, vec![2, 1, 3]);
        assert_eq!(last.close, vec![2.0, 5.0, 3.0]);
        assert_eq!(last.time.len(), 3);
        assert_eq!(first.rows, vec![0, 1, 2, 3]);
        assert_eq!(first.close, vec![1.0, 5.0, 2.0, 3.0]);
    }
}
