//! The InfluxDB 2 management API through the `influxdb2` crate: health,
//! bucket lookup (`walrelay check`) and bucket creation (`walrelay init`).
//! The write path keeps its own client (`client.rs`; docs/INFLUX.md says why).
//!
//! Servers that accept InfluxDB line protocol without the management API
//! (VictoriaMetrics answers `/health` with plain `OK` and has no
//! `/api/v2/buckets`) are reported as [`Admin::NotInflux`] with the reason:
//! check and init say so and go on, they do not fail on it.
//!
//! InfluxDB 1.x (`api = "v1"`) has no management API: `GET /ping` (204, the
//! version in `X-Influxdb-Version`) and InfluxQL over `POST /query`
//! (`SHOW DATABASES`, `SHOW RETENTION POLICIES`, `CREATE DATABASE`) stand in
//! for it, with the write path's credentials (Basic or `Token`) in the
//! `Authorization` header.
//!
//! Every call has the deadline `timeout` (at most 5 s in check).

use std::collections::BTreeSet;
use std::time::Duration;

use influxdb2::api::buckets::ListBucketsRequest;
use influxdb2::api::organization::ListOrganizationRequest;
use influxdb2::models::PostBucketRequest;
use influxdb2::RequestError;

use super::config::{split_bucket, InfluxConfig};

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
    out.insert((ic.url.clone(), ic.org.clone(), ic.default_bucket()));
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

/// One configured v1 destination: (url, database, retention policy).
pub type V1Destination = (String, String, Option<String>);

/// The (url, database, retention policy) of the default destination and of
/// every route, under `api = "v1"`.
pub fn configured_databases(ic: &InfluxConfig) -> BTreeSet<V1Destination> {
    configured_buckets(ic)
        .into_iter()
        .filter_map(|(url, _, bucket)| {
            split_bucket(&bucket)
                .map(|(db, rp)| (url.clone(), db.to_string(), rp.map(str::to_string)))
        })
        .collect()
}

/// A reqwest client for the 1.x endpoints with the config's CA file.
fn v1_http(ic: &InfluxConfig, timeout: Duration) -> Result<reqwest::Client, AdminError> {
    let mut b = reqwest::Client::builder().timeout(timeout);
    if let Some(ca) = &ic.tls_ca_file {
        let bad =
            |e: String| AdminError::Client(format!("influx.tls_ca_file {}: {e}", ca.display()));
        let pem = std::fs::read(ca).map_err(|e| bad(e.to_string()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))? {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(|e| AdminError::Client(e.to_string()))
}

/// The write path's credentials on a 1.x request.
fn v1_auth(
    ic: &InfluxConfig,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::RequestBuilder, AdminError> {
    if let (Some(user), Some(password)) = (&ic.username, ic.resolve_password()) {
        return Ok(req.basic_auth(user, Some(password.expose())));
    }
    Ok(match ic.resolve_token().map_err(AdminError::Client)? {
        Some(t) => req.header("Authorization", format!("Token {}", t.expose())),
        None => req,
    })
}

/// Sends `req` within `timeout`; the status and body.
async fn v1_send(
    what: &'static str,
    url: &str,
    timeout: Duration,
    req: reqwest::RequestBuilder,
) -> Result<(u16, reqwest::header::HeaderMap, String), AdminError> {
    let fail = |detail: String| AdminError::Request {
        what,
        url: url.to_string(),
        detail,
    };
    let resp = tokio::time::timeout(timeout, req.send())
        .await
        .map_err(|_| AdminError::Timeout {
            what,
            url: url.to_string(),
            ms: timeout.as_millis() as u64,
        })?
        .map_err(|e| fail(crate::report::causes(&e)))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(timeout, resp.text())
        .await
        .map_err(|_| AdminError::Timeout {
            what,
            url: url.to_string(),
            ms: timeout.as_millis() as u64,
        })?
        .unwrap_or_default();
    Ok((status, headers, body))
}

/// One InfluxQL statement over `POST /query`: the first result, or the
/// server's refusal as (status, message).
async fn v1_query(
    ic: &InfluxConfig,
    what: &'static str,
    url: &str,
    q: &str,
    timeout: Duration,
) -> Result<Result<serde_json::Value, (u16, String)>, AdminError> {
    let http = v1_http(ic, timeout)?;
    let req = v1_auth(
        ic,
        http.post(format!("{}/query", url.trim_end_matches('/')))
            .form(&[("q", q)]),
    )?;
    let (status, _, body) = v1_send(what, url, timeout, req).await?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    let message = v["error"]
        .as_str()
        .or_else(|| v["results"][0]["error"].as_str())
        .map(str::to_string);
    match (status, message) {
        (200..=299, None) if v["results"][0].is_object() => Ok(Ok(v["results"][0].clone())),
        (s, Some(m)) => Ok(Err((s, m))),
        (s, None) => Ok(Err((
            s,
            format!(
                "an answer that is not InfluxDB 1.x JSON: {}",
                body.trim().chars().take(200).collect::<String>()
            ),
        ))),
    }
}

/// `GET /ping` on a 1.x server: its version (`X-Influxdb-Version`).
///
/// # Errors
/// [`AdminError`] when the server cannot be reached in time or does not
/// answer 204.
pub async fn v1_ping(ic: &InfluxConfig, timeout: Duration) -> Result<String, AdminError> {
    let http = v1_http(ic, timeout)?;
    let req = v1_auth(
        ic,
        http.get(format!("{}/ping", ic.url.trim_end_matches('/'))),
    )?;
    let (status, headers, body) = v1_send("ping", &ic.url, timeout, req).await?;
    if status != 204 {
        return Err(AdminError::Request {
            what: "ping",
            url: ic.url.clone(),
            detail: format!("HTTP {status}: {}", body.trim()),
        });
    }
    Ok(headers
        .get("x-influxdb-version")
        .and_then(|v| v.to_str().ok())
        .map(|v| format!("InfluxDB {v}"))
        .unwrap_or_else(|| "answered /ping without a version".into()))
}

/// Whether `db` (and `rp`, when given) exists at `url`: `Ok(None)` when both
/// do, `Ok(Some(what is missing))` otherwise.
///
/// # Errors
/// [`AdminError`] when the server cannot be reached in time or refuses the
/// credentials.
pub async fn v1_find(
    ic: &InfluxConfig,
    url: &str,
    db: &str,
    rp: Option<&str>,
    timeout: Duration,
) -> Result<Option<String>, AdminError> {
    let refused = |what: &'static str, (status, m): (u16, String)| AdminError::Request {
        what,
        url: url.to_string(),
        detail: format!("HTTP {status}: {m}"),
    };
    let dbs = v1_query(ic, "SHOW DATABASES", url, "SHOW DATABASES", timeout)
        .await?
        .map_err(|e| refused("SHOW DATABASES", e))?;
    let names = |v: &serde_json::Value| -> BTreeSet<String> {
        v["series"][0]["values"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| r[0].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    if !names(&dbs).contains(db) {
        return Ok(Some(format!("no database {db:?}")));
    }
    if let Some(rp) = rp {
        let q = format!("SHOW RETENTION POLICIES ON {}", quote_ident(db));
        let rps = v1_query(ic, "SHOW RETENTION POLICIES", url, &q, timeout)
            .await?
            .map_err(|e| refused("SHOW RETENTION POLICIES", e))?;
        if !names(&rps).contains(rp) {
            return Ok(Some(format!(
                "no retention policy {rp:?} on database {db:?}"
            )));
        }
    }
    Ok(None)
}

/// Creates database `db` at `url` unless it exists (`CREATE DATABASE`, which
/// InfluxDB makes idempotent; its default policy `autogen` keeps data
/// forever). A retention policy is never created: its duration is the
/// operator's decision.
///
/// # Errors
/// [`AdminError`] when the server cannot be reached in time.
pub async fn v1_ensure_database(
    ic: &InfluxConfig,
    url: &str,
    db: &str,
    timeout: Duration,
) -> Result<BucketInit, AdminError> {
    let shown = v1_query(ic, "SHOW DATABASES", url, "SHOW DATABASES", timeout).await?;
    if let Ok(v) = &shown {
        let exists = v["series"][0]["values"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r[0].as_str() == Some(db)));
        if exists {
            return Ok(BucketInit::Exists);
        }
    }
    let q = format!("CREATE DATABASE {}", quote_ident(db));
    match v1_query(ic, "CREATE DATABASE", url, &q, timeout).await? {
        Ok(_) => Ok(BucketInit::Created),
        Err((status, m)) => Ok(BucketInit::Refused(format!("HTTP {status}: {m}"))),
    }
}

/// An InfluxQL identifier in double quotes.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
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

    #[test]
    fn v1_destinations_and_identifiers() {
        let mut ic = InfluxConfig::v1("http://influx.example:8086", "market");
        ic.retention_policy = Some("hourly".into());
        ic.routes.insert(
            "OKX".into(),
            super::super::Destination {
                bucket: "okx".into(),
                org: None,
                url: None,
            },
        );
        let got: Vec<_> = configured_databases(&ic).into_iter().collect();
        let u = "http://influx.example:8086".to_string();
        assert_eq!(
            got,
            vec![
                (u.clone(), "market".to_string(), Some("hourly".to_string())),
                (u, "okx".to_string(), None),
            ]
        );
        assert_eq!(quote_ident(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[tokio::test]
    async fn an_invalid_url_is_an_error_not_a_panic() {
        let ic = InfluxConfig::new("not a url", "acme", "market");
        let e = health(&ic, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(e, AdminError::Url(_)), "{e}");
    }
}
