//! `POST /admin/rewind?sink=NAME&since=TIME[&until=TIME]` on a running relay:
//! the sink delivers the retained records of the window again, in a task
//! beside its normal drainer (which goes on; no cursor moves), with the
//! rules of `drain/rewind.rs`. `GET /admin/rewind` and `/status` (`rewinds`)
//! show progress; `walrelay_rewind_records{sink}` counts what it delivered.
//!
//! Authenticated with the ingest token (`Authorization: Token …` or
//! `Bearer …`); without `ingest.token` configured the endpoint refuses
//! (403): re-delivery on demand is an operator's action, not a writer's.
//! One rewind per sink at a time (409 while one runs).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::Relay;
use crate::drain::rewind::{parse_time, run, RewindReport, RewindRequest};

/// Rewinds started on this relay, by sink (the last one of each).
pub(crate) type Rewinds = Arc<Mutex<BTreeMap<String, RewindReport>>>;

#[derive(Debug, Deserialize)]
pub(crate) struct Params {
    sink: String,
    since: String,
    until: Option<String>,
}

fn refuse(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Constant-time check of the presented token against `ingest.token`.
fn authorized(relay: &Relay, headers: &HeaderMap) -> Result<(), Response> {
    let Some(expected) = relay.config().ingest.token.as_ref() else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "admin endpoints need ingest.token to be set",
        ));
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Token ")
                .or_else(|| v.strip_prefix("Bearer "))
        })
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), expected.expose().as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    if diff == 0 {
        Ok(())
    } else {
        Err(refuse(StatusCode::UNAUTHORIZED, "missing or wrong token"))
    }
}

/// `GET /admin/rewind`: the rewinds of this relay and their progress.
pub(crate) async fn list(State(relay): State<Arc<Relay>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&relay, &headers) {
        return r;
    }
    Json(relay.rewinds()).into_response()
}

/// `POST /admin/rewind`: starts a rewind (202), see the module doc.
pub(crate) async fn start(
    State(relay): State<Arc<Relay>>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    if let Err(r) = authorized(&relay, &headers) {
        return r;
    }
    if !relay.config().wal.retain.on() {
        return refuse(
            StatusCode::CONFLICT,
            "retention is off ([wal] retain): nothing is kept to rewind",
        );
    }
    let now = crate::record::now_ns();
    let since = match parse_time(&p.since, now) {
        Ok(t) => t,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("since {:?}: {e}", p.since)),
    };
    let until = match p.until.as_deref().map(|u| parse_time(u, now)).transpose() {
        Ok(t) => t.unwrap_or(now),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("until: {e}")),
    };
    let req = RewindRequest {
        sink: p.sink.clone(),
        since_ns: since,
        until_ns: until,
        only: None,
    };
    {
        let mut map = relay.rewinds.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&p.sink)
            .is_some_and(|r| !r.done && r.error.is_none())
        {
            return refuse(
                StatusCode::CONFLICT,
                format!("a rewind of {} is running", p.sink),
            );
        }
        map.insert(p.sink.clone(), RewindReport::default());
    }
    let spawned = match (
        p.sink.as_str(),
        &relay.config().influx,
        &relay.config().timescale,
    ) {
        ("influx", Some(ic), _) => {
            crate::db::influx::InfluxSink::new(ic.clone(), relay.wal().dead_letters())
                .map(|s| spawn(relay.clone(), s, req))
                .map_err(|e| e.to_string())
        }
        ("timescale", _, Some(tc)) => crate::db::timescale::TimescaleSink::new(
            tc.clone(),
            relay.wal().meta(),
            relay.wal().dead_letters(),
        )
        .map(|s| spawn(relay.clone(), s, req))
        .map_err(|e| e.to_string()),
        (other, _, _) => Err(format!(
            "no sink {other:?} is configured (configured: {})",
            relay.config().sink_names().join(", ")
        )),
    };
    match spawned {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "sink": p.sink, "since_ns": since, "until_ns": until })),
        )
            .into_response(),
        Err(e) => {
            relay
                .rewinds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&p.sink);
            refuse(StatusCode::BAD_REQUEST, e)
        }
    }
}

fn spawn<S: crate::drain::Sink + 'static>(relay: Arc<Relay>, mut sink: S, req: RewindRequest) {
    tokio::spawn(async move {
        let name = req.sink.clone();
        let batch = relay.config().drain.batch_records;
        tracing::info!(sink = %name, since_ns = req.since_ns, until_ns = req.until_ns, "rewind started");
        let rewinds = relay.rewinds.clone();
        let wal = relay.wal().clone();
        let mut on_batch = |r: &RewindReport| {
            rewinds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), r.clone());
        };
        let pipeline = relay.config().drain.pipeline;
        let result = run(&mut sink, &wal, &req, batch, pipeline, &mut on_batch).await;
        let mut map = relay.rewinds.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(r) => {
                tracing::info!(sink = %name, records = r.records, frames = r.frames, "rewind finished");
                map.insert(name, r);
            }
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "rewind failed");
                let entry = map.entry(name).or_default();
                entry.error = Some(e.to_string());
            }
        }
    });
}
