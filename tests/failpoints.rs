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
