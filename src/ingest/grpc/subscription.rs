//! One subscription: connect, subscribe, read, append, repeat forever.
//!
//! Invariants:
//! - The stream is read only as fast as the log accepts: a batch is appended
//!   (durably) before the next message is read; while the log is full under
//!   `block`, the batch is retried and the stream is not read, so gRPC flow
//!   control pushes back on the collector instead of anything being dropped.
//! - "Wire first, subscribe later": a refused subscribe (the collector's
//!   stream is not started yet) is normal; it is retried with backoff and
//!   jitter, logged as a warning at most once a minute.
//! - A message that does not validate goes to the dead-letter store (sink
//!   `grpc`) with the field named; a message that is not market data
//!   (wallet updates, a book with an empty side, a candle of an unknown
//!   producer) is counted as skipped with its reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tonic::transport::Endpoint;

use super::config::CandleTarget;
use super::convert::{convert, Converted};
use super::proto::market_data_client::MarketDataClient;
use super::proto::{DataType, MarketDataMessage, MarketDataRequest};
use crate::drain::retry::{Backoff, RetryPolicy};
use crate::drain::ErrorClass;
use crate::ingest::error::IngestError;
use crate::ingest::Ingest;
use crate::metrics;
use crate::record::Record;

/// HTTP/2 receive windows of a subscription (bytes).
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// One configured stream.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub venue: String,
    pub data_type: String,
    pub symbol: String,
    pub upstream: String,
    /// The routing key that chose the upstream (`""` = default).
    pub route_key: String,
}

impl Subscription {
    pub fn name(&self) -> String {
        format!("{}:{}:{}", self.venue, self.data_type, self.symbol)
    }
}

/// What `/status` shows for a subscription.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubscriptionSnapshot {
    pub name: String,
    pub upstream: String,
    pub route_key: String,
    /// connecting | waiting (refused, retrying) | config_error (a TLS
    /// certificate refused or TLS files unusable: fix the config; retried
    /// slowly) | streaming | paused (log full)
    pub state: &'static str,
    pub messages_received: u64,
    pub records_appended: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    pub reconnects: u64,
    pub last_message_age_seconds: Option<f64>,
    pub last_error: Option<String>,
}

/// Shared state of one subscription task.
#[derive(Debug)]
pub struct SubscriptionHealth {
    pub sub: Subscription,
    inner: Mutex<(SubscriptionSnapshot, Option<SystemTime>)>,
}

impl SubscriptionHealth {
    pub fn new(sub: Subscription) -> Self {
        let snap = SubscriptionSnapshot {
            name: sub.name(),
            upstream: sub.upstream.clone(),
            route_key: sub.route_key.clone(),
            state: "connecting",
            messages_received: 0,
            records_appended: 0,
            skipped: 0,
            dead_lettered: 0,
            reconnects: 0,
            last_message_age_seconds: None,
            last_error: None,
        };
        SubscriptionHealth {
            sub,
            inner: Mutex::new((snap, None)),
        }
    }

    pub fn snapshot(&self) -> SubscriptionSnapshot {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = g.0.clone();
        s.last_message_age_seconds = g.1.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs_f64());
        s
    }

    fn update(&self, f: impl FnOnce(&mut SubscriptionSnapshot)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()).0);
    }

    fn received(&self, n: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0.messages_received += n;
        g.1 = Some(SystemTime::now());
    }
}

fn data_type(name: &str) -> DataType {
    DataType::from_str_name(name).unwrap_or(DataType::Unknown)
}

/// Runs the subscription until `stop` turns true.
pub async fn run(
    ingest: Arc<Ingest>,
    health: Arc<SubscriptionHealth>,
    producers: Vec<(String, CandleTarget)>,
    cfg: super::config::GrpcConfig,
    mut stop: watch::Receiver<bool>,
) {
    let sub = health.sub.clone();
    let name = sub.name();
    let mut backoff = Backoff::new(RetryPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(10),
        config_interval: Duration::from_secs(30),
    });
    let mut last_warn: Option<Instant> = None;
    let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
    let mut first = true;
    while !*stop.borrow() {
        if !first {
            health.update(|s| s.reconnects += 1);
            ingest
                .metrics()
                .add(metrics::GRPC_RECONNECTS, &[("subscription", &name)], 1);
        }
        first = false;
        health.update(|s| s.state = "connecting");
        let request = MarketDataRequest {
            symbol: sub.symbol.clone(),
            data_type: data_type(&sub.data_type) as i32,
            venue: sub.venue.clone(),
        };
        // Set when an https:// collector asked for a client certificate
        // and none is configured: what a refusal after that means.
        let asked = Arc::new(AtomicBool::new(false));
        let opened = async {
            let endpoint = Endpoint::from_shared(sub.upstream.clone())
                .map_err(|e| {
                    (
                        format!("invalid upstream {}: {e}", sub.upstream),
                        ErrorClass::Config,
                    )
                })?
                .connect_timeout(connect_timeout)
                .tcp_keepalive(Some(Duration::from_secs(30)))
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                // Small HTTP/2 windows: what the relay has not appended stays
                // with the collector (hyper's 2 MiB default would let a whole
                // burst pile up in this process while the log is full).
                .initial_stream_window_size(Some(STREAM_WINDOW))
                .initial_connection_window_size(Some(CONNECTION_WINDOW));
            let channel = if endpoint.uri().scheme_str() == Some("https") {
                let tls = super::tls::client_config(&cfg, asked.clone())
                    .map_err(|e| (format!("connect {}: {e}", sub.upstream), ErrorClass::Config))?;
                let connector = super::tls::Connector::new(tls, connect_timeout);
                endpoint.connect_with_connector(connector).await
            } else {
                endpoint.connect().await
            }
            .map_err(|e| {
                let class = if super::tls::is_config(&e) {
                    ErrorClass::Config
                } else {
                    ErrorClass::Transient
                };
                (
                    format!("connect {}: {}", sub.upstream, super::tls::chain(&e)),
                    class,
                )
            })?;
            let mut client = MarketDataClient::new(channel);
            let resp = tokio::time::timeout(connect_timeout, client.subscribe(request))
                .await
                .map_err(|_| {
                    (
                        format!("subscribe to {} timed out", sub.upstream),
                        ErrorClass::Transient,
                    )
                })?;
            resp.map(|r| r.into_inner()).map_err(|s| {
                // A certificate alert from the collector (TLS 1.3 client
                // certificate refused) is the operator's to fix.
                let class = if super::tls::is_config(&s) {
                    ErrorClass::Config
                } else {
                    ErrorClass::Transient
                };
                let why = match std::error::Error::source(&s) {
                    Some(src) => format!("{}: {}", s.message(), super::tls::chain(src)),
                    None => s.message().to_string(),
                };
                (format!("subscribe refused: {} {why}", s.code()), class)
            })
        };
        let opened = opened.await.map_err(|(e, class)| {
            if asked.load(Ordering::Relaxed) && cfg.tls_cert_file.is_none() {
                let hint = "the collector asked for a client certificate and [grpc] has none (tls_cert_file, tls_key_file)";
                (format!("{e}; {hint}"), ErrorClass::Config)
            } else {
                (e, class)
            }
        });
        let mut stream = match opened {
            Ok(s) => s,
            Err((e, ErrorClass::Config)) => {
                // A certificate refused, TLS files that do not load, a bad
                // URL: the operator's to fix. Shown and logged every time,
                // retried at the configuration cadence (never in clear text).
                health.update(|s| {
                    s.state = "config_error";
                    s.last_error = Some(e.clone());
                });
                tracing::error!(subscription = %name, error = %e, "subscription refused by configuration (TLS certificate or files); retrying slowly");
                let d = backoff.next_delay(ErrorClass::Config, None);
                tokio::select! { _ = tokio::time::sleep(d) => {}, _ = stop.changed() => {} }
                continue;
            }
            Err((e, _)) => {
                health.update(|s| {
                    s.state = "waiting";
                    s.last_error = Some(e.clone());
                });
                // Expected while the collector has not started its stream:
                // at most one warning a minute, the rest at debug.
                if last_warn.map_or(true, |t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(subscription = %name, error = %e, "subscription not available yet; retrying quietly");
                    last_warn = Some(Instant::now());
                } else {
                    tracing::debug!(subscription = %name, error = %e, "subscription retry");
                }
                let d = backoff.next_delay(ErrorClass::Transient, None);
                tokio::select! { _ = tokio::time::sleep(d) => {}, _ = stop.changed() => {} }
                continue;
            }
        };
        health.update(|s| {
            s.state = "streaming";
            s.last_error = None;
        });
        tracing::info!(subscription = %name, upstream = %sub.upstream, "subscribed");
        loop {
            let first = tokio::select! {
                m = stream.message() => m,
                _ = stop.changed() => return,
            };
            let mut batch: Vec<MarketDataMessage> = Vec::new();
            let mut ended = None;
            match first {
                Ok(Some(m)) => batch.push(m),
                Ok(None) => ended = Some("stream ended".to_string()),
                Err(s) => ended = Some(format!("stream broke: {} {}", s.code(), s.message())),
            }
            if ended.is_none() {
                let deadline =
                    tokio::time::Instant::now() + Duration::from_millis(cfg.batch_wait_ms);
                while batch.len() < cfg.batch_max {
                    match tokio::time::timeout_at(deadline, stream.message()).await {
                        Ok(Ok(Some(m))) => batch.push(m),
                        Ok(Ok(None)) => {
                            ended = Some("stream ended".into());
                            break;
                        }
                        Ok(Err(s)) => {
                            ended = Some(format!("stream broke: {} {}", s.code(), s.message()));
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            if !batch.is_empty() {
                // A stream that delivers is healthy: the next reconnect starts
                // from the shortest wait again.
                backoff.reset();
                health.received(batch.len() as u64);
                ingest.metrics().add(
                    metrics::GRPC_MESSAGES,
                    &[("subscription", &name)],
                    batch.len() as u64,
                );
                if !append(&ingest, &health, &sub, &producers, batch, &mut stop).await {
                    return;
                }
            }
            if let Some(why) = ended {
                health.update(|s| s.last_error = Some(why.clone()));
                tracing::warn!(subscription = %name, reason = %why, "collector stream closed; reconnecting");
                // Never reconnect in a tight loop, even after a clean end.
                let d = backoff.next_delay(ErrorClass::Transient, None);
                tokio::select! { _ = tokio::time::sleep(d) => {}, _ = stop.changed() => return }
                break;
            }
        }
    }
}

/// Converts, validates and appends one batch, retrying while the log is
/// full (the stream is not read meanwhile). Returns false on shutdown.
async fn append(
    ingest: &Arc<Ingest>,
    health: &SubscriptionHealth,
    sub: &Subscription,
    producers: &[(String, CandleTarget)],
    batch: Vec<MarketDataMessage>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let now = crate::record::now_ns();
    let mut records: Vec<Record> = Vec::with_capacity(batch.len());
    let (mut skipped, mut dead) = (0u64, 0u64);
    for m in batch {
        match convert(m, &sub.venue, producers) {
            Converted::Record(r) => match ingest.gate().check_record(&r, now) {
                Ok(()) => records.push(r),
                Err((field, e)) => {
                    dead += 1;
                    tracing::warn!(subscription = %sub.name(), kind = %r.kind(), field = %field, error = %e, "invalid record from collector dead-lettered");
                    let _ = ingest.wal().dead_letters().put("grpc", &r, &e, 0);
                }
            },
            Converted::Skipped(why) => {
                skipped += 1;
                ingest
                    .metrics()
                    .add(metrics::GRPC_SKIPPED, &[("reason", why)], 1);
            }
        }
    }
    let n = records.len() as u64;
    // A batch larger than the gate's records limit goes in several appends
    // (a subscription's batch is flow control, not a client's unit).
    let per_append = ingest.gate().limits().max_records_per_request;
    for chunk in records.chunks(per_append) {
        loop {
            match ingest
                .append_async(chunk.to_vec(), None, crate::ingest::gate::Origin::Typed)
                .await
            {
                Ok(()) => break,
                Err(IngestError::Full { retry_after }) => {
                    health.update(|s| s.state = "paused");
                    tokio::select! { _ = tokio::time::sleep(retry_after.min(Duration::from_millis(250))) => {}, _ = stop.changed() => return false }
                }
                Err(e) => {
                    tracing::error!(subscription = %sub.name(), error = %e, "append failed; retrying");
                    health.update(|s| s.last_error = Some(e.to_string()));
                    tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = stop.changed() => return false }
                }
            }
        }
    }
    health.update(|s| {
        s.state = "streaming";
        s.records_appended += n;
        s.skipped += skipped;
        s.dead_lettered += dead;
    });
    true
}
