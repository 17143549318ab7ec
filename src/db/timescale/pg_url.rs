//! PostgreSQL connection strings: the password masked for logs
//! ([`redact_url`]) and libpq's verifying `sslmode`s mapped onto what
//! tokio-postgres knows ([`tls_mode`]). A leaf module: imports nothing of the
//! crate, so the config and the connection code both depend on it and not on
//! each other.

/// The URL with any password replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find('@');
        let path_start = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = auth_end.filter(|at| *at < path_start) {
            if let Some(colon) = rest[..at].find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &rest[..colon],
                    &rest[at..]
                );
            }
        }
        return url.to_string();
    }
    // key=value form
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How the server's certificate is checked (libpq's `sslmode` semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Encrypt only (`prefer`, `require` without a CA file).
    Nothing,
    /// The chain must end at a trusted CA (`verify-ca`, or a CA file given).
    Ca,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// tokio-postgres knows `disable`, `prefer` and `require` only: the two
/// verifying modes become `require` plus a certificate check of our own.
pub(crate) fn tls_mode(url: &str) -> (String, Verify) {
    if url.contains("sslmode=verify-full") {
        (
            url.replace("sslmode=verify-full", "sslmode=require"),
            Verify::Full,
        )
    } else if url.contains("sslmode=verify-ca") {
        (
            url.replace("sslmode=verify-ca", "sslmode=require"),
            Verify::Ca,
        )
    } else {
        (url.to_string(), Verify::Nothing)
    }
}
