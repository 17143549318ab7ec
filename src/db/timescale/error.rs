//! Errors of the Timescale sink, classified by SQLSTATE for the drainer.

use crate::drain::ErrorClass;

/// A failed database operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimescaleError {
    /// Connecting failed or the connection broke (refused, reset, closed).
    #[error("cannot reach PostgreSQL at {target}: {detail}")]
    Connect { target: String, detail: String },
    /// A call did not finish before its deadline.
    #[error("{op} timed out after {ms} ms")]
    Timeout { op: &'static str, ms: u64 },
    /// The server refused a statement.
    #[error("{op} failed: SQLSTATE {code}: {message}")]
    Db {
        op: &'static str,
        code: String,
        message: String,
    },
    /// TimescaleDB is required but missing or not preloaded.
    #[error("{0}")]
    TimescaleRequired(String),
    /// The configuration is unusable (bad URL, unreadable password file).
    #[error("{0}")]
    Config(String),
    /// The log (dimension cache, dead letters) failed.
    #[error("write-ahead log: {0}")]
    Wal(String),
}

impl TimescaleError {
    pub(crate) fn from_pg(
        op: &'static str,
        target: &str,
        e: tokio_postgres::Error,
    ) -> TimescaleError {
        match e.as_db_error() {
            Some(db) => TimescaleError::Db {
                op,
                code: db.code().code().to_string(),
                message: db.message().to_string(),
            },
            None => match crate::db::certificate_rejected(&e) {
                // Retrying cannot fix a certificate: an operator must act.
                Some(why) => TimescaleError::Config(format!(
                    "{op} to {target}: the server's TLS certificate was rejected ({why}); \
                     set timescale.tls_ca_file to the CA that signed it, or choose another \
                     sslmode in timescale.url"
                )),
                None => TimescaleError::Connect {
                    target: target.to_string(),
                    detail: format!("{op}: {}", crate::report::chain(&e)),
                },
            },
        }
    }

    /// The SQLSTATE, when the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            TimescaleError::Db { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A foreign-key violation: a dimension row vanished behind our back.
    pub fn is_foreign_key(&self) -> bool {
        self.code() == Some("23503")
    }

    /// How the drainer handles it.
    pub fn class(&self) -> ErrorClass {
        match self {
            TimescaleError::Connect { .. }
            | TimescaleError::Timeout { .. }
            | TimescaleError::Wal(_) => ErrorClass::Transient,
            TimescaleError::TimescaleRequired(_) | TimescaleError::Config(_) => ErrorClass::Config,
            TimescaleError::Db { code, .. } => classify(code),
        }
    }
}

/// SQLSTATE → class. Transient: connection exceptions (08), operator
/// intervention (57: admin shutdown, crash shutdown, cannot connect now, query
/// canceled by statement_timeout), serialization failure and deadlock (40001,
/// 40P01), insufficient resources (53). Data: data exceptions (22), integrity
/// violations (23). Configuration: authorization (28), privilege (42501),
/// missing database (3D000), missing table (42P01), and anything unknown, so
/// that an unexpected error makes the sink unhealthy rather than spin.
pub(crate) fn classify(code: &str) -> ErrorClass {
    match code {
        "40001" | "40P01" => ErrorClass::Transient,
        c if c.starts_with("08") || c.starts_with("57") || c.starts_with("53") => {
            ErrorClass::Transient
        }
        c if c.starts_with("22") || c.starts_with("23") => ErrorClass::Data,
        _ => ErrorClass::Config,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes() {
        for c in [
            "57P01", "57014", "40001", "40P01", "53300", "53100", "08006",
        ] {
            assert_eq!(classify(c), ErrorClass::Transient, "{c}");
        }
        for c in ["22003", "22021", "23505", "23514", "23503"] {
            assert_eq!(classify(c), ErrorClass::Data, "{c}");
        }
        for c in ["28P01", "28000", "42501", "3D000", "42P01", "XX000"] {
            assert_eq!(classify(c), ErrorClass::Config, "{c}");
        }
    }
}
