//! `walrelay init`: create the schema and seed the dimensions from the
//! config's lists.
//!
//! Per change one log line — `DIMENSION_ADDED`, `DIMENSION_REACTIVATED`,
//! `DIMENSION_SOFT_DELETED` with `table` and `value` — and per table a
//! `DIMENSION_SUMMARY` with added / existing / reactivated / soft-deleted
//! counts. Symbols active in the table but absent from the config are
//! soft-deleted (`is_deleted = TRUE, deleted_date = now()`), never removed.
//! Running init twice changes nothing the second time. Exchanges and
//! intervals are only added (their tables have no soft-delete columns).

use std::collections::{BTreeMap, BTreeSet};

use super::config::TimescaleConfig;
use super::conn::{connect, deadline};
use super::error::TimescaleError;
use super::schema::ensure;

/// Counts for one dimension table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableReport {
    pub table: &'static str,
    pub added: usize,
    pub existing: usize,
    pub reactivated: usize,
    pub soft_deleted: usize,
}

/// What `init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    pub hypertables: bool,
    pub tables: Vec<TableReport>,
}

/// Creates the schema and seeds the dimensions from `cfg.dimensions`.
///
/// # Errors
/// [`TimescaleError`] on connection, permission or schema failures.
pub async fn init(cfg: &TimescaleConfig) -> Result<InitReport, TimescaleError> {
    cfg.validate().map_err(TimescaleError::Config)?;
    let mut client = connect(cfg).await?;
    let hypertables = ensure(&mut client, &cfg.schema, cfg.require_timescaledb).await?;
    let schema = &cfg.schema;
    let t = cfg.statement_timeout_ms;
    let tx = deadline(t, "begin init", client.transaction()).await?;
    deadline(
        t,
        "init lock",
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('walrelay init'))",
            &[],
        ),
    )
    .await?;

    let mut reports = Vec::new();
    // Symbols: add, reactivate, soft-delete.
    let rows = deadline(
        t,
        "read dim_symbol",
        tx.query(
            &format!("SELECT symbol, is_deleted FROM {schema}.dim_symbol WHERE symbol IS NOT NULL"),
            &[],
        ),
    )
    .await?;
    let current: BTreeMap<String, bool> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let wanted: BTreeSet<&str> = cfg.dimensions.symbols.iter().map(String::as_str).collect();
    let mut r = TableReport {
        table: "dim_symbol",
        ..Default::default()
    };
    let (mut add, mut react, mut del) = (Vec::new(), Vec::new(), Vec::new());
    for w in &wanted {
        match current.get(*w) {
            None => add.push(w.to_string()),
            Some(true) => react.push(w.to_string()),
            Some(false) => r.existing += 1,
        }
    }
    for (s, deleted) in &current {
        if !deleted && !wanted.contains(s.as_str()) {
            del.push(s.clone());
        }
    }
    deadline(t, "add symbols", tx.execute(&format!("INSERT INTO {schema}.dim_symbol (symbol) SELECT unnest($1::text[]) ON CONFLICT (symbol) DO NOTHING"), &[&add])).await?;
    deadline(t, "reactivate symbols", tx.execute(&format!("UPDATE {schema}.dim_symbol SET is_deleted = FALSE, deleted_date = NULL WHERE symbol = ANY($1)"), &[&react])).await?;
    deadline(t, "soft-delete symbols", tx.execute(&format!("UPDATE {schema}.dim_symbol SET is_deleted = TRUE, deleted_date = now() WHERE symbol = ANY($1)"), &[&del])).await?;
    for v in &add {
        tracing::info!(table = "dim_symbol", value = %v, "DIMENSION_ADDED");
    }
    for v in &react {
        tracing::info!(table = "dim_symbol", value = %v, "DIMENSION_REACTIVATED");
    }
    for v in &del {
        tracing::info!(table = "dim_symbol", value = %v, "DIMENSION_SOFT_DELETED");
    }
    (r.added, r.reactivated, r.soft_deleted) = (add.len(), react.len(), del.len());
    reports.push(r);

    // Exchanges and intervals: add only.
    for (table, column, list) in [
        ("dim_exchange", "exchange", &cfg.dimensions.exchanges),
        ("dim_interval", "\"interval\"", &cfg.dimensions.intervals),
    ] {
        let rows = deadline(
            t,
            "read dimension",
            tx.query(&format!("SELECT {column} FROM {schema}.{table}"), &[]),
        )
        .await?;
        let current: BTreeSet<String> = rows
            .iter()
            .filter_map(|r| r.get::<_, Option<String>>(0))
            .collect();
        let wanted: BTreeSet<&str> = list.iter().map(String::as_str).collect();
        let add: Vec<String> = wanted
            .iter()
            .filter(|w| !current.contains(**w))
            .map(|w| w.to_string())
            .collect();
        deadline(t, "add dimension", tx.execute(&format!("INSERT INTO {schema}.{table} ({column}) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"), &[&add])).await?;
        for v in &add {
            tracing::info!(table, value = %v, "DIMENSION_ADDED");
        }
        reports.push(TableReport {
            table,
            added: add.len(),
            existing: wanted.len() - add.len(),
            reactivated: 0,
            soft_deleted: 0,
        });
    }
    deadline(t, "commit init", tx.commit()).await?;
    for r in &reports {
        tracing::info!(
            table = r.table,
            added = r.added,
            existing = r.existing,
            reactivated = r.reactivated,
            soft_deleted = r.soft_deleted,
            "DIMENSION_SUMMARY"
        );
    }
    Ok(InitReport {
        hypertables,
        tables: reports,
    })
}
