//! gRPC subscriptions to `https://` collectors: the test collector (Raven's
//! proto) serves TLS with certificates made at test time. A private CA and a
//! client certificate (mutual TLS) stream as over plain HTTP/2; a collector
//! whose certificate is from another CA, or expired, is refused with the
//! reason in `/status`, and no byte of plaintext ever reaches it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::certs::Certs;
use common::collector::{script_by_type, Behaviour, Collector};
use common::http::wait_status;
use common::relay::ServedRelay;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use walrelay::config::Config;
use walrelay::ingest::grpc::{GrpcConfig, SubscriptionConfig};

const TOTAL: u64 = 60;

/// A collector's server configuration: `name`.crt/.key, client
/// certificates signed by `client_ca` required when given.
fn server_config(c: &Certs, name: &str, client_ca: Option<&str>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(&c.read(&format!("{name}.crt")))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&c.read(&format!("{name}.key"))).unwrap();
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in CertificateDer::pem_slice_iter(&c.read(&format!("{ca}.crt"))) {
                roots.add(der.unwrap()).unwrap();
            }
            b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
        None => b.with_no_client_auth(),
    };
    let mut config = b.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

fn behaviour() -> Behaviour {
    Behaviour {
        refuse_for: Duration::ZERO,
        per_stream: TOTAL,
        drop_first_after: None,
        total: TOTAL,
    }
}

fn grpc(upstream: String, c: &Certs, identity: bool) -> GrpcConfig {
    GrpcConfig {
        default_upstream: Some(upstream),
        subscriptions: vec![SubscriptionConfig {
            venue: "BINANCE_FUTURES".into(),
            data_type: "TRADE".into(),
            symbols: vec!["BTCUSDT".into()],
        }],
        batch_max: 500,
        batch_wait_ms: 20,
        connect_timeout_ms: 2000,
        tls_ca_file: Some(c.path("ca.crt")),
        tls_cert_file: identity.then(|| c.path("client.crt")),
        tls_key_file: identity.then(|| c.path("client.key")),
        ..Default::default()
    }
}

async fn start(grpc: GrpcConfig) -> (ServedRelay, tempfile::TempDir) {
    let dir = tempfile::TempDir::new().unwrap();
    let mut c = Config::default();
    c.wal.dir = dir.path().join("wal");
    c.grpc = Some(grpc);
    (ServedRelay::start(c).await, dir)
}

fn https(collector: &Collector) -> String {
    format!("https://127.0.0.1:{}", collector.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_streams_over_mutual_tls_with_a_private_ca() {
    let c = Certs::new();
    c.ca("ca")
        .leaf("ca", "server", "localhost", false)
        .ca("clients")
        .leaf("clients", "client", "walrelay", true);
    let (collector, first_bytes) = Collector::start_tls(
        behaviour(),
        script_by_type(),
        server_config(&c, "server", Some("clients")),
    )
    .await;
    let (relay, _dir) = start(grpc(https(&collector), &c, true)).await;
    wait_status(
        &reqwest::Client::new(),
        &relay.url,
        "every message over TLS appended",
        30,
        |s| s["subscriptions"][0]["records_appended"] == TOTAL,
    )
    .await;
    assert_eq!(collector.sent().len() as u64, TOTAL);
    let bytes = first_bytes.lock().unwrap().clone();
    assert!(
        !bytes.is_empty() && bytes.iter().all(|b| *b == 0x16),
        "{bytes:?}"
    );
    relay.stop().await.unwrap();
}

/// A relay trusting `ca` against a collector presenting `name`: the
/// subscription ends in `config_error` with `reason` in its last error, the
/// collector accepted nothing, and every connection it saw opened with a TLS
/// handshake.
async fn refused(c: &Certs, name: &str, reason: &str) {
    let (collector, first_bytes) =
        Collector::start_tls(behaviour(), script_by_type(), server_config(c, name, None)).await;
    let (relay, _dir) = start(grpc(https(&collector), c, false)).await;
    wait_status(
        &reqwest::Client::new(),
        &relay.url,
        &format!("{name}: config_error naming {reason}"),
        20,
        |s| {
            let sub = &s["subscriptions"][0];
            sub["state"] == "config_error"
                && sub["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(reason))
        },
    )
    .await;
    // Give a plaintext retry (were there one) time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(collector.log.lock().unwrap().accepted.is_empty());
    let bytes = first_bytes.lock().unwrap().clone();
    assert!(
        !bytes.is_empty() && bytes.iter().all(|b| *b == 0x16),
        "{name}: {bytes:?}"
    );
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_certificate_from_another_ca_or_expired_is_a_visible_config_error() {
    let c = Certs::new();
    c.ca("ca")
        .ca("other")
        .leaf("other", "foreign", "localhost", false)
        .dated_leaf("ca", "expired", "20200101000000Z", "20200201000000Z");
    refused(&c, "foreign", "UnknownIssuer").await;
    refused(&c, "expired", "certificate expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_requires_a_client_certificate_refuses_a_relay_without_one() {
    let c = Certs::new();
    c.ca("ca")
        .leaf("ca", "server", "localhost", false)
        .ca("clients");
    let (collector, first_bytes) = Collector::start_tls(
        behaviour(),
        script_by_type(),
        server_config(&c, "server", Some("clients")),
    )
    .await;
    let (relay, _dir) = start(grpc(https(&collector), &c, false)).await;
    wait_status(
        &reqwest::Client::new(),
        &relay.url,
        "config_error naming the missing client certificate",
        20,
        |s| {
            let sub = &s["subscriptions"][0];
            sub["state"] == "config_error"
                && sub["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("asked for a client certificate"))
        },
    )
    .await;
    assert!(collector.log.lock().unwrap().accepted.is_empty());
    assert!(first_bytes.lock().unwrap().iter().all(|b| *b == 0x16));
    relay.stop().await.unwrap();
}
