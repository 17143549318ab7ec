//! Pull ingest from gRPC collectors: a real tonic test collector, the relay
//! in-process, real VictoriaMetrics and PostgreSQL behind it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::collector::{script_by_type, Behaviour, Collector};
use common::http::{get_json, wait_status};
use common::pg::Pg;
use common::proxy::{Mode, Proxy};
use common::relay::ServedRelay;
use common::vm::Vm;
use walrelay::config::Config;
use walrelay::db::influx::InfluxConfig;
use walrelay::db::timescale::TimescaleConfig;
use walrelay::ingest::grpc::{GrpcConfig, SubscriptionConfig};

/// A relay served in-process over a log in its own temporary directory.
struct Running {
    relay: ServedRelay,
    url: String,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(config: impl FnOnce(&mut Config)) -> Running {
        let dir = tempfile::TempDir::new().unwrap();
        let mut c = Config::default();
        c.wal.dir = dir.path().join("wal");
        c.drain.retry_initial_ms = 50;
        c.drain.retry_max_ms = 500;
        config(&mut c);
        let relay = ServedRelay::start(c).await;
        Running {
            url: relay.url.clone(),
            relay,
            _dir: dir,
        }
    }

    /// `/status`, read over a connection of its own (none stays open to
    /// delay the stop).
    async fn status(&self) -> serde_json::Value {
        get_json(&reqwest::Client::new(), format!("{}/status", self.url)).await
    }

    /// Polls `/status` until `cond` holds; panics naming `what` after `secs`.
    async fn wait_status(&self, what: &str, secs: u64, cond: impl Fn(&serde_json::Value) -> bool) {
        wait_status(&reqwest::Client::new(), &self.url, what, secs, cond).await;
    }

    async fn stop(self) {
        self.relay.stop().await.unwrap();
    }
}

fn sub(venue: &str, data_type: &str, symbols: &[&str]) -> SubscriptionConfig {
    SubscriptionConfig {
        venue: venue.into(),
        data_type: data_type.into(),
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
    }
}

fn grpc(default: Option<String>, subs: Vec<SubscriptionConfig>) -> GrpcConfig {
    GrpcConfig {
        default_upstream: default,
        subscriptions: subs,
        batch_max: 500,
        batch_wait_ms: 20,
        connect_timeout_ms: 2000,
        ..Default::default()
    }
}

const TOTAL: u64 = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sent_message_arrives_through_refusals_drops_and_wildcards() {
    let vm = Vm::start().await;
    let pg = Pg::start();
    let pg_url = pg.create_db("grpc").await;
    // Refuses subscriptions for 2 s, breaks each first stream after 25
    // messages, ends each stream after 50: several reconnects per subscription.
    let collector = Collector::start(
        Behaviour {
            refuse_for: Duration::from_secs(2),
            per_stream: 50,
            drop_first_after: Some(25),
            total: TOTAL,
        },
        script_by_type(),
    )
    .await;
    let subs = vec![
        sub("BINANCE_FUTURES", "TRADE", &["BTCUSDT"]),
        sub("BINANCE_FUTURES", "ORDERBOOK", &["ETHUSDT"]),
        sub("BINANCE_FUTURES", "FUNDING", &["*"]),
        sub("BINANCE_FUTURES", "LIQUIDATION", &["*"]),
        sub("BINANCE_FUTURES", "OPEN_INTEREST", &["*"]),
        sub("DERIBIT", "TICKER", &["*"]),
        sub("DERIBIT", "PRICE_INDEX", &["*"]),
        sub(
            "BINANCE_FUTURES",
            "CANDLE",
            &["TIBS1", "VIBS1", "VPIN1", "KL1"],
        ),
    ];
    let n_subs = 11;
    let relay = Running::start(|c| {
        c.influx = Some(InfluxConfig::new(vm.url(), "o", "b"));
        c.timescale = Some(TimescaleConfig::new(&pg_url));
        c.grpc = Some(grpc(Some(collector.url()), subs));
    })
    .await;
    relay
        .wait_status("every message received and delivered", 60, |s| {
            let subs = s["subscriptions"].as_array().unwrap();
            subs.len() == 11
                && subs.iter().all(|r| r["records_appended"] == TOTAL)
                && common::http::drained(s)
        })
        .await;
    let status = relay.status().await;
    for r in status["subscriptions"].as_array().unwrap() {
        assert!(
            r["reconnects"].as_u64().unwrap() >= 2,
            "stream drop and end forced reconnects: {r}"
        );
        assert_eq!(r["messages_received"], TOTAL, "{r}");
    }
    let log = collector.log.lock().unwrap();
    assert!(
        log.refused >= n_subs as u64,
        "subscriptions were refused at first: {}",
        log.refused
    );
    assert_eq!(
        log.sent.len() as u64,
        TOTAL * n_subs as u64,
        "what the collector sent after accepting"
    );
    drop(log);

    // InfluxDB side: every sent tick, with its measurement, tags and values.
    let values = |series: Vec<common::vm::Series>| -> BTreeSet<(String, i64, u64)> {
        series
            .iter()
            .flat_map(|s| {
                s.samples.iter().map(move |(t, v)| {
                    (
                        s.labels
                            .get("symbol")
                            .or(s.labels.get("index_name"))
                            .cloned()
                            .unwrap_or_default(),
                        *t,
                        v.to_bits(),
                    )
                })
            })
            .collect()
    };
    let trades = vm.export("trades_price").await;
    assert_eq!(
        trades
            .iter()
            .map(|s| s.labels["exchange"].as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["BINANCE_FUTURES"])
    );
    assert_eq!(values(trades).len() as u64, TOTAL, "trades");
    let want: BTreeSet<u64> = (0..TOTAL).map(|i| (100.0 + i as f64).to_bits()).collect();
    let got: BTreeSet<u64> = vm.value_set("trades_price").await;
    assert_eq!(got, want, "trade prices exactly as sent");
    for (metric, n) in [
        ("orderbook_bid_price", TOTAL),
        ("funding_rate_rate", TOTAL),
        ("liquidation_price", TOTAL),
        ("open_interest_open_interest", TOTAL),
        ("options_ticker_mark_iv", TOTAL),
        ("price_index_price", TOTAL),
    ] {
        assert_eq!(values(vm.export(metric).await).len() as u64, n, "{metric}");
    }
    // Wildcard streams carried several symbols.
    let funding_symbols: BTreeSet<String> = vm
        .export("funding_rate_rate")
        .await
        .iter()
        .map(|s| s.labels["symbol"].clone())
        .collect();
    assert_eq!(
        funding_symbols,
        BTreeSet::from(["ALL0USDT".to_string(), "ALL1USDT".into(), "ALL2USDT".into()])
    );
    // Orderbook tops come from the best levels.
    let spread: BTreeSet<u64> = vm.value_set("orderbook_spread").await;
    assert_eq!(spread, BTreeSet::from([2.0f64.to_bits()]));

    // Warehouse side: candles by producer, one row each.
    let c = pg.client("grpc").await;
    for (table, symbol) in [
        ("bar__tick_imbalance", "TIBS1"),
        ("bar__volume_imbalance", "VIBS1"),
        ("bar__vpin", "VPIN1"),
        ("bar__kline", "KL1"),
    ] {
        let n: i64 = c.query_one(&format!("SELECT count(*) FROM mart.{table} f JOIN mart.dim_symbol s USING (symbol_id) WHERE s.symbol = $1"), &[&symbol]).await.unwrap().get(0);
        assert_eq!(n as u64, TOTAL, "{table}");
    }
    let ticks: i64 = c
        .query_one(
            "SELECT sum(buy_ticks + sell_ticks)::bigint FROM mart.bar__vpin",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ticks as u64, 10 * TOTAL, "candle fields carried");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_routing_prefers_composite_then_venue_then_default() {
    let behaviour = Behaviour {
        refuse_for: Duration::ZERO,
        per_stream: 10,
        drop_first_after: None,
        total: 10,
    };
    let (composite, venue, default) = (
        Collector::start(behaviour.clone(), script_by_type()).await,
        Collector::start(behaviour.clone(), script_by_type()).await,
        Collector::start(behaviour, script_by_type()).await,
    );
    let relay = Running::start(|c| {
        let mut g = grpc(
            Some(default.url()),
            vec![
                sub("OKX", "TRADE", &["BTCUSDT"]),
                sub("OKX", "FUNDING", &["*"]),
                sub("BYBIT", "TRADE", &["ETHUSDT"]),
            ],
        );
        g.upstreams.insert("OKX:TRADE".into(), composite.url());
        g.upstreams.insert("OKX".into(), venue.url());
        c.grpc = Some(g);
    })
    .await;
    relay
        .wait_status("all three subscribed", 20, |s| {
            s["subscriptions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["records_appended"] == 10)
        })
        .await;
    let accepted = |c: &Collector| {
        c.log
            .lock()
            .unwrap()
            .accepted
            .iter()
            .map(|(v, t, s)| format!("{v}:{t}:{s}"))
            .collect::<BTreeSet<_>>()
    };
    assert!(
        accepted(&composite)
            .iter()
            .all(|a| a.starts_with("OKX:2:BTCUSDT")),
        "{:?}",
        accepted(&composite)
    );
    assert!(!accepted(&composite).is_empty());
    assert!(
        accepted(&venue).iter().all(|a| a.starts_with("OKX:4:*")) && !accepted(&venue).is_empty(),
        "{:?}",
        accepted(&venue)
    );
    assert!(
        accepted(&default)
            .iter()
            .all(|a| a.starts_with("BYBIT:2:ETHUSDT"))
            && !accepted(&default).is_empty(),
        "{:?}",
        accepted(&default)
    );
    let status = relay.status().await;
    let keys: BTreeSet<(String, String)> = status["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["route_key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            ("OKX:TRADE:BTCUSDT".to_string(), "OKX:TRADE".to_string()),
            ("OKX:FUNDING:*".into(), "OKX".into()),
            ("BYBIT:TRADE:ETHUSDT".into(), String::new())
        ])
    );
    assert_eq!(status["log"]["appended_records"], 30);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_pauses_reading_without_loss() {
    let vm = Vm::start().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", vm.port)).await;
    proxy.set(Mode::Refuse); // the sink is down: the log only fills
    let total = 60_000;
    let collector = Collector::start(
        Behaviour {
            refuse_for: Duration::ZERO,
            per_stream: total,
            drop_first_after: None,
            total,
        },
        script_by_type(),
    )
    .await;
    let relay = Running::start(|c| {
        c.wal.max_bytes = 256 * 1024;
        c.wal.block_timeout_ms = 100;
        c.influx = Some(InfluxConfig::new(proxy.url(), "o", "b"));
        c.grpc = Some(grpc(
            Some(collector.url()),
            vec![sub("BINANCE_FUTURES", "TRADE", &["BTCUSDT"])],
        ));
    })
    .await;
    relay
        .wait_status("subscription paused on a full log", 30, |s| {
            s["subscriptions"][0]["state"] == "paused"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent_a = collector.sent().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent_b = collector.sent().len();
    assert_eq!(
        sent_a, sent_b,
        "the collector could not send while the relay did not read"
    );
    assert!(
        (sent_b as u64) < total,
        "flow control pushed back: {sent_b} of {total} sent"
    );
    let appended = relay.status().await["log"]["appended_records"]
        .as_u64()
        .unwrap();
    assert!(appended < total, "{appended}");
    // The sink comes back: everything flows, nothing was dropped.
    proxy.set(Mode::Pass);
    relay
        .wait_status("all delivered", 90, |s| {
            s["subscriptions"][0]["records_appended"] == total
                && s["sinks"][0]["backlog_records"] == 0
        })
        .await;
    let got: BTreeSet<u64> = vm.value_set_settled("trades_price", total as usize).await;
    assert_eq!(got.len() as u64, total, "every trade arrived");
    assert_eq!(relay.status().await["log"]["dropped_records"], 0);
    relay.stop().await;
}
