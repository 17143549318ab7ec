//! The HTTP ingest server: InfluxDB v2 write API, JSON-lines records, health,
//! readiness, status and metrics.
//!
//! Invariant: a write request is answered `204` only after every record of it
//! is durable in the log; any refusal (bad line, bad record, auth, size, full
//! log) appends nothing from the request.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Query, RawBody, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::budget::Held;
use super::error::IngestError;
use super::gate::Origin;
use super::line_protocol::{self, Precision};
use super::typed;
use crate::record::{now_ns, Limits, Record};
use crate::relay::Relay;

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        let mut resp = (status, Json(body)).into_response();
        if let Some(retry_after) = self.retry_after() {
            let secs = retry_after.as_secs().max(1).to_string();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_str(&secs).unwrap());
        }
        resp
    }
}

/// The router of the ingest server.
pub fn router(relay: Arc<Relay>) -> Router {
    // Bodies are read by `read_body` under `max_body_bytes` (compressed and
    // decompressed), the body deadline and the memory budget.
    Router::new()
        .route("/api/v2/write", post(write_lp))
        .route("/v1/records", post(write_json))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
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

fn check_token(relay: &Relay, headers: &HeaderMap) -> Result<(), IngestError> {
    let Some(expected) = relay.config().ingest.token.as_ref() else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Token ")
                .or_else(|| v.strip_prefix("Bearer "))
        })
        .unwrap_or("");
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
    relay: &Relay,
    headers: &HeaderMap,
    mut body: Body,
    hold: &mut Held,
) -> Result<Vec<u8>, IngestError> {
    let limit = relay.config().ingest.max_body_bytes;
    let timeout_ms = relay.config().ingest.body_timeout_ms;
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
        let chunk = match tokio::time::timeout_at(deadline, body.data()).await {
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
    relay: &Relay,
    body: Vec<u8>,
    gzip: bool,
    kind: BodyKind,
    mut hold: Held,
) -> Result<(), IngestError> {
    let limits = relay.gate().limits().clone();
    let raw = if gzip {
        let out = gunzip(&body, relay.config().ingest.max_body_bytes, &mut hold)?;
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
            let points = line_protocol::parse_numbered(&text, precision, now).map_err(|e| {
                IngestError::BadLine {
                    line: e.line,
                    message: e.message,
                }
            })?;
            drop(text);
            let mut records = Vec::with_capacity(points.len());
            let mut lines = Vec::with_capacity(points.len());
            for (line, p) in points {
                records.push(typed::classify(p, now));
                lines.push(line);
            }
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

/// One write request: token, budgeted body, then [`process`] off the
/// async workers.
async fn write(
    relay: &Arc<Relay>,
    headers: &HeaderMap,
    body: Body,
    kind: BodyKind,
) -> Result<StatusCode, IngestError> {
    check_token(relay, headers)?;
    let gzip = is_gzip(headers)?;
    let mut hold = relay.budget().hold();
    let body = read_body(relay, headers, body, &mut hold).await?;
    let me = relay.clone();
    tokio::task::spawn_blocking(move || process(&me, body, gzip, kind, hold))
        .await
        .map_err(|e| IngestError::Wal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

async fn write_lp(
    State(relay): State<Arc<Relay>>,
    Query(q): Query<WriteParams>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<StatusCode, IngestError> {
    let precision = match q.precision.as_deref() {
        None => Ok(Precision::Nanoseconds),
        Some(p) => Precision::parse(p).ok_or_else(|| IngestError::BadParam {
            param: "precision",
            message: format!("{p:?} is not one of ns, us, ms, s"),
        }),
    };
    let result = match precision {
        Ok(p) => write(&relay, &headers, body, BodyKind::LineProtocol(p)).await,
        Err(e) => Err(e),
    };
    relay.count_request("/api/v2/write", &result);
    result
}

async fn write_json(
    State(relay): State<Arc<Relay>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<StatusCode, IngestError> {
    let result = write(&relay, &headers, body, BodyKind::JsonLines).await;
    relay.count_request("/v1/records", &result);
    result
}

async fn ready(State(relay): State<Arc<Relay>>) -> Response {
    let status = relay.status();
    let unhealthy: Vec<_> = status
        .sinks
        .iter()
        .filter(|s| s.health.state != crate::drain::drainer::SinkState::Healthy)
        .map(|s| s.name.clone())
        .collect();
    // A log that refuses appends (failed, disk full) makes the relay unready.
    if let Some(reason) = relay.wal_unavailable() {
        let body =
            serde_json::json!({ "ready": false, "reason": reason, "unhealthy_sinks": unhealthy });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(serde_json::json!({ "ready": true, "unhealthy_sinks": unhealthy })).into_response()
}

async fn status(State(relay): State<Arc<Relay>>) -> Response {
    Json(relay.status()).into_response()
}

async fn metrics(State(relay): State<Arc<Relay>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        relay.render_metrics(),
    )
        .into_response()
}
