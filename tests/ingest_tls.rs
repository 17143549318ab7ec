//! HTTPS ingest (`[ingest.tls]`) with certificates made at test time: HTTP/1.1
//! and HTTP/2 by ALPN, plain HTTP refused, a stalled handshake closed at the
//! header deadline, mutual TLS, and rotation on SIGHUP and on a file change
//! with the old pair kept when the new one is bad (the binary as a child).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::Certs;
use common::http::{trade_line, WRITE_PATH};
use common::relay::ServedRelay;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walrelay::config::Config;
use walrelay::ingest::tls::TlsConfig;

/// CA `ca` signing server certificate `server` and `server2` (the rotation),
/// CA `clients` signing client certificate `client`, and CA `other` signing
/// client certificate `stranger`.
fn certificates() -> Certs {
    let c = Certs::new();
    c.ca("ca")
        .leaf("ca", "server", "localhost", false)
        .leaf("ca", "server2", "localhost", false)
        .ca("clients")
        .leaf("clients", "client", "collector-1", true)
        .ca("other")
        .leaf("other", "stranger", "collector-2", true);
    c
}

fn tls_config(c: &Certs, mutual: bool) -> TlsConfig {
    TlsConfig {
        cert_file: c.path("server.crt"),
        key_file: c.path("server.key"),
        client_ca_file: mutual.then(|| c.path("clients.crt")),
    }
}

struct Relay {
    relay: ServedRelay,
    /// `https://127.0.0.1:<port>`.
    url: String,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Relay {
    async fn start(tls: TlsConfig, edit: impl FnOnce(&mut Config)) -> Relay {
        let dir = tempfile::TempDir::new().unwrap();
        let mut config = Config::default();
        config.wal.dir = dir.path().join("wal");
        config.ingest.tls = Some(tls);
        edit(&mut config);
        // ServedRelay's readiness probe speaks plain HTTP: the TLS listener
        // answers it with its 400, which is enough to know it is up.
        let relay = ServedRelay::start(config).await;
        let addr = relay.url.trim_start_matches("http://").to_string();
        Relay {
            url: format!("https://{addr}"),
            addr,
            relay,
            _dir: dir,
        }
    }
}

/// A reqwest client (HTTP/1.1 only: this build has no reqwest `http2`)
/// trusting `ca.crt`, with a client identity when given.
fn https_client(c: &Certs, identity: Option<&str>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&c.read("ca.crt")).unwrap());
    if let Some(name) = identity {
        let mut pem = c.read(&format!("{name}.crt"));
        pem.extend(c.read(&format!("{name}.key")));
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

async fn appended(client: &reqwest::Client, url: &str) -> u64 {
    let v: serde_json::Value = client
        .get(format!("{url}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["log"]["appended_records"].as_u64().unwrap()
}

/// A rustls client trusting `ca.crt`, offering `alpn`.
fn rustls_client(c: &Certs, alpn: &[&[u8]], identity: Option<&str>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&c.read("ca.crt")) {
        roots.add(der.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(name) => {
            let chain = CertificateDer::pem_slice_iter(&c.read(&format!("{name}.crt")))
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(&c.read(&format!("{name}.key"))).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn handshake(c: &Certs, addr: &str, alpn: &[&[u8]]) -> Tls {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    rustls_client(c, alpn, None)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// The DER of the leaf certificate the server presented.
fn presented(s: &Tls) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(c: &Certs, name: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(&c.read(&format!("{name}.crt")))
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// One HTTP/1.1 write of trade `i` on an established stream; the status.
async fn h1_write(s: &mut Tls, i: u64) -> u16 {
    let body = trade_line(i);
    let req = format!(
        "POST {WRITE_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    text[9..12].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_http2_and_refuses_plain_http() {
    let c = certificates();
    let r = Relay::start(tls_config(&c, false), |_| {}).await;
    let client = https_client(&c, None);

    // HTTP/1.1 over TLS (reqwest offers only http/1.1 by ALPN).
    let resp = client
        .post(format!("{}{WRITE_PATH}", r.url))
        .body(trade_line(1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "{:?}", resp.text().await);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);

    // HTTP/2 over TLS, chosen by ALPN.
    let tls = handshake(&c, &r.addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    for i in 2..4 {
        let req = hyper::Request::post(format!("https://localhost{WRITE_PATH}"))
            .body(axum::body::Body::from(trade_line(i)))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 204);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
    }
    drop(send);
    let _ = driver.await;
    assert_eq!(appended(&client, &r.url).await, 3);

    // Plain HTTP on the TLS port: a clear 400 naming https, nothing appended.
    let plain = reqwest::Client::new()
        .post(format!("http://{}{WRITE_PATH}", r.addr))
        .body(trade_line(9))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    assert!(plain.text().await.unwrap().contains("https://"));
    assert_eq!(appended(&client, &r.url).await, 3);
    drop(client);
    r.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_keeps_the_token_and_the_body_limit() {
    let c = certificates();
    let r = Relay::start(tls_config(&c, false), |c| {
        c.ingest.token = Some(walrelay::config::Secret::new("s3cret"));
        c.ingest.max_body_bytes = 64 * 1024;
    })
    .await;
    let tls = handshake(&c, &r.addr, &[b"h2"]).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let mut post = |token: Option<&str>, body: String| {
        let mut req = hyper::Request::post(format!("https://localhost{WRITE_PATH}"));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Token {t}"));
        }
        send.send_request(req.body(axum::body::Body::from(body)).unwrap())
    };
    assert_eq!(post(None, trade_line(1)).await.unwrap().status(), 401);
    let big: String = (0..2000).map(trade_line).collect();
    assert!(big.len() > 64 * 1024);
    assert_eq!(post(Some("s3cret"), big).await.unwrap().status(), 413);
    assert_eq!(
        post(Some("s3cret"), trade_line(1)).await.unwrap().status(),
        204
    );
    drop(send);
    let _ = driver.await;
    let client = https_client(&c, None);
    assert_eq!(appended(&client, &r.url).await, 1);
    drop(client);
    r.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_at_the_header_deadline() {
    let c = certificates();
    let r = Relay::start(tls_config(&c, false), |c| {
        c.ingest.header_timeout_ms = 400;
        c.ingest.idle_timeout_ms = 60_000;
    })
    .await;
    // Half a ClientHello: a TLS record header promising 512 bytes, 5 sent.
    let stalls: [&[u8]; 2] = [
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03],
        &[],
    ];
    for partial in stalls {
        let mut s = tokio::net::TcpStream::connect(&r.addr).await.unwrap();
        s.write_all(partial).await.unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the relay kept a stalled handshake open past 5 s");
        let closed_after = t.elapsed();
        assert!(matches!(n, Ok(0) | Err(_)), "expected a close, got {n:?}");
        assert!(
            closed_after >= Duration::from_millis(300) && closed_after < Duration::from_secs(2),
            "closed after {closed_after:?}, header deadline 400 ms"
        );
    }
    // A handshake that completes is served as usual.
    let mut tls = handshake(&c, &r.addr, &[b"http/1.1"]).await;
    assert_eq!(h1_write(&mut tls, 1).await, 204);
    drop(tls);
    r.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_only_clients_signed_by_the_client_ca() {
    let c = certificates();
    let r = Relay::start(tls_config(&c, true), |_| {}).await;
    let write = |client: reqwest::Client| {
        let url = format!("{}{WRITE_PATH}", r.url);
        async move { client.post(url).body(trade_line(1)).send().await }
    };
    let anonymous = write(https_client(&c, None)).await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    let stranger = write(https_client(&c, Some("stranger"))).await;
    assert!(stranger.is_err(), "certificate of another CA: {stranger:?}");
    let client = https_client(&c, Some("client"));
    let ok = write(client.clone()).await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(appended(&client, &r.url).await, 1);
    drop(client);
    r.relay.stop().await.unwrap();
}

/// Copies `<from>.crt`/`.key` over the files the relay is configured with,
/// each through a rename so the relay never reads half a file.
fn install(c: &Certs, from: &str, key_from: &str) {
    for (src, dst) in [
        (format!("{from}.crt"), "live.crt"),
        (format!("{key_from}.key"), "live.key"),
    ] {
        let tmp = c.path(&format!("{dst}.tmp"));
        std::fs::copy(c.path(&src), &tmp).unwrap();
        std::fs::rename(&tmp, c.path(dst)).unwrap();
    }
}

async fn wait_presented(c: &Certs, addr: &str, want: &[u8], what: &str) {
    let t = Instant::now();
    loop {
        let s = handshake(c, addr, &[b"http/1.1"]).await;
        if presented(&s) == want {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn(c: &Certs, dir: &Path, port: u16) -> std::process::Child {
    let conf = dir.join("c.toml");
    std::fs::write(
        &conf,
        format!(
            "[wal]\ndir = \"{}\"\n[ingest]\nlisten = \"127.0.0.1:{port}\"\n[ingest.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.join("wal").display(),
            c.path("live.crt").display(),
            c.path("live.key").display(),
        ),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["run", "--config", conf.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_sighup_and_on_change_keeps_the_old_pair_when_the_new_one_is_bad() {
    let c = certificates();
    c.leaf("ca", "server3", "localhost", false);
    install(&c, "server", "server");
    let dir = tempfile::TempDir::new().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = spawn(&c, dir.path(), port);
    let t = Instant::now();
    let mut before = loop {
        if let Ok(tcp) = tokio::net::TcpStream::connect(&addr).await {
            if let Ok(s) = rustls_client(&c, &[b"http/1.1"], None)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
            {
                break s;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(10), "relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(presented(&before), der_of(&c, "server"));
    assert_eq!(h1_write(&mut before, 1).await, 204);

    // A bad new pair (the key of another certificate) on SIGHUP: refused,
    // named in the log, the old pair still presented.
    install(&c, "server2", "server3");
    let pid = child.id() as libc::pid_t;
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let log = dir.path().join("stderr");
    let t = Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains("refused") {
        assert!(t.elapsed() < Duration::from_secs(10), "no refusal logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&c.path("live.key").display().to_string()) && text.contains("does not match"),
        "the refusal names the key file and the reason: {text}"
    );
    let s = handshake(&c, &addr, &[b"http/1.1"]).await;
    assert_eq!(presented(&s), der_of(&c, "server"), "the old pair stays");
    drop(s);

    // A good pair on SIGHUP: the next handshake presents it; a request in
    // flight across the rotation (headers and half its body sent before)
    // finishes, and its connection serves the next one.
    let body = trade_line(2);
    let head = format!(
        "POST {WRITE_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    before.write_all(head.as_bytes()).await.unwrap();
    before.write_all(&body.as_bytes()[..10]).await.unwrap();
    before.flush().await.unwrap();
    install(&c, "server2", "server2");
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_presented(
        &c,
        &addr,
        &der_of(&c, "server2"),
        "server2 not presented after SIGHUP",
    )
    .await;
    before.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = before.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("HTTP/1.1 204"),
        "request in flight across the rotation: {text}"
    );
    assert_eq!(
        h1_write(&mut before, 3).await,
        204,
        "its connection after the rotation"
    );
    drop(before);

    // A changed file without a signal is picked up by the poll.
    install(&c, "server3", "server3");
    wait_presented(
        &c,
        &addr,
        &der_of(&c, "server3"),
        "server3 not presented after the files changed",
    )
    .await;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn load_refuses_a_mismatched_key_an_expired_certificate_and_a_missing_file() {
    let c = certificates();
    c.dated_leaf("ca", "old", "20200101000000Z", "20200201000000Z");
    let load = |crt: &str, key: &str| {
        walrelay::ingest::tls::load(&TlsConfig {
            cert_file: c.path(crt),
            key_file: c.path(key),
            client_ca_file: None,
        })
    };
    let (_, info) = load("server.crt", "server.key").unwrap();
    assert!((28..=30).contains(&info.days_left), "{}", info.days_left);
    let e = load("server.crt", "server2.key").unwrap_err().to_string();
    assert!(
        e.contains("server2.key") && e.contains("does not match"),
        "{e}"
    );
    let e = load("old.crt", "old.key").unwrap_err().to_string();
    assert!(e.contains("old.crt") && e.contains("expired on"), "{e}");
    let e = load("missing.crt", "server.key").unwrap_err().to_string();
    assert!(
        e.contains("ingest.tls.cert_file") && e.contains("missing.crt"),
        "{e}"
    );
    let e = load("server.key", "server.key").unwrap_err().to_string();
    assert!(e.contains("no PEM certificate"), "{e}");
}

/// `walrelay check` on a config whose `[ingest.tls]` is `crt`/`key`: exit
/// code and the TLS line.
fn check_with(c: &Certs, crt: &str, key: &str) -> (i32, String) {
    let dir = tempfile::TempDir::new().unwrap();
    let conf = dir.path().join("c.toml");
    std::fs::write(
        &conf,
        format!(
            "[wal]\ndir = \"{}\"\n[ingest]\nlisten = \"127.0.0.1:0\"\n[ingest.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.path().join("wal").display(),
            c.path(crt).display(),
            c.path(key).display(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["check", "--config", conf.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("ingest tls certificate"))
        .unwrap_or_else(|| panic!("no TLS line in: {text}"))
        .to_string();
    (out.status.code().unwrap(), line)
}

#[test]
fn check_validates_the_pair_and_prints_days_to_expiry() {
    let c = certificates();
    c.dated_leaf("ca", "old", "20200101000000Z", "20200201000000Z");
    let (code, line) = check_with(&c, "server.crt", "server.key");
    assert!(line.starts_with("[ok  ]"), "{line}");
    assert!(
        line.contains("key matches")
            && (line.contains("expires in 29 days") || line.contains("expires in 30 days")),
        "{line}"
    );
    assert_eq!(code, 0, "{line}");
    let (code, line) = check_with(&c, "old.crt", "old.key");
    assert!(
        line.starts_with("[FAIL]") && line.contains("old.crt") && line.contains("expired on"),
        "{line}"
    );
    assert_ne!(code, 0);
    let (code, line) = check_with(&c, "server.crt", "server2.key");
    assert!(
        line.starts_with("[FAIL]") && line.contains("does not match"),
        "{line}"
    );
    assert_ne!(code, 0);
}

/// Runs the binary with `args`; (exit code, stdout + stderr).
async fn walrelay(args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(args)
        .output()
        .await
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_top_and_feed_work_against_an_https_url_with_ca_file() {
    let c = certificates();
    let r = Relay::start(tls_config(&c, false), |_| {}).await;
    let ca = c.path("ca.crt");
    let ca = ca.to_str().unwrap();
    let url = r.url.as_str();

    let (code, out) = walrelay(&["status", "--url", url]).await;
    assert_ne!(
        code, 0,
        "a private CA is not trusted without --ca-file: {out}"
    );
    assert!(
        out.contains("certificate") || out.contains("UnknownIssuer"),
        "{out}"
    );

    let (code, out) = walrelay(&["status", "--url", url, "--ca-file", ca]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = walrelay(&["status", "--url", url, "--ca-file", ca, "--json"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("appended_records"), "{out}");

    let (code, out) = walrelay(&[
        "feed",
        "--url",
        url,
        "--ca-file",
        ca,
        "--rate",
        "200",
        "--duration",
        "1",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let client = https_client(&c, None);
    assert!(appended(&client, url).await > 0);

    let (code, out) = walrelay(&[
        "top",
        "--once",
        "--interval-ms",
        "200",
        "--url",
        url,
        "--ca-file",
        ca,
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    drop(client);
    r.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_tls_is_ignored_not_fatal() {
    let dir = tempfile::TempDir::new().unwrap();
    let (mut child, port) = common::relay::spawn_binary(dir.path(), "");
    let health = format!("http://127.0.0.1:{port}/health");
    let client = reqwest::Client::new();
    let t = Instant::now();
    while client.get(&health).send().await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id() as libc::pid_t;
    unsafe { libc::kill(pid, libc::SIGHUP) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the relay"
    );
    assert!(client.get(&health).send().await.is_ok());
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
