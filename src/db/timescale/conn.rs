//! Connecting with deadlines, TLS when asked for, and a session
//! `statement_timeout`.

use std::time::Duration;

use tokio_postgres::Client;

use super::config::TimescaleConfig;
use super::error::TimescaleError;
use super::pg_url::{redact_url, tls_mode, Verify};

fn roots(cfg: &TimescaleConfig) -> Result<rustls::RootCertStore, TimescaleError> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = &cfg.tls_ca_file else {
        roots.add_trust_anchors(webpki_roots::TLS_SERVER_ROOTS.iter().map(|ta| {
            rustls::OwnedTrustAnchor::from_subject_spki_name_constraints(
                ta.subject,
                ta.spki,
                ta.name_constraints,
            )
        }));
        return Ok(roots);
    };
    let bad = |detail: String| {
        TimescaleError::Config(format!(
            "timescale.tls_ca_file {}: {detail}",
            path.display()
        ))
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice()).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    for der in certs {
        roots
            .add(&rustls::Certificate(der))
            .map_err(|e| bad(format!("unusable certificate: {e}")))?;
    }
    Ok(roots)
}

/// Checks the server's certificate as `verify` says; the handshake
/// signatures are always checked by rustls against the presented key.
struct ServerCheck {
    verify: Verify,
    webpki: rustls::client::WebPkiVerifier,
}

impl rustls::client::ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::Certificate,
        intermediates: &[rustls::Certificate],
        server_name: &rustls::ServerName,
        scts: &mut dyn Iterator<Item = &[u8]>,
        ocsp_response: &[u8],
        now: std::time::SystemTime,
    ) -> Result<rustls::client::ServerCertVerified, rustls::Error> {
        if self.verify == Verify::Nothing {
            return Ok(rustls::client::ServerCertVerified::assertion());
        }
        let checked = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            scts,
            ocsp_response,
            now,
        );
        match checked {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
                if self.verify == Verify::Ca =>
            {
                Ok(rustls::client::ServerCertVerified::assertion())
            }
            other => other,
        }
    }
}

fn tls(cfg: &TimescaleConfig, verify: Verify) -> Result<super::tls::MakeRustls, TimescaleError> {
    // A CA file makes `prefer`/`require` check the chain, as in libpq.
    let verify = match verify {
        Verify::Nothing if cfg.tls_ca_file.is_some() => Verify::Ca,
        v => v,
    };
    let check = ServerCheck {
        verify,
        webpki: rustls::client::WebPkiVerifier::new(roots(cfg)?, None),
    };
    let config = rustls::ClientConfig::builder()
        .with_safe_defaults()
        .with_custom_certificate_verifier(std::sync::Arc::new(check))
        .with_no_client_auth();
    Ok(super::tls::MakeRustls::new(config))
}

/// Opens a connection; the connection task runs in the background.
///
/// # Errors
/// [`TimescaleError`]: `Connect` or `Timeout` (transient), `Db` for auth or
/// missing database (classified by SQLSTATE), `Config` for a bad URL.
pub async fn connect(cfg: &TimescaleConfig) -> Result<Client, TimescaleError> {
    let target = redact_url(&cfg.url);
    let (url, verify) = tls_mode(&cfg.url);
    let tls = tls(cfg, verify)?;
    let mut pg: tokio_postgres::Config = url
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
        pg.connect(tls),
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
