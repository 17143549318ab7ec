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

pub use config::{DimensionLists, TimescaleConfig};
pub use conn::connect;
pub use dim_cache::{identity, Dim, DimCache};
pub use error::TimescaleError;
pub use sink::TimescaleSink;
