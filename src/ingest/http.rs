//! The HTTP ingest server: InfluxDB v2 write API, JSON-lines records, health,
//! readiness, status and metrics.
//!
//! Invariant: a write request is answered `204` only after every record of it
//! is durable in the log; any refusal (bad line, bad record, auth, size, full
//! log) appends nothing from the request.

use std::io::Read;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::error::IngestError;
use super::line_protocol::{self, Precision};
use super::typed;
use crate::record::{now_ns, Record};
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
    // Compressed bodies are bounded too (a gzip body is smaller than what it
    // inflates to, so the decompressed limit is the tighter check).
    let limit = relay.config().ingest.max_body_bytes;
    Router::new()
        .route("/api/v2/write", post(write_lp))
        .route("/v1/records", post(write_json))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
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

/// Decompresses (if gzip) and checks size and UTF-8.
fn body_text(relay: &Relay, headers: &HeaderMap, body: Bytes) -> Result<String, IngestError> {
    let limit = relay.config().ingest.max_body_bytes;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("gzip"))
        .unwrap_or(false);
    let raw = if gzip {
        let mut out = Vec::new();
        // Read at most limit + 1 bytes: a gzip bomb stops here.
        flate2::read::GzDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| IngestError::BadGzip(e.to_string()))?;
        out
    } else {
        body.to_vec()
    };
    if raw.len() > limit {
        return Err(IngestError::TooLarge { limit });
    }
    String::from_utf8(raw).map_err(|e| {
        let bad_at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..bad_at]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        IngestError::NotUtf8 { line }
    })
}

/// The body, or the refusal in our error shape (axum's own is plain text).
fn limited(relay: &Relay, body: Result<Bytes, BytesRejection>) -> Result<Bytes, IngestError> {
    body.map_err(|e| match e.status().as_u16() {
        413 => IngestError::TooLarge {
            limit: relay.config().ingest.max_body_bytes,
        },
        _ => IngestError::BadLine {
            line: 1,
            message: format!("cannot read the request body: {e}"),
        },
    })
}

async fn write_lp(
    State(relay): State<Arc<Relay>>,
    Query(q): Query<WriteParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, IngestError> {
    let result = match limited(&relay, body) {
        Ok(body) => write_lp_inner(&relay, q, &headers, body).await,
        Err(e) => Err(e),
    };
    relay.count_request("/api/v2/write", &result);
    result
}

async fn write_lp_inner(
    relay: &Arc<Relay>,
    q: WriteParams,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<StatusCode, IngestError> {
    check_token(relay, headers)?;
    let precision = match q.precision.as_deref() {
        None => Precision::Nanoseconds,
        Some(p) => Precision::parse(p).ok_or_else(|| IngestError::BadParam {
            param: "precision",
            message: format!("{p:?} is not one of ns, us, ms, s"),
        })?,
    };
    let text = body_text(relay, headers, body)?;
    let now = now_ns();
    let points =
        line_protocol::parse_numbered(&text, precision, now).map_err(|e| IngestError::BadLine {
            line: e.line,
            message: e.message,
        })?;
    if points.is_empty() {
        // As InfluxDB: a write without points is a client error.
        return Err(IngestError::BadLine {
            line: 1,
            message: "no points in the request body".into(),
        });
    }
    let mut records = Vec::with_capacity(points.len());
    for (line, p) in points {
        let r = typed::classify(p, now);
        r.validate_at(now).map_err(|e| IngestError::BadRecord {
            line,
            field: e.field().to_string(),
            message: e.to_string(),
        })?;
        records.push(r);
    }
    relay.append_async(records, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn write_json(
    State(relay): State<Arc<Relay>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, IngestError> {
    let result = match limited(&relay, body) {
        Ok(body) => write_json_inner(&relay, &headers, body).await,
        Err(e) => Err(e),
    };
    relay.count_request("/v1/records", &result);
    result
}

async fn write_json_inner(
    relay: &Arc<Relay>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<StatusCode, IngestError> {
    check_token(relay, headers)?;
    let text = body_text(relay, headers, body)?;
    let now = now_ns();
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(line).map_err(|e| IngestError::BadLine {
            line: i + 1,
            message: e.to_string(),
        })?;
        r.validate_at(now).map_err(|e| IngestError::BadRecord {
            line: i + 1,
            field: e.field().to_string(),
            message: e.to_string(),
        })?;
        records.push(r);
    }
    if records.is_empty() {
        return Err(IngestError::BadLine {
            line: 1,
            message: "no records in the request body".into(),
        });
    }
    relay.append_async(records, true).await?;
    Ok(StatusCode::NO_CONTENT)
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
