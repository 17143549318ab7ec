//! The durability policies' promise under a crash of the real binary
//! (`src/wal/durability.rs`): `walrelay run` takes line protocol from four
//! writers posting 100-line requests to `/api/v2/write`, is SIGKILLed at a
//! random moment, and is restarted on the same log, ten times per policy.
//! After each kill the log is opened in-process and every record whose
//! request was acknowledged (204) must be in it exactly once: the bound is 0
//! lost under `sync` and under `interval_ms` alike, because interval mode
//! acknowledges only after sled has written the group out of the process.
//!
//! Run with `--nocapture` to see the figures (trials, acknowledged, in the
//! log, lost) that docs/OPERATIONS.md and the closing notes quote.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use walrelay::{Record, Wal, WalConfig};

const WRITERS: u64 = 4;
const LINES: u64 = 100;
const TRIALS: u64 = 10;

/// The timestamp of line `i` of request `req` of writer `w` in trial
/// `trial`: unique across the whole test, so a timestamp names one record.
fn ts(trial: u64, w: u64, req: u64, i: u64) -> i64 {
    common::records::TS + (trial * 100_000_000_000 + w * 10_000_000_000 + req * LINES + i) as i64
}

/// Posts requests until the relay stops answering; returns the timestamps
/// of every line of every acknowledged request.
async fn writer(
    url: String,
    trial: u64,
    w: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    first: Arc<tokio::sync::Notify>,
) {
    let client = common::http::client();
    for req in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut body = String::with_capacity(LINES as usize * 100);
        for i in 0..LINES {
            body.push_str(&format!(
                "trades,symbol=BTCUSDT,exchange=BINANCE,side=buy price=97000.5,quantity=0.1 {}\n",
                ts(trial, w, req, i)
            ));
        }
        match client
            .post(format!("{url}{}", common::http::WRITE_PATH))
            .body(body)
            .send()
            .await
        {
            Ok(resp) if resp.status() == reqwest::StatusCode::NO_CONTENT => {
                acked
                    .lock()
                    .unwrap()
                    .extend((0..LINES).map(|i| ts(trial, w, req, i)));
                first.notify_one();
            }
            // Refused (503 under backpressure): not acknowledged, not counted.
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            // The relay was killed (connection reset or refused).
            Err(_) => return,
        }
    }
}

/// How often each trade timestamp occurs in the log at `dir`.
fn in_log(dir: &std::path::Path) -> HashMap<i64, u32> {
    let wal = Wal::open(WalConfig::new(dir)).unwrap();
    let mut seen = HashMap::new();
    for f in wal.read_after(0, usize::MAX).unwrap() {
        for r in f.records {
            let Record::Trade(t) = r else {
                panic!("unexpected record {r:?}")
            };
            *seen.entry(t.ts).or_insert(0u32) += 1;
        }
    }
    seen
}

/// Runs the trials with `[wal]` extra settings `wal_extra` (TOML lines of a
/// `[wal.durability]` table, or empty for the default) and asserts that no
/// acknowledged record is lost or duplicated. Returns the summary line.
async fn kill_trials(name: &str, wal_extra: &str) -> String {
    let dir = tempfile::TempDir::new().unwrap();
    let log_dir = dir.path().join("wal");
    let mut all_acked: Vec<i64> = Vec::new();
    let mut rng = rand::thread_rng();
    let mut per_trial = Vec::new();
    for trial in 0..TRIALS {
        let (mut child, port) = common::relay::spawn_binary(dir.path(), wal_extra);
        let url = format!("http://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        while reqwest::get(format!("{url}/health")).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{name} trial {trial}: the relay did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let first = Arc::new(tokio::sync::Notify::new());
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(
                    url.clone(),
                    trial,
                    w,
                    stop.clone(),
                    acked.clone(),
                    first.clone(),
                ))
            })
            .collect();
        // The delay counts from the first acknowledgement, so the kill
        // always lands under load.
        tokio::time::timeout(Duration::from_secs(30), first.notified())
            .await
            .unwrap_or_else(|_| panic!("{name} trial {trial}: nothing acknowledged"));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2500))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        all_acked.extend(&acked);
        let seen = in_log(&log_dir);
        let lost: Vec<i64> = all_acked
            .iter()
            .copied()
            .filter(|t| !seen.contains_key(t))
            .collect();
        let twice = seen.values().filter(|&&n| n > 1).count();
        per_trial.push(format!("{}/{}", acked.len(), lost.len()));
        assert!(
            lost.is_empty(),
            "{name} trial {trial}: {} of {} acknowledged records are not in the log after the kill \
             (first lost timestamps {:?})",
            lost.len(),
            all_acked.len(),
            &lost[..lost.len().min(3)]
        );
        assert_eq!(twice, 0, "{name} trial {trial}: records in the log twice");
    }
    let seen = in_log(&log_dir);
    let line = format!(
        "crash_durability {name}: trials={TRIALS} acknowledged={} in_log={} lost=0 duplicated=0 \
         (per trial acknowledged/lost: {})",
        all_acked.len(),
        seen.len(),
        per_trial.join(" ")
    );
    println!("{line}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sigkill_under_load_loses_nothing_acknowledged() {
    kill_trials("sync", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_sigkill_under_load_loses_nothing_acknowledged() {
    kill_trials("interval_ms=50", "[wal.durability]\ninterval_ms = 50\n").await;
}
