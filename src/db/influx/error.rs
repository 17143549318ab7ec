//! Errors of the InfluxDB sink, classified for the drainer.

use std::time::Duration;

use crate::drain::ErrorClass;

/// The outcome of one failed write request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InfluxError {
    /// No connection (refused, reset, DNS, TLS) or the connection broke mid-request.
    #[error("cannot reach {url}: {detail}")]
    Connect { url: String, detail: String },
    /// The server's TLS certificate was rejected: an operator must act.
    #[error("{url}: the server's TLS certificate was rejected ({reason}); set influx.tls_ca_file to the CA that signed it")]
    Certificate { url: String, reason: String },
    /// The request did not complete before its deadline.
    #[error("request to {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    /// The server answered with an error status.
    #[error("HTTP {status} from {url}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Storing the delivery's dead letters failed (the log's error); the
    /// delivery is retried, nothing is acknowledged.
    #[error("dead-letter store: {0}")]
    DeadLetter(#[from] crate::wal::WalError),
    /// The sink cannot be built: the token file cannot be read, or the
    /// HTTP client (TLS CA file) cannot be built.
    #[error("influx sink setup: {0}")]
    Setup(String),
}

impl InfluxError {
    /// How the drainer handles it (the table is in `docs/OPERATIONS.md`,
    /// "Sink errors"):
    ///
    /// | outcome | class |
    /// |---|---|
    /// | no connection, reset, timeout; HTTP 408, 429, 5xx | transient |
    /// | HTTP 400, 422 (a line does not parse or is refused), 413 (too large) | data: bisected to the line, dead-lettered |
    /// | HTTP 401, 403 (token), 404 (org or bucket), rejected TLS certificate | config |
    /// | any status whose message says the database or retention policy does not exist (1.x: 400/404 "database not found", 500 "retention policy not found") | config |
    /// | any other status | unknown: bisected first (see `is_unclassified`), config if it hits everything |
    ///
    /// InfluxDB 1.x answers a partial write (`partial write: … dropped=N`:
    /// field type conflict, points beyond retention policy, unparsable line)
    /// with 400 after storing the other points: data, bisected to the refused
    /// lines; the stored ones are re-sent on the way and overwrite themselves.
    pub fn class(&self) -> ErrorClass {
        match self {
            InfluxError::Connect { .. }
            | InfluxError::Timeout { .. }
            | InfluxError::DeadLetter(_) => ErrorClass::Transient,
            InfluxError::Certificate { .. } | InfluxError::Setup(_) => ErrorClass::Config,
            InfluxError::Http { message, .. } if names_missing_destination(message) => {
                ErrorClass::Config
            }
            InfluxError::Http { status, .. } => {
                classify_status(*status).unwrap_or(ErrorClass::Config)
            }
        }
    }

    /// The server answered with a status the table does not know: the sink
    /// bisects it like a data error before it calls it configuration.
    pub fn is_unclassified(&self) -> bool {
        matches!(self, InfluxError::Http { status, message, .. }
            if classify_status(*status).is_none() && !names_missing_destination(message))
    }

    /// The request ran out of time (our deadline, or HTTP 408/504 from the
    /// server or a proxy). Repeated timeouts shrink the requests.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            InfluxError::Timeout { .. }
                | InfluxError::Http {
                    status: 408 | 504,
                    ..
                }
        )
    }

    /// The server asked for a smaller request (HTTP 413).
    pub fn is_too_large(&self) -> bool {
        matches!(self, InfluxError::Http { status: 413, .. })
    }

    /// The server's `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InfluxError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// InfluxDB 1.x names a missing database or retention policy in its message
/// whatever the status (404 before the write, 400 when the database vanished
/// during it, 500 for a retention policy): no line of the batch is to blame.
/// A partial write's message names the reason of single points and is data.
fn names_missing_destination(message: &str) -> bool {
    let m = message.trim_start();
    m.starts_with("database not found") || m.starts_with("retention policy not found")
}

/// HTTP status → class; `None` for a status outside the table.
fn classify_status(status: u16) -> Option<ErrorClass> {
    Some(match status {
        408 | 429 | 500..=599 => ErrorClass::Transient,
        400 | 413 | 422 => ErrorClass::Data,
        401 | 403 | 404 => ErrorClass::Config,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> InfluxError {
        InfluxError::Http {
            url: "u".into(),
            status,
            message: "m".into(),
            retry_after: None,
        }
    }

    fn http_msg(status: u16, message: &str) -> InfluxError {
        InfluxError::Http {
            url: "u".into(),
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The answers InfluxDB 1.6 gave in tests/influx1.rs, by class.
    #[test]
    fn influxdb_1x_answers() {
        for (status, m) in [
            (404, r#"database not found: "nope""#),
            (400, r#"database not found: "nope""#),
            (500, "retention policy not found: nope"),
            (401, "authorization failed"),
            (
                403,
                r#"user "u" is not authorized to write to database "d""#,
            ),
        ] {
            let e = http_msg(status, m);
            assert_eq!(e.class(), ErrorClass::Config, "{status} {m}");
            assert!(!e.is_unclassified(), "{status} {m}");
        }
        for m in [
            "field type conflict",
            r#"partial write: field type conflict: input field "v" on measurement "m" is type integer, already exists as type float dropped=1"#,
            "partial write: points beyond retention policy dropped=1",
            "partial write: unable to parse 'm v=x 2': invalid boolean dropped=0",
        ] {
            assert_eq!(http_msg(400, m).class(), ErrorClass::Data, "{m}");
        }
        assert_eq!(http_msg(500, "timeout").class(), ErrorClass::Transient);
    }

    #[test]
    fn classification() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(http(s).class(), ErrorClass::Transient, "{s}");
        }
        for s in [400, 413, 422] {
            assert_eq!(http(s).class(), ErrorClass::Data, "{s}");
        }
        for s in [401, 403, 404] {
            assert_eq!(http(s).class(), ErrorClass::Config, "{s}");
            assert!(!http(s).is_unclassified());
        }
        for s in [301, 405, 409, 415, 418] {
            assert_eq!(http(s).class(), ErrorClass::Config, "{s}");
            assert!(http(s).is_unclassified(), "{s}");
        }
        assert!(http(413).is_too_large());
        assert!(http(504).is_timeout() && http(408).is_timeout() && !http(500).is_timeout());
        assert_eq!(
            InfluxError::Timeout {
                url: "u".into(),
                after: Duration::from_secs(1)
            }
            .class(),
            ErrorClass::Transient
        );
    }
}
