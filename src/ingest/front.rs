//! [`Ingest`]: the front door of everything that accepts records — what the
//! HTTP endpoints and the gRPC subscriptions need of the process, and nothing
//! more: the `[ingest]` settings, the gate, the memory budget, the log (for
//! dead letters) and the metric registry.
//!
//! The relay builds one and hands it to the ingest paths, so that ingest
//! never reaches up into the relay (`tests/layering.rs`). Invariant: every
//! append goes through [`Ingest::admit`], which times it, counts it, and
//! remembers whether the log last refused as full (`/health` reads that).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget::Budget;
use super::config::IngestConfig;
use super::error::IngestError;
use super::gate::{Gate, Origin};
use crate::metrics::{self, Metrics};
use crate::record::Record;
use crate::wal::{AppendOutcome, Wal, WalError};

/// What the ingest paths share: settings, gate, budget, log and metrics.
pub struct Ingest {
    config: IngestConfig,
    wal: Wal,
    gate: Gate,
    budget: Budget,
    metrics: Arc<Metrics>,
    /// The last append was refused as full (`/health` fails meanwhile).
    refusing_full: AtomicBool,
}

impl Ingest {
    /// The ingest side of an open log: a gate under `config.limits` (its
    /// identity window rebuilt from the log) and the memory budget.
    ///
    /// # Errors
    /// [`WalError`] if the identity window cannot be read from the log.
    pub fn new(config: IngestConfig, wal: Wal, metrics: Arc<Metrics>) -> Result<Self, WalError> {
        let gate = Gate::new(
            wal.clone(),
            config.limits.clone(),
            config.identity_window_ms,
        )?;
        let budget = Budget::new(
            config.memory_budget_bytes,
            Duration::from_millis(config.budget_wait_ms),
        );
        Ok(Ingest {
            config,
            wal,
            gate,
            budget,
            metrics,
            refusing_full: AtomicBool::new(false),
        })
    }

    /// The `[ingest]` settings.
    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    /// The write-ahead log (dead letters of the gRPC subscriptions).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The ingest gate every append goes through.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The ingest memory budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The metric registry (shared with the relay and the drainers).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether the last append was refused because the log is full.
    pub fn refusing_full(&self) -> bool {
        self.refusing_full.load(Ordering::Relaxed)
    }

    /// Appends through the gate, blocking until durable; times and counts
    /// what was acknowledged. `lines[i]` names record `i` in refusals.
    ///
    /// # Errors
    /// As [`Gate::admit`]: nothing is appended on any error.
    pub(crate) fn admit(
        &self,
        records: Vec<Record>,
        lines: Option<&[usize]>,
        origin: Origin,
    ) -> Result<AppendOutcome, IngestError> {
        let mut per_kind = BTreeMap::new();
        for r in &records {
            *per_kind.entry(r.kind().as_str()).or_insert(0u64) += 1;
        }
        let started = Instant::now();
        let result = self.gate.admit(records, lines, origin);
        match &result {
            Ok(_) => self.refusing_full.store(false, Ordering::Relaxed),
            Err(IngestError::Full { .. }) => self.refusing_full.store(true, Ordering::Relaxed),
            Err(_) => {}
        }
        let out = result?;
        // Every acknowledged append (HTTP, gRPC, in-process) is timed here:
        // validation, encoding and the wait for durability, as a writer sees it.
        self.metrics
            .observe(metrics::APPEND_ACK_SECONDS, &[], started.elapsed());
        for (kind, n) in per_kind {
            self.metrics
                .add(metrics::APPENDED_RECORDS, &[("kind", kind)], n);
        }
        Ok(out)
    }

    /// Like [`Ingest::admit`] from an async context (the gate runs on a
    /// blocking thread).
    ///
    /// # Errors
    /// As [`Ingest::admit`].
    pub(crate) async fn append_async(
        self: &Arc<Self>,
        records: Vec<Record>,
        lines: Option<Vec<usize>>,
        origin: Origin,
    ) -> Result<(), IngestError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.admit(records, lines.as_deref(), origin)).await??;
        Ok(())
    }

    /// Counts one ingest request by endpoint and HTTP status.
    pub(crate) fn count_request(
        &self,
        endpoint: &'static str,
        result: &Result<axum::http::StatusCode, IngestError>,
    ) {
        let status = match result {
            Ok(s) => s.as_u16(),
            Err(e) => e.status(),
        };
        self.metrics.add(
            metrics::INGEST_REQUESTS,
            &[("endpoint", endpoint), ("status", &status.to_string())],
            1,
        );
    }
}
