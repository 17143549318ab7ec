//! InfluxDB sink: raw ticks and generic points as line protocol, through
//! the v2 write API (`/api/v2/write`) or the 1.x one (`/write`), chosen by
//! `[influx] api` (`config.rs`; docs/INFLUX.md compares the servers).
//!
//! Three parts: `encode` (pure, byte-exact line protocol), `client` (one
//! request with a deadline, classified), `sink` (routing, request limits,
//! bisection, dead letters). Sub-millisecond timestamps of typed trades and
//! liquidations are decided before they reach the log, by the ingest gate
//! (`ingest/identity.rs`), so that a replay writes byte-identical lines and
//! InfluxDB's overwrite makes it a no-op.

pub mod admin;
mod client;
mod config;
mod encode;
mod error;
mod sink;

pub use client::Client;
pub use config::{Api, Destination, InfluxConfig};
pub use encode::{encode, measurement};
pub use error::InfluxError;
pub use sink::InfluxSink;
