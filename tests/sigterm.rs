//! The `walrelay run` binary under SIGTERM while clients stall: it exits
//! within `drain.shutdown_grace_ms` plus a second, with exit code 0, and
//! every acknowledged record is in the log.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const GRACE_MS: u64 = 1500;

fn request(port: u16, raw: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn sigterm_finishes_within_the_grace_whatever_clients_do() {
    let dir = tempfile::TempDir::new().unwrap();
    let (mut child, port) = common::relay::spawn_binary(
        dir.path(),
        &format!("[drain]\nshutdown_grace_ms = {GRACE_MS}\n"),
    );
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "relay did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let body =
        "trades,symbol=BTCUSDT,exchange=BINANCE,side=buy price=1,quantity=1 1764000000000000000\n"
            .repeat(3);
    let answer = request(
        port,
        &format!(
            "POST /api/v2/write?bucket=b HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    // A client that sent headers and part of a body, one that sent half a
    // header, and one idle keep-alive connection.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled
        .write_all(b"POST /api/v2/write?bucket=b HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nm f=1")
        .unwrap();
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(b"POST /api/v2/write HTTP/1.1\r\nHo")
        .unwrap();
    let _idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let signalled = Instant::now();
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if signalled.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("still running 15 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = signalled.elapsed();
    eprintln!("exit {took:?} after SIGTERM (grace {GRACE_MS} ms)");
    assert!(status.success(), "{status:?}");
    assert!(
        took <= Duration::from_millis(GRACE_MS + 1000),
        "exit took {took:?}, over shutdown_grace_ms + 1 s"
    );
    let wal = walrelay::Wal::open(walrelay::WalConfig::new(dir.path().join("wal"))).unwrap();
    let records: usize = wal
        .read_after(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|f| f.records.len())
        .sum();
    assert_eq!(records, 3, "the acknowledged records are in the log");
    drop((stalled, half));
}
