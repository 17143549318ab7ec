//! `[grpc]`: subscriptions to gRPC market-data collectors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::record::BarKind;
use crate::routes::Routes;

/// One subscription line of the config: a venue, a data type and symbols.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub venue: String,
    /// ORDERBOOK, TRADE, CANDLE, FUNDING, TICKER, PRICE_INDEX, LIQUIDATION, OPEN_INTEREST.
    pub data_type: String,
    /// Symbols, or `["*"]` for all-market streams.
    pub symbols: Vec<String>,
}

/// What a candle becomes, by producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandleTarget {
    Bar(BarKind),
    Kline,
}

/// `[grpc]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Upstream used when no route matches (`http://host:port`, or
    /// `https://host:port` for TLS: see `tls_ca_file`).
    #[serde(default)]
    pub default_upstream: Option<String>,
    /// Routes: `"VENUE:DATA_TYPE"` → upstream, then `"VENUE"` → upstream.
    #[serde(default)]
    pub upstreams: BTreeMap<String, String>,
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Producer substring → `tick_imbalance` | `volume_imbalance` | `vpin` |
    /// `kline`, checked before the defaults (`tibs`/`trbs` → tick imbalance,
    /// `vibs` → volume imbalance, `vpin` → VPIN, `klines` → kline).
    #[serde(default)]
    pub producers: BTreeMap<String, String>,
    /// Messages appended to the log per batch. Default 500.
    #[serde(default = "default_batch")]
    pub batch_max: usize,
    /// How long a batch waits for more messages, ms. Default 20.
    #[serde(default = "default_wait")]
    pub batch_wait_ms: u64,
    /// Connect and subscribe deadline, ms. Default 5000. An `https://`
    /// upstream's TLS handshake has the same deadline.
    #[serde(default = "default_connect")]
    pub connect_timeout_ms: u64,
    /// PEM file of the CA certificates that sign `https://` collectors'
    /// certificates. Default: the public web CAs (webpki-roots).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate chain for collectors that require mutual TLS
    /// (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

fn default_batch() -> usize {
    500
}
fn default_wait() -> u64 {
    20
}
fn default_connect() -> u64 {
    5000
}

pub(crate) const DATA_TYPES: [&str; 8] = [
    "ORDERBOOK",
    "TRADE",
    "CANDLE",
    "FUNDING",
    "TICKER",
    "PRICE_INDEX",
    "LIQUIDATION",
    "OPEN_INTEREST",
];

impl GrpcConfig {
    /// Offline checks; every error names the key.
    ///
    /// # Errors
    /// A message naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        for (i, s) in self.subscriptions.iter().enumerate() {
            if !DATA_TYPES.contains(&s.data_type.as_str()) {
                return Err(format!(
                    "grpc.subscriptions[{i}].data_type {:?} is not one of {}",
                    s.data_type,
                    DATA_TYPES.join(", ")
                ));
            }
            if s.venue.is_empty() {
                return Err(format!("grpc.subscriptions[{i}].venue must not be empty"));
            }
            if s.symbols.is_empty() {
                return Err(format!(
                    "grpc.subscriptions[{i}].symbols must list symbols or \"*\""
                ));
            }
            let routes = self.routes();
            let (_, key) = routes.resolve(&s.venue, &s.data_type);
            if key.is_empty() && self.default_upstream.is_none() {
                return Err(format!("grpc.subscriptions[{i}]: no upstream for {}:{} (tried \"{}:{}\", \"{}\") and no grpc.default_upstream", s.venue, s.data_type, s.venue, s.data_type, s.venue));
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(
                "grpc.tls_cert_file and grpc.tls_key_file go together: set both or neither".into(),
            );
        }
        let upstreams = self.default_upstream.iter().chain(self.upstreams.values());
        for u in upstreams {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!(
                    "grpc upstream {u:?}: expected http://host:port or https://host:port"
                ));
            }
        }
        for (k, v) in &self.producers {
            parse_target(v).ok_or_else(|| format!("grpc.producers.{k} = {v:?}: expected tick_imbalance, volume_imbalance, vpin or kline"))?;
        }
        Ok(())
    }

    /// The upstream routing table.
    pub fn routes(&self) -> Routes<String> {
        Routes::new(
            self.upstreams.clone(),
            self.default_upstream.clone().unwrap_or_default(),
        )
    }

    /// Producer rules, configured ones first, then the defaults.
    pub fn producer_rules(&self) -> Vec<(String, CandleTarget)> {
        let mut rules: Vec<(String, CandleTarget)> = self
            .producers
            .iter()
            .filter_map(|(k, v)| parse_target(v).map(|t| (k.clone(), t)))
            .collect();
        rules.extend([
            (
                "tibs".to_string(),
                CandleTarget::Bar(BarKind::TickImbalance),
            ),
            (
                "trbs".to_string(),
                CandleTarget::Bar(BarKind::TickImbalance),
            ),
            (
                "vibs".to_string(),
                CandleTarget::Bar(BarKind::VolumeImbalance),
            ),
            ("vpin".to_string(), CandleTarget::Bar(BarKind::Vpin)),
            ("klines".to_string(), CandleTarget::Kline),
        ]);
        rules
    }
}

fn parse_target(s: &str) -> Option<CandleTarget> {
    Some(match s {
        "tick_imbalance" => CandleTarget::Bar(BarKind::TickImbalance),
        "volume_imbalance" => CandleTarget::Bar(BarKind::VolumeImbalance),
        "vpin" => CandleTarget::Bar(BarKind::Vpin),
        "kline" => CandleTarget::Kline,
        _ => return None,
    })
}
