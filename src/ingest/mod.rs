//! What accepts records. Invariant: every path into the log goes through
//! [`gate::Gate::admit`], so a record reaches the log only after it passed
//! validation under the ingest limits and its encoded size was checked, and a
//! caller is told "accepted" only after the append is durable.
//!
//! The ingest paths get what they need of the process through [`Ingest`],
//! which the relay builds; nothing here imports the relay.

pub mod budget;
pub mod config;
pub mod error;
mod front;
pub mod gate;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod line_protocol;
pub mod server;
pub mod synthetic;
pub mod tls;
pub mod typed;

pub use front::Ingest;
