//! `[ingest]`: the HTTP ingest server's address, credentials, body and
//! memory limits, connection deadlines and record limits. Owned here, beside
//! the code that enforces it; `config.rs` re-exports it as a section of the
//! config file.

use serde::Deserialize;

use crate::secret::Secret;

/// `[ingest]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address of the HTTP server. Default `127.0.0.1:8429` (loopback only;
    /// binding elsewhere is an explicit choice).
    pub listen: String,
    /// When set, write requests must present it: `Authorization: Token
    /// <token>` (or `Bearer`, or Basic with it as the password; on the 1.x
    /// `/write` also the `p` query parameter).
    /// Environment override: `WALRELAY_INGEST_TOKEN`.
    pub token: Option<Secret>,
    /// Largest request body after decompression, bytes (a compressed body
    /// is bounded by the same number). Default 32 MiB.
    pub max_body_bytes: usize,
    /// Bound on memory held by requests in flight, all requests together:
    /// received bodies, decompressed text and parsed records. Default 256 MiB.
    /// Must hold one maximum-size request: 5 × `max_body_bytes` +
    /// 256 B × `limits.max_records_per_request` (about 141 MiB by default).
    pub memory_budget_bytes: u64,
    /// How long a request waits for room in the memory budget before it is
    /// refused with 503 and `Retry-After`. Default 2000 ms.
    pub budget_wait_ms: u64,
    /// A client must send a request's headers within this, ms. Default 10000.
    pub header_timeout_ms: u64,
    /// A client must send a request's whole body within this, ms (408
    /// otherwise). Default 60000.
    pub body_timeout_ms: u64,
    /// A connection without any traffic for this long is closed, ms
    /// (keep-alive between requests included). Default 60000.
    pub idle_timeout_ms: u64,
    /// How long typed trades' and liquidations' identity timestamps are
    /// remembered to keep them unique across requests (`ingest/identity.rs`),
    /// ms. The log keeps delivered frames this long so the window can be
    /// rebuilt at startup. Default 10000.
    pub identity_window_ms: u64,
    /// `[ingest.limits]`: see [`Limits`](crate::record::Limits).
    pub limits: crate::record::Limits,
    /// `[ingest.tls]`: serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with this
    /// certificate pair, optionally requiring client certificates; see
    /// [`TlsConfig`](super::tls::TlsConfig). Absent: plain HTTP/1.1.
    pub tls: Option<super::tls::TlsConfig>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "127.0.0.1:8429".into(),
            token: None,
            max_body_bytes: 32 * 1024 * 1024,
            memory_budget_bytes: 256 * 1024 * 1024,
            budget_wait_ms: 2000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
            idle_timeout_ms: 60_000,
            identity_window_ms: 10_000,
            limits: crate::record::Limits::default(),
            tls: None,
        }
    }
}

impl IngestConfig {
    /// Checks the ingest settings against each other and their ceilings.
    ///
    /// # Errors
    /// A message naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.check()?;
        let ceiling = super::budget::request_ceiling(
            self.max_body_bytes,
            self.limits.max_records_per_request,
        );
        if self.memory_budget_bytes < ceiling {
            return Err(format!(
                "ingest.memory_budget_bytes = {} cannot hold one maximum-size request: {ceiling} bytes for ingest.max_body_bytes = {} and ingest.limits.max_records_per_request = {} (body, decompressed text, parsed and encoded records)",
                self.memory_budget_bytes, self.max_body_bytes, self.limits.max_records_per_request
            ));
        }
        for (k, v) in [
            ("header_timeout_ms", self.header_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if v == 0 {
                return Err(format!("ingest.{k} must be > 0"));
            }
        }
        Ok(())
    }
}
