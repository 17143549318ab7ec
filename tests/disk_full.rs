//! A full disk under the log, on a small tmpfs this test mounts (as root;
//! skipped with a printed reason otherwise). A ballast file fills the
//! filesystem the way another process's logs would.
//!
//! What is tested: an append that would leave less than `min_free_bytes` is
//! refused as retriable (HTTP 503 with `Retry-After`), the relay keeps
//! running and draining (cursors advance, frames are truncated), `/ready`
//! says why, nothing acknowledged is lost, and appends succeed again by
//! themselves once the ballast is deleted. Records are counted exactly.

#[allow(dead_code)]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use walrelay::config::{Config, Secret};
use walrelay::record::Record;
use walrelay::wal::{Durability, Wal, WalConfig, WalError};

const FS_BYTES: u64 = 48 * 1024 * 1024;
const MIN_FREE: u64 = 16 * 1024 * 1024;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with the reason printed) where the test cannot mount.
    fn mount() -> Option<Tmpfs> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a small tmpfs needs root; run the suite as root to test a full disk");
            return None;
        }
        let dir = tempfile::TempDir::new().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={FS_BYTES}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.path().to_str().unwrap()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// Writes a ballast file until `leave` bytes are free; returns its path.
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        let path = self.path().join("ballast");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let chunk = vec![0x5Au8; 64 * 1024];
        while self.free() > leave + chunk.len() as u64 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

use common::http::{get_json, trade_line};
use common::records::{trade, trade_ids as ids};

#[test]
fn a_nearly_full_disk_refuses_appends_keeps_draining_and_recovers_when_space_frees() {
    let Some(fs) = Tmpfs::mount() else { return };
    let config = WalConfig {
        durability: Durability::Sync,
        min_free_bytes: MIN_FREE,
        segment_bytes: 1024 * 1024,
        ..WalConfig::new(fs.path().join("wal")).with_sinks(["a"])
    };
    let wal = Wal::open(config.clone()).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        wal.append(&[trade(i)]).unwrap();
        acknowledged.push(i);
    }
    let ballast = fs.fill_leaving(MIN_FREE / 2);
    // The log trusts an ample reading of the free space for 50 ms.
    std::thread::sleep(Duration::from_millis(60));

    let err = wal.append(&[trade(1000)]).unwrap_err();
    assert!(matches!(err, WalError::DiskFull { .. }), "{err}");
    assert!(err.is_retriable(), "a full disk is 'try later'");
    assert!(wal.refusing().unwrap().contains("min_free_bytes"));
    assert_eq!(
        wal.failure(),
        None,
        "refused early: the log itself is healthy"
    );
    assert_eq!(wal.reserved_bytes(), 0);

    // Draining goes on: a sink delivers half and the log truncates.
    let frames = wal.read_after(0, 100).unwrap();
    let delivered: Vec<u64> = ids(&wal)[..frames.iter().map(|f| f.records.len()).sum()].to_vec();
    wal.ack("a", frames.last().unwrap().seq).unwrap();
    assert_eq!(wal.stats().records, 200 - delivered.len() as u64);
    // Dead letters can still be written (drainers must not stall).
    wal.dead_letters()
        .put("a", &trade(5000), "22003: out of range", 1)
        .unwrap();
    // Still refused while the disk stays full.
    assert!(matches!(
        wal.append(&[trade(1001)]),
        Err(WalError::DiskFull { .. })
    ));

    std::fs::remove_file(&ballast).unwrap();
    wal.append(&[trade(1002)])
        .expect("appends resume once space is freed");
    acknowledged.push(1002);
    assert_eq!(wal.refusing(), None);
    drop(wal);

    let wal = Wal::open(config).unwrap();
    let mut found = delivered.clone();
    found.extend(ids(&wal));
    assert_eq!(
        found, acknowledged,
        "every acknowledged record, once, in order"
    );
}

#[test]
fn a_full_disk_is_503_with_retry_after_and_ready_says_why() {
    let Some(fs) = Tmpfs::mount() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut config = Config::default();
        config.wal.dir = fs.path().join("wal");
        config.wal.min_free_bytes = MIN_FREE;
        config.wal.segment_bytes = 1024 * 1024;
        config.ingest.token = Some(Secret::new("s3cret"));
        let relay = common::relay::ServedRelay::start(config).await;
        let url = relay.url.clone();
        let client = common::http::client();
        let write = |i: u64| common::http::write(&client, &url, "s3cret", trade_line(i));
        assert_eq!(write(1).await.unwrap().status(), 204);
        let ballast = fs.fill_leaving(MIN_FREE / 2);
        // The log trusts an ample reading of the free space for 50 ms.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let r = write(2).await.unwrap();
        assert_eq!(
            r.status(),
            503,
            "a full disk is 'try later', not a server bug"
        );
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(retry.as_deref(), Some("5"));
        assert!(r.text().await.unwrap().contains("min_free_bytes"));
        let ready = client.get(format!("{url}/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let v: serde_json::Value = ready.json().await.unwrap();
        assert!(v["reason"].as_str().unwrap().contains("nearly full"), "{v}");
        // InfluxDB's /health says the same: the log check fails with the reason.
        let health = client.get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(health.status(), 503);
        let h: serde_json::Value = health.json().await.unwrap();
        assert_eq!(h["status"], "fail", "{h}");
        assert_eq!(h["checks"][0]["name"], "log", "{h}");
        assert!(
            h["checks"][0]["message"]
                .as_str()
                .unwrap()
                .contains("nearly full"),
            "{h}"
        );

        std::fs::remove_file(&ballast).unwrap();
        assert_eq!(write(3).await.unwrap().status(), 204, "recovers by itself");
        let ready = client.get(format!("{url}/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        let health = client.get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        let v = get_json(&client, format!("{url}/status")).await;
        assert_eq!(
            v["log"]["appended_records"], 2,
            "the refused write appended nothing"
        );
        drop(client);
        relay.stop().await.unwrap();
    });
}

/// With the floor turned off (`min_free_bytes = 0`) sled meets ENOSPC
/// itself: the log fails stop (nothing after it is acknowledged, appends are
/// refused even once space is back, because sled keeps the error), and a
/// restart recovers every acknowledged record. This is why the floor exists.
#[test]
fn without_the_floor_enospc_fails_stop_and_a_restart_recovers() {
    let Some(fs) = Tmpfs::mount() else { return };
    let config = WalConfig {
        durability: Durability::Sync,
        min_free_bytes: 0,
        segment_bytes: 1024 * 1024,
        ..WalConfig::new(fs.path().join("wal")).with_sinks(["a"])
    };
    let wal = Wal::open(config.clone()).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..100 {
        wal.append(&[trade(i)]).unwrap();
        acknowledged.push(i);
    }
    let ballast = fs.fill_leaving(0);
    // Large appends until the disk refuses one.
    let mut refused = None;
    for i in 0..10_000u64 {
        let batch: Vec<Record> = (0..200).map(|j| trade(100_000 + i * 200 + j)).collect();
        match wal.append(&batch) {
            Ok(_) => acknowledged.extend((0..200).map(|j| 100_000 + i * 200 + j)),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("a full disk refuses an append");
    assert!(matches!(err, WalError::Failed { .. }), "{err}");
    std::fs::remove_file(&ballast).unwrap();
    assert!(
        matches!(wal.append(&[trade(1)]), Err(WalError::Failed { .. })),
        "fail-stop: refused until restart"
    );
    drop(wal);
    let wal = Wal::open(config).unwrap();
    let found = ids(&wal);
    let acked: std::collections::HashSet<u64> = acknowledged.iter().copied().collect();
    // Every acknowledged record is there, in order; anything else is from
    // the append that was refused (never acknowledged).
    let kept: Vec<u64> = found
        .iter()
        .copied()
        .filter(|i| acked.contains(i))
        .collect();
    assert_eq!(kept, acknowledged);
    wal.append(&[trade(7)]).expect("a restart recovers");
}
