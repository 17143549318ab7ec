//! Connecting with deadlines, TLS when asked for, and a session
//! `statement_timeout`.

use std::time::Duration;

use tokio_postgres::Client;

use super::config::{redact_url, TimescaleConfig};
use super::error::TimescaleError;

fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_trust_anchors(webpki_roots::TLS_SERVER_ROOTS.iter().map(|ta| {
        rustls::OwnedTrustAnchor::from_subject_spki_name_constraints(
            ta.subject,
            ta.spki,
            ta.name_constraints,
        )
    }));
    let config = rustls::ClientConfig::builder()
        .with_safe_defaults()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// Opens a connection; the connection task runs in the background.
///
/// # Errors
/// [`TimescaleError`]: `Connect` or `Timeout` (transient), `Db` for auth or
/// missing database (classified by SQLSTATE), `Config` for a bad URL.
pub async fn connect(cfg: &TimescaleConfig) -> Result<Client, TimescaleError> {
    let target = redact_url(&cfg.url);
    let mut pg: tokio_postgres::Config = cfg
        .url
        .parse()
        .map_err(|e| TimescaleError::Config(format!("timescale.url: {e}")))?;
    if let Some(p) = cfg.resolve_password().map_err(TimescaleError::Config)? {
        pg.password(p.expose());
    }
    let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
    pg.connect_timeout(connect_timeout);
    pg.application_name("walrelay");
    pg.options(&format!(
        "-c statement_timeout={}",
        cfg.statement_timeout_ms
    ));
    let (client, connection) = match tokio::time::timeout(
        connect_timeout + Duration::from_millis(500),
        pg.connect(tls()),
    )
    .await
    {
        Err(_) => {
            return Err(TimescaleError::Timeout {
                op: "connect",
                ms: cfg.connect_timeout_ms,
            })
        }
        Ok(Err(e)) => return Err(TimescaleError::from_pg("connect", &target, e)),
        Ok(Ok(c)) => c,
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// Runs `fut` with the sink's deadline.
pub(crate) async fn deadline<T>(
    ms: u64,
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, TimescaleError> {
    match tokio::time::timeout(Duration::from_millis(ms) + Duration::from_millis(500), fut).await {
        Err(_) => Err(TimescaleError::Timeout { op, ms }),
        Ok(r) => r.map_err(|e| TimescaleError::from_pg(op, "", e)),
    }
}
