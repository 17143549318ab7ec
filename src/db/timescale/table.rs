//! One description per fact table. The DDL (`schema.rs`), the insert and the
//! conflict query (`sink.rs`), the row builder (`rows.rs`) and the
//! benchmark's `COPY` (`benches/timescale.rs`) are all generated from
//! [`FACT_TABLES`], so a column is added in one place.
//!
//! Invariants:
//! - every fact table starts with the four key columns [`KEY`] (`time` and the
//!   three dimension IDs), which are also its `UNIQUE` key, in that order;
//! - parameter `$n` of the insert and of the conflict query is column `n` of
//!   [`FactTable::columns`], bound to the array of the same position in
//!   [`super::rows::FactRows::params`].

use tokio_postgres::types::Type;

use crate::record::{BarKind, Record};

/// One column of a fact table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: &'static str,
    /// The rest of its DDL line; `{schema}` is replaced by the schema.
    pub ddl: &'static str,
    /// The array type its parameter is bound as (`unnest($n::…)`).
    pub array: &'static str,
}

impl Column {
    /// Its binary type (for `COPY … BINARY`), from its array type.
    pub fn pg_type(&self) -> Type {
        match self.array {
            "timestamptz[]" => Type::TIMESTAMPTZ,
            "int4[]" => Type::INT4,
            "int8[]" => Type::INT8,
            "float8[]" => Type::FLOAT8,
            other => unreachable!("no binary type for {other}"),
        }
    }
}

const fn col(name: &'static str, ddl: &'static str, array: &'static str) -> Column {
    Column { name, ddl, array }
}

/// The key columns every fact table starts with (also its `UNIQUE` key).
pub const KEY: [Column; 4] = [
    col("time", "TIMESTAMPTZ NOT NULL", "timestamptz[]"),
    col(
        "symbol_id",
        "INTEGER NOT NULL REFERENCES {schema}.dim_symbol (symbol_id)",
        "int4[]",
    ),
    col(
        "exchange_id",
        "INTEGER NOT NULL REFERENCES {schema}.dim_exchange (exchange_id)",
        "int4[]",
    ),
    col(
        "interval_id",
        "INTEGER NOT NULL REFERENCES {schema}.dim_interval (interval_id)",
        "int4[]",
    ),
];

const F8: &str = "DOUBLE PRECISION NOT NULL";

/// Columns of a kline table: the key and OHLCV.
const KLINE_COLUMNS: [Column; 9] = [
    KEY[0],
    KEY[1],
    KEY[2],
    KEY[3],
    col("open", F8, "float8[]"),
    col("high", F8, "float8[]"),
    col("low", F8, "float8[]"),
    col("close", F8, "float8[]"),
    col("volume", F8, "float8[]"),
];

/// Columns of a bar table: a kline's and the imbalance columns.
const BAR_COLUMNS: [Column; 13] = [
    KLINE_COLUMNS[0],
    KLINE_COLUMNS[1],
    KLINE_COLUMNS[2],
    KLINE_COLUMNS[3],
    KLINE_COLUMNS[4],
    KLINE_COLUMNS[5],
    KLINE_COLUMNS[6],
    KLINE_COLUMNS[7],
    KLINE_COLUMNS[8],
    col("buy_ticks", "BIGINT NOT NULL DEFAULT 0", "int8[]"),
    col("sell_ticks", "BIGINT NOT NULL DEFAULT 0", "int8[]"),
    col("total_ticks", "BIGINT NOT NULL DEFAULT 0", "int8[]"),
    col("theta", "DOUBLE PRECISION NOT NULL DEFAULT 0", "float8[]"),
];

/// A fact table: its name and which records it holds.
#[derive(Debug, PartialEq, Eq)]
pub struct FactTable {
    /// Table name (inside the configured schema).
    pub name: &'static str,
    /// The bar kind it holds, `None` for klines.
    pub bar: Option<BarKind>,
}

/// All fact tables, in DDL order.
pub const FACT_TABLES: [FactTable; 4] = [
    FactTable {
        name: "bar__tick_imbalance",
        bar: Some(BarKind::TickImbalance),
    },
    FactTable {
        name: "bar__volume_imbalance",
        bar: Some(BarKind::VolumeImbalance),
    },
    FactTable {
        name: "bar__vpin",
        bar: Some(BarKind::Vpin),
    },
    FactTable {
        name: "bar__kline",
        bar: None,
    },
];

impl FactTable {
    /// The table of a record, `None` for records the warehouse does not hold.
    pub fn of(r: &Record) -> Option<&'static FactTable> {
        let bar = match r {
            Record::Bar(b) => Some(b.kind),
            Record::Kline(_) => None,
            _ => return None,
        };
        FACT_TABLES.iter().find(|t| t.bar == bar)
    }

    /// Whether it has the imbalance columns (bar tables do).
    pub fn imbalance(&self) -> bool {
        self.bar.is_some()
    }

    /// All its columns, keys first.
    pub fn columns(&self) -> &'static [Column] {
        if self.imbalance() {
            &BAR_COLUMNS
        } else {
            &KLINE_COLUMNS
        }
    }

    /// The columns after the key.
    pub fn values(&self) -> &'static [Column] {
        &self.columns()[KEY.len()..]
    }

    /// `time, symbol_id, …`: all column names, comma separated.
    pub fn column_list(&self) -> String {
        names(self.columns(), "")
    }

    /// Binary types of all columns, in order (for `COPY … BINARY`).
    pub fn types(&self) -> Vec<Type> {
        self.columns().iter().map(Column::pg_type).collect()
    }

    /// `CREATE TABLE` and its index.
    pub fn ddl(&self, schema: &str) -> String {
        let table = self.name;
        let mut body = String::new();
        for c in self.columns() {
            body.push_str(&format!(
                "    {} {},\n",
                c.name,
                c.ddl.replace("{schema}", schema)
            ));
        }
        let key = names(&KEY, "");
        format!(
            "CREATE TABLE IF NOT EXISTS {schema}.{table} (\n{body}    UNIQUE ({key})\n);\n\
             CREATE INDEX IF NOT EXISTS {table}_keys_time_idx ON {schema}.{table} (symbol_id, exchange_id, interval_id, time DESC);\n"
        )
    }

    /// `unnest($1::timestamptz[], …)` over all its parameters.
    fn unnest(&self) -> String {
        let args: Vec<String> = self
            .columns()
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}", i + 1, c.array))
            .collect();
        format!("unnest({})", args.join(", "))
    }

    /// The `INSERT` of its unnested arrays under `policy`.
    pub fn insert_sql(&self, schema: &str, policy: super::ConflictPolicy) -> String {
        let values = names(self.values(), "");
        let on_conflict = match policy {
            super::ConflictPolicy::FirstWins => "ON CONFLICT DO NOTHING".to_string(),
            super::ConflictPolicy::LastWins => format!(
                "ON CONFLICT ({key}) DO UPDATE \
                 SET ({values}) = ({excluded}) WHERE ({stored}) IS DISTINCT FROM ({excluded})",
                key = names(&KEY, ""),
                excluded = names(self.values(), "EXCLUDED."),
                stored = names(self.values(), "t."),
            ),
        };
        format!(
            "INSERT INTO {schema}.{table} AS t ({columns}) SELECT * FROM {unnest} {on_conflict}",
            table = self.name,
            columns = self.column_list(),
            unnest = self.unnest(),
        )
    }

    /// The query that, bound to the insert's parameters, returns the
    /// 1-based positions of the given rows whose key is held by a row with
    /// different values (the `first_wins` conflict check).
    pub fn conflict_sql(&self, schema: &str) -> String {
        format!(
            "SELECT k.ord FROM {unnest} \
             WITH ORDINALITY AS k({columns}, ord) \
             JOIN {schema}.{table} t USING ({key}) \
             WHERE ({stored}) IS DISTINCT FROM ({given})",
            unnest = self.unnest(),
            columns = self.column_list(),
            table = self.name,
            key = names(&KEY, ""),
            stored = names(self.values(), "t."),
            given = names(self.values(), "k."),
        )
    }
}

/// `a, b` with each name prefixed.
fn names(columns: &[Column], prefix: &str) -> String {
    columns
        .iter()
        .map(|c| format!("{prefix}{}", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::timescale::ConflictPolicy;

    #[test]
    fn every_bar_kind_and_klines_have_one_table() {
        for kind in BarKind::ALL {
            let t = FACT_TABLES.iter().filter(|t| t.bar == Some(kind)).count();
            assert_eq!(t, 1, "{kind:?}");
        }
        assert_eq!(FACT_TABLES.iter().filter(|t| t.bar.is_none()).count(), 1);
    }

    #[test]
    fn statements_per_policy() {
        let kline = &FACT_TABLES[3];
        let first = kline.insert_sql("mart", ConflictPolicy::FirstWins);
        assert_eq!(
            first,
            "INSERT INTO mart.bar__kline AS t (time, symbol_id, exchange_id, interval_id, open, high, low, close, volume) \
             SELECT * FROM unnest($1::timestamptz[], $2::int4[], $3::int4[], $4::int4[], $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[]) \
             ON CONFLICT DO NOTHING"
        );
        let last = kline.insert_sql("mart", ConflictPolicy::LastWins);
        assert!(
            last.ends_with(
                "ON CONFLICT (time, symbol_id, exchange_id, interval_id) DO UPDATE \
                 SET (open, high, low, close, volume) = (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume) \
                 WHERE (t.open, t.high, t.low, t.close, t.volume) IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume)"
            ),
            "{last}"
        );
        let bars = FACT_TABLES[2].insert_sql("m", ConflictPolicy::LastWins);
        assert!(
            bars.contains("EXCLUDED.theta")
                && bars.contains("$13::float8[]")
                && bars.starts_with("INSERT INTO m.bar__vpin AS t"),
            "{bars}"
        );
    }

    #[test]
    fn conflict_query_binds_the_insert_parameters() {
        let sql = FACT_TABLES[0].conflict_sql("mart");
        assert_eq!(
            sql,
            "SELECT k.ord FROM unnest($1::timestamptz[], $2::int4[], $3::int4[], $4::int4[], $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::int8[], $11::int8[], $12::int8[], $13::float8[]) \
             WITH ORDINALITY AS k(time, symbol_id, exchange_id, interval_id, open, high, low, close, volume, buy_ticks, sell_ticks, total_ticks, theta, ord) \
             JOIN mart.bar__tick_imbalance t USING (time, symbol_id, exchange_id, interval_id) \
             WHERE (t.open, t.high, t.low, t.close, t.volume, t.buy_ticks, t.sell_ticks, t.total_ticks, t.theta) \
             IS DISTINCT FROM (k.open, k.high, k.low, k.close, k.volume, k.buy_ticks, k.sell_ticks, k.total_ticks, k.theta)"
        );
    }

    #[test]
    fn every_column_has_a_binary_type() {
        for t in &FACT_TABLES {
            assert_eq!(t.types().len(), t.columns().len());
        }
        assert_eq!(FACT_TABLES[0].types()[12], Type::FLOAT8);
        assert_eq!(FACT_TABLES[0].types()[9], Type::INT8);
    }

    #[test]
    fn ddl_names_every_column_with_its_type() {
        let ddl = FACT_TABLES[3].ddl("mart");
        assert!(ddl.starts_with("CREATE TABLE IF NOT EXISTS mart.bar__kline (\n    time TIMESTAMPTZ NOT NULL,\n    symbol_id INTEGER NOT NULL REFERENCES mart.dim_symbol (symbol_id),\n"), "{ddl}");
        assert!(ddl.contains("    volume DOUBLE PRECISION NOT NULL,\n    UNIQUE (time, symbol_id, exchange_id, interval_id)\n);\n"), "{ddl}");
        assert!(!ddl.contains("theta"));
        let bar = FACT_TABLES[0].ddl("m");
        assert!(
            bar.contains("    theta DOUBLE PRECISION NOT NULL DEFAULT 0,\n    UNIQUE"),
            "{bar}"
        );
        assert!(bar.contains("CREATE INDEX IF NOT EXISTS bar__tick_imbalance_keys_time_idx ON m.bar__tick_imbalance (symbol_id, exchange_id, interval_id, time DESC);"));
    }
}
