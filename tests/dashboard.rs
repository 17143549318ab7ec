//! The Grafana dashboard (`docs/grafana/walrelay.json`) cannot rot: every
//! metric it queries must be exposed by a real relay's `/metrics`. The relay
//! runs in-process, delivering to a real VictoriaMetrics behind the
//! fault-injecting proxy, which first refuses (retries) and then rejects one
//! record (a dead letter), so every family the dashboard charts has samples;
//! and a relay that has had no failure at all exposes every queried family
//! too (failure counters at 0), so no panel says "No data" on a healthy relay.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::vm::Vm;

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana/walrelay.json"
    ))
    .unwrap();
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

/// Every PromQL expression in the dashboard: panel targets and the
/// template variables' queries.
fn expressions(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// The `walrelay_*` metric names an expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("walrelay_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.push(name);
    }
    names
}

/// Names that have at least one sample line in a Prometheus text exposition.
fn sampled(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// The value of the sample `series` (name with labels) in an exposition.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The dashboard's queried names missing from an exposition.
fn missing_from(text: &str) -> Vec<String> {
    let exposed = sampled(text);
    let mut missing = Vec::new();
    for expr in expressions(&dashboard()) {
        for name in metric_names(&expr) {
            if !exposed.contains(&name) {
                missing.push(format!("{name} (in {expr})"));
            }
        }
    }
    missing
}

/// A relay served in-process with its log under `dir` and the sink tables
/// of `sinks` (TOML).
async fn start(dir: &std::path::Path, sinks: &str) -> common::relay::ServedRelay {
    let conf = dir.join("relay.toml");
    std::fs::write(
        &conf,
        format!("[wal]\ndir = \"{}\"\n{sinks}", dir.join("wal").display()),
    )
    .unwrap();
    common::relay::ServedRelay::start(walrelay::config::Config::load(&conf).unwrap()).await
}

#[test]
fn dashboard_is_well_formed_and_charts_what_the_issue_asks() {
    let d = dashboard();
    assert_eq!(d["uid"], "walrelay");
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id: {p}");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert!(
                !metric_names(t["expr"].as_str().unwrap()).is_empty(),
                "{}",
                p["title"]
            );
        }
    }
    let all: BTreeSet<String> = expressions(&d)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    for wanted in [
        "walrelay_appended_records_total",      // ingest rate
        "walrelay_backlog_records",             // backlog (and ETA)
        "walrelay_delivered_records_total",     // drain rate (and ETA)
        "walrelay_sink_state",                  // sink state
        "walrelay_sink_retries_total",          // retries by class
        "walrelay_dead_lettered_records_total", // dead letters
        "walrelay_dead_letters",
        "walrelay_log_bytes", // log bytes vs max_bytes
        "walrelay_log_max_bytes",
        "walrelay_append_ack_seconds_bucket", // ack latency
    ] {
        assert!(
            all.contains(wanted),
            "the dashboard does not chart {wanted}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exposed_by_a_running_relay() {
    let vm = Vm::start().await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", vm.port)).await;
    proxy.set(Mode::Refuse);
    let dir = tempfile::TempDir::new().unwrap();
    let relay = start(
        dir.path(),
        &format!(
            "[influx]\nurl = \"{}\"\norg = \"o\"\nbucket = \"b\"\n\
             [drain]\nretry_initial_ms = 50\nretry_max_ms = 200\n",
            proxy.url()
        ),
    )
    .await;
    let url = relay.url.clone();
    let client = common::http::client();
    let metrics = || common::http::get_text(&client, format!("{url}/metrics"));

    // Three requests of four trades; the poison record is in the second.
    for req in 0..3 {
        let body: String = (0..4)
            .map(|i| {
                let symbol = if req == 1 && i == 2 { "POISONUSDT" } else { "BTCUSDT" };
                format!(
                    "{{\"type\":\"trade\",\"venue\":\"BINANCE\",\"symbol\":\"{symbol}\",\"ts\":{},\"price\":1.5,\"quantity\":2.0,\"side\":\"buy\",\"trade_id\":\"{req}-{i}\"}}\n",
                    1_764_000_000_000_000_000i64 + (req * 4 + i) as i64 * 1_000_000
                )
            })
            .collect();
        let r = client
            .post(format!("{url}/v1/records"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
    }
    // Refused: transient retries are counted.
    // Waits until the sample `series` is at least 1.
    let wait_for = |series: &'static str| {
        let metrics = &metrics;
        async move {
            for _ in 0..400 {
                let m = metrics().await;
                if value(&m, series).is_some_and(|v| v >= 1.0) {
                    return m;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("{series} never reached 1 in /metrics:\n{}", metrics().await);
        }
    };
    wait_for("walrelay_sink_retries_total{sink=\"influx\",class=\"transient\"}").await;
    // Then the server rejects the poison line: it is dead-lettered, the rest delivered.
    proxy.set(Mode::RejectLineWith {
        marker: "POISONUSDT".into(),
    });
    wait_for("walrelay_dead_lettered_records_total{sink=\"influx\"}").await;
    let mut text = String::new();
    for _ in 0..400 {
        text = metrics().await;
        if value(&text, "walrelay_backlog_records{sink=\"influx\"}") == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let missing = missing_from(&text);
    assert!(
        missing.is_empty(),
        "queried by the dashboard but not in /metrics:\n{}\n\n/metrics:\n{text}",
        missing.join("\n")
    );
    // The ack-latency histogram counts each acknowledged append once.
    assert!(
        text.contains("walrelay_append_ack_seconds_count 3\n"),
        "{text}"
    );
    assert!(
        text.contains("walrelay_dead_letters{sink=\"influx\"} 1\n"),
        "{text}"
    );

    // Graceful shutdown waits for open connections: close the client's
    // keep-alive ones first.
    drop(client);
    relay.stop().await.unwrap();
}

/// A relay that has had no failure at all: both sinks' failure counters are
/// exposed at 0 for every class from start, and every family the dashboard
/// queries has a sample once records have been delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_without_failures_leaves_no_panel_without_data() {
    let vm = Vm::start().await;
    let pg = common::pg::Pg::start();
    let pg_url = pg.create_db("dash").await;
    let dir = tempfile::TempDir::new().unwrap();
    let relay = start(
        dir.path(),
        &format!(
            "[influx]\nurl = \"{}\"\norg = \"o\"\nbucket = \"b\"\n[timescale]\nurl = \"{pg_url}\"\n",
            vm.url()
        ),
    )
    .await;
    let url = relay.url.clone();
    let client = common::http::client();
    let metrics = || common::http::get_text(&client, format!("{url}/metrics"));

    // Before any record: the failure counters are there, at 0.
    let text = metrics().await;
    for sink in ["influx", "timescale"] {
        for class in ["transient", "data", "config"] {
            let series =
                format!("walrelay_sink_retries_total{{sink=\"{sink}\",class=\"{class}\"}}");
            assert_eq!(
                value(&text, &series),
                Some(0.0),
                "{series} at 0 from start:\n{text}"
            );
        }
        let series = format!("walrelay_dead_lettered_records_total{{sink=\"{sink}\"}}");
        assert_eq!(
            value(&text, &series),
            Some(0.0),
            "{series} at 0 from start:\n{text}"
        );
    }

    let r = common::http::write(
        &client,
        &url,
        "",
        (0..10).map(common::http::trade_line).collect(),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let mut text = String::new();
    for _ in 0..400 {
        text = metrics().await;
        if value(&text, "walrelay_backlog_records{sink=\"influx\"}") == Some(0.0)
            && value(
                &text,
                "walrelay_delivered_records_total{sink=\"influx\",kind=\"trade\"}",
            ) == Some(10.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let missing = missing_from(&text);
    assert!(
        missing.is_empty(),
        "a healthy relay leaves these dashboard queries without data:\n{}\n\n/metrics:\n{text}",
        missing.join("\n")
    );
    // Still no failure: every failure counter is 0.
    for l in text.lines().filter(|l| {
        l.starts_with("walrelay_sink_retries_total{")
            || l.starts_with("walrelay_dead_lettered_records_total{")
    }) {
        assert!(l.ends_with(" 0"), "a healthy relay counted a failure: {l}");
    }
    drop(client);
    relay.stop().await.unwrap();
}
