//! The InfluxDB 2 management API through the `influxdb2` crate: health,
//! bucket lookup (`walrelay check`) and bucket creation (`walrelay init`).
//! The write path keeps its own client (`client.rs`; docs/INFLUX.md says why).
//!
//! Servers that accept InfluxDB line protocol without the management API
//! (VictoriaMetrics answers `/health` with plain `OK` and has no
//! `/api/v2/buckets`) are reported as [`Admin::NotInflux`] with the reason:
//! check and init say so and go on, they do not fail on it.
//!
//! Every call has the deadline `timeout` (at most 5 s in check).

use std::collections::BTreeSet;
use std::time::Duration;

use influxdb2::api::buckets::ListBucketsRequest;
use influxdb2::api::organization::ListOrganizationRequest;
use influxdb2::models::PostBucketRequest;
use influxdb2::RequestError;

use super::config::InfluxConfig;

/// What the management API answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin<T> {
    /// A full InfluxDB 2 answered.
    Influx(T),
    /// The server does not implement the management API (e.g.
    /// VictoriaMetrics); the text says what it answered.
    NotInflux(String),
}

/// The outcome of one bucket in `walrelay init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketInit {
    /// It was there already.
    Exists,
    /// It was missing and has been created.
    Created,
    /// It is missing and the token may not create it (the server's answer).
    Refused(String),
}

/// Management API failures (connection, deadline, unexpected answers).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The URL does not parse.
    #[error("influx url {0:?} is not a valid URL")]
    Url(String),
    /// The HTTP client (TLS CA file) cannot be built.
    #[error("influx management client: {0}")]
    Client(String),
    /// No answer within the deadline.
    #[error("{what} at {url}: no answer within {ms} ms")]
    Timeout {
        what: &'static str,
        url: String,
        ms: u64,
    },
    /// The server answered with an error status or could not be reached.
    #[error("{what} at {url}: {detail}")]
    Request {
        what: &'static str,
        url: String,
        detail: String,
    },
}

/// The (url, org, bucket) of the default destination and of every route.
pub fn configured_buckets(ic: &InfluxConfig) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    out.insert((ic.url.clone(), ic.org.clone(), ic.bucket.clone()));
    for d in ic.routes.values() {
        out.insert((
            d.url.clone().unwrap_or_else(|| ic.url.clone()),
            d.org.clone().unwrap_or_else(|| ic.org.clone()),
            d.bucket.clone(),
        ));
    }
    out
}

/// A management client for `url`/`org` with the config's token and CA file.
/// influxdb2 0.5 runs on its own reqwest 0.11 (rustls 0.21), so its builder
/// is that crate's (`reqwest_011` in Cargo.toml); the write path and
/// everything else use reqwest 0.12.
fn client(
    ic: &InfluxConfig,
    url: &str,
    org: &str,
    timeout: Duration,
) -> Result<influxdb2::Client, AdminError> {
    // influxdb2's builder panics on an unparsable URL: check first.
    reqwest_011::Url::parse(url).map_err(|_| AdminError::Url(url.to_string()))?;
    let token = ic
        .resolve_token()
        .map_err(AdminError::Client)?
        .map(|s| s.expose().to_string())
        .unwrap_or_default();
    let mut builder = reqwest_011::ClientBuilder::new().timeout(timeout);
    if let Some(ca) = &ic.tls_ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| AdminError::Client(format!("influx.tls_ca_file {}: {e}", ca.display())))?;
        let cert = reqwest_011::Certificate::from_pem(&pem)
            .map_err(|e| AdminError::Client(format!("influx.tls_ca_file {}: {e}", ca.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    influxdb2::ClientBuilder::with_builder(builder, url, org, token)
        .build()
        .map_err(|e| AdminError::Client(e.to_string()))
}

async fn call<T>(
    what: &'static str,
    url: &str,
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, RequestError>>,
) -> Result<Result<T, RequestError>, AdminError> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| AdminError::Timeout {
            what,
            url: url.to_string(),
            ms: timeout.as_millis() as u64,
        })
}

/// Whether an error means "this is not an InfluxDB 2 management API": a 404
/// or 400 on an `/api/v2` path, or a body that is not InfluxDB's JSON. The
/// text completes a sentence whose subject is the path ("/health did not
/// answer InfluxDB 2 JSON (…)").
fn not_influx(e: &RequestError) -> Option<String> {
    match e {
        RequestError::Http { status, text } if status.as_u16() == 404 || status.as_u16() == 400 => {
            Some(format!("answered HTTP {status}: {}", text.trim()))
        }
        RequestError::ReqwestProcessing { source } if source.is_decode() => {
            Some(format!("did not answer InfluxDB 2 JSON ({source})"))
        }
        RequestError::Serializing { source } => {
            Some(format!("did not answer InfluxDB 2 JSON ({source})"))
        }
        _ => None,
    }
}

fn request_error(what: &'static str, url: &str, e: RequestError) -> AdminError {
    AdminError::Request {
        what,
        url: url.to_string(),
        detail: e.to_string(),
    }
}

/// `GET /health`: the server's version when it is an InfluxDB 2.
///
/// # Errors
/// [`AdminError`] when the server cannot be reached in time.
pub async fn health(ic: &InfluxConfig, timeout: Duration) -> Result<Admin<String>, AdminError> {
    let c = client(ic, &ic.url, &ic.org, timeout)?;
    match call("health", &ic.url, timeout, c.health()).await? {
        Ok(h) => Ok(Admin::Influx(format!(
            "{} ({:?}, version {})",
            h.name,
            h.status,
            h.version.unwrap_or_else(|| "unknown".into())
        ))),
        Err(e) => match not_influx(&e) {
            Some(why) => Ok(Admin::NotInflux(format!("/health {why}"))),
            None => Err(request_error("health", &ic.url, e)),
        },
    }
}

/// Looks up `bucket` in `org` at `url`: its ID, `None` when missing.
///
/// # Errors
/// [`AdminError`] when the server cannot be reached in time or refuses the token.
pub async fn find_bucket(
    ic: &InfluxConfig,
    url: &str,
    org: &str,
    bucket: &str,
    timeout: Duration,
) -> Result<Admin<Option<String>>, AdminError> {
    let c = client(ic, url, org, timeout)?;
    let req = ListBucketsRequest {
        name: Some(bucket.to_string()),
        org: Some(org.to_string()),
        ..Default::default()
    };
    match call("bucket lookup", url, timeout, c.list_buckets(Some(req))).await? {
        Ok(b) => Ok(Admin::Influx(
            b.buckets
                .into_iter()
                .find(|b| b.name == bucket)
                .map(|b| b.id.unwrap_or_default()),
        )),
        // InfluxDB answers an unknown org with 404 too; "organization"
        // in the text tells them apart.
        Err(RequestError::Http { status, text })
            if status.as_u16() == 404 && text.contains("organization") =>
        {
            Err(AdminError::Request {
                what: "bucket lookup",
                url: url.to_string(),
                detail: format!("HTTP {status}: {} (check influx.org)", text.trim()),
            })
        }
        Err(e) => match not_influx(&e) {
            Some(why) => Ok(Admin::NotInflux(format!("/api/v2/buckets {why}"))),
            None => Err(request_error("bucket lookup", url, e)),
        },
    }
}

/// Creates `bucket` in `org` unless it exists (no retention rule: data is
/// kept until an operator sets one).
///
/// # Errors
/// [`AdminError`] when the server cannot be reached in time or the org is unknown.
pub async fn ensure_bucket(
    ic: &InfluxConfig,
    url: &str,
    org: &str,
    bucket: &str,
    timeout: Duration,
) -> Result<Admin<BucketInit>, AdminError> {
    match find_bucket(ic, url, org, bucket, timeout).await? {
        Admin::NotInflux(why) => return Ok(Admin::NotInflux(why)),
        Admin::Influx(Some(_)) => return Ok(Admin::Influx(BucketInit::Exists)),
        Admin::Influx(None) => {}
    }
    let c = client(ic, url, org, timeout)?;
    let req = ListOrganizationRequest {
        org: Some(org.to_string()),
        ..Default::default()
    };
    let orgs = call(
        "organization lookup",
        url,
        timeout,
        c.list_organizations(req),
    )
    .await?
    .map_err(|e| request_error("organization lookup", url, e))?;
    let Some(org_id) = orgs
        .orgs
        .into_iter()
        .find(|o| o.name == org)
        .and_then(|o| o.id)
    else {
        return Err(AdminError::Request {
            what: "organization lookup",
            url: url.to_string(),
            detail: format!("no organization {org:?} visible to this token (check influx.org)"),
        });
    };
    let post = PostBucketRequest::new(org_id, bucket.to_string());
    match call("bucket creation", url, timeout, c.create_bucket(Some(post))).await? {
        Ok(()) => Ok(Admin::Influx(BucketInit::Created)),
        Err(RequestError::Http { status, text }) if matches!(status.as_u16(), 401 | 403) => {
            Ok(Admin::Influx(BucketInit::Refused(format!(
                "HTTP {status}: {}",
                text.trim()
            ))))
        }
        Err(e) => Err(request_error("bucket creation", url, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_buckets_are_the_default_and_every_route() {
        let mut ic = InfluxConfig::new("http://influx.example:8086", "acme", "market");
        ic.routes.insert(
            "TRADE".into(),
            super::super::Destination {
                bucket: "trades".into(),
                org: None,
                url: None,
            },
        );
        ic.routes.insert(
            "FUNDING".into(),
            super::super::Destination {
                bucket: "market".into(),
                org: Some("other".into()),
                url: Some("http://influx2.example:8086".into()),
            },
        );
        let got: Vec<_> = configured_buckets(&ic).into_iter().collect();
        let t = |u: &str, o: &str, b: &str| (u.to_string(), o.to_string(), b.to_string());
        assert_eq!(
            got,
            vec![
                t("http://influx.example:8086", "acme", "market"),
                t("http://influx.example:8086", "acme", "trades"),
                t("http://influx2.example:8086", "other", "market"),
            ]
        );
    }

    #[tokio::test]
    async fn an_invalid_url_is_an_error_not_a_panic() {
        let ic = InfluxConfig::new("not a url", "acme", "market");
        let e = health(&ic, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(e, AdminError::Url(_)), "{e}");
    }
}
