//! The star schema: three dimension tables and four fact tables, created
//! idempotently and safely from several relays at once (one advisory lock
//! around the whole DDL transaction). `sql/*.sql` is the reference DDL for
//! schema `mart` (valid on plain PostgreSQL; `DO` blocks create the extension
//! and the hypertables where TimescaleDB is there); a test compares its
//! catalog with this module's output, hypertable status and partitioning
//! column included, on both, so the two cannot drift.
//!
//! TimescaleDB: detected before anything is sent. Installed → hypertables.
//! Available and preloaded → `CREATE EXTENSION` then hypertables. Available
//! but not preloaded → never `CREATE EXTENSION` (a real TimescaleDB answers it
//! with FATAL and drops the connection); the warning names the setting to add.
//! Absent → plain tables with one warning, unless `require_timescaledb`.

use tokio_postgres::Client;

use super::error::TimescaleError;

pub use super::table::{FactTable, FACT_TABLES};

/// DDL of the dimension tables. The names are `NOT NULL`; a database created
/// while they were nullable gets the constraint added (a no-op scan of a
/// small table, skipped once present), unless it stores a NULL name, which
/// leaves it nullable with a warning rather than stopping the relay.
pub fn dimension_ddl(schema: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};\n\
         CREATE TABLE IF NOT EXISTS {schema}.dim_symbol (\n    symbol_id SERIAL PRIMARY KEY,\n    symbol TEXT NOT NULL UNIQUE,\n    is_deleted BOOLEAN NOT NULL DEFAULT FALSE,\n    deleted_date TIMESTAMPTZ NULL\n);\n\
         CREATE TABLE IF NOT EXISTS {schema}.dim_exchange (\n    exchange_id SERIAL PRIMARY KEY,\n    exchange TEXT NOT NULL UNIQUE\n);\n\
         CREATE TABLE IF NOT EXISTS {schema}.dim_interval (\n    interval_id SERIAL PRIMARY KEY,\n    \"interval\" TEXT NOT NULL UNIQUE\n);\n{}",
        NAMES_NOT_NULL.replace("{schema}", schema)
    )
}

/// Adds `NOT NULL` to the dimension names of an older database (see
/// [`dimension_ddl`]); `{schema}` is replaced.
const NAMES_NOT_NULL: &str = r#"-- Databases created while the names were nullable get NOT NULL too, unless a
-- NULL name is stored (then a warning says so and nothing changes).
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES ('dim_symbol', 'symbol'), ('dim_exchange', 'exchange'), ('dim_interval', 'interval')) AS v(tbl, col) LOOP
        IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = format('%I.%I', '{schema}', c.tbl)::regclass AND attname = c.col AND NOT attnotnull) THEN
            BEGIN
                EXECUTE format('ALTER TABLE %I.%I ALTER COLUMN %I SET NOT NULL', '{schema}', c.tbl, c.col);
            EXCEPTION WHEN not_null_violation THEN
                RAISE WARNING '%.%.% holds NULL names; left nullable', '{schema}', c.tbl, c.col;
            END;
        END IF;
    END LOOP;
END
$$;
"#;

/// The whole schema as one script (what `sql/` holds for `mart`).
pub fn full_ddl(schema: &str) -> String {
    let mut s = dimension_ddl(schema);
    for t in &FACT_TABLES {
        s.push_str(&t.ddl(schema));
    }
    s
}

/// What the server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timescale {
    Installed,
    AvailablePreloaded,
    AvailableNotPreloaded,
    Absent,
}

/// Looks at `pg_extension`, `pg_available_extensions` and
/// `shared_preload_libraries` without changing anything.
///
/// # Errors
/// [`TimescaleError`] when the query fails.
pub async fn detect(client: &Client) -> Result<Timescale, TimescaleError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'), \
                    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'), \
                    current_setting('shared_preload_libraries')",
            &[],
        )
        .await
        .map_err(|e| TimescaleError::from_pg("detect timescaledb", "", e))?;
    let (installed, available, preload): (bool, bool, String) =
        (row.get(0), row.get(1), row.get(2));
    let preloaded = preload
        .split(',')
        .any(|l| l.trim().trim_matches('"') == "timescaledb");
    Ok(match (installed, available, preloaded) {
        (true, _, _) => Timescale::Installed,
        (false, true, true) => Timescale::AvailablePreloaded,
        (false, true, false) => Timescale::AvailableNotPreloaded,
        _ => Timescale::Absent,
    })
}

/// Creates the schema (idempotent, serialized by an advisory lock).
/// `migrate_data => TRUE` lets tables created plain (before TimescaleDB was
/// installed) become hypertables with their rows. Returns
/// whether the fact tables are hypertables.
///
/// # Errors
/// [`TimescaleError::TimescaleRequired`] when required and unusable; database errors.
pub async fn ensure(
    client: &mut Client,
    schema: &str,
    require_timescaledb: bool,
) -> Result<bool, TimescaleError> {
    let ts = detect(client).await?;
    let use_ts = match ts {
        Timescale::Installed | Timescale::AvailablePreloaded => true,
        Timescale::AvailableNotPreloaded => {
            let msg = "TimescaleDB is installed but not preloaded: add shared_preload_libraries = 'timescaledb' to postgresql.conf and restart PostgreSQL";
            if require_timescaledb {
                return Err(TimescaleError::TimescaleRequired(msg.into()));
            }
            tracing::warn!("{msg}; using plain PostgreSQL tables until then");
            false
        }
        Timescale::Absent => {
            let msg = "TimescaleDB extension is not available on this server";
            if require_timescaledb {
                return Err(TimescaleError::TimescaleRequired(format!(
                    "{msg} and timescale.require_timescaledb is set"
                )));
            }
            tracing::warn!("{msg}; using plain PostgreSQL tables (no hypertables)");
            false
        }
    };
    let tx = client
        .transaction()
        .await
        .map_err(|e| TimescaleError::from_pg("begin schema", "", e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('walrelay schema'))",
        &[],
    )
    .await
    .map_err(|e| TimescaleError::from_pg("schema lock", "", e))?;
    if use_ts && ts == Timescale::AvailablePreloaded {
        tx.batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            .await
            .map_err(|e| TimescaleError::from_pg("create extension", "", e))?;
    }
    tx.batch_execute(&full_ddl(schema))
        .await
        .map_err(|e| TimescaleError::from_pg("create schema", "", e))?;
    if use_ts {
        for t in FACT_TABLES.iter().map(|t| t.name) {
            tx.execute(
                &format!("SELECT create_hypertable('{schema}.{t}', 'time', if_not_exists => TRUE, migrate_data => TRUE)"),
                &[],
            )
            .await
            .map_err(|e| TimescaleError::from_pg("create hypertable", "", e))?;
        }
    }
    tx.commit()
        .await
        .map_err(|e| TimescaleError::from_pg("commit schema", "", e))?;
    tracing::info!(schema, hypertables = use_ts, "schema ready");
    Ok(use_ts)
}
