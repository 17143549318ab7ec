//! HTTP ingest against a relay running in-process on a loopback port: each
//! malformed request gets its documented status and appends nothing; valid
//! requests are acknowledged only once durable.

use std::io::Write;
use std::time::Duration;

use walrelay::config::{Config, Secret};

mod common;

use common::http::get_json;
use common::relay::ServedRelay;

/// A relay served in-process over a log in its own temporary directory,
/// with the token `s3cret` and a 64 KiB body limit unless `edit` changes them.
struct Relay {
    relay: ServedRelay,
    url: String,
    _dir: tempfile::TempDir,
}

impl Relay {
    async fn start(edit: impl FnOnce(&mut Config)) -> Relay {
        let dir = tempfile::TempDir::new().unwrap();
        let mut config = Config::default();
        config.wal.dir = dir.path().join("wal");
        config.ingest.token = Some(Secret::new("s3cret"));
        config.ingest.max_body_bytes = 64 * 1024;
        edit(&mut config);
        let relay = ServedRelay::start(config).await;
        Relay {
            url: relay.url.clone(),
            relay,
            _dir: dir,
        }
    }

    async fn appended(&self) -> u64 {
        common::http::appended(&self.url).await
    }

    async fn stop(self) {
        self.relay.stop().await.unwrap();
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Posts `body` to `path` with `Authorization: Token <token>` and returns the
/// status, the body and `Retry-After`.
async fn post(
    url: &str,
    path: &str,
    token: Option<&str>,
    gz: bool,
    body: Vec<u8>,
) -> (u16, String, Option<String>) {
    let auth = token.map(|t| format!("Token {t}"));
    post_raw(url, path, auth.as_deref(), gz, body).await
}

/// Posts `body` to `path` with `Authorization: <auth>` (and gzip's
/// `Content-Encoding` when `gz`) and returns the status, the body and
/// `Retry-After`.
async fn post_raw(
    url: &str,
    path: &str,
    auth: Option<&str>,
    gz: bool,
    body: Vec<u8>,
) -> (u16, String, Option<String>) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .body(body);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if gz {
        req = req.header("Content-Encoding", "gzip");
    }
    let r = req.send().await.unwrap();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), r.text().await.unwrap(), retry_after)
}

/// Posts five good lines at a time to `path` until the log refuses (503);
/// returns the records acknowledged before, the refusal's body and its
/// `Retry-After`. Panics on any other status, or when 200 posts never fill it.
async fn fill_until_refused(
    url: &str,
    path: &str,
    token: Option<&str>,
) -> (u64, String, Option<String>) {
    let mut acked = 0;
    for _ in 0..200 {
        let (status, text, retry_after) =
            post(url, path, token, false, GOOD.repeat(5).into_bytes()).await;
        match status {
            204 => acked += 5,
            503 => return (acked, text, retry_after),
            other => panic!("unexpected {other}: {text}"),
        }
    }
    panic!("the log never filled");
}

const WRITE: &str = "/api/v2/write?org=o&bucket=b&precision=ns";
const GOOD: &str = "trades,symbol=BTCUSDT,exchange=BINANCE,side=buy price=97000.5,quantity=0.1 1764000000000000000\n";

#[tokio::test]
async fn malformed_requests_are_refused_and_append_nothing() {
    let relay = Relay::start(|_| {}).await;
    let tok = Some("s3cret");
    let huge_line = format!("m f=\"{}\" 1\n", "x".repeat(70 * 1024));
    let mut bomb_src = Vec::new();
    bomb_src.resize(1024 * 1024, b'a');
    let cases: Vec<(&str, &str, Option<&str>, bool, Vec<u8>, u16, &str)> = vec![
        ("bad escape swallows the separator", WRITE, tok, false, format!("{GOOD}m,t=\\ f=1 1\n").into_bytes(), 400, "line 2"),
        ("missing tag value", WRITE, tok, false, format!("{GOOD}{GOOD}m,t= f=1 1\n").into_bytes(), 400, "line 3"),
        ("missing fields", WRITE, tok, false, format!("{GOOD}m 1\n").into_bytes(), 400, "line 2"),
        ("wrong type", WRITE, tok, false, format!("{GOOD}m f=12x3 1\n").into_bytes(), 400, "invalid value"),
        ("non-finite float", WRITE, tok, false, format!("{GOOD}m f=NaN 1\n").into_bytes(), 400, "line 2"),
        ("reserved name", WRITE, tok, false, format!("{GOOD}_m f=1 1\n").into_bytes(), 400, "measurement"),
        ("huge line", WRITE, tok, false, format!("{GOOD}{huge_line}").into_bytes(), 413, "exceeds"),
        ("invalid utf-8", WRITE, tok, false, [GOOD.as_bytes(), b"m,t=\xff\xfe f=1 1\n"].concat(), 400, "line 2"),
        ("empty body", WRITE, tok, false, Vec::new(), 400, "no points"),
        ("wrong token", WRITE, Some("nope"), false, GOOD.as_bytes().to_vec(), 401, "unauthorized"),
        ("no token", WRITE, None, false, GOOD.as_bytes().to_vec(), 401, "unauthorized"),
        ("oversized gzip (bomb)", WRITE, tok, true, gzip(&bomb_src), 413, "exceeds"),
        ("corrupt gzip", WRITE, tok, true, b"not gzip at all".to_vec(), 400, "gzip"),
        ("bad precision", "/api/v2/write?bucket=b&precision=h", tok, false, GOOD.as_bytes().to_vec(), 400, "precision"),
        ("json: unknown field", "/v1/records", tok, false, br#"{"type":"kline","venue":"V","symbol":"S","interval":"1m","ts":1764000000000000000,"open":1,"high":1,"low":1,"close":1,"volume":1,"x":1}"#.to_vec(), 400, "line 1"),
        ("json: bad record names field", "/v1/records", tok, false, br#"{"type":"kline","venue":"V","symbol":"","interval":"1m","ts":1764000000000000000,"open":1,"high":1,"low":1,"close":1,"volume":1}"#.to_vec(), 400, "symbol"),
        ("json: second line bad", "/v1/records", tok, false, format!("{}\nnot json\n", r#"{"type":"kline","venue":"V","symbol":"S","interval":"1m","ts":1764000000000000000,"open":1,"high":1,"low":1,"close":1,"volume":1}"#).into_bytes(), 400, "line 2"),
    ];
    for (name, path, token, gz, body, want_status, want_text) in cases {
        let before = relay.appended().await;
        let (status, text, _) = post(&relay.url, path, token, gz, body).await;
        assert_eq!(status, want_status, "{name}: {text}");
        assert!(
            text.contains(want_text),
            "{name}: {text:?} lacks {want_text:?}"
        );
        if status == 400 {
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{name}: not InfluxDB's JSON error shape: {text}"));
            assert_eq!(v["code"], "invalid", "{name}");
        }
        assert_eq!(
            relay.appended().await,
            before,
            "{name}: a refused request appended records"
        );
    }
    // The relay keeps serving: a good request after all that is accepted.
    let (status, text, _) = post(&relay.url, WRITE, tok, false, GOOD.repeat(3).into_bytes()).await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(relay.appended().await, 3);
    let (status, _, _) = post(&relay.url, WRITE, tok, true, gzip(GOOD.as_bytes())).await;
    assert_eq!(status, 204);
    assert_eq!(relay.appended().await, 4);
    relay.stop().await;
}

#[tokio::test]
async fn acknowledged_writes_are_in_the_log_after_shutdown() {
    let dir = tempfile::TempDir::new().unwrap();
    let wal_dir = dir.path().join("wal");
    let w = wal_dir.clone();
    let relay = Relay::start(move |c| c.wal.dir = w).await;
    let mut lines = String::new();
    for i in 0..500 {
        lines.push_str(&format!(
            "cpu,host=h{} load={}.5,n={i}i {}\n",
            i % 7,
            i,
            1_764_000_000_000_000_000i64 + i
        ));
    }
    let (status, text, _) =
        post(&relay.url, WRITE, Some("s3cret"), false, lines.into_bytes()).await;
    assert_eq!(status, 204, "{text}");
    let json: String = (0..100).map(|i| format!("{{\"type\":\"bar\",\"kind\":\"vpin\",\"venue\":\"V\",\"symbol\":\"S\",\"interval\":\"tick_100\",\"ts\":{},\"open\":1,\"high\":2,\"low\":0.5,\"close\":1.5,\"volume\":10}}\n", 1_764_000_000_000_000_000i64 + i)).collect();
    let (status, text, _) = post(
        &relay.url,
        "/v1/records",
        Some("s3cret"),
        false,
        json.into_bytes(),
    )
    .await;
    assert_eq!(status, 204, "{text}");
    relay.stop().await;
    let wal = walrelay::Wal::open(walrelay::WalConfig::new(&wal_dir)).unwrap();
    let records: Vec<_> = wal
        .read_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|f| f.records)
        .collect();
    assert_eq!(records.len(), 600);
    assert_eq!(
        records
            .iter()
            .filter(|r| r.kind() == walrelay::RecordKind::Point)
            .count(),
        500
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r.kind() == walrelay::RecordKind::Bar)
            .count(),
        100
    );
}

#[tokio::test]
async fn full_log_under_block_answers_503_with_retry_after() {
    let relay = Relay::start(|c| {
        c.wal.max_bytes = 4096;
        c.wal.block_timeout_ms = 200;
    })
    .await;
    let (acked, text, retry_after) = fill_until_refused(&relay.url, WRITE, Some("s3cret")).await;
    assert!(text.contains("full"), "{text}");
    assert!(retry_after.is_some(), "503 without Retry-After");
    assert_eq!(
        relay.appended().await,
        acked,
        "only acknowledged requests are in the log"
    );
    relay.stop().await;
}

fn trade_json(id: &str, ts: i64) -> String {
    format!(
        r#"{{"type":"trade","venue":"BINANCE","symbol":"BTCUSDT","ts":{ts},"price":1.5,"quantity":2,"side":"buy","trade_id":"{id}"}}"#
    )
}

/// Opens the relay's log after it stopped: (records per frame, bad frames).
fn log_after(dir: &std::path::Path) -> (Vec<usize>, usize) {
    let wal = walrelay::Wal::open(walrelay::WalConfig::new(dir.join("wal"))).unwrap();
    let frames = wal.read_after(0, usize::MAX).unwrap();
    let (_, _, bad) = wal.verify().unwrap();
    (
        frames.iter().map(|f| f.records.len()).collect(),
        bad.len() + wal.quarantined().unwrap().len(),
    )
}

#[tokio::test]
async fn a_multi_member_gzip_body_delivers_every_line() {
    let relay = Relay::start(|_| {}).await;
    let tok = Some("s3cret");
    let line = |i: u32| format!("m,t=a f={i}i 17640000000000000{i:02}\n");
    let first: String = (0..3).map(line).collect();
    let second: String = (3..7).map(line).collect();
    // What `cat a.gz b.gz` produces: two complete gzip members.
    let body = [gzip(first.as_bytes()), gzip(second.as_bytes())].concat();
    let (status, text, _) = post(&relay.url, WRITE, tok, true, body).await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(relay.appended().await, 7, "every member's lines are stored");
    // Bytes after the last member that are not a gzip member: refused.
    let body = [gzip(first.as_bytes()), b"trailing junk".to_vec()].concat();
    let (status, text, _) = post(&relay.url, WRITE, tok, true, body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("gzip"), "{text}");
    assert_eq!(relay.appended().await, 7);
    relay.stop().await;
}

#[tokio::test]
async fn a_record_over_the_codec_limit_is_refused_and_nothing_is_appended_or_quarantined() {
    let relay = Relay::start(|c| c.ingest.max_body_bytes = 20 * 1024 * 1024).await;
    let dir = relay._dir.path().to_path_buf();
    // 17 MiB of trade id: over the log codec's 16 MiB decode limit, which
    // today's main acknowledged and then quarantined with its whole frame.
    let huge = trade_json(&"7".repeat(17 * 1024 * 1024), 1_764_000_000_000_000_000);
    let body = format!("{}\n{huge}\n", trade_json("1", 1_764_000_000_000_000_000));
    let (status, text, _) = post(
        &relay.url,
        "/v1/records",
        Some("s3cret"),
        false,
        body.into_bytes(),
    )
    .await;
    assert!(status == 400 || status == 413, "{status}: {text}");
    assert!(text.contains("line 2"), "names the line: {text}");
    assert_eq!(
        relay.appended().await,
        0,
        "a refused request appends nothing"
    );
    relay.stop().await;
    let (frames, bad) = log_after(&dir);
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(bad, 0, "nothing unreadable in the log");
}

#[tokio::test]
async fn every_limit_refuses_with_the_line_and_the_key() {
    let relay = Relay::start(|c| {
        c.ingest.max_body_bytes = 4 * 1024 * 1024;
        c.ingest.limits.max_records_per_request = 100;
        c.ingest.limits.max_line_bytes = 4096;
        c.ingest.limits.max_record_bytes = 2048;
    })
    .await;
    let tok = Some("s3cret");
    let ts = 1_764_000_000_000_000_000i64;
    let fields: String = (0..300)
        .map(|i| format!("f{i}=1i"))
        .collect::<Vec<_>>()
        .join(",");
    let tags: String = (0..70).map(|i| format!(",t{i}=v")).collect();
    let long_name = "S".repeat(257);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "records per request",
            WRITE,
            GOOD.repeat(101),
            413,
            "max_records_per_request",
        ),
        (
            "line length",
            WRITE,
            format!("{GOOD}m f=\"{}\" 1\n", "x".repeat(5000)),
            413,
            "max_line_bytes",
        ),
        (
            "fields per point",
            WRITE,
            format!("{GOOD}m {fields} 1\n"),
            400,
            "max_fields_per_point",
        ),
        (
            "tags per point",
            WRITE,
            format!("{GOOD}m{tags} f=1 1\n"),
            400,
            "max_tags_per_point",
        ),
        (
            "tag value length",
            WRITE,
            format!("{GOOD}m,t={long_name} f=1 1\n"),
            400,
            "max_name_bytes",
        ),
        (
            "symbol length",
            "/v1/records",
            format!(
                r#"{{"type":"kline","venue":"V","symbol":"{long_name}","interval":"1m","ts":{ts},"open":1,"high":1,"low":1,"close":1,"volume":1}}"#
            ),
            400,
            "symbol",
        ),
        (
            "trade id length",
            "/v1/records",
            format!("{}\n{}\n", trade_json("1", ts), trade_json(&long_name, ts)),
            400,
            "trade_id",
        ),
        (
            "encoded record size",
            WRITE,
            format!(
                "{GOOD}m f=\"{}\",g=\"{}\" 1\n",
                "x".repeat(1500),
                "y".repeat(1500)
            ),
            413,
            "max_record_bytes",
        ),
    ];
    for (name, path, body, want_status, want_text) in cases {
        let (status, text, _) = post(&relay.url, path, tok, false, body.into_bytes()).await;
        assert_eq!(status, want_status, "{name}: {text}");
        assert!(
            text.contains(want_text),
            "{name}: {text:?} lacks {want_text:?}"
        );
        assert!(text.contains("line"), "{name}: names the line: {text}");
        assert_eq!(relay.appended().await, 0, "{name}: appended records");
    }
    // At the limit is accepted.
    let (status, text, _) =
        post(&relay.url, WRITE, tok, false, GOOD.repeat(100).into_bytes()).await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(relay.appended().await, 100);
    relay.stop().await;
}

#[tokio::test]
async fn colliding_trades_in_separate_requests_reach_the_sink_with_distinct_timestamps() {
    use walrelay::ingest::identity::base_timestamp;
    let ms = 1_764_000_000_123_000_000i64;
    let make = |id: &str| {
        walrelay::Record::Trade(walrelay::record::Trade {
            venue: "BINANCE".into(),
            symbol: "BTCUSDT".into(),
            ts: ms,
            price: 1.5,
            quantity: 2.0,
            side: "buy".into(),
            trade_id: id.into(),
        })
    };
    // Three trade ids whose identity hashes put them on the same nanosecond.
    let mut by_ts = std::collections::HashMap::<i64, Vec<String>>::new();
    let ids = (0u64..)
        .find_map(|i| {
            let id = i.to_string();
            let v = by_ts
                .entry(base_timestamp(&make(&id)).unwrap())
                .or_default();
            v.push(id);
            (v.len() == 3).then(|| v.clone())
        })
        .unwrap();
    let base = tempfile::TempDir::new().unwrap();
    let wal_dir = base.path().join("wal");
    let post_trade = |url: String, id: String| async move {
        let (status, text, _) = post(
            &url,
            "/v1/records",
            Some("s3cret"),
            false,
            trade_json(&id, ms).into_bytes(),
        )
        .await;
        assert_eq!(status, 204, "{text}");
    };
    let d = wal_dir.clone();
    let relay = Relay::start(move |c| c.wal.dir = d).await;
    post_trade(relay.url.clone(), ids[0].clone()).await;
    post_trade(relay.url.clone(), ids[1].clone()).await;
    // A producer's retry of the first trade maps to the same point.
    post_trade(relay.url.clone(), ids[0].clone()).await;
    relay.stop().await;
    // After a restart the window is rebuilt from the log's tail.
    let d = wal_dir.clone();
    let relay = Relay::start(move |c| c.wal.dir = d).await;
    post_trade(relay.url.clone(), ids[2].clone()).await;
    relay.stop().await;

    let wal = walrelay::Wal::open(walrelay::WalConfig::new(&wal_dir)).unwrap();
    let records: Vec<walrelay::Record> = wal
        .read_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|f| f.records)
        .collect();
    assert_eq!(records.len(), 4);
    // What the Influx sink writes for each: the line protocol timestamps.
    let line_ts = |r: &walrelay::Record| {
        let mut buf = Vec::new();
        assert!(walrelay::db::influx::encode(r, &mut buf));
        let line = String::from_utf8(buf).unwrap();
        line.trim_end()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    let ts: Vec<i64> = records.iter().map(line_ts).collect();
    assert_ne!(ts[0], ts[1], "two distinct trades, one nanosecond: {ts:?}");
    assert_eq!(ts[0], ts[2], "a retry maps to the same point: {ts:?}");
    assert!(ts[3] != ts[0] && ts[3] != ts[1], "after restart: {ts:?}");
    assert!(ts.iter().all(|t| t / 1_000_000 == ms / 1_000_000));
}

/// Reads from a raw connection until EOF, an error or `within`; returns
/// what arrived and whether the server closed the connection.
async fn read_until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn a_stalled_client_does_not_delay_shutdown_past_the_grace() {
    use tokio::io::AsyncWriteExt;
    let base = tempfile::TempDir::new().unwrap();
    let wal_dir = base.path().join("wal");
    let d = wal_dir.clone();
    let relay = Relay::start(move |c| {
        c.wal.dir = d;
        c.drain.shutdown_grace_ms = 1000;
    })
    .await;
    let (status, text, _) = post(
        &relay.url,
        WRITE,
        Some("s3cret"),
        false,
        GOOD.repeat(5).into_bytes(),
    )
    .await;
    assert_eq!(status, 204, "{text}");
    // Headers and part of a body, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(host_of(&relay.url))
        .await
        .unwrap();
    stalled
        .write_all(b"POST /api/v2/write?bucket=b HTTP/1.1\r\nHost: x\r\nAuthorization: Token s3cret\r\nContent-Length: 100000\r\n\r\nm f=1")
        .await
        .unwrap();
    // And one that sent half a header.
    let mut half = tokio::net::TcpStream::connect(host_of(&relay.url))
        .await
        .unwrap();
    half.write_all(b"POST /api/v2/write HTTP/1.1\r\nHost:")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let finished = tokio::time::timeout(Duration::from_secs(10), relay.relay.stop()).await;
    let took = started.elapsed();
    assert!(
        finished.is_ok(),
        "shutdown still waiting on stalled clients after 10 s"
    );
    finished.unwrap().unwrap();
    assert!(
        took <= Duration::from_millis(1000 + 1000),
        "shutdown took {took:?}, over the grace of 1 s plus 1 s"
    );
    // What was acknowledged stays acknowledged.
    let (frames, bad) = log_after(base.path());
    assert_eq!(frames.iter().sum::<usize>(), 5);
    assert_eq!(bad, 0);
    drop((stalled, half));
}

#[tokio::test]
async fn header_body_and_idle_deadlines_close_slow_connections() {
    use tokio::io::AsyncWriteExt;
    let relay = Relay::start(|c| {
        c.ingest.header_timeout_ms = 300;
        c.ingest.body_timeout_ms = 300;
        c.ingest.idle_timeout_ms = 600;
    })
    .await;
    let host = host_of(&relay.url);
    // Body deadline: 408 in InfluxDB's error shape, nothing appended.
    let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
    s.write_all(b"POST /api/v2/write?bucket=b HTTP/1.1\r\nHost: x\r\nAuthorization: Token s3cret\r\nContent-Length: 1000\r\n\r\nm f=1")
        .await
        .unwrap();
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(got.contains("request timeout"), "{got:?}");
    // Header deadline: the connection is closed.
    let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost:").await.unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(closed, "a half-sent header keeps its connection");
    assert_eq!(relay.appended().await, 0);
    relay.stop().await;
    // Idle deadline (header deadline long): a keep-alive connection without
    // traffic is closed.
    let relay = Relay::start(|c| {
        c.ingest.header_timeout_ms = 30_000;
        c.ingest.idle_timeout_ms = 400;
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(host_of(&relay.url))
        .await
        .unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(closed, "an idle keep-alive connection stays open");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(relay.appended().await, 0);
    relay.stop().await;
}

#[tokio::test]
async fn a_spent_memory_budget_answers_503_with_retry_after_and_appends_nothing() {
    use tokio::io::AsyncWriteExt;
    let relay = Relay::start(|c| {
        c.ingest.max_body_bytes = 64 * 1024;
        c.ingest.limits.max_records_per_request = 100;
        c.ingest.memory_budget_bytes = walrelay::ingest::budget::request_ceiling(64 * 1024, 100);
        c.ingest.budget_wait_ms = 200;
        c.ingest.body_timeout_ms = 1500;
    })
    .await;
    // Requests announcing maximum-size bodies hold their share of the budget
    // while their bodies trickle in.
    let mut slow = Vec::new();
    for _ in 0..6 {
        let mut s = tokio::net::TcpStream::connect(host_of(&relay.url))
            .await
            .unwrap();
        s.write_all(b"POST /api/v2/write?bucket=b HTTP/1.1\r\nHost: x\r\nAuthorization: Token s3cret\r\nContent-Length: 65536\r\n\r\nm f=1")
            .await
            .unwrap();
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let wide: String = (0..50)
        .map(|i| format!("m,t=a s=\"{}\" {i}\n", "x".repeat(1000)))
        .collect();
    let (status, text, retry_after) =
        post(&relay.url, WRITE, Some("s3cret"), false, wide.into_bytes()).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("memory budget"), "{text}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(relay.appended().await, 0);
    // Once the slow requests hit their body deadline, the budget is free.
    let mut timed_out = 0;
    for s in &mut slow {
        let (got, _) = read_until_closed(s, Duration::from_secs(5)).await;
        // The sixth found the budget spent by the other five.
        assert!(
            got.starts_with("HTTP/1.1 408") || got.starts_with("HTTP/1.1 503"),
            "{got:?}"
        );
        timed_out += usize::from(got.starts_with("HTTP/1.1 408"));
    }
    assert_eq!(timed_out, 5);
    let (status, text, _) = post(
        &relay.url,
        WRITE,
        Some("s3cret"),
        false,
        GOOD.repeat(2).into_bytes(),
    )
    .await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(relay.appended().await, 2);
    relay.stop().await;
}

/// Posts `body` to `path` with `Authorization: <auth>` and returns the status,
/// the body as JSON and `Retry-After`.
async fn post_v1(
    url: &str,
    path: &str,
    auth: Option<&str>,
    gz: bool,
    body: Vec<u8>,
) -> (u16, serde_json::Value, Option<String>) {
    let (status, text, retry_after) = post_raw(url, path, auth, gz, body).await;
    (status, v1_json(&text), retry_after)
}

/// A 1.x answer's body as JSON (`Null` when empty).
fn v1_json(text: &str) -> serde_json::Value {
    if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text:?}"))
    }
}

#[tokio::test]
async fn the_1x_write_api_refuses_as_v2_does_in_1x_error_shape_and_appends_nothing() {
    let relay = Relay::start(|c| c.ingest.limits.max_records_per_request = 3).await;
    let huge_line = format!("m f=\"{}\" 1\n", "x".repeat(70 * 1024));
    // The same refusals as on /api/v2/write: same status, the v2 message as
    // the 1.x `error`.
    let same: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "bad line",
            format!("{GOOD}m,t= f=1 1\n").into_bytes(),
            false,
        ),
        (
            "wrong type",
            format!("{GOOD}m f=12x3 1\n").into_bytes(),
            false,
        ),
        (
            "huge line",
            format!("{GOOD}{huge_line}").into_bytes(),
            false,
        ),
        ("too many records", GOOD.repeat(4).into_bytes(), false),
        (
            "invalid utf-8",
            [GOOD.as_bytes(), b"m,t=\xff f=1 1\n"].concat(),
            false,
        ),
        ("corrupt gzip", b"not gzip".to_vec(), true),
        ("empty body", Vec::new(), false),
    ];
    for (name, body, gz) in same {
        let (v2_status, v2_text, _) =
            post(&relay.url, WRITE, Some("s3cret"), gz, body.clone()).await;
        let v2: serde_json::Value = serde_json::from_str(&v2_text).unwrap();
        let (status, v1, _) = post_v1(
            &relay.url,
            "/write?db=telegraf&u=w&p=s3cret",
            None,
            gz,
            body,
        )
        .await;
        assert!(status >= 400, "{name}: {status}");
        assert_eq!(status, v2_status, "{name}");
        assert_eq!(v1, serde_json::json!({ "error": v2["message"] }), "{name}");
    }
    // 1.x's own parameters, and credentials.
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        (
            "no db",
            "/write?p=s3cret",
            None,
            400,
            "database is required",
        ),
        (
            "bad precision",
            "/write?db=d&p=s3cret&precision=us",
            None,
            400,
            "invalid query parameter `precision`: \"us\" is not one of n, ns, u, ms, s, m, h",
        ),
        (
            "bad consistency",
            "/write?db=d&p=s3cret&consistency=most",
            None,
            400,
            "`consistency`",
        ),
        (
            "wrong p",
            "/write?db=d&u=w&p=nope",
            None,
            401,
            "unauthorized: missing or wrong token",
        ),
        (
            "no credentials",
            "/write?db=d",
            None,
            401,
            "unauthorized: missing or wrong token",
        ),
        (
            "wrong basic",
            "/write?db=d",
            Some("Basic dzpub3Bl"),
            401,
            "unauthorized",
        ),
        // Credentials are checked before parameters, as InfluxDB 1.x does.
        (
            "wrong p and no db",
            "/write?p=nope",
            None,
            401,
            "unauthorized",
        ),
    ];
    for (name, path, auth, want_status, want_text) in cases {
        let (status, v1, _) =
            post_v1(&relay.url, path, auth, false, GOOD.as_bytes().to_vec()).await;
        assert_eq!(status, want_status, "{name}: {v1}");
        let err = v1["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {v1}"));
        assert!(
            err.contains(want_text),
            "{name}: {err:?} lacks {want_text:?}"
        );
        assert_eq!(v1.as_object().unwrap().len(), 1, "{name}: {v1}");
    }
    assert_eq!(
        relay.appended().await,
        0,
        "a refused request appended records"
    );
    // Accepted through each way of presenting the token; gzip too.
    for (path, auth, gz, body) in [
        (
            "/write?db=d&u=w&p=s3cret",
            None,
            false,
            GOOD.as_bytes().to_vec(),
        ),
        // "w:s3cret"
        (
            "/write?db=d",
            Some("Basic dzpzM2NyZXQ="),
            false,
            GOOD.as_bytes().to_vec(),
        ),
        (
            "/write?db=d&precision=s",
            Some("Token s3cret"),
            true,
            gzip(b"m f=1 1764000000\n"),
        ),
    ] {
        let (s, v1, _) = post_v1(&relay.url, path, auth, gz, body).await;
        assert_eq!(s, 204, "{path} {auth:?}: {v1}");
    }
    assert_eq!(relay.appended().await, 3);
    relay.stop().await;
}

#[tokio::test]
async fn a_full_log_refuses_1x_writes_with_retry_after_and_health_fails() {
    let relay = Relay::start(|c| {
        c.wal.max_bytes = 4096;
        c.wal.block_timeout_ms = 200;
    })
    .await;
    let health = || async {
        let r = reqwest::get(format!("{}/health", relay.url)).await.unwrap();
        let code = r.status().as_u16();
        (code, r.json::<serde_json::Value>().await.unwrap())
    };
    let (code, h) = health().await;
    assert_eq!((code, h["status"].as_str()), (200, Some("pass")), "{h}");
    let (acked, text, retry_after) =
        fill_until_refused(&relay.url, "/write?db=d&p=s3cret", None).await;
    let v1 = v1_json(&text);
    assert!(v1["error"].as_str().unwrap().contains("full"), "{v1}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(relay.appended().await, acked);
    // No sink drains it: the log stays full and /health says so.
    let (code, h) = health().await;
    assert_eq!(code, 503, "{h}");
    assert_eq!(h["status"], "fail", "{h}");
    assert_eq!(h["checks"][0]["name"], "log", "{h}");
    assert_eq!(h["checks"][0]["status"], "fail", "{h}");
    relay.stop().await;
}

#[tokio::test]
async fn ping_health_and_ready_answer_in_influxdbs_shapes() {
    let relay = Relay::start(|_| {}).await;
    let c = reqwest::Client::new();
    let version = env!("CARGO_PKG_VERSION");
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let r = c
            .request(method.clone(), format!("{}/ping", relay.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204, "{method}");
        assert_eq!(r.headers()["x-influxdb-version"], version);
        assert_eq!(r.headers()["x-influxdb-build"], "walrelay");
    }
    for q in ["verbose=true", "verbose=1"] {
        let r = c
            .get(format!("{}/ping?{q}", relay.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["version"], version, "{v}");
    }
    let r = c
        .get(format!("{}/ping?verbose=false", relay.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    // No sink configured: the log is the only check.
    let h = get_json(&c, format!("{}/health", relay.url)).await;
    let mut keys: Vec<_> = h.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["checks", "commit", "message", "name", "status", "version"]
    );
    assert_eq!(h["status"], "pass");
    assert_eq!(h["version"], version);
    assert_eq!(h["checks"].as_array().unwrap().len(), 1, "{h}");
    let r = get_json(&c, format!("{}/ready", relay.url)).await;
    assert_eq!(r["status"], "ready", "{r}");
    let started = r["started"].as_str().unwrap();
    assert!(
        started.len() >= 20 && started.ends_with('Z') && &started[10..11] == "T",
        "{r}"
    );
    assert!(r["up"].as_str().unwrap().ends_with('s'), "{r}");
    assert_eq!(r["unhealthy_sinks"], serde_json::json!([]), "{r}");
    relay.stop().await;
}
