//! The relay's own HTTP endpoints, beside the status they serve:
//!
//! - `GET /health`: InfluxDB's health shape ([`Status::influx_health`](super::status::Status::influx_health));
//! - `GET /ready`: InfluxDB's shape with walrelay's meaning (the log takes
//!   writes; sinks are listed, not waited for);
//! - `GET /status`: the [`Status`](super::status::Status) document (`walrelay status` decodes it);
//! - `GET /metrics`: the Prometheus text of `crate::metrics`.
//!
//! Their data (sink health, the log's state, metrics) belongs to the relay,
//! so they live here and not in `ingest/http.rs`; [`router`] is merged with
//! the ingest router into one server. None needs the ingest token, as in
//! InfluxDB.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::Relay;
use crate::ingest::http::{with_influx_headers, COMMIT, VERSION};

/// The relay's endpoints, to merge with the ingest router.
pub(crate) fn router(relay: Arc<Relay>) -> Router {
    // `/ready` reports when the server started serving: now, since the log
    // is open and recovered before the router is built.
    let started = SystemTime::now();
    Router::new()
        .route("/health", get(health))
        .route(
            "/ready",
            get(move |State(relay): State<Arc<Relay>>| ready(relay, started)),
        )
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route(
            "/admin/rewind",
            axum::routing::post(super::rewind::start).get(super::rewind::list),
        )
        .with_state(relay)
}

/// `GET /health`: InfluxDB's health shape; see [`Status::influx_health`].
async fn health(State(relay): State<Arc<Relay>>) -> Response {
    let h = relay.status().influx_health(
        relay.config().wal.when_full == crate::wal::WhenFull::Block,
        VERSION,
        COMMIT,
    );
    let code = if h.status == "pass" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    with_influx_headers((code, Json(h)).into_response())
}

/// `GET /ready`: InfluxDB's shape (`status: "ready"`, `started` RFC 3339,
/// `up` as a Go duration) with walrelay's meaning: the log is open and
/// recovered and writes are accepted; sinks are not waited for (a relay
/// buffers through sink outages), `unhealthy_sinks` lists those that are not
/// healthy.
async fn ready(relay: Arc<Relay>, started: SystemTime) -> Response {
    let status = relay.status();
    let unhealthy: Vec<_> = status
        .sinks
        .iter()
        .filter(|s| s.health.state != crate::drain::SinkState::Healthy)
        .map(|s| s.name.clone())
        .collect();
    let up = started.elapsed().unwrap_or_default();
    let mut body = serde_json::json!({
        "status": "ready",
        "started": rfc3339(started),
        "up": go_duration(up),
        "ready": true,
        "unhealthy_sinks": unhealthy,
    });
    // A log that refuses appends (failed, disk full) makes the relay unready.
    let code = if let Some(reason) = relay.wal_unavailable() {
        body["status"] = "unready".into();
        body["ready"] = false.into();
        body["reason"] = reason.into();
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    with_influx_headers((code, Json(body)).into_response())
}

/// `t` as RFC 3339 in UTC with nanoseconds, e.g. `2026-11-29T12:50:01.5Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if d.subsec_nanos() > 0 {
        let frac = format!("{:09}", d.subsec_nanos());
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// `d` as Go prints a duration of a second or more (`1h2m3.5s`); shorter
/// ones in seconds too (`0.25s`), which Go's parser also reads.
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&s.to_string());
    if d.subsec_nanos() > 0 {
        let frac = format!("{:09}", d.subsec_nanos());
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('s');
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_times_are_rfc3339_and_go_durations() {
        let t = |s: u64, n: u32| UNIX_EPOCH + Duration::new(s, n);
        assert_eq!(rfc3339(t(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(t(1_764_420_601, 500_000_000)),
            "2025-11-29T12:50:01.5Z"
        );
        assert_eq!(
            rfc3339(t(4_102_444_799, 1)),
            "2099-12-31T23:59:59.000000001Z"
        );
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_millis(250)), "0.25s");
        assert_eq!(go_duration(Duration::from_secs(59)), "59s");
        assert_eq!(
            go_duration(Duration::new(885, 911_966_424)),
            "14m45.911966424s"
        );
        assert_eq!(go_duration(Duration::from_secs(3600 + 2)), "1h0m2s");
    }
}
