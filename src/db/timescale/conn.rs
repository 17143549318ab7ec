//! Connecting with deadlines, TLS when asked for, and a session
//! `statement_timeout`.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::Client;

use super::config::TimescaleConfig;
use super::error::TimescaleError;
use super::pg_url::{redact_url, tls_mode, Verify};

/// The crypto provider of every TLS connection the sinks make: ring, as
/// reqwest's `rustls-tls` (Cargo.toml says why). Named here rather than taken
/// from rustls' process-wide default, which panics when no single provider
/// is built in.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(cfg: &TimescaleConfig) -> Result<rustls::RootCertStore, TimescaleError> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = &cfg.tls_ca_file else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let bad = |detail: String| {
        TimescaleError::Config(format!(
            "timescale.tls_ca_file {}: {detail}",
            path.display()
        ))
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    for der in certs {
        roots
            .add(der)
            .map_err(|e| bad(format!("unusable certificate: {e}")))?;
    }
    Ok(roots)
}

/// Checks the server's certificate as `verify` says; the handshake
/// signatures are always checked against the presented key (the two
/// `verify_tls1x_signature` methods, whatever `verify` is).
#[derive(Debug)]
struct ServerCheck {
    verify: Verify,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.verify == Verify::Nothing {
            return Ok(ServerCertVerified::assertion());
        }
        let checked = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match checked {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if self.verify == Verify::Ca => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn tls(cfg: &TimescaleConfig, verify: Verify) -> Result<super::tls::MakeRustls, TimescaleError> {
    // A CA file makes `prefer`/`require` check the chain, as in libpq.
    let verify = match verify {
        Verify::Nothing if cfg.tls_ca_file.is_some() => Verify::Ca,
        v => v,
    };
    let provider = provider();
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(cfg)?), provider.clone())
            .build()
            .map_err(|e| TimescaleError::Config(format!("timescale TLS: {e}")))?;
    let check = ServerCheck { verify, webpki };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TimescaleError::Config(format!("timescale TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(check))
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
