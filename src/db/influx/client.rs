//! One write request with a deadline, and its classification.
//!
//! Transport note: the `influxdb2` crate's `write_line_protocol` drops the
//! response headers (so `Retry-After` cannot be honoured) and compresses only
//! its DataPoint stream API; writes therefore go out as one request of our
//! own, on reqwest 0.12 / hyper 1 / rustls 0.23 (ring), the current stack
//! (influxdb2 keeps its reqwest 0.11 for the management API, `admin.rs`).
//!
//! Two APIs (`config.rs`): v2 posts to `/api/v2/write?org&bucket`; v1 to
//! `/write?db&rp`, the bucket split as `database[/retention_policy]`. Both
//! use `precision=ns`. Credentials always travel in the `Authorization`
//! header, never in the query string (v1's `u`/`p` parameters would put the
//! password in every proxy and server access log): `Token <token>` (v2, and
//! v1 on InfluxDB 1.8+, 2.x and 3), or HTTP Basic for a v1 user name and
//! password, which InfluxDB 1.x accepts in every version.

use std::io::Write;
use std::time::Duration;

use super::config::{split_bucket, Api, InfluxConfig};
use super::error::InfluxError;
use crate::secret::Secret;

/// Sends line protocol to one InfluxDB endpoint.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    token: Option<Secret>,
    /// v1 user name and password (HTTP Basic); wins over `token`.
    basic: Option<(String, Secret)>,
    api: Api,
    timeout: Duration,
    gzip: bool,
}

impl Client {
    /// # Errors
    /// When the HTTP client cannot be built (TLS setup).
    /// `ca_file`: PEM certificates trusted in addition to the public web CAs.
    pub fn new(
        token: Option<Secret>,
        timeout: Duration,
        gzip: bool,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Client, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(path) = ca_file {
            let bad = |detail: String| format!("influx.tls_ca_file {}: {detail}", path.display());
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in the file".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| e.to_string())?;
        Ok(Client {
            http,
            token,
            basic: None,
            api: Api::V2,
            timeout,
            gzip,
        })
    }

    /// The client `ic` describes (API, credentials, CA file), with this
    /// deadline and compression.
    ///
    /// # Errors
    /// When the token file cannot be read or the HTTP client cannot be built.
    pub fn from_config(ic: &InfluxConfig, timeout: Duration, gzip: bool) -> Result<Client, String> {
        let mut c = Client::new(
            ic.resolve_token()?,
            timeout,
            gzip,
            ic.tls_ca_file.as_deref(),
        )?;
        c.api = ic.api;
        if let (Some(user), Some(password)) = (&ic.username, ic.resolve_password()) {
            c.basic = Some((user.clone(), password));
        }
        Ok(c)
    }

    /// Writes `body` (line protocol, ns precision) to `bucket`/`org` at `url`
    /// (v1: `bucket` is `database[/retention_policy]`, `org` unused).
    ///
    /// # Errors
    /// [`InfluxError`], classified for the drainer.
    /// `body` is sent as it is (no copy); gzip, when on, compresses it.
    pub async fn write(
        &self,
        url: &str,
        org: &str,
        bucket: &str,
        body: bytes::Bytes,
    ) -> Result<(), InfluxError> {
        let base = url.trim_end_matches('/');
        let mut req = match self.api {
            Api::V2 => self.http.post(format!("{base}/api/v2/write")).query(&[
                ("org", org),
                ("bucket", bucket),
                ("precision", "ns"),
            ]),
            Api::V1 => {
                // The config is validated; an unsplittable bucket here is
                // sent whole and the server names it in its 404.
                let (db, rp) = split_bucket(bucket).unwrap_or((bucket, None));
                let req = self
                    .http
                    .post(format!("{base}/write"))
                    .query(&[("db", db), ("precision", "ns")]);
                match rp {
                    Some(rp) => req.query(&[("rp", rp)]),
                    None => req,
                }
            }
        };
        if let Some((user, password)) = &self.basic {
            req = req.basic_auth(user, Some(password.expose()));
        } else if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Token {}", t.expose()));
        }
        req = if self.gzip {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            let _ = e.write_all(&body);
            req.header("Content-Encoding", "gzip")
                .body(e.finish().unwrap_or_default())
        } else {
            req.body(body)
        };
        let sent =
            tokio::time::timeout(self.timeout + Duration::from_millis(500), req.send()).await;
        let resp = match sent {
            Err(_) => {
                return Err(InfluxError::Timeout {
                    url: url.into(),
                    after: self.timeout,
                })
            }
            Ok(Err(e)) if e.is_timeout() => {
                return Err(InfluxError::Timeout {
                    url: url.into(),
                    after: self.timeout,
                })
            }
            Ok(Err(e)) => {
                return Err(match crate::db::certificate_rejected(&e) {
                    Some(reason) => InfluxError::Certificate {
                        url: url.into(),
                        reason,
                    },
                    None => InfluxError::Connect {
                        url: url.into(),
                        detail: without_url(&e),
                    },
                })
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let message = match tokio::time::timeout(self.timeout, resp.text()).await {
            Ok(Ok(t)) => server_message(&t),
            _ => String::new(),
        };
        Err(InfluxError::Http {
            url: url.into(),
            status,
            message,
            retry_after,
        })
    }
}

/// `Retry-After` as delay-seconds or as an HTTP date (RFC 9110 §10.2.3); a
/// date in the past means "now".
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// reqwest's error without its own top line, "error sending request for url
/// (…)", which repeats the URL the caller names already (and once printed as
/// "for url ()" when the URL was cut out of it); each cause once.
fn without_url(e: &reqwest::Error) -> String {
    crate::report::causes(e)
}

/// InfluxDB's JSON `message` (2.x) or `error` (1.x), or the raw text,
/// shortened.
fn server_message(text: &str) -> String {
    let msg = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v["message"]
                .as_str()
                .or_else(|| v["error"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| text.trim().to_string());
    msg.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn server_messages_of_both_versions() {
        assert_eq!(server_message(r#"{"code":"invalid","message":"m2"}"#), "m2");
        assert_eq!(
            server_message(
                r#"{"error":"partial write: points beyond retention policy dropped=1"}"#
            ),
            "partial write: points beyond retention policy dropped=1"
        );
        assert_eq!(server_message("404 page not found\n"), "404 page not found");
    }

    #[test]
    fn retry_after_seconds_and_http_dates() {
        // Sun, 06 Nov 1994 08:49:37 GMT, the RFC's own example.
        let date = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let now = date - Duration::from_secs(90);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                date + Duration::from_secs(5)
            ),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(parse_retry_after("soon", SystemTime::now()), None);
        assert_eq!(parse_retry_after("-3", SystemTime::now()), None);
    }
}
