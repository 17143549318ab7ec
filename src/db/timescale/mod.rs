//! TimescaleDB sink: bars and klines into a star schema.
//!
//! `schema` (DDL, TimescaleDB detection), `dim_cache` (persisted dimension
//! IDs), `init` (dimension seeding, `walrelay init`), `sink` (idempotent
//! batched fact writes with error classification and bisection).

mod config;
mod conn;
mod dim_cache;
mod error;
pub mod init;
pub mod schema;
mod sink;
mod tls;

pub use config::{ConflictPolicies, ConflictPolicy, DimensionLists, TimescaleConfig};

/// The connection string with any password masked (for logs and check output).
pub fn redacted(url: &str) -> String {
    config::redact_url(url)
}
pub use conn::connect;
pub use dim_cache::{identity, Dim, DimCache};
pub use error::TimescaleError;
pub use sink::TimescaleSink;
