//! The daemon: one log, one drainer per configured sink, the HTTP ingest
//! server, and the status they share.
//!
//! Startup, in order: open the log (recovery, `wal/recovery.rs`), build the
//! configured sinks, start one drainer per sink, bind the ingest port, serve.
//! Shutdown (the future passed to [`run`] resolves): stop accepting, let
//! in-flight requests finish their appends, tell drainers to stop (each
//! finishes the delivery in progress; waiting is bounded by
//! `drain.shutdown_grace_ms`), flush the log, return. The log keeps whatever
//! was not delivered.

pub mod metrics;
pub mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::drain::drainer::{self, DrainerSettings, SinkHealth};
use crate::drain::Sink;
use crate::ingest::error::IngestError;
use crate::record::Record;
use crate::wal::{AppendOutcome, Wal, WalError};
use metrics::Metrics;

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The log could not be opened.
    #[error("cannot open the write-ahead log: {0}")]
    Wal(#[from] WalError),
    /// The ingest address could not be bound (in use, or not allowed).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A sink could not be set up (bad configuration, failed schema setup).
    #[error("sink {sink}: {message}")]
    Sink { sink: &'static str, message: String },
    /// The HTTP server failed.
    #[error("ingest server failed: {0}")]
    Server(String),
}

/// The relay as a library: the log plus the state that status and metrics show.
pub struct Relay {
    config: Config,
    wal: Wal,
    metrics: Arc<Metrics>,
    sinks: Vec<Arc<SinkHealth>>,
    subscriptions: Vec<Arc<crate::ingest::grpc::SubscriptionHealth>>,
}

impl Relay {
    /// Opens the log for the sinks the configuration enables.
    ///
    /// # Errors
    /// [`RelayError::Wal`] if the log cannot be opened.
    pub fn open(config: Config) -> Result<Relay, RelayError> {
        let names = config.sink_names();
        let wal = Wal::open(config.wal.clone().with_sinks(names.iter().copied()))?;
        if names.is_empty() {
            tracing::warn!("no sink is configured: records are kept in the log only");
        }
        let sinks = names.iter().map(|n| Arc::new(SinkHealth::new(n))).collect();
        let subscriptions = match &config.grpc {
            Some(g) => crate::ingest::grpc::plan(g)
                .into_iter()
                .map(|s| Arc::new(crate::ingest::grpc::SubscriptionHealth::new(s)))
                .collect(),
            None => Vec::new(),
        };
        Ok(Relay {
            config,
            wal,
            metrics: Arc::new(Metrics::default()),
            sinks,
            subscriptions,
        })
    }

    /// The configuration the relay runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The write-ahead log.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The metric registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Validates and durably appends typed records (the in-process API for
    /// collectors written in Rust). Blocks until durable.
    ///
    /// # Errors
    /// [`IngestError::BadRecord`] naming the record index and field (nothing is
    /// appended), [`IngestError::Full`] when the log is full under `block`.
    pub fn append(&self, mut records: Vec<Record>) -> Result<AppendOutcome, IngestError> {
        let now = crate::record::now_ns();
        for (i, r) in records.iter().enumerate() {
            r.validate_at(now).map_err(|e| IngestError::BadRecord {
                line: i + 1,
                field: e.field().to_string(),
                message: e.to_string(),
            })?;
        }
        prepare_typed(&mut records);
        self.append_prepared(&records)
    }

    fn append_prepared(&self, records: &[Record]) -> Result<AppendOutcome, IngestError> {
        let out = self.wal.append(records).map_err(|e| match e {
            WalError::Full { .. } => IngestError::Full {
                retry_after: Duration::from_secs(1),
            },
            WalError::TooLarge { .. } => IngestError::TooLarge {
                limit: self.config.wal.max_bytes as usize,
            },
            e @ WalError::Failed { .. } => IngestError::Unavailable {
                reason: e.to_string(),
                retry_after: Duration::from_secs(30),
            },
            e @ WalError::DiskFull { .. } => IngestError::Unavailable {
                reason: e.to_string(),
                retry_after: Duration::from_secs(5),
            },
            other => IngestError::Wal(other.to_string()),
        })?;
        let mut per_kind = std::collections::BTreeMap::new();
        for r in records {
            *per_kind.entry(r.kind().as_str()).or_insert(0u64) += 1;
        }
        for (kind, n) in per_kind {
            self.metrics
                .add("walrelay_appended_records_total", &[("kind", kind)], n);
        }
        Ok(out)
    }

    /// Appends already-validated records from an async context.
    /// `typed_origin`: the records arrived typed (JSON, gRPC, in-process), so
    /// the Influx identity-timestamp rule applies; line-protocol points keep
    /// the writer's timestamps.
    pub(crate) async fn append_async(
        self: &Arc<Self>,
        mut records: Vec<Record>,
        typed_origin: bool,
    ) -> Result<(), IngestError> {
        if typed_origin {
            prepare_typed(&mut records);
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.append_prepared(&records))
            .await
            .map_err(|e| IngestError::Wal(e.to_string()))??;
        Ok(())
    }

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
            "walrelay_ingest_requests_total",
            &[("endpoint", endpoint), ("status", &status.to_string())],
            1,
        );
    }

    /// Why the log refuses appends right now, if it does (failed: see
    /// `wal/durability.rs`; disk nearly full: `wal/disk.rs`); `/ready`
    /// answers 503 with it.
    pub fn wal_unavailable(&self) -> Option<String> {
        self.wal.refusing()
    }

    fn health(&self, name: &str) -> Arc<SinkHealth> {
        self.sinks
            .iter()
            .find(|h| h.name == name)
            .cloned()
            .unwrap_or_else(|| Arc::new(SinkHealth::new("unknown")))
    }
}

/// Decisions taken before typed records enter the log (see `docs/INFLUX.md`).
fn prepare_typed(records: &mut [Record]) {
    crate::db::influx::assign_identity_timestamps(records);
}

/// Runs the relay until `shutdown` resolves.
///
/// # Errors
/// [`RelayError`] if the log cannot be opened, a sink cannot be set up, or
/// the ingest port cannot be bound.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    let addr = config.ingest.listen.clone();
    let listener = std::net::TcpListener::bind(&addr).map_err(|source| RelayError::Bind {
        addr: addr.clone(),
        source,
    })?;
    serve(config, listener, shutdown).await
}

/// Like [`run`], on an already bound listener (tests bind port 0).
///
/// # Errors
/// As [`run`].
pub async fn serve(
    config: Config,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    let relay = Arc::new(Relay::open(config)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut drainers = tokio::task::JoinSet::new();
    spawn_sinks(&relay, &stop_rx, &mut drainers).await?;
    let mut pullers = tokio::task::JoinSet::new();
    if let Some(g) = &relay.config.grpc {
        let rules = g.producer_rules();
        for h in &relay.subscriptions {
            pullers.spawn(crate::ingest::grpc::subscription::run(
                relay.clone(),
                h.clone(),
                rules.clone(),
                g.clone(),
                stop_rx.clone(),
            ));
        }
        tracing::info!(
            subscriptions = relay.subscriptions.len(),
            "grpc subscriptions started"
        );
    }

    let addr = relay.config.ingest.listen.clone();
    listener
        .set_nonblocking(true)
        .map_err(|source| RelayError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| RelayError::Bind {
        addr: addr.clone(),
        source,
    })?;
    tracing::info!(listen = %local, sinks = ?relay.config.sink_names(), "relay ready");
    let server = axum::Server::from_tcp(listener)
        .map_err(|e| RelayError::Server(e.to_string()))?
        .serve(crate::ingest::http::router(relay.clone()).into_make_service())
        .with_graceful_shutdown(shutdown);
    let served = server.await;
    tracing::info!("ingest stopped; letting drainers finish their current batch");
    let _ = stop_tx.send(true);
    // Subscriptions finish the append in progress, then stop; what they had
    // not appended was never acknowledged.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while pullers.join_next().await.is_some() {}
    })
    .await;
    pullers.abort_all();
    let grace = Duration::from_millis(relay.config.drain.shutdown_grace_ms);
    if tokio::time::timeout(grace, async {
        while drainers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "drainers did not finish in time; the log keeps their batches"
        );
        drainers.abort_all();
    }
    relay.wal.flush()?;
    tracing::info!(
        last_seq = relay.wal.stats().last_seq,
        "log flushed; relay stopped"
    );
    served.map_err(|e| RelayError::Server(e.to_string()))
}

fn spawn_drainer<S: Sink + 'static>(
    relay: &Arc<Relay>,
    sink: S,
    batch_records: usize,
    stop: &watch::Receiver<bool>,
    set: &mut tokio::task::JoinSet<()>,
) {
    let settings = DrainerSettings {
        batch_records,
        retry: relay.config.drain.retry_policy(),
    };
    let health = relay.health(sink.name());
    set.spawn(drainer::run(
        relay.wal.clone(),
        sink,
        settings,
        health,
        relay.metrics.clone(),
        stop.clone(),
    ));
}

/// Builds and starts a drainer for every configured sink.
async fn spawn_sinks(
    relay: &Arc<Relay>,
    stop: &watch::Receiver<bool>,
    set: &mut tokio::task::JoinSet<()>,
) -> Result<(), RelayError> {
    let cfg = &relay.config;
    if let Some(ic) = &cfg.influx {
        let sink = crate::db::influx::InfluxSink::new(ic.clone(), relay.wal.dead_letters())
            .map_err(|message| RelayError::Sink {
                sink: "influx",
                message,
            })?;
        tracing::info!(url = %ic.url, org = %ic.org, bucket = %ic.bucket, routes = ic.routes.len(), "influx sink configured");
        spawn_drainer(relay, sink, cfg.drain.batch_records, stop, set);
    }
    if let Some(tc) = &cfg.timescale {
        let sink = crate::db::timescale::TimescaleSink::new(
            tc.clone(),
            relay.wal.meta(),
            relay.wal.dead_letters(),
        )
        .map_err(|e| RelayError::Sink {
            sink: "timescale",
            message: e.to_string(),
        })?;
        tracing::info!(schema = %tc.schema, "timescale sink configured");
        spawn_drainer(relay, sink, cfg.drain.batch_records, stop, set);
    }
    Ok(())
}
