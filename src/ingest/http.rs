//! The HTTP ingest server: the InfluxDB v2 and 1.x write APIs, JSON-lines
//! records and InfluxDB-shaped `/ping`. The relay merges its own endpoints
//! into this router (`/health`, `/ready`, `/status`, `/metrics`:
//! `relay/admin.rs`, beside the status they serve).
//!
//! Invariant: a write request is answered `204` only after every record of it
//! is durable in the log; any refusal (bad line, bad record, auth, size, full
//! log) appends nothing from the request.
//!
//! One write path: `/api/v2/write`, `/write` (1.x) and `/v1/records` differ
//! only in how they read their query parameters and credentials and in the
//! shape of their error body; each then calls [`write`], which applies the
//! body limits, the memory budget and the ingest gate. Error bodies:
//! v2 and `/v1/records` `{"code": "...", "message": "..."}`, 1.x
//! `{"error": "..."}`; the status and `Retry-After` are the same.
//!
//! Credentials (when `ingest.token` is set), any of: `Authorization: Token
//! <token>` or `Bearer <token>`, `Authorization: Basic` with the token as the
//! password, and on `/write` the `p` query parameter (1.x `u`/`p`). The user
//! name is not checked: the relay has one ingest token, not users.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;

use super::budget::Held;
use super::error::IngestError;
use super::gate::Origin;
use super::line_protocol::{self, Precision};
use super::typed;
use super::Ingest;
use crate::record::{now_ns, Limits, Record};

/// The version walrelay reports where InfluxDB reports its own
/// (`X-Influxdb-Version`, `/health`, `/ping?verbose=true`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the binary was built from (`unknown` outside a git checkout).
pub const COMMIT: &str = match option_env!("WALRELAY_COMMIT") {
    Some(c) => c,
    None => "unknown",
};
/// `X-Influxdb-Build`: InfluxDB answers `OSS`, `ENT` or `cloud2`; clients
/// only show it, so the relay names itself.
pub const BUILD: &str = "walrelay";

/// The shape of an error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorShape {
    /// InfluxDB v2: `{"code": "...", "message": "..."}`.
    V2,
    /// InfluxDB 1.x: `{"error": "..."}`.
    V1,
}

fn error_response(e: &IngestError, shape: ErrorShape) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match shape {
        ErrorShape::V2 => serde_json::json!({ "code": e.code(), "message": e.to_string() }),
        ErrorShape::V1 => serde_json::json!({ "error": e.to_string() }),
    };
    let mut resp = (status, Json(body)).into_response();
    if let Some(retry_after) = e.retry_after() {
        let secs = retry_after.as_secs().max(1).to_string();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_str(&secs).unwrap());
    }
    resp
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        error_response(&self, ErrorShape::V2)
    }
}

/// A refusal of the 1.x write API: the same error in 1.x's body shape.
struct V1Error(IngestError);

impl IntoResponse for V1Error {
    fn into_response(self) -> Response {
        with_influx_headers(error_response(&self.0, ErrorShape::V1))
    }
}

/// Adds `X-Influxdb-Version` and `X-Influxdb-Build`, which InfluxDB sets on
/// its responses and 1.x clients read.
pub(crate) fn with_influx_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert("x-influxdb-version", HeaderValue::from_static(VERSION));
    h.insert("x-influxdb-build", HeaderValue::from_static(BUILD));
    resp
}

/// The router of the ingest server.
pub fn router(relay: Arc<Ingest>) -> Router {
    // Bodies are read by `read_body` under `max_body_bytes` (compressed and
    // decompressed), the body deadline and the memory budget.
    Router::new()
        .route("/api/v2/write", post(write_lp))
        .route("/write", post(write_v1))
        .route("/v1/records", post(write_json))
        // `get` also answers HEAD (without the body).
        .route("/ping", get(ping))
        .with_state(relay)
}

#[derive(Deserialize)]
struct WriteParams {
    #[allow(dead_code)]
    org: Option<String>,
    #[allow(dead_code)]
    bucket: Option<String>,
    precision: Option<String>,
}

/// The 1.x write API's query parameters.
#[derive(Deserialize)]
struct V1WriteParams {
    /// Required, as in InfluxDB 1.x; plays `bucket`'s role: accepted, the
    /// routing table chooses the destination.
    db: Option<String>,
    /// Accepted and not used: retention is the destination's business.
    #[allow(dead_code)]
    rp: Option<String>,
    precision: Option<String>,
    /// `any`, `one`, `quorum` or `all`: accepted and not used (one relay, one
    /// log; its durability policy decides when a write is acknowledged).
    consistency: Option<String>,
    /// Not checked: the relay has one ingest token, not users.
    #[allow(dead_code)]
    u: Option<String>,
    /// The ingest token.
    p: Option<String>,
}

/// The secret a request presents: `Authorization: Token|Bearer <secret>`, or
/// `Authorization: Basic` whose password is the secret. `None` without a
/// usable `Authorization` header.
fn presented(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = v
        .strip_prefix("Token ")
        .or_else(|| v.strip_prefix("Bearer "))
    {
        return Some(t.to_string());
    }
    let encoded = v.strip_prefix("Basic ")?;
    let decoded = base64_decode(encoded.trim())?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_user, password) = decoded.split_once(':')?;
    Some(password.to_string())
}

/// Standard base64 (RFC 4648, with or without padding); `None` if invalid.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine;
    const BASIC: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    BASIC.decode(s).ok()
}

/// Checks the presented secret against `ingest.token` (no token configured:
/// every request passes).
fn check_token(relay: &Ingest, given: Option<&str>) -> Result<(), IngestError> {
    let Some(expected) = relay.config().token.as_ref() else {
        return Ok(());
    };
    let given = given.unwrap_or("");
    // Constant-time comparison: the token must not leak through timing.
    let (a, b) = (given.as_bytes(), expected.expose().as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    if diff == 0 {
        Ok(())
    } else {
        Err(IngestError::Unauthorized)
    }
}

/// What kind of body a write endpoint takes.
#[derive(Clone, Copy)]
enum BodyKind {
    LineProtocol(Precision),
    JsonLines,
}

/// Reads the body under the size limit, the body deadline and the memory
/// budget (each chunk is budgeted before it is kept).
async fn read_body(
    relay: &Ingest,
    headers: &HeaderMap,
    body: Body,
    hold: &mut Held,
) -> Result<Vec<u8>, IngestError> {
    let mut body = body.into_data_stream();
    let limit = relay.config().max_body_bytes;
    let timeout_ms = relay.config().body_timeout_ms;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(IngestError::TooLarge { limit });
    }
    let mut buf = Vec::new();
    // Bytes of body the request holds budget for.
    let mut covered = 0usize;
    if let Some(n) = declared {
        hold.take(n as u64).await?;
        covered = n;
        buf.reserve_exact(n);
    }
    loop {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => return Err(IngestError::BodyTimeout { timeout_ms }),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(IngestError::BadLine {
                    line: 1,
                    message: format!("cannot read the request body: {e}"),
                })
            }
            Ok(Some(Ok(c))) => c,
        };
        if buf.len() + chunk.len() > limit {
            return Err(IngestError::TooLarge { limit });
        }
        if buf.len() + chunk.len() > covered {
            hold.take((buf.len() + chunk.len() - covered) as u64)
                .await?;
            covered = buf.len() + chunk.len();
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Inflates every gzip member of `body` (a concatenation such as
/// `cat a.gz b.gz` is one valid body); bytes after the last member that are
/// not a gzip member are an error. Output is budgeted as it grows and bounded
/// by `limit`, so a gzip bomb stops at the limit.
fn gunzip(body: &[u8], limit: usize, hold: &mut Held) -> Result<Vec<u8>, IngestError> {
    let mut out = Vec::new();
    let mut dec = flate2::read::MultiGzDecoder::new(body);
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = dec
            .read(&mut chunk)
            .map_err(|e| IngestError::BadGzip(e.to_string()))?;
        if n == 0 {
            break;
        }
        if out.len() + n > limit {
            return Err(IngestError::TooLarge { limit });
        }
        hold.take_blocking(n as u64)?;
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

/// The line of byte offset `at`.
fn line_at(raw: &[u8], at: usize) -> usize {
    1 + raw[..at].iter().filter(|&&b| b == b'\n').count()
}

/// Counts the records of a body and checks line lengths and the records
/// limit before anything is parsed, so an oversized request costs no parse.
/// Returns the number of record lines.
fn prescan(text: &str, kind: BodyKind, limits: &Limits) -> Result<usize, IngestError> {
    let mut n = 0usize;
    for (i, line) in text.split('\n').enumerate() {
        if line.len() > limits.max_line_bytes {
            return Err(IngestError::OverLimit {
                line: i + 1,
                what: "the line's length in bytes",
                value: line.len(),
                max: limits.max_line_bytes,
                limit: "ingest.limits.max_line_bytes",
            });
        }
        let t = line.trim();
        let counts = match kind {
            BodyKind::LineProtocol(_) => !t.is_empty() && !t.starts_with('#'),
            BodyKind::JsonLines => !t.is_empty(),
        };
        if counts {
            n += 1;
            if n > limits.max_records_per_request {
                return Err(IngestError::OverLimit {
                    line: i + 1,
                    what: "the number of records in the request",
                    value: n,
                    max: limits.max_records_per_request,
                    limit: "ingest.limits.max_records_per_request",
                });
            }
        }
    }
    Ok(n)
}

/// Everything after the body is read, on a blocking thread: inflate, check,
/// parse, then the gate. Nothing here runs on the async workers.
fn process(
    relay: &Ingest,
    body: Vec<u8>,
    gzip: bool,
    kind: BodyKind,
    mut hold: Held,
) -> Result<(), IngestError> {
    let limits = relay.gate().limits().clone();
    let raw = if gzip {
        let out = gunzip(&body, relay.config().max_body_bytes, &mut hold)?;
        drop(body);
        out
    } else {
        body
    };
    let text = String::from_utf8(raw).map_err(|e| {
        let bad_at = e.utf8_error().valid_up_to();
        IngestError::NotUtf8 {
            line: line_at(e.as_bytes(), bad_at),
        }
    })?;
    let n = prescan(&text, kind, &limits)?;
    // Parsed records, their encoded form and the frames built from it.
    hold.take_blocking(super::budget::records_estimate(text.len(), n))?;
    let now = now_ns();
    let (records, lines, origin) = match kind {
        BodyKind::LineProtocol(precision) => {
            // Each point becomes its record as soon as it is parsed: a typed
            // record is a tenth of a point's memory (no maps, strings
            // inline), and a body of points is never held at once.
            let mut records = Vec::with_capacity(n);
            let mut lines = Vec::with_capacity(n);
            line_protocol::parse_each(&text, precision, now, |line, p| {
                records.push(typed::classify(p, now));
                lines.push(line);
            })
            .map_err(|e| IngestError::BadLine {
                line: e.line,
                message: e.message,
            })?;
            drop(text);
            (records, lines, Origin::LineProtocol)
        }
        BodyKind::JsonLines => {
            let mut records = Vec::with_capacity(n);
            let mut lines = Vec::with_capacity(n);
            for (i, line) in text.split('\n').enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let r: Record = serde_json::from_str(line).map_err(|e| IngestError::BadLine {
                    line: i + 1,
                    message: e.to_string(),
                })?;
                records.push(r);
                lines.push(i + 1);
            }
            drop(text);
            (records, lines, Origin::Typed)
        }
    };
    if records.is_empty() {
        // As InfluxDB: a write without points is a client error.
        return Err(IngestError::BadLine {
            line: 1,
            message: match kind {
                BodyKind::LineProtocol(_) => "no points in the request body".into(),
                BodyKind::JsonLines => "no records in the request body".into(),
            },
        });
    }
    relay.admit(records, Some(&lines), origin)?;
    drop(hold);
    Ok(())
}

fn is_gzip(headers: &HeaderMap) -> Result<bool, IngestError> {
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
    {
        None => Ok(false),
        Some(v) if v == "gzip" => Ok(true),
        Some(v) if v == "identity" || v.is_empty() => Ok(false),
        Some(v) => Err(IngestError::BadParam {
            param: "Content-Encoding",
            message: format!("{v:?} is not supported (gzip or identity)"),
        }),
    }
}

/// One write request of any API, once its credentials are checked and its
/// parameters read: budgeted body, then [`process`] off the async workers.
async fn write(
    relay: &Arc<Ingest>,
    headers: &HeaderMap,
    body: Body,
    kind: BodyKind,
) -> Result<StatusCode, IngestError> {
    let gzip = is_gzip(headers)?;
    let mut hold = relay.budget().hold();
    let body = read_body(relay, headers, body, &mut hold).await?;
    let me = relay.clone();
    tokio::task::spawn_blocking(move || process(&me, body, gzip, kind, hold)).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn write_lp(
    State(relay): State<Arc<Ingest>>,
    Query(q): Query<WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, IngestError> {
    let result = async {
        check_token(&relay, presented(&headers).as_deref())?;
        let precision = match q.precision.as_deref() {
            None => Precision::Nanoseconds,
            Some(p) => Precision::parse(p).ok_or_else(|| IngestError::BadParam {
                param: "precision",
                message: format!("{p:?} is not one of ns, us, ms, s"),
            })?,
        };
        write(&relay, &headers, body, BodyKind::LineProtocol(precision)).await
    }
    .await;
    relay.count_request("/api/v2/write", &result);
    result
}

/// Reads the 1.x parameters: `db` required, `precision` in 1.x's names,
/// `consistency` one of InfluxDB's four levels.
fn v1_precision(q: &V1WriteParams) -> Result<Precision, IngestError> {
    if q.db.as_deref().is_none_or(str::is_empty) {
        return Err(IngestError::BadParam {
            param: "db",
            message: "database is required (it is accepted and not used: the routing table chooses the destination)".into(),
        });
    }
    if let Some(c) = q.consistency.as_deref() {
        if !matches!(c, "" | "any" | "one" | "quorum" | "all") {
            return Err(IngestError::BadParam {
                param: "consistency",
                message: format!("{c:?} is not one of any, one, quorum, all"),
            });
        }
    }
    match q.precision.as_deref() {
        None | Some("") => Ok(Precision::Nanoseconds),
        Some(p) => Precision::parse_v1(p).ok_or_else(|| IngestError::BadParam {
            param: "precision",
            message: format!("{p:?} is not one of n, ns, u, ms, s, m, h"),
        }),
    }
}

/// `POST /write`: InfluxDB 1.x's write API on the v2 path ([`write`]).
async fn write_v1(
    State(relay): State<Arc<Ingest>>,
    Query(q): Query<V1WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, V1Error> {
    let result = async {
        // As InfluxDB 1.x: the `p` parameter first, then the header.
        let secret = q.p.clone().or_else(|| presented(&headers));
        check_token(&relay, secret.as_deref())?;
        let precision = v1_precision(&q)?;
        write(&relay, &headers, body, BodyKind::LineProtocol(precision)).await
    }
    .await;
    relay.count_request("/write", &result);
    result
        .map(|s| with_influx_headers(s.into_response()))
        .map_err(V1Error)
}

async fn write_json(
    State(relay): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, IngestError> {
    let result = async {
        check_token(&relay, presented(&headers).as_deref())?;
        write(&relay, &headers, body, BodyKind::JsonLines).await
    }
    .await;
    relay.count_request("/v1/records", &result);
    result
}

#[derive(Deserialize)]
struct PingParams {
    verbose: Option<String>,
}

/// `GET|HEAD /ping`: 204 with the version headers; `verbose` (anything but
/// empty, `0` or `false`, as InfluxDB 1.x) answers 200 with a JSON body.
/// No token needed, as InfluxDB.
async fn ping(Query(q): Query<PingParams>) -> Response {
    let verbose = q
        .verbose
        .as_deref()
        .is_some_and(|v| !matches!(v, "" | "0" | "false"));
    let resp = if verbose {
        Json(serde_json::json!({ "version": VERSION, "build": BUILD, "commit": COMMIT }))
            .into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    with_influx_headers(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        db: Option<&str>,
        precision: Option<&str>,
        consistency: Option<&str>,
    ) -> V1WriteParams {
        V1WriteParams {
            db: db.map(str::to_string),
            rp: None,
            precision: precision.map(str::to_string),
            consistency: consistency.map(str::to_string),
            u: None,
            p: None,
        }
    }

    async fn body_json(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn error_bodies_have_each_apis_shape_and_the_same_status_and_retry_after() {
        let e = IngestError::Full {
            retry_after: Duration::from_secs(1),
        };
        let v2 = error_response(&e, ErrorShape::V2);
        let v1 = V1Error(IngestError::Full {
            retry_after: Duration::from_secs(1),
        })
        .into_response();
        assert_eq!(v2.status(), 503);
        assert_eq!(v1.status(), 503);
        assert_eq!(v2.headers()["retry-after"], "1");
        assert_eq!(v1.headers()["retry-after"], "1");
        assert_eq!(v1.headers()["x-influxdb-version"], VERSION);
        assert_eq!(v1.headers()["x-influxdb-build"], BUILD);
        assert_eq!(
            body_json(v2).await,
            serde_json::json!({"code": "unavailable", "message": e.to_string()})
        );
        assert_eq!(
            body_json(v1).await,
            serde_json::json!({"error": e.to_string()})
        );
        let bad = V1Error(IngestError::BadRecord {
            line: 3,
            field: "price".into(),
            message: "must be finite".into(),
        })
        .into_response();
        assert_eq!(bad.status(), 400);
        assert_eq!(
            body_json(bad).await,
            serde_json::json!({"error": "line 3: field `price`: must be finite"})
        );
    }

    #[test]
    fn v1_parameters_require_db_and_take_1x_precisions_and_consistency_levels() {
        for (p, want) in [
            (None, Precision::Nanoseconds),
            (Some(""), Precision::Nanoseconds),
            (Some("n"), Precision::Nanoseconds),
            (Some("ns"), Precision::Nanoseconds),
            (Some("u"), Precision::Microseconds),
            (Some("ms"), Precision::Milliseconds),
            (Some("s"), Precision::Seconds),
            (Some("m"), Precision::Minutes),
            (Some("h"), Precision::Hours),
        ] {
            assert_eq!(
                v1_precision(&params(Some("d"), p, None)).unwrap(),
                want,
                "{p:?}"
            );
        }
        for c in ["any", "one", "quorum", "all"] {
            assert!(
                v1_precision(&params(Some("d"), None, Some(c))).is_ok(),
                "{c}"
            );
        }
        let refused = |q: V1WriteParams, param: &str, says: &str| {
            let e = v1_precision(&q).unwrap_err();
            assert!(
                matches!(&e, IngestError::BadParam { param: p, .. } if *p == param),
                "{e}"
            );
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains(says), "{e}");
        };
        refused(params(None, None, None), "db", "database is required");
        refused(params(Some(""), None, None), "db", "database is required");
        refused(
            params(Some("d"), Some("us"), None),
            "precision",
            "n, ns, u, ms, s, m, h",
        );
        refused(params(Some("d"), Some("x"), None), "precision", "\"x\"");
        refused(
            params(Some("d"), None, Some("most")),
            "consistency",
            "\"most\"",
        );
    }

    #[test]
    fn credentials_come_from_token_bearer_or_basic_password() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            presented(&h)
        };
        assert_eq!(with("Token s3cret").as_deref(), Some("s3cret"));
        assert_eq!(with("Bearer s3cret").as_deref(), Some("s3cret"));
        // "writer:s3cret" and "writer:pa:ss" (a password may hold ':').
        assert_eq!(
            with("Basic d3JpdGVyOnMzY3JldA==").as_deref(),
            Some("s3cret")
        );
        assert_eq!(with("Basic d3JpdGVyOnBhOnNz").as_deref(), Some("pa:ss"));
        assert_eq!(with("Basic not*base64"), None);
        // No ':' in the decoded credentials ("writer").
        assert_eq!(with("Basic d3JpdGVy"), None);
        assert_eq!(with("Digest x"), None);
        assert_eq!(presented(&HeaderMap::new()), None);
    }

    #[test]
    fn base64_decodes_padded_and_unpadded_and_refuses_garbage() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("+/8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64_decode("Zm9vY"), None);
        assert_eq!(base64_decode("Zm9v!"), None);
    }
}
