//! `https://` upstreams: our own connector (TCP, then a rustls handshake
//! offering ALPN `h2`) handed to tonic, whose own TLS features are not built.
//!
//! Invariants:
//! - An `https://` upstream is only ever spoken to over TLS: the connector
//!   has no plaintext path, so a failed handshake is a failed connect, never
//!   a fallback to `http://`.
//! - The collector's certificate is verified against `[grpc] tls_ca_file`
//!   when set, else against the public web CAs (webpki-roots, as the Influx
//!   client), for the upstream's host name (or IP address).
//! - A certificate the relay refuses (unknown issuer, expired, wrong name),
//!   one the collector refuses (no or unknown client certificate), or TLS
//!   files that do not load are configuration failures ([`is_config`]): the
//!   subscription shows the reason in `/status` and retries at the slow
//!   configuration cadence; they are not retried as an outage.
//! - The files are read at every connect attempt, so a fixed or rotated file
//!   is picked up without a restart.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::codegen::http::Uri;

use super::config::GrpcConfig;
use crate::ingest::tls::{certificates, private_key, provider, root_store, TlsError};

/// Why a TLS connect to a collector failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcTlsError {
    /// The `[grpc]` TLS files do not load.
    #[error("tls setup: {0}")]
    Setup(#[from] TlsError),
    /// The upstream URL has no host.
    #[error("upstream {0} has no host")]
    NoHost(String),
    /// The TCP connection failed.
    #[error("tcp connect {addr}: {source}")]
    Tcp {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The handshake failed; `config` when a certificate was refused by
    /// either side.
    #[error("tls handshake with {host}: {message}")]
    Handshake {
        host: String,
        message: String,
        config: bool,
    },
}

impl GrpcTlsError {
    /// Whether the operator must fix something (certificate, CA, files)
    /// rather than wait for the collector.
    pub fn is_config(&self) -> bool {
        match self {
            GrpcTlsError::Setup(_) | GrpcTlsError::NoHost(_) => true,
            GrpcTlsError::Handshake { config, .. } => *config,
            GrpcTlsError::Tcp { .. } => false,
        }
    }
}

/// Whether an error chain holds a configuration-class TLS failure: ours
/// from the connector, or a certificate alert the collector sent after the
/// handshake (under TLS 1.3 a server checks the client's certificate after
/// the client considers the handshake done, so a refused client certificate
/// surfaces on the first read, inside hyper's error).
pub fn is_config(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<GrpcTlsError>() {
            return t.is_config();
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if certificate_refused(io) {
                return true;
            }
        }
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            if rustls_certificate_refused(r) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// An error and its sources, `: `-joined (tonic's own message is only
/// "transport error").
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = err.source();
    }
    out
}

/// Without a client certificate configured: answers a collector's
/// certificate request with none, and notes that it was asked, so that a
/// refusal that follows (under TLS 1.3 it arrives after the handshake,
/// often as a bare "connection closed") can be explained.
#[derive(Debug)]
struct NoteRequest(Arc<AtomicBool>);

impl rustls::client::ResolvesClientCert for NoteRequest {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// The client configuration `[grpc]` asks for: roots, optional client
/// certificate, ALPN `h2`. Without a client certificate, `asked` turns true
/// when a collector requests one.
///
/// # Errors
/// [`TlsError`] naming the key and file.
pub fn client_config(
    cfg: &GrpcConfig,
    asked: Arc<AtomicBool>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = match &cfg.tls_ca_file {
        Some(ca) => root_store("grpc.tls_ca_file", ca)?,
        None => {
            let mut r = rustls::RootCertStore::empty();
            r.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            r
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected {
            file: Default::default(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    let mut config = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("grpc.tls_cert_file", cert)?;
            let k = private_key("grpc.tls_key_file", key)?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                        cert_file: cert.clone(),
                        key_file: key.clone(),
                    },
                    other => TlsError::Rejected {
                        file: key.clone(),
                        message: other.to_string(),
                    },
                })?
        }
        _ => builder.with_client_cert_resolver(Arc::new(NoteRequest(asked))),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Whether a handshake error means a certificate was refused (by us or by
/// the collector).
fn certificate_refused(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(rustls_certificate_refused)
}

fn rustls_certificate_refused(r: &rustls::Error) -> bool {
    use rustls::AlertDescription as A;
    match r {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => true,
        rustls::Error::AlertReceived(a) => matches!(
            a,
            A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired
        ),
        _ => false,
    }
}

/// TCP then TLS to the upstream's host and port (443 by default).
#[derive(Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    handshake_timeout: Duration,
}

impl Connector {
    pub fn new(config: Arc<rustls::ClientConfig>, handshake_timeout: Duration) -> Self {
        Connector {
            config,
            handshake_timeout,
        }
    }
}

type Io = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = Io;
    type Error = GrpcTlsError;
    type Future = Pin<Box<dyn Future<Output = Result<Io, GrpcTlsError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        let deadline = self.handshake_timeout;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| GrpcTlsError::NoHost(uri.to_string()))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let addr = format!(
                "{}:{}",
                uri.host().unwrap_or_default(),
                uri.port_u16().unwrap_or(443)
            );
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|source| GrpcTlsError::Tcp {
                    addr: addr.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host.clone()).map_err(|e| GrpcTlsError::Handshake {
                host: host.clone(),
                message: format!("not a valid server name: {e}"),
                config: true,
            })?;
            let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
            let tls = tokio::time::timeout(deadline, handshake)
                .await
                .map_err(|_| GrpcTlsError::Handshake {
                    host: host.clone(),
                    message: format!("not finished within {} ms", deadline.as_millis()),
                    config: false,
                })?
                .map_err(|e| GrpcTlsError::Handshake {
                    host: host.clone(),
                    config: certificate_refused(&e),
                    message: e.to_string(),
                })?;
            Ok(TokioIo::new(tls))
        })
    }
}
