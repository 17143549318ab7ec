//! The health of a sink as the drainer sees it: state, last error,
//! consecutive failures, delivered records and drain rate.
//!
//! The drainer writes it ([`SinkHealth::ok`], [`SinkHealth::failed`], after
//! each delivery attempt); the relay's `/status`, `/ready`, `/health` and
//! `/metrics` read it through [`SinkHealth::snapshot`]. It lives beside the
//! drainer, not in it, so that readers need nothing of the drainer loop.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::ErrorClass;

/// Health of a sink as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// The last delivery succeeded (or nothing was due yet).
    Healthy,
    /// Transient failures: retrying with backoff.
    Retrying,
    /// Configuration failure (auth, permissions, missing bucket/database):
    /// an operator must act; retrying slowly, nothing dead-lettered.
    Unhealthy,
}

/// Shared, observable state of one drainer.
#[derive(Debug)]
pub struct SinkHealth {
    pub name: &'static str,
    inner: Mutex<HealthInner>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthSnapshot {
    pub state: SinkState,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub delivered_records: u64,
    /// Records/s confirmed over the last deliveries (exponentially smoothed).
    pub drain_rate: f64,
    #[serde(skip)]
    pub since: Option<SystemTime>,
}

#[derive(Debug)]
struct HealthInner {
    snap: HealthSnapshot,
    last_ok: Option<Instant>,
}

impl SinkHealth {
    pub fn new(name: &'static str) -> Self {
        SinkHealth {
            name,
            inner: Mutex::new(HealthInner {
                snap: HealthSnapshot {
                    state: SinkState::Healthy,
                    last_error: None,
                    consecutive_failures: 0,
                    delivered_records: 0,
                    drain_rate: 0.0,
                    since: None,
                },
                last_ok: None,
            }),
        }
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snap
            .clone()
    }

    pub(super) fn ok(&self, records: usize, took: Duration) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.snap.state != SinkState::Healthy {
            tracing::info!(
                sink = self.name,
                after_failures = g.snap.consecutive_failures,
                "sink healthy again"
            );
        }
        let rate = records as f64 / took.as_secs_f64().max(1e-6);
        g.snap.drain_rate = if g.snap.drain_rate == 0.0 {
            rate
        } else {
            0.8 * g.snap.drain_rate + 0.2 * rate
        };
        g.snap.state = SinkState::Healthy;
        g.snap.consecutive_failures = 0;
        g.snap.delivered_records += records as u64;
        g.last_ok = Some(Instant::now());
    }

    pub(super) fn failed(&self, class: ErrorClass, message: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let state = if class == ErrorClass::Config {
            SinkState::Unhealthy
        } else {
            SinkState::Retrying
        };
        if g.snap.state != state {
            tracing::warn!(sink = self.name, state = ?state, error = message, "sink state changed");
            g.snap.since = Some(SystemTime::now());
        }
        g.snap.state = state;
        g.snap.last_error = Some(message.to_string());
        g.snap.consecutive_failures += 1;
    }
}
