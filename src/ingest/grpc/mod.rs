//! Pull ingest from gRPC market-data collectors (`raven.MarketData/Subscribe`).
//!
//! Each configured (venue, data type, symbol) becomes one subscription task
//! that reconnects forever and appends what it receives to the log in
//! batches, reading the stream only as fast as the log accepts. The upstream
//! of a subscription is chosen by `"VENUE:DATA_TYPE"`, then `"VENUE"`, then
//! the default upstream (with a warning naming the keys tried). An
//! `https://` upstream is spoken to over TLS only (`tls.rs`).

pub mod config;
pub mod convert;
pub mod subscription;
pub mod tls;

/// Generated from `raven.proto` (see `src/build.rs`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("raven");
}

pub use config::{GrpcConfig, SubscriptionConfig};
pub use subscription::{Subscription, SubscriptionHealth, SubscriptionSnapshot};

/// Expands the config into subscriptions with their upstreams.
pub fn plan(cfg: &GrpcConfig) -> Vec<Subscription> {
    let routes = cfg.routes();
    let mut out = Vec::new();
    for s in &cfg.subscriptions {
        let (upstream, key) = routes.resolve(&s.venue, &s.data_type);
        if key.is_empty() {
            tracing::warn!(venue = %s.venue, data_type = %s.data_type, tried = %format!("{}:{}, {}", s.venue, s.data_type, s.venue), upstream = %upstream, "no upstream route matched; using the default upstream");
        }
        for sym in &s.symbols {
            out.push(Subscription {
                venue: s.venue.clone(),
                data_type: s.data_type.clone(),
                symbol: sym.clone(),
                upstream: upstream.clone(),
                route_key: key.to_string(),
            });
        }
    }
    out
}
