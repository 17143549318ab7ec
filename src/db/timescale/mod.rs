//! TimescaleDB sink: bars and klines into a star schema.
//!
//! `table` (one description per fact table: DDL, insert and conflict query
//! are generated from it), `rows` (the pure row builder), `schema` (DDL,
//! TimescaleDB detection), `dim_cache` (persisted dimension IDs), `init`
//! (dimension seeding, `walrelay init`), `sink` (the driver: idempotent
//! batched fact writes with error classification and bisection).

mod config;
mod conn;
mod dim_cache;
mod error;
pub mod init;
mod pg_url;
pub mod rows;
pub mod schema;
mod sink;
pub mod table;
mod tls;

pub use config::{ConflictPolicies, ConflictPolicy, DimensionLists, TimescaleConfig};

/// The connection string with any password masked (for logs and check output).
pub fn redacted(url: &str) -> String {
    pg_url::redact_url(url)
}
pub use conn::connect;
pub use dim_cache::{identity, Dim, DimCache};
pub use error::TimescaleError;
pub use sink::TimescaleSink;
