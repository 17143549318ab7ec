//! The InfluxDB sink against a real server speaking the InfluxDB v2 write API
//! (VictoriaMetrics), directly and through a fault-injecting proxy.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::drain::{self, wait_until, Drain};
use common::proxy::{Mode, Proxy};
use common::vm::Vm;
use walrelay::db::influx::{InfluxConfig, InfluxSink};
use walrelay::drain::Sink;
use walrelay::drain::SinkState;
use walrelay::ingest::identity::assign_identity_timestamps;
use walrelay::record::{FieldValue, Record, Trade};
use walrelay::{Wal, WalConfig};

type Sample = (Vec<(String, String)>, i64, u64);

fn fixtures() -> Vec<Record> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/influx_records.jsonl"
    ))
    .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What VictoriaMetrics must hold for `r`, derived from the record's fields
/// (independently of the encoder): metric `<measurement>_<field>`, tag labels,
/// millisecond timestamp, value.
fn expected(r: &Record) -> Vec<Sample> {
    let ms = r.ts().div_euclid(1_000_000);
    let mk = |m: &str, tags: Vec<(&str, &str)>, fields: Vec<(&str, f64)>| -> Vec<Sample> {
        fields
            .into_iter()
            .map(|(f, v)| {
                let mut labels: Vec<(String, String)> = tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                labels.push(("__name__".into(), format!("{m}_{f}")));
                labels.sort();
                (labels, ms, v.to_bits())
            })
            .collect()
    };
    match r {
        Record::Trade(t) => mk(
            "trades",
            vec![
                ("symbol", &t.symbol),
                ("exchange", &t.venue),
                ("side", &t.side),
            ],
            vec![("price", t.price), ("quantity", t.quantity)],
        ),
        Record::OrderBookTop(t) => mk(
            "orderbook",
            vec![("symbol", &t.symbol), ("exchange", &t.venue)],
            vec![
                ("bid_price", t.bid_price),
                ("bid_qty", t.bid_qty),
                ("ask_price", t.ask_price),
                ("ask_qty", t.ask_qty),
                ("spread", t.ask_price - t.bid_price),
                ("mid_price", (t.ask_price + t.bid_price) / 2.0),
                ("imbalance", t.bid_qty / (t.bid_qty + t.ask_qty)),
            ],
        ),
        Record::Funding(t) => mk(
            "funding_rate",
            vec![("symbol", &t.symbol), ("exchange", &t.venue)],
            vec![
                ("rate", t.rate),
                ("mark_price", t.mark_price),
                ("index_price", t.index_price),
                ("next_funding_time", t.next_funding_time as f64),
            ],
        ),
        Record::Liquidation(t) => mk(
            "liquidation",
            vec![
                ("symbol", &t.symbol),
                ("exchange", &t.venue),
                ("side", &t.side),
            ],
            vec![("price", t.price), ("quantity", t.quantity)],
        ),
        Record::OpenInterest(t) => mk(
            "open_interest",
            vec![("symbol", &t.symbol), ("exchange", &t.venue)],
            vec![
                ("open_interest", t.open_interest),
                ("open_interest_value", t.open_interest_value),
            ],
        ),
        Record::OptionsTicker(t) => mk(
            "options_ticker",
            vec![("symbol", &t.symbol), ("exchange", &t.venue)],
            vec![
                ("open_interest", t.open_interest),
                ("mark_iv", t.mark_iv),
                ("best_bid_price", t.best_bid_price),
                ("best_ask_price", t.best_ask_price),
                ("mark_price", t.mark_price),
                ("underlying_price", t.underlying_price),
                ("last_price", t.last_price),
                ("bid_iv", t.bid_iv),
                ("ask_iv", t.ask_iv),
            ],
        ),
        Record::PriceIndex(t) => mk(
            "price_index",
            vec![("index_name", &t.index_name), ("exchange", &t.venue)],
            vec![("price", t.price)],
        ),
        Record::Point(p) => {
            let tags: Vec<(&str, &str)> = p
                .tags
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let fields = p
                .fields
                .iter()
                .filter_map(|(k, v)| match v {
                    FieldValue::Float(f) => Some((k.as_str(), *f)),
                    FieldValue::Integer(i) => Some((k.as_str(), *i as f64)),
                    FieldValue::Unsigned(u) => Some((k.as_str(), *u as f64)),
                    FieldValue::Boolean(b) => Some((k.as_str(), if *b { 1.0 } else { 0.0 })),
                    // VictoriaMetrics (1.79) keeps a string field as a sample of value 0.
                    FieldValue::String(_) => Some((k.as_str(), 0.0)),
                })
                .collect();
            mk(&p.measurement, tags, fields)
        }
        _ => vec![],
    }
}

fn expected_set(records: &[Record]) -> BTreeSet<Sample> {
    records.iter().flat_map(expected).collect()
}

fn sink_for(url: &str, wal: &Wal, timeout_ms: u64) -> InfluxSink {
    let mut c = InfluxConfig::new(url, "org", "bucket");
    c.timeout_ms = timeout_ms;
    InfluxSink::new(c, wal.dead_letters()).unwrap()
}

fn trade(i: u64, ts: i64) -> Record {
    common::records::trade_record(
        "BTCUSDT",
        format!("t{i}"),
        ts,
        1000.0 + i as f64,
        0.5 + i as f64,
    )
}

#[tokio::test]
async fn every_measurement_round_trips_and_replays_change_nothing() {
    let vm = Vm::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let records = fixtures();
    let mut sink = sink_for(&vm.url(), &wal, 5000);
    let d = sink.deliver(&records, 1).await.unwrap();
    assert_eq!((d.written, d.dead_lettered), (records.len(), 0));
    let want = expected_set(&records);
    let got = vm.sample_set(".+").await;
    assert_eq!(got, want, "values, tags and timestamps read back exactly");
    // Every one of the seven measurements and the generic point arrived.
    let names: BTreeSet<String> = got
        .iter()
        .map(|(l, _, _)| {
            l.iter()
                .find(|(k, _)| k == "__name__")
                .unwrap()
                .1
                .split('_')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    for m in [
        "trades",
        "orderbook",
        "funding",
        "liquidation",
        "open",
        "options",
        "price",
        "sensor",
    ] {
        assert!(names.contains(m), "{m} missing from {names:?}");
    }
    // Replaying the same frames three times changes nothing.
    for _ in 0..3 {
        sink.deliver(&records, 1).await.unwrap();
    }
    assert_eq!(vm.sample_set(".+").await, want);
}

#[tokio::test]
async fn same_millisecond_trades_all_arrive() {
    let vm = Vm::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let ms = 1_700_000_000_555_000_000;
    let mut records: Vec<Record> = (0..50).map(|i| trade(i, ms)).collect();
    assign_identity_timestamps(&mut records);
    let distinct_ns: BTreeSet<i64> = records.iter().map(|r| r.ts()).collect();
    assert_eq!(distinct_ns.len(), 50, "fifty distinct points for InfluxDB");
    sink_for(&vm.url(), &wal, 5000)
        .deliver(&records, 1)
        .await
        .unwrap();
    let series = vm.export("trades_price").await;
    assert_eq!(series.len(), 1);
    let values: BTreeSet<u64> = series[0].samples.iter().map(|(_, v)| v.to_bits()).collect();
    assert_eq!(values.len(), 50, "every trade of the millisecond is stored");
    assert!(series[0].samples.iter().all(|(t, _)| *t == ms / 1_000_000));
}

fn start_drainer(wal: &Wal, sink: InfluxSink) -> Drain {
    drain::start(wal, sink, "influx", drain::settings(100, 500, 300))
}

#[tokio::test]
async fn faults_lose_nothing_and_duplicate_nothing() {
    let vm = Vm::start().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", vm.port)).await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path()).with_sinks(["influx"])).unwrap();
    let drain = start_drainer(&wal, sink_for(&proxy.url(), &wal, 1000));
    let mut sent = Vec::new();
    let mut next = 0u64;
    let mut append = |n: u64, sent: &mut Vec<Record>| {
        let mut recs: Vec<Record> = (next..next + n)
            .map(|i| trade(i, 1_700_000_000_000_000_000 + i as i64 * 1_000_000))
            .collect();
        next += n;
        assign_identity_timestamps(&mut recs);
        wal.append(&recs).unwrap();
        sent.extend(recs);
    };
    let faults = vec![
        (
            "connection refused for 10 s",
            Mode::Refuse,
            Duration::from_secs(10),
        ),
        ("reset mid-request", Mode::Reset, Duration::from_secs(2)),
        (
            "503 with Retry-After",
            Mode::Reply {
                status: 503,
                headers: vec![("Retry-After".into(), "1".into())],
                body: "{\"message\":\"overloaded\"}".into(),
            },
            Duration::from_secs(2),
        ),
        (
            "429",
            Mode::Reply {
                status: 429,
                headers: vec![],
                body: "{\"message\":\"too many requests\"}".into(),
            },
            Duration::from_secs(2),
        ),
        (
            "slow beyond the deadline",
            Mode::Delay(Duration::from_secs(3)),
            Duration::from_secs(4),
        ),
    ];
    for (name, mode, hold) in faults {
        proxy.set(mode);
        append(150, &mut sent);
        wait_until(&format!("{name}: sink retrying"), 20, || {
            drain.health.snapshot().state == SinkState::Retrying
        })
        .await;
        tokio::time::sleep(hold).await;
        assert!(
            wal.backlog("influx").unwrap().records > 0,
            "{name}: nothing may be acknowledged during the fault"
        );
        proxy.set(Mode::Pass);
        wait_until(&format!("{name}: backlog drained"), 30, || {
            wal.backlog("influx").unwrap().records == 0
        })
        .await;
        assert_eq!(drain.health.snapshot().state, SinkState::Healthy, "{name}");
    }
    let got = vm.sample_set("trades_.*").await;
    assert_eq!(
        got,
        expected_set(&sent),
        "exactly the sent points: nothing lost, nothing extra"
    );
    assert_eq!(wal.dead_letters().count(None).unwrap(), 0);
    drain.stop().await;
}

#[tokio::test]
async fn a_rejected_line_is_bisected_to_its_record_and_dead_lettered() {
    let vm = Vm::start().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", vm.port)).await;
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path()).with_sinks(["influx"])).unwrap();
    let mut records: Vec<Record> = (0..64)
        .map(|i| trade(i, 1_700_000_100_000_000_000 + i as i64 * 1_000_000))
        .collect();
    // The poison record: the proxy answers 400 for any request holding its line.
    if let Record::Trade(t) = &mut records[37] {
        t.symbol = "POISONUSDT".into();
    }
    proxy.set(Mode::RejectLineWith {
        marker: "POISONUSDT".into(),
    });
    let mut sink = sink_for(&proxy.url(), &wal, 5000);
    let d = sink.deliver(&records, 1).await.unwrap();
    assert_eq!((d.written, d.dead_lettered), (63, 1));
    let dead = wal.dead_letters().list(Some("influx"), 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record, records[37]);
    assert!(
        dead[0].error.contains("400") && dead[0].error.contains("rejected by test proxy"),
        "{}",
        dead[0].error
    );
    let mut others = records.clone();
    others.remove(37);
    assert_eq!(
        vm.sample_set("trades_.*").await,
        expected_set(&others),
        "all others arrive"
    );
}

#[tokio::test]
async fn unauthorized_marks_the_sink_unhealthy_without_dead_letters() {
    let vm = Vm::start().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", vm.port)).await;
    proxy.set(Mode::Reply {
        status: 401,
        headers: vec![],
        body: "{\"code\":\"unauthorized\",\"message\":\"unauthorized access\"}".into(),
    });
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path()).with_sinks(["influx"])).unwrap();
    let records: Vec<Record> = (0..10)
        .map(|i| trade(i, 1_700_000_200_000_000_000 + i as i64))
        .collect();
    wal.append(&records).unwrap();
    let mut c = InfluxConfig::new(proxy.url(), "org", "bucket");
    c.token = Some(walrelay::config::Secret::new("super-secret-token"));
    let drain = start_drainer(&wal, InfluxSink::new(c, wal.dead_letters()).unwrap());
    wait_until("sink unhealthy", 10, || {
        drain.health.snapshot().state == SinkState::Unhealthy
    })
    .await;
    let snap = drain.health.snapshot();
    let err = snap.last_error.unwrap();
    assert!(
        err.contains("401") && err.contains("unauthorized access"),
        "{err}"
    );
    assert!(
        !err.contains("super-secret-token"),
        "the token leaked into an error"
    );
    assert_eq!(
        wal.dead_letters().count(None).unwrap(),
        0,
        "nothing dead-lettered"
    );
    assert_eq!(
        wal.backlog("influx").unwrap().records,
        10,
        "nothing acknowledged"
    );
    // Fixing the credentials lets it recover by itself.
    proxy.set(Mode::Pass);
    wait_until("recovered", 10, || {
        wal.backlog("influx").unwrap().records == 0
    })
    .await;
    assert_eq!(vm.sample_set("trades_price").await.len(), 10);
    drain.stop().await;
}

#[tokio::test]
async fn routing_picks_composite_key_then_venue_then_default() {
    let (default_vm, venue_vm, composite_vm) =
        (Vm::start().await, Vm::start().await, Vm::start().await);
    let dir = tempfile::TempDir::new().unwrap();
    let wal = Wal::open(WalConfig::new(dir.path())).unwrap();
    let mut c = InfluxConfig::new(default_vm.url(), "org", "ticks");
    let dest = |url: String, bucket: &str| walrelay::db::influx::Destination {
        bucket: bucket.into(),
        org: None,
        url: Some(url),
    };
    c.routes.insert("OKX".into(), dest(venue_vm.url(), "okx"));
    c.routes
        .insert("OKX:TRADE".into(), dest(composite_vm.url(), "okx-trades"));
    let mut sink = InfluxSink::new(c, wal.dead_letters()).unwrap();
    let okx_trade = Record::Trade(Trade {
        venue: "OKX".into(),
        symbol: "BTCUSDT".into(),
        ts: 1_700_000_300_000_000_000,
        price: 1.0,
        quantity: 1.0,
        side: "buy".into(),
        trade_id: "1".into(),
    });
    let okx_liq = Record::Liquidation(walrelay::record::Liquidation {
        venue: "OKX".into(),
        symbol: "BTCUSDT".into(),
        ts: 1_700_000_300_000_000_000,
        side: "sell".into(),
        price: 2.0,
        quantity: 1.0,
    });
    let other = trade(5, 1_700_000_300_000_000_000);
    sink.deliver(&[okx_trade, okx_liq, other], 1).await.unwrap();
    assert_eq!(
        composite_vm.export("trades_price").await.len(),
        1,
        "OKX:TRADE -> composite route"
    );
    assert!(composite_vm.export("liquidation_price").await.is_empty());
    assert_eq!(
        venue_vm.export("liquidation_price").await.len(),
        1,
        "OKX liquidation -> venue route"
    );
    assert!(venue_vm.export("trades_price").await.is_empty());
    let d = default_vm.export("trades_price").await;
    assert_eq!(d.len(), 1, "BINANCE trade -> default");
    assert_eq!(d[0].labels["exchange"], "BINANCE");
}
