//! The pure row builder: bars and klines into one set of column arrays per
//! fact table ([`FactRows`]), ready to bind to the table's insert
//! ([`FactTable::insert_sql`]). No I/O; the sink resolves dimension IDs
//! first and passes a lookup.
//!
//! Under `last_wins` a key is sent once per batch (PostgreSQL refuses to
//! update one row twice in a statement): the last record of the key in log
//! order replaces the earlier row in place, the key's time compared at
//! PostgreSQL's microsecond precision ([`stored_micros`]).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::types::ToSql;

use super::config::ConflictPolicy;
use super::table::FactTable;
use crate::record::Record;

/// Dimension IDs of a record: (symbol, exchange, interval).
pub type DimIds = (i32, i32, i32);

/// A fact key as PostgreSQL stores it: the time in microseconds since
/// 2000-01-01, truncated toward zero as tokio-postgres converts it, and the
/// three dimension IDs. Two records that differ only below a microsecond are
/// the same key to the database.
type StoredKey = (i64, i32, i32, i32);

/// Nanoseconds since the Unix epoch → the microseconds since 2000-01-01 that
/// PostgreSQL stores.
pub fn stored_micros(ts: i64) -> i64 {
    const PG_EPOCH_NS: i64 = 946_684_800 * 1_000_000_000;
    (ts - PG_EPOCH_NS) / 1000
}

fn time(ts: i64) -> SystemTime {
    if ts >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ts as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ts.unsigned_abs())
    }
}

/// The dimension names of a fact record: (symbol, venue, interval).
pub fn dim_names(r: &Record) -> Option<(&str, &str, &str)> {
    match r {
        Record::Bar(b) => Some((&b.symbol, &b.venue, &b.interval)),
        Record::Kline(k) => Some((&k.symbol, &k.venue, &k.interval)),
        _ => None,
    }
}

/// Column arrays of one fact table.
pub struct FactRows {
    /// The table they go into.
    pub table: &'static FactTable,
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
    pub rows: Vec<usize>,
    /// `last_wins` only: the row of each key so far, so that a later record
    /// of the key replaces it in place.
    by_key: Option<HashMap<StoredKey, usize>>,
}

impl FactRows {
    /// Empty arrays for `table` under `policy`.
    pub fn new(table: &'static FactTable, policy: ConflictPolicy) -> FactRows {
        FactRows {
            table,
            time: Vec::new(),
            symbol: Vec::new(),
            exchange: Vec::new(),
            interval: Vec::new(),
            open: Vec::new(),
            high: Vec::new(),
            low: Vec::new(),
            close: Vec::new(),
            volume: Vec::new(),
            buy: Vec::new(),
            sell: Vec::new(),
            total: Vec::new(),
            theta: Vec::new(),
            rows: Vec::new(),
            by_key: (policy == ConflictPolicy::LastWins).then(Default::default),
        }
    }

    /// Whether a later record of a key replaces the earlier one (`last_wins`).
    pub fn dedups(&self) -> bool {
        self.by_key.is_some()
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Appends record `i` (a bar or a kline of this table) with its
    /// dimension IDs, or, under `last_wins`, overwrites the row of its key.
    pub fn put(&mut self, i: usize, r: &Record, ids: DimIds) {
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

    /// The arrays as the parameters of the table's insert and conflict
    /// query, in [`FactTable::columns`] order.
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![
            &self.time,
            &self.symbol,
            &self.exchange,
            &self.interval,
            &self.open,
            &self.high,
            &self.low,
            &self.close,
            &self.volume,
        ];
        if self.table.imbalance() {
            p.extend([
                &self.buy as &(dyn ToSql + Sync),
                &self.sell,
                &self.total,
                &self.theta,
            ]);
        }
        p
    }

    /// Row `n` as one value per column, in [`FactTable::columns`] order
    /// (for `COPY … BINARY`).
    pub fn row(&self, n: usize) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![
            &self.time[n],
            &self.symbol[n],
            &self.exchange[n],
            &self.interval[n],
            &self.open[n],
            &self.high[n],
            &self.low[n],
            &self.close[n],
            &self.volume[n],
        ];
        if self.table.imbalance() {
            p.extend([
                &self.buy[n] as &(dyn ToSql + Sync),
                &self.sell[n],
                &self.total[n],
                &self.theta[n],
            ]);
        }
        p
    }
}

/// Builds the rows of the records at `idx`, one [`FactRows`] per table met
/// (in order of first appearance). Records that are not facts, and facts
/// whose dimension IDs `ids` does not know, are skipped.
pub fn build(
    batch: &[Record],
    idx: &[usize],
    policy: impl Fn(&str) -> ConflictPolicy,
    ids: impl Fn(&str, &str, &str) -> Option<DimIds>,
) -> Vec<FactRows> {
    let mut tables: Vec<FactRows> = Vec::new();
    for &i in idx {
        let r = &batch[i];
        let (Some(table), Some((s, e, iv))) = (FactTable::of(r), dim_names(r)) else {
            continue;
        };
        let Some(ids) = ids(s, e, iv) else {
            continue;
        };
        let pos = match tables.iter().position(|t| std::ptr::eq(t.table, table)) {
            Some(p) => p,
            None => {
                tables.push(FactRows::new(table, policy(table.name)));
                tables.len() - 1
            }
        };
        tables[pos].put(i, r, ids);
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::timescale::table::FACT_TABLES;
    use crate::record::{Bar, BarKind, Kline};

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

    fn bar(kind: BarKind, ts: i64) -> Record {
        Record::Bar(Bar {
            kind,
            venue: "OKX".into(),
            symbol: "ETHUSDT".into(),
            interval: "tick_100".into(),
            ts,
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close: 1.5,
            volume: 7.0,
            buy_ticks: 60,
            sell_ticks: 40,
            total_ticks: 100,
            theta: 0.25,
        })
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
        let kl = &FACT_TABLES[3];
        let mut last = FactRows::new(kl, ConflictPolicy::LastWins);
        let mut first = FactRows::new(kl, ConflictPolicy::FirstWins);
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

    #[test]
    fn build_splits_by_table_and_skips_what_it_cannot_place() {
        let t = 1_700_000_000_000_000_000;
        let batch = [
            bar(BarKind::Vpin, t),
            kline(t, 1.0),
            bar(BarKind::Vpin, t + 1_000_000),
            bar(BarKind::TickImbalance, t),
            kline(t + 1_000, 2.0),
        ];
        // Record 4's symbol is "unknown" to the lookup: skipped.
        let lookup =
            |s: &str, _: &str, _: &str| (s == "ETHUSDT" || s == "BTCUSDT").then_some((7, 8, 9));
        let built = build(&batch, &[0, 1, 2, 3], |_| ConflictPolicy::FirstWins, lookup);
        let names: Vec<&str> = built.iter().map(|r| r.table.name).collect();
        assert_eq!(names, ["bar__vpin", "bar__kline", "bar__tick_imbalance"]);
        assert_eq!(built[0].rows, vec![0, 2]);
        assert_eq!(built[1].rows, vec![1]);
        assert_eq!(built[2].rows, vec![3]);
        assert_eq!(built[0].buy, vec![60, 60]);
        assert_eq!(built[0].theta, vec![0.25, 0.25]);
        assert_eq!(built[0].symbol, vec![7, 7]);
        assert_eq!(built[1].exchange, vec![8]);
        assert!(built[1].buy.is_empty(), "klines have no imbalance columns");
        // As many parameters (and values per row) as the table has columns.
        for r in &built {
            assert_eq!(r.params().len(), r.table.columns().len());
            assert_eq!(r.row(0).len(), r.table.columns().len());
        }
        let none = build(&batch, &[4], |_| ConflictPolicy::FirstWins, |_, _, _| None);
        assert!(none.is_empty());
    }

    #[test]
    fn build_follows_each_tables_policy() {
        let t = 1_700_000_000_000_000_000;
        let batch = [
            kline(t, 1.0),
            kline(t, 2.0),
            bar(BarKind::Vpin, t),
            bar(BarKind::Vpin, t),
        ];
        let policy = |name: &str| {
            if name == "bar__kline" {
                ConflictPolicy::LastWins
            } else {
                ConflictPolicy::FirstWins
            }
        };
        let built = build(&batch, &[0, 1, 2, 3], policy, |_, _, _| Some((1, 1, 1)));
        assert_eq!(
            built[0].rows,
            vec![1],
            "last_wins: the later kline of the key"
        );
        assert_eq!(built[0].close, vec![2.0]);
        assert!(built[0].dedups());
        assert_eq!(
            built[1].rows,
            vec![2, 3],
            "first_wins: both sent, the database decides"
        );
        assert!(!built[1].dedups());
    }
}
