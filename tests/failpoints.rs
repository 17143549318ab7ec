//! Fault injection at the log's fsync boundary (named fail points, feature
//! `failpoints`; `scripts/test.sh` runs this target with it). Fail points are
//! process-global, so every test holds a `fail::FailScenario`, which
//! serialises them.
//!
//! What is tested: the first failed `fdatasync` puts the log in a failed
//! state (fail-stop, `src/wal/durability.rs`): the append it covered and every
//! later one are refused, also once the disk works again; nothing reserved
//! leaks; `/ready`, `/status` and `walrelay status` say why; a restart
//! re-opens the log with every acknowledged record.

#[allow(dead_code)]
mod common;

use std::process::Command;

use walrelay::config::{Config, Secret};
use walrelay::wal::{Durability, Wal, WalConfig, WalError};

use common::http::{get_json, get_text, trade_line};
use common::records::{trade, trade_ids as ids};

#[test]
fn a_failed_fdatasync_stops_acknowledgements_until_restart() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::TempDir::new().unwrap();
    let config = WalConfig {
        durability: Durability::Sync,
        ..WalConfig::new(dir.path()).with_sinks(["a"])
    };
    let wal = Wal::open(config.clone()).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        wal.append(&[trade(i)]).unwrap();
        acknowledged.push(i);
    }
    assert_eq!(wal.failure(), None);

    fail::cfg("wal::fdatasync", "return").unwrap();
    let err = wal.append(&[trade(10)]).unwrap_err();
    assert!(matches!(err, WalError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("fdatasync"), "{err}");
    // The disk "works" again, but a later sync could succeed over dropped
    // pages: the log stays failed.
    fail::remove("wal::fdatasync");
    for i in 11..15 {
        let err = wal.append(&[trade(i)]).unwrap_err();
        assert!(matches!(err, WalError::Failed { .. }), "append {i}: {err}");
    }
    let why = wal.failure().expect("the log says why it refuses appends");
    assert!(
        why.contains("injected by fail point wal::fdatasync"),
        "{why}"
    );
    assert!(why.contains("restart"), "{why}");
    assert_eq!(wal.reserved_bytes(), 0, "refused appends hold no space");
    // Dead letters are flushed too, so they are refused as well.
    assert!(wal.dead_letters().put("a", &trade(99), "x", 1).is_err());
    // Readers only see what was acknowledged.
    assert_eq!(wal.watch_last_seq().borrow().to_owned(), 10);
    drop(wal);

    let wal = Wal::open(config).unwrap();
    assert_eq!(wal.failure(), None, "a restart recovers");
    let found = ids(&wal);
    // Every acknowledged record is there, in order. The append whose sync
    // failed (10) was never acknowledged; sled may or may not have kept it.
    assert_eq!(&found[..10], &acknowledged[..]);
    assert!(found[10..].iter().all(|&i| i == 10), "{found:?}");
    wal.append(&[trade(20)]).unwrap();
    assert_eq!(*ids(&wal).last().unwrap(), 20);
    scenario.teardown();
}

/// Under `interval_ms`, the `fdatasync` runs every interval on a thread of
/// the log: when it fails, the log fails stop like under `sync` (appends
/// refused from then on, the reason names the periodic flush), and a restart
/// finds every acknowledged record.
#[test]
fn a_failed_periodic_fdatasync_under_interval_fails_the_log() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::TempDir::new().unwrap();
    let config = WalConfig {
        durability: Durability::Interval { interval_ms: 20 },
        ..WalConfig::new(dir.path()).with_sinks(["a"])
    };
    let wal = Wal::open(config.clone()).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        wal.append(&[trade(i)]).unwrap();
        acknowledged.push(i);
    }
    // Several intervals pass without failure.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(wal.failure(), None);
    fail::cfg("wal::fdatasync", "return").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while wal.failure().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the periodic fdatasync never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    fail::remove("wal::fdatasync");
    let why = wal.failure().unwrap();
    assert!(why.contains("periodic flush"), "{why}");
    let err = wal.append(&[trade(10)]).unwrap_err();
    assert!(matches!(err, WalError::Failed { .. }), "{err}");
    assert_eq!(wal.reserved_bytes(), 0, "refused appends hold no space");
    drop(wal);
    let wal = Wal::open(config).unwrap();
    assert_eq!(wal.failure(), None, "a restart recovers");
    assert_eq!(ids(&wal), acknowledged);
    scenario.teardown();
}

/// A group commit that fails before anything is applied gives back every
/// byte its appends reserved (the reservation's drop path), and fails stop
/// like a failed sync.
#[test]
fn a_failed_group_commit_releases_its_reservations_and_fails_stop() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::TempDir::new().unwrap();
    let config = WalConfig::new(dir.path()).with_sinks(["a"]);
    let wal = Wal::open(config.clone()).unwrap();
    wal.append(&[trade(0)]).unwrap();
    let before = wal.stats();
    fail::cfg("wal::commit", "return").unwrap();
    let producers: Vec<_> = (1..5)
        .map(|i| {
            let w = wal.clone();
            std::thread::spawn(move || w.append(&[trade(i), trade(100 + i)]))
        })
        .collect();
    for p in producers {
        let err = p.join().unwrap().unwrap_err();
        assert!(matches!(err, WalError::Failed { .. }), "{err}");
    }
    fail::remove("wal::commit");
    assert_eq!(
        wal.reserved_bytes(),
        0,
        "every refused append gave its space back"
    );
    assert_eq!(
        wal.stats(),
        before,
        "nothing of the failed groups is in the log"
    );
    assert!(wal.failure().unwrap().contains("wal::commit"));
    drop(wal);
    let wal = Wal::open(config).unwrap();
    assert_eq!(ids(&wal), vec![0]);
    wal.append(&[trade(9)]).unwrap();
    scenario.teardown();
}

#[test]
fn a_failed_log_answers_503_and_says_why_on_ready_status_and_the_cli() {
    let scenario = fail::FailScenario::setup();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::TempDir::new().unwrap();
        let mut config = Config::default();
        config.wal.dir = dir.path().join("wal");
        config.ingest.token = Some(Secret::new("s3cret"));
        let relay = common::relay::ServedRelay::start(config).await;
        let url = relay.url.clone();
        let client = common::http::client();
        let write = |i: u64| common::http::write(&client, &url, "s3cret", trade_line(i));
        assert_eq!(write(1).await.unwrap().status(), 204);
        let ready = client.get(format!("{url}/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 200);

        fail::cfg("wal::fdatasync", "return").unwrap();
        let r = write(2).await.unwrap();
        assert_eq!(
            r.status(),
            503,
            "a failed sync is 'try later', not a server bug"
        );
        assert!(
            r.headers().get("retry-after").is_some(),
            "503 carries Retry-After"
        );
        fail::remove("wal::fdatasync");
        let r = write(3).await.unwrap();
        assert_eq!(
            r.status(),
            503,
            "fail-stop: still refused after the fault cleared"
        );
        let body = r.text().await.unwrap();
        assert!(body.contains("fdatasync"), "{body}");

        let ready = client.get(format!("{url}/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let v: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(v["ready"], false);
        assert_eq!(v["status"], "unready", "{v}");
        assert!(v["reason"].as_str().unwrap().contains("fdatasync"), "{v}");
        let v = get_json(&client, format!("{url}/status")).await;
        assert!(
            v["log"]["unavailable"]
                .as_str()
                .unwrap()
                .contains("restart"),
            "{v}"
        );
        // The first record was acknowledged; the second was applied to sled
        // but its sync failed, so it was refused (never acknowledged); the
        // third was refused before it reached the log.
        assert_eq!(v["log"]["appended_records"], 2, "{v}");
        let metrics = get_text(&client, format!("{url}/metrics")).await;
        assert!(metrics.contains("walrelay_log_accepting 0"), "{metrics}");

        let out = tokio::task::spawn_blocking({
            let url = url.clone();
            move || {
                Command::new(env!("CARGO_BIN_EXE_walrelay"))
                    .args(["status", "--url", &url])
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("LOG REFUSES APPENDS") && text.contains("fdatasync"),
            "{text}"
        );

        drop(client); // no idle keep-alive connection delays the shutdown
                      // The closing flush fails too: the relay exits with the reason.
        let closed = relay.stop().await;
        assert!(
            matches!(
                closed,
                Err(walrelay::relay::RelayError::Wal(WalError::Failed { .. }))
            ),
            "{closed:?}"
        );
    });
    scenario.teardown();
}

/// The stall watchdog (`wal/durability.rs`): a group's sled write that does
/// not return (here it sleeps 1.5 s through the `wal::commit` fail point,
/// standing in for sled 0.34.7's truncation deadlock) fails the log within
/// `stall_ms` plus one check, before the write returns; new appends are then
/// refused at once instead of queueing behind it; the stalled append is never
/// acknowledged; a restart recovers every acknowledged record.
#[test]
fn a_write_that_does_not_return_fails_the_log_through_the_stall_watchdog() {
    use std::time::{Duration, Instant};
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::TempDir::new().unwrap();
    let config = WalConfig {
        durability: Durability::Sync,
        stall_ms: 300,
        ..WalConfig::new(dir.path()).with_sinks(["a"])
    };
    let wal = Wal::open(config.clone()).unwrap();
    let acknowledged: Vec<u64> = (0..5).collect();
    for &i in &acknowledged {
        wal.append(&[trade(i)]).unwrap();
    }
    // Healthy appends, however many, never trip it.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!wal.stalled());
    assert_eq!(wal.failure(), None);

    fail::cfg("wal::commit", "sleep(1500)").unwrap();
    let started = Instant::now();
    let stuck = {
        let wal = wal.clone();
        std::thread::spawn(move || wal.append(&[trade(5)]))
    };
    while !wal.stalled() {
        assert!(
            started.elapsed() < Duration::from_millis(1200),
            "the watchdog did not fire within stall_ms + a check"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let fired = started.elapsed();
    assert!(fired >= Duration::from_millis(300), "fired after {fired:?}");
    let why = wal.failure().expect("a stalled log says why");
    assert!(
        why.contains("group write to sled") && why.contains("has not returned"),
        "{why}"
    );
    assert!(
        why.contains("Appends that hang") && why.contains("restart"),
        "{why}"
    );
    // A new append is refused at once, not queued behind the stalled write.
    let t = Instant::now();
    let err = wal.append(&[trade(6)]).unwrap_err();
    assert!(matches!(err, WalError::Failed { .. }), "{err}");
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert!(!stuck.is_finished(), "the write is still stalled");
    fail::remove("wal::commit");
    // The stalled append finishes its write, but its flush is refused: it
    // is not acknowledged.
    let late = stuck.join().unwrap();
    assert!(late.is_err(), "{late:?}");
    assert_eq!(wal.watch_last_seq().borrow().to_owned(), 5);
    drop(wal);

    let wal = Wal::open(config).unwrap();
    assert_eq!(wal.failure(), None, "a restart recovers");
    assert!(!wal.stalled());
    let found = ids(&wal);
    assert_eq!(&found[..5], &acknowledged[..]);
    assert!(found[5..].iter().all(|&i| i == 5), "{found:?}");
    wal.append(&[trade(7)]).unwrap();
    scenario.teardown();
}

/// The same stall in `walrelay run` (the binary, fail point set through
/// `FAILPOINTS`): three appends are acknowledged, the fourth group's write
/// does not return, the watchdog fails the log and the relay exits with
/// status 75 and says why, without waiting for the stalled write; started
/// again on the same log it serves, with the three acknowledged records.
#[test]
fn walrelay_run_exits_75_on_a_stalled_log_and_recovers_on_restart() {
    use std::time::{Duration, Instant};
    let dir = tempfile::TempDir::new().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let conf = dir.path().join("c.toml");
    std::fs::write(
        &conf,
        format!(
            "[wal]\ndir = \"{}\"\nstall_ms = 500\n[ingest]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"s3cret\"\n",
            dir.path().join("wal").display()
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let spawn = |fail_points: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_walrelay"));
        cmd.args(["run", "--config", conf.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        match fail_points {
            Some(f) => cmd.env("FAILPOINTS", f),
            None => cmd.env_remove("FAILPOINTS"),
        };
        cmd.spawn().unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = common::http::client();
    let wait_ready = |child: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(child.try_wait().unwrap().is_none(), "the relay exited");
            let ok = rt.block_on(async {
                client
                    .get(format!("{url}/ready"))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the relay did not get ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let mut child = spawn(Some("wal::commit=3*off->sleep(30000)"));
    wait_ready(&mut child);
    for i in 0..3 {
        let r = rt
            .block_on(common::http::write(&client, &url, "s3cret", trade_line(i)))
            .unwrap();
        assert_eq!(r.status(), 204, "append {i}");
    }
    // The fourth never gets an answer: its group's write sleeps 30 s.
    let stuck = {
        let (client, url) = (client.clone(), url.clone());
        rt.spawn(async move { common::http::write(&client, &url, "s3cret", trade_line(3)).await })
    };
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the relay did not exit on a stalled log"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(75), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("write-ahead log stalled"), "{stderr}");
    assert!(stderr.contains("has not returned"), "{stderr}");
    // The stuck request got no acknowledgement (the connection dropped).
    let answer = rt.block_on(stuck).unwrap();
    assert!(
        answer.as_ref().map_or(true, |r| r.status() != 204),
        "{answer:?}"
    );

    let mut child = spawn(None);
    wait_ready(&mut child);
    let v = rt.block_on(get_json(&client, format!("{url}/status")));
    assert!(v["log"]["unavailable"].is_null(), "{v}");
    let records = v["log"]["records"].as_u64().unwrap();
    assert!(
        (3..=4).contains(&records),
        "the 3 acknowledged, maybe the 4th: {v}"
    );
    let r = rt
        .block_on(common::http::write(&client, &url, "s3cret", trade_line(9)))
        .unwrap();
    assert_eq!(r.status(), 204);
    let _ = child.kill();
    let _ = child.wait();
}
