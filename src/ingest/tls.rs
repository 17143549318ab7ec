//! TLS on the ingest hops: the HTTP listener's certificate pair
//! (`[ingest.tls]`), reloaded without a restart, and the PEM/DER helpers the
//! gRPC client side (`grpc/tls.rs`) shares.
//!
//! Invariants:
//! - A listener configured with `[ingest.tls]` never serves a request in
//!   clear text: a connection whose first byte is not a TLS handshake record
//!   gets a fixed `400` that names https, and is closed; nothing it sent is
//!   parsed.
//! - The pair in use is always one that loaded completely: certificate chain
//!   and key read, the key matching the leaf certificate, the leaf valid now,
//!   the client CA (mutual TLS) readable. [`Acceptor::reload`] builds the new
//!   configuration aside and swaps it in only then; a bad new pair is refused
//!   with a log line naming the file, and the old pair stays.
//! - A reload changes what the *next* handshake presents; connections already
//!   established keep their session and finish.
//! - Crypto provider: ring, named explicitly, as for the sinks (Cargo.toml
//!   says why).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use serde::Deserialize;

use crate::drain::ErrorClass;

/// `[ingest.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the server certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file of the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM file of the CA certificates that sign client certificates. When
    /// set, every client must present a certificate signed by one of them
    /// (mutual TLS); without it, no client certificate is asked for.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// Why a certificate pair (or CA file) could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A configured file cannot be read.
    #[error("{key} {file}: cannot read: {source}")]
    Read {
        key: &'static str,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configured file holds no usable PEM object of the expected kind, or
    /// a malformed one.
    #[error("{key} {file}: {message}")]
    Pem {
        key: &'static str,
        file: PathBuf,
        message: String,
    },
    /// The private key is not the key of the leaf certificate.
    #[error("{key_file}: the private key does not match the certificate in {cert_file}")]
    KeyMismatch {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// The leaf certificate is outside its validity period.
    #[error("{file}: the certificate {what}")]
    Validity { file: PathBuf, what: String },
    /// rustls refused the configuration (an unsupported key type, a CA it
    /// cannot use).
    #[error("{file}: {message}")]
    Rejected { file: PathBuf, message: String },
}

impl TlsError {
    /// Every TLS setup failure is the operator's to fix: config class.
    pub fn class(&self) -> ErrorClass {
        ErrorClass::Config
    }
}

/// What `walrelay check` prints about a pair.
#[derive(Debug, Clone)]
pub struct PairInfo {
    /// Certificates in the chain file.
    pub chain_len: usize,
    /// Seconds since the epoch of the leaf's `notAfter`.
    pub not_after_unix: i64,
    /// Whole days from now until `notAfter` (negative once expired).
    pub days_left: i64,
    /// Whether client certificates are required (`client_ca_file` set).
    pub mutual: bool,
}

/// The crypto provider of the ingest hops: ring (see the module doc).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(key: &'static str, file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|source| TlsError::Read {
        key,
        file: file.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file; at least one.
///
/// # Errors
/// The file is unreadable, malformed or holds no certificate.
pub(crate) fn certificates(
    key: &'static str,
    file: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, file)?;
    let pem_err = |message: String| TlsError::Pem {
        key,
        file: file.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
///
/// # Errors
/// The file is unreadable or holds no private key.
pub(crate) fn private_key(
    key: &'static str,
    file: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(key, file)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        key,
        file: file.to_path_buf(),
        message: format!("no usable PEM private key: {e}"),
    })
}

/// A root store of every certificate in a PEM file.
///
/// # Errors
/// The file is unreadable, holds no certificate, or one rustls cannot use.
pub(crate) fn root_store(
    key: &'static str,
    file: &Path,
) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates(key, file)? {
        roots.add(der).map_err(|e| TlsError::Pem {
            key,
            file: file.to_path_buf(),
            message: format!("unusable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Checks the leaf's validity period against `now`; returns `notAfter`.
fn check_validity(file: &Path, leaf: &CertificateDer<'_>, now: i64) -> Result<i64, TlsError> {
    let (not_before, not_after) = validity(leaf).ok_or_else(|| TlsError::Pem {
        key: "ingest.tls.cert_file",
        file: file.to_path_buf(),
        message: "the first certificate is not a well-formed X.509 certificate".into(),
    })?;
    if now < not_before {
        return Err(TlsError::Validity {
            file: file.to_path_buf(),
            what: format!("is not valid yet (notBefore {})", httpdate_of(not_before)),
        });
    }
    if now > not_after {
        return Err(TlsError::Validity {
            file: file.to_path_buf(),
            what: format!("expired on {}", httpdate_of(not_after)),
        });
    }
    Ok(not_after)
}

fn httpdate_of(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    httpdate::fmt_http_date(t)
}

/// Loads and checks the pair of `cfg` and builds the server configuration:
/// ALPN `h2` then `http/1.1`, a client certificate required under
/// `client_ca_file`.
///
/// # Errors
/// [`TlsError`] naming the file at fault.
pub fn load(cfg: &TlsConfig) -> Result<(Arc<ServerConfig>, PairInfo), TlsError> {
    let chain = certificates("ingest.tls.cert_file", &cfg.cert_file)?;
    let key = private_key("ingest.tls.key_file", &cfg.key_file)?;
    let now = now_unix();
    let not_after = check_validity(&cfg.cert_file, &chain[0], now)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected {
            file: cfg.cert_file.clone(),
            message: e.to_string(),
        })?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let roots = root_store("ingest.tls.client_ca_file", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rejected {
                    file: ca.clone(),
                    message: format!("cannot verify client certificates with it: {e}"),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let chain_len = chain.len();
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
        },
        other => TlsError::Rejected {
            file: cfg.key_file.clone(),
            message: other.to_string(),
        },
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let info = PairInfo {
        chain_len,
        not_after_unix: not_after,
        days_left: (not_after - now).div_euclid(86_400),
        mutual: cfg.client_ca_file.is_some(),
    };
    Ok((Arc::new(config), info))
}

/// Modification time and length of each configured file: what "the files
/// changed" means for the reload poll.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(cfg: &TlsConfig) -> Stamp {
    [
        Some(cfg.cert_file.as_path()),
        Some(cfg.key_file.as_path()),
        cfg.client_ca_file.as_deref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

/// The listener's current server configuration, swapped on reload.
#[derive(Debug)]
pub struct Acceptor {
    cfg: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    stamp: std::sync::Mutex<Stamp>,
}

impl Acceptor {
    /// Loads the pair of `cfg`.
    ///
    /// # Errors
    /// [`TlsError`] naming the file at fault; the listener must not start.
    pub fn new(cfg: TlsConfig) -> Result<Acceptor, TlsError> {
        let before = stamp(&cfg);
        let (config, info) = load(&cfg)?;
        tracing::info!(
            cert_file = %cfg.cert_file.display(),
            days_left = info.days_left,
            mutual_tls = info.mutual,
            "ingest TLS certificate loaded"
        );
        Ok(Acceptor {
            cfg,
            current: RwLock::new(config),
            stamp: std::sync::Mutex::new(before),
        })
    }

    /// The configuration the next handshake uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the files. A complete new pair replaces the old one for the
    /// next handshakes; a bad one is refused (logged with the file at fault)
    /// and the old pair stays.
    ///
    /// # Errors
    /// Why the new pair was refused.
    pub fn reload(&self) -> Result<PairInfo, TlsError> {
        let before = stamp(&self.cfg);
        // Remember the stamp even on failure: a bad pair is reported once,
        // not every poll, until the files change again.
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = before;
        match load(&self.cfg) {
            Ok((config, info)) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                tracing::info!(
                    cert_file = %self.cfg.cert_file.display(),
                    days_left = info.days_left,
                    "ingest TLS certificate reloaded; new connections use it"
                );
                Ok(info)
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    cert_file = %self.cfg.cert_file.display(),
                    key_file = %self.cfg.key_file.display(),
                    "new ingest TLS certificate refused; keeping the one in use"
                );
                Err(e)
            }
        }
    }

    /// Whether a configured file changed (time or length) since the last
    /// load or reload.
    fn changed(&self) -> bool {
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) != stamp(&self.cfg)
    }

    /// Reloads on SIGHUP, and when a file changed (checked every `poll`),
    /// until `stop` turns true.
    pub async fn watch(
        self: Arc<Self>,
        poll: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            tokio::select! {
                _ = hangup => {
                    tracing::info!("SIGHUP: reloading the ingest TLS certificate");
                    let _ = self.reload();
                }
                _ = tokio::time::sleep(poll) => {
                    if self.changed() {
                        let _ = self.reload();
                    }
                }
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

/// Without `[ingest.tls]`: SIGHUP (`systemctl reload`) is logged and
/// otherwise ignored rather than ending the process, until `stop`.
pub async fn ignore_hangup(mut stop: tokio::sync::watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => tracing::info!("SIGHUP: nothing to reload (no [ingest.tls])"),
                _ = stop.changed() => return,
            }
        }
    }
    #[cfg(not(unix))]
    let _ = stop.changed().await;
}

/// `notBefore` and `notAfter` of a DER X.509 certificate, seconds since the
/// epoch: a walk of the outer structure only (Certificate → TBSCertificate
/// → [0] version?, serialNumber, signature, issuer, validity).
pub(crate) fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, mut tbs, _) = tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let mut skip = 3; // serialNumber, signature, issuer
    if tbs.first() == Some(&0xa0) {
        skip += 1; // explicit version
    }
    for _ in 0..skip {
        let (_, _, rest) = tlv(tbs)?;
        tbs = rest;
    }
    let (tag, validity, _) = tlv(tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, v1, rest) = tlv(validity)?;
    let (t2, v2, _) = tlv(rest)?;
    Some((asn1_time(t1, v1)?, asn1_time(t2, v2)?))
}

/// One DER tag-length-value: (tag, value, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, head) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((tag, b.get(head..end)?, b.get(end..)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`, tag 0x18) to seconds since the epoch.
fn asn1_time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (mo, d, h, mi, se) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_files_keys_parse_and_unknown_keys_are_named() {
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/walrelay.example.toml"
        ))
        .unwrap();
        // The commented-out [ingest.tls] block, uncommented.
        let block: String = example
            .lines()
            .skip_while(|l| *l != "# [ingest.tls]")
            .skip(1)
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let c: TlsConfig = toml::from_str(&block).unwrap();
        assert!(c.client_ca_file.is_some(), "{block}");
        let e =
            toml::from_str::<TlsConfig>("cert_file = \"a\"\nkey_file = \"b\"\nca_file = \"c\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("ca_file"), "{e}");
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 6), 20_793);
    }

    #[test]
    fn asn1_times_parse_both_forms_and_refuse_garbage() {
        assert_eq!(asn1_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(
            asn1_time(0x18, b"20000301000001Z"),
            Some(11_017 * 86_400 + 1)
        );
        assert_eq!(
            asn1_time(0x17, b"491231235959Z"),
            Some(days_from_civil(2049, 12, 31) * 86_400 + 86_399)
        );
        assert_eq!(asn1_time(0x17, b"700101000000"), None);
        assert_eq!(asn1_time(0x17, b"701301000000Z"), None);
        assert_eq!(asn1_time(0x18, b"700101000000Z"), None);
    }

    #[test]
    fn validity_of_truncated_der_is_none_never_a_panic() {
        let der = [0x30, 0x82, 0x01, 0x00, 0x30, 0x05, 0xa0, 0x03];
        for n in 0..der.len() {
            assert_eq!(validity(&der[..n]), None);
        }
        assert_eq!(validity(&[]), None);
    }
}
