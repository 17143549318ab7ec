//! What accepts records. Invariant: a record reaches the log only after
//! [`Record::validate`](crate::Record::validate) passed, and a caller is told
//! "accepted" only after [`Wal::append`](crate::Wal::append) returned.

pub mod error;
pub mod grpc;
pub mod http;
pub mod line_protocol;
pub mod synthetic;
pub mod typed;
