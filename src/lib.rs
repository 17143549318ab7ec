//! walrelay: a write-ahead-log buffered relay for market data.
//!
//! Every record is appended to a local sled log ([`wal`]) and acknowledged only
//! once durable; drainers ([`drain`]) replay the log into InfluxDB v2 and
//! TimescaleDB ([`db`]). See `docs/ARCHITECTURE.md` for the flow and the log's
//! invariants.

pub mod audit;
pub mod commands;
pub mod config;
pub mod db;
pub mod drain;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod preflight;
pub mod record;
pub mod relay;
pub mod report;
pub mod routes;
pub mod secret;
pub mod top;
pub mod wal;

pub use record::{Record, RecordError, RecordKind};
pub use wal::{Wal, WalConfig, WalError};
