//! The management API (`walrelay check` / `init` through `influxdb2`) against
//! a real VictoriaMetrics, which accepts InfluxDB line protocol but has no
//! InfluxDB 2 management API: check and init must say so and degrade, not
//! fail. A full InfluxDB 2 is not installed on this machine or in CI, so the
//! `Admin::Influx` paths (bucket found, created, refused) are not exercised
//! here (docs/INFLUX.md says so).

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::vm::Vm;
use walrelay::db::influx::admin::{ensure_bucket, find_bucket, health, Admin, AdminError};
use walrelay::db::influx::InfluxConfig;
use walrelay::preflight::Verdict;

#[tokio::test]
async fn victoriametrics_is_reported_as_not_influx_by_health_lookup_and_init() {
    let vm = Vm::start().await;
    let url = vm.url();
    let ic = InfluxConfig::new(&url, "acme", "market");
    let t = Duration::from_secs(5);
    match health(&ic, t).await.unwrap() {
        // VictoriaMetrics answers /health with a plain "OK".
        Admin::NotInflux(why) => assert!(
            why.starts_with("/health did not answer InfluxDB 2 JSON (")
                && !why.contains("answered an answer"),
            "{why}"
        ),
        other => panic!("VictoriaMetrics taken for InfluxDB: {other:?}"),
    }
    match find_bucket(&ic, &url, "acme", "market", t).await.unwrap() {
        Admin::NotInflux(why) => {
            assert!(why.starts_with("/api/v2/buckets answered HTTP "), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ensure_bucket(&ic, &url, "acme", "market", t).await.unwrap(),
        Admin::NotInflux(_)
    ));
    // check: the write probe passes, the management API is one warning.
    let mut config = walrelay::config::Config::default();
    config.influx = Some(ic);
    let checks = walrelay::preflight::run_checks(&config).await;
    let find = |name: &str| checks.iter().find(|c| c.name == name);
    let writable = find("influx bucket writable").expect("write probe ran");
    assert_eq!(writable.verdict, Verdict::Ok, "{writable}");
    let admin = find("influx management API").expect("management line");
    assert_eq!(admin.verdict, Verdict::Warn, "{admin}");
    assert!(admin.detail.contains("not a full InfluxDB 2"), "{admin}");
    assert!(find("influx health").is_none());
}

#[tokio::test]
async fn a_closed_port_is_an_error_within_the_deadline() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let ic = InfluxConfig::new(&url, "acme", "market");
    let started = std::time::Instant::now();
    let e = health(&ic, Duration::from_secs(2)).await.unwrap_err();
    assert!(
        matches!(e, AdminError::Request { .. } | AdminError::Timeout { .. }),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
