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
    Wal(#[from] crate::wal::WalError),
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

    /// How the drainer handles it. An SQLSTATE outside the table of
    /// `classify` is `Config` here, but see [`Self::is_unclassified`]: the
    /// sink bisects such an error before it believes it.
    pub fn class(&self) -> ErrorClass {
        match self {
            TimescaleError::Connect { .. }
            | TimescaleError::Timeout { .. }
            | TimescaleError::Wal(_) => ErrorClass::Transient,
            TimescaleError::TimescaleRequired(_) | TimescaleError::Config(_) => ErrorClass::Config,
            TimescaleError::Db { code, .. } => classify(code).unwrap_or(ErrorClass::Config),
        }
    }

    /// The server answered with an SQLSTATE the table does not know. On a
    /// batch of more than one record the sink bisects it like a data error;
    /// if the same error then hits single records while others are written,
    /// it was about those records and they are dead-lettered; only when it
    /// hits everything is it treated as configuration.
    pub fn is_unclassified(&self) -> bool {
        matches!(self, TimescaleError::Db { code, .. } if classify(code).is_none())
    }

    /// The call ran out of time: our deadline, or the server's
    /// `statement_timeout` (57014). Repeated timeouts shrink the batch.
    pub fn is_timeout(&self) -> bool {
        matches!(self, TimescaleError::Timeout { .. }) || self.code() == Some("57014")
    }
}

/// SQLSTATE → class; `None` for a code outside the table (see
/// `docs/OPERATIONS.md`, "Sink errors", which lists the same table).
///
/// | SQLSTATE class | meaning | class |
/// |---|---|---|
/// | 08 | connection exception | transient |
/// | 40 | transaction rollback (serialization failure, deadlock) | transient |
/// | 53 | insufficient resources (disk full, out of memory, too many connections) | transient |
/// | 55P03 | lock not available | transient |
/// | 57 | operator intervention (shutdown, cannot connect now, statement_timeout) | transient |
/// | 58 | system error (I/O error on the server) | transient |
/// | 22 | data exception (out of range, bad encoding, ...) | data |
/// | 23 | integrity constraint violation (check, unique, foreign key, not null) | data |
/// | 54 | program limit exceeded (e.g. index row too large for a long dimension value) | data |
/// | 28 | invalid authorization | config |
/// | 3D, 3F | missing database, missing schema | config |
/// | 42 | syntax error or access rule (privilege, missing table or column) | config |
/// | anything else | unknown: bisected first, see `is_unclassified` | config |
///
/// Data errors are bisected down to the record and dead-lettered; transient
/// ones retried with backoff; configuration errors make the sink unhealthy
/// and are retried slowly without dead-lettering anything.
pub(crate) fn classify(code: &str) -> Option<ErrorClass> {
    let class = code.get(..2).unwrap_or("");
    Some(match class {
        "08" | "40" | "53" | "57" | "58" => ErrorClass::Transient,
        _ if code == "55P03" => ErrorClass::Transient,
        "22" | "23" | "54" => ErrorClass::Data,
        "28" | "3D" | "3F" | "42" => ErrorClass::Config,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes() {
        for c in [
            "57P01", "57014", "40001", "40P01", "40002", "53300", "53100", "08006", "55P03",
            "58030",
        ] {
            assert_eq!(classify(c), Some(ErrorClass::Transient), "{c}");
        }
        for c in [
            "22003", "22021", "23505", "23514", "23503", "54000", "54001",
        ] {
            assert_eq!(classify(c), Some(ErrorClass::Data), "{c}");
        }
        for c in [
            "28P01", "28000", "42501", "3D000", "3F000", "42P01", "42703",
        ] {
            assert_eq!(classify(c), Some(ErrorClass::Config), "{c}");
        }
        for c in ["XX000", "P0001", "0A000", "55000", "", "4"] {
            assert_eq!(classify(c), None, "{c}");
            let e = TimescaleError::Db {
                op: "insert",
                code: c.into(),
                message: "m".into(),
            };
            assert!(e.is_unclassified(), "{c}");
            assert_eq!(
                e.class(),
                ErrorClass::Config,
                "{c}: believed only after bisection"
            );
        }
        let cancelled = TimescaleError::Db {
            op: "insert",
            code: "57014".into(),
            message: "canceling statement due to statement timeout".into(),
        };
        assert!(cancelled.is_timeout() && !cancelled.is_unclassified());
        assert!(TimescaleError::Timeout {
            op: "insert",
            ms: 1
        }
        .is_timeout());
    }
}
