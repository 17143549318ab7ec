//! Why an ingest request was refused. Every refusal appends nothing.

use std::time::Duration;

/// A refused ingest request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// A line of the body is malformed (line protocol or JSON syntax).
    #[error("line {line}: {message}")]
    BadLine { line: usize, message: String },
    /// A line parsed but its record failed validation; names the field.
    #[error("line {line}: field `{field}`: {message}")]
    BadRecord {
        line: usize,
        field: String,
        message: String,
    },
    /// The body is not valid UTF-8.
    #[error("line {line}: body is not valid UTF-8")]
    NotUtf8 { line: usize },
    /// A query parameter is invalid (e.g. `precision`).
    #[error("invalid query parameter `{param}`: {message}")]
    BadParam {
        param: &'static str,
        message: String,
    },
    /// A request, line or record is over one of the ingest limits
    /// (`[ingest.limits]`); names the line, what was measured and the key.
    #[error("line {line}: {what} is {value}, over the limit of {max} ({limit})")]
    OverLimit {
        line: usize,
        what: &'static str,
        value: usize,
        max: usize,
        limit: &'static str,
    },
    /// The ingest memory budget stayed spent for `budget_wait_ms`; retry later.
    #[error("ingest memory budget is spent; retry after {retry_after:?}")]
    Busy { retry_after: Duration },
    /// The request took longer than `body_timeout_ms` to arrive.
    #[error("request body did not arrive within {timeout_ms} ms")]
    BodyTimeout { timeout_ms: u64 },
    /// The body (after decompression) exceeds the configured limit.
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    /// The gzip stream is corrupt.
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    /// Missing or wrong ingest token (header, Basic password or 1.x `p`).
    #[error("unauthorized: missing or wrong token")]
    Unauthorized,
    /// The log is full under `block`; retry later.
    #[error("write-ahead log is full; retry after {retry_after:?}")]
    Full { retry_after: Duration },
    /// The log refuses appends for now: it failed after an I/O error (until
    /// restart), or the disk under it is nearly full (until space is freed).
    /// Nothing was appended; retry later.
    #[error("write-ahead log unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    /// The log failed (I/O); nothing was acknowledged.
    #[error("write-ahead log error: {0}")]
    Wal(#[from] crate::wal::WalError),
    /// The blocking task running an append panicked or was cancelled;
    /// nothing was acknowledged.
    #[error("append task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl IngestError {
    /// The HTTP status the ingest server answers with.
    pub fn status(&self) -> u16 {
        match self {
            IngestError::BadLine { .. }
            | IngestError::BadRecord { .. }
            | IngestError::NotUtf8 { .. }
            | IngestError::BadParam { .. }
            | IngestError::BadGzip(_) => 400,
            IngestError::TooLarge { .. } | IngestError::OverLimit { .. } => 413,
            IngestError::BodyTimeout { .. } => 408,
            IngestError::Busy { .. } => 503,
            IngestError::Unauthorized => 401,
            IngestError::Full { .. } | IngestError::Unavailable { .. } => 503,
            IngestError::Wal(_) | IngestError::Task(_) => 500,
        }
    }

    /// How long the client should wait before retrying (`Retry-After`), for
    /// refusals that are backpressure (503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Full { retry_after }
            | IngestError::Busy { retry_after }
            | IngestError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// InfluxDB's error `code` string for this refusal.
    pub fn code(&self) -> &'static str {
        match self.status() {
            400 => "invalid",
            401 => "unauthorized",
            408 => "request timeout",
            413 => "request too large",
            503 => "unavailable",
            _ => "internal error",
        }
    }
}
