//! The daemon: one log, one drainer per configured sink, the HTTP ingest
//! server, and the status they share.
//!
//! The relay builds the [`Ingest`] front door (gate, budget, metrics) that
//! the HTTP write endpoints and the gRPC subscriptions use, and serves the
//! ingest router merged with its own endpoints (`admin.rs`: `/health`,
//! `/ready`, `/status`, `/metrics`). Ingest never imports the relay.
//!
//! Startup, in order: open the log (recovery, `wal/recovery.rs`), build the
//! configured sinks, start one drainer per sink, bind the ingest port, serve.
//! Shutdown (the future passed to [`run`] resolves): stop accepting, let
//! in-flight requests finish their appends, tell subscriptions and drainers
//! to stop (each finishes the append or delivery in progress), all bounded
//! by one deadline `drain.shutdown_grace_ms` after the signal, whatever
//! clients do (stalled clients are dropped at the deadline); then flush the
//! log and return. The log keeps whatever was not delivered.

mod admin;
mod rewind;
pub mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::drain::drainer::{self, DrainerSettings};
use crate::drain::Sink;
use crate::drain::SinkHealth;
use crate::ingest::budget::Budget;
use crate::ingest::error::IngestError;
use crate::ingest::gate::{Gate, Origin};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::record::Record;
use crate::wal::{AppendOutcome, Wal, WalError};

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
    #[error("sink {sink}: {source}")]
    Sink {
        sink: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The configuration is inconsistent (an ingest limit out of range).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The HTTP server's task panicked.
    #[error("ingest server failed: {0}")]
    Server(#[source] tokio::task::JoinError),
}

/// The relay as a library: the log plus the state that status and metrics show.
pub struct Relay {
    config: Config,
    wal: Wal,
    /// What the ingest paths share (gate, budget, metrics); built here.
    ingest: Arc<Ingest>,
    metrics: Arc<Metrics>,
    sinks: Vec<Arc<SinkHealth>>,
    subscriptions: Vec<Arc<crate::ingest::grpc::SubscriptionHealth>>,
    /// Rewinds started through `POST /admin/rewind` (rewind.rs).
    rewinds: rewind::Rewinds,
}

impl Relay {
    /// Opens the log for the sinks the configuration enables.
    ///
    /// # Errors
    /// [`RelayError::Wal`] if the log cannot be opened.
    pub fn open(config: Config) -> Result<Relay, RelayError> {
        config.ingest.validate().map_err(RelayError::Config)?;
        config.drain.validate().map_err(RelayError::Config)?;
        let names = config.sink_names();
        let mut wal_config = config.wal.clone().with_sinks(names.iter().copied());
        wal_config.retain_ms = wal_config.retain_ms.max(config.ingest.identity_window_ms);
        let wal = Wal::open(wal_config)?;
        let metrics = Arc::new(Metrics::default());
        let ingest = Arc::new(Ingest::new(
            config.ingest.clone(),
            wal.clone(),
            metrics.clone(),
        )?);
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
            ingest,
            metrics,
            sinks,
            subscriptions,
            rewinds: Default::default(),
        })
    }

    /// The rewinds started on this relay, by sink, with their progress.
    pub fn rewinds(
        &self,
    ) -> std::collections::BTreeMap<String, crate::drain::rewind::RewindReport> {
        self.rewinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

    /// The ingest gate every append goes through.
    pub fn gate(&self) -> &Gate {
        self.ingest.gate()
    }

    /// The ingest memory budget.
    pub fn budget(&self) -> &Budget {
        self.ingest.budget()
    }

    /// What the ingest paths share, as handed to the HTTP router and the
    /// gRPC subscriptions.
    pub fn ingest(&self) -> &Arc<Ingest> {
        &self.ingest
    }

    /// Validates and durably appends typed records (the in-process API for
    /// collectors written in Rust), through the ingest gate. Blocks until
    /// durable.
    ///
    /// # Errors
    /// [`IngestError::BadRecord`] naming the record index (1-based) and
    /// field, [`IngestError::OverLimit`] (nothing is appended),
    /// [`IngestError::Full`] when the log is full under `block`.
    pub fn append(&self, records: Vec<Record>) -> Result<AppendOutcome, IngestError> {
        self.ingest.admit(records, None, Origin::Typed)
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
    // The ingest certificate is checked before anything starts: a bad pair
    // is a configuration error naming the file.
    let tls = match &relay.config.ingest.tls {
        Some(t) => {
            let acceptor = Arc::new(
                crate::ingest::tls::Acceptor::new(t.clone())
                    .map_err(|e| RelayError::Config(e.to_string()))?,
            );
            // Rotation without a restart: SIGHUP, or the files changed.
            tokio::spawn(acceptor.clone().watch(TLS_POLL, stop_rx.clone()));
            Some(acceptor)
        }
        None => {
            tokio::spawn(crate::ingest::tls::ignore_hangup(stop_rx.clone()));
            None
        }
    };
    let mut drainers = tokio::task::JoinSet::new();
    spawn_sinks(&relay, &stop_rx, &mut drainers).await?;
    let backlog = {
        let wal = relay.wal.clone();
        let sinks: Vec<&'static str> = relay.sinks.iter().map(|h| h.name).collect();
        move || {
            sinks
                .iter()
                .filter_map(|s| wal.backlog(s).ok())
                .map(|b| b.records)
                .max()
                .unwrap_or(0)
        }
    };
    let trimmer = tokio::spawn(crate::ingest::budget::hand_back_memory(
        Duration::from_secs(5),
        stop_rx.clone(),
        backlog,
    ));
    let mut pullers = tokio::task::JoinSet::new();
    if let Some(g) = &relay.config.grpc {
        let rules = g.producer_rules();
        for h in &relay.subscriptions {
            pullers.spawn(crate::ingest::grpc::subscription::run(
                relay.ingest.clone(),
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
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|source| RelayError::Bind {
            addr: addr.clone(),
            source,
        })?;
    tracing::info!(listen = %local, sinks = ?relay.config.sink_names(), "relay ready");
    let ic = &relay.config.ingest;
    let timeouts = crate::ingest::server::Timeouts {
        header: Duration::from_millis(ic.header_timeout_ms),
        idle: Duration::from_millis(ic.idle_timeout_ms),
    };
    let mut http = tokio::spawn(crate::ingest::server::serve(
        listener,
        crate::ingest::http::router(relay.ingest.clone()).merge(admin::router(relay.clone())),
        timeouts,
        tls,
        stop_rx.clone(),
    ));
    let served = tokio::select! {
        _ = shutdown => Ok(()),
        r = &mut http => r.map_err(RelayError::Server),
        _ = stalled(&relay.wal) => {
            // Fail-stop (wal/durability.rs, stall watchdog): a sled write or
            // flush does not return, so no graceful path can finish (closing
            // the log would wait for it). Everything acknowledged is on disk;
            // exit now for the service manager to restart the relay, which
            // re-opens and recovers the log.
            tracing::error!(
                reason = relay.wal.failure().unwrap_or_default(),
                exit_code = EXIT_STALLED,
                "write-ahead log stalled; exiting so that the service manager restarts walrelay"
            );
            std::process::exit(EXIT_STALLED);
        }
    };
    // One deadline for everything that stops: in-flight requests finish
    // their appends, subscriptions their append in progress, drainers the
    // delivery in progress. Past it, what is left is dropped; the log keeps
    // whatever was not delivered and nothing acknowledged is taken back.
    let grace = Duration::from_millis(relay.config.drain.shutdown_grace_ms);
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "stopping: ingest closes, drainers finish their current batch"
    );
    let _ = stop_tx.send(true);
    trimmer.abort();
    if tokio::time::timeout_at(deadline, &mut http).await.is_err() {
        tracing::warn!("ingest connections still open at the shutdown deadline; closing them");
        http.abort();
    }
    // Subscriptions finish the append in progress, then stop; what they had
    // not appended was never acknowledged.
    let _ = tokio::time::timeout_at(deadline, async {
        while pullers.join_next().await.is_some() {}
    })
    .await;
    pullers.abort_all();
    if tokio::time::timeout_at(deadline, async {
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
    served
}

/// Exit status of `walrelay run` when the log's write path stalled
/// (`EX_TEMPFAIL`: try again, a restart recovers).
pub const EXIT_STALLED: i32 = 75;

/// How often the ingest certificate files are checked for a change (SIGHUP
/// reloads at once).
const TLS_POLL: Duration = Duration::from_secs(2);

/// Resolves once the log's stall watchdog fired (checked every 250 ms).
async fn stalled(wal: &Wal) {
    while !wal.stalled() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
        pipeline: relay.config.drain.pipeline,
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
            .map_err(|e| RelayError::Sink {
                sink: "influx",
                source: e.into(),
            })?;
        tracing::info!(url = %ic.url, api = ?ic.api, org = %ic.org, bucket = %ic.default_bucket(), routes = ic.routes.len(), "influx sink configured");
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
            source: e.into(),
        })?;
        tracing::info!(schema = %tc.schema, "timescale sink configured");
        spawn_drainer(relay, sink, cfg.drain.batch_records, stop, set);
    }
    Ok(())
}
