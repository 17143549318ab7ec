//! The `walrelay` binary's offline commands on a real log.

use std::process::Command;

use walrelay::record::Trade;
use walrelay::{Record, Wal, WalConfig};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_walrelay"))
}

fn trade(id: &str) -> Record {
    Record::Trade(Trade {
        venue: "BINANCE".into(),
        symbol: "BTCUSDT".into(),
        ts: 1_764_000_000_000_000_000,
        price: 1.0,
        quantity: 1.0,
        side: "buy".into(),
        trade_id: id.into(),
    })
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::TempDir::new().unwrap();
    let conf = dir.path().join("c.toml");
    std::fs::write(
        &conf,
        format!("[wal]\ndir = \"{}\"\n", dir.path().join("wal").display()),
    )
    .unwrap();
    (dir, conf)
}

fn run(args: &[&str]) -> (i32, String) {
    let out = bin().args(args).env("RUST_LOG", "error").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn dlq_list_show_replay_purge() {
    let (dir, conf) = setup();
    {
        let wal = Wal::open(WalConfig::new(dir.path().join("wal"))).unwrap();
        let dl = wal.dead_letters();
        dl.put(
            "influx",
            &trade("a"),
            "400: field type conflict on line 1",
            2,
        )
        .unwrap();
        dl.put("influx", &trade("b"), "400: bad line 2", 1).unwrap();
        dl.put(
            "timescale",
            &trade("c"),
            "22003: numeric value out of range",
            1,
        )
        .unwrap();
    }
    let c = conf.to_str().unwrap();
    let (code, out) = run(&["dlq", "list", "--config", c, "--sink", "influx"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("field type conflict") && out.contains("2 dead letters for sink influx"),
        "{out}"
    );
    let id = out
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let (code, out) = run(&["dlq", "show", "--config", c, &id]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"trade_id\": \"a\""), "{out}");
    let (code, out) = run(&["dlq", "replay", "--config", c, "--sink", "influx"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed 2"), "{out}");
    let (code, out) = run(&["dlq", "purge", "--config", c]);
    assert_ne!(code, 0, "purge without --yes must refuse: {out}");
    let (code, out) = run(&["dlq", "purge", "--config", c, "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("purged 1"), "{out}");
    let wal = Wal::open(WalConfig::new(dir.path().join("wal"))).unwrap();
    let ids: Vec<String> = wal
        .read_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|f| f.records)
        .map(|r| match r {
            Record::Trade(t) => t.trade_id,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        ids,
        vec!["a", "b"],
        "replayed dead letters are back in the log"
    );
    assert_eq!(wal.dead_letters().count(None).unwrap(), 0);
}

#[test]
fn wal_verify_reports_corruption_and_exits_non_zero() {
    let (dir, conf) = setup();
    let c = conf.to_str().unwrap();
    {
        let wal = Wal::open(WalConfig::new(dir.path().join("wal"))).unwrap();
        wal.append(&[trade("1"), trade("2")]).unwrap();
    }
    let (code, out) = run(&["wal", "verify", "--config", c]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 good frames, 2 records"), "{out}");
    {
        let wal = Wal::open(WalConfig::new(dir.path().join("wal"))).unwrap();
        wal.debug_put_raw_frame(50, b"this is not a frame at all, just bytes")
            .unwrap();
    }
    let (code, out) = run(&["wal", "verify", "--config", c]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("CORRUPT frame 50") && out.contains("quarantine"),
        "{out}"
    );
}

#[test]
fn unknown_config_key_is_named() {
    let (dir, conf) = setup();
    std::fs::write(
        &conf,
        format!("[wal]\ndir = \"{}\"\nmax_bites = 5\n", dir.path().display()),
    )
    .unwrap();
    let (code, out) = run(&["wal", "verify", "--config", conf.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.contains("max_bites"), "{out}");
}

#[test]
fn dlq_replay_refuses_and_keeps_a_dead_letter_that_fails_validation() {
    let (dir, conf) = setup();
    {
        let wal = Wal::open(WalConfig::new(dir.path().join("wal"))).unwrap();
        let dl = wal.dead_letters();
        let mut bad = trade("nan");
        if let Record::Trade(t) = &mut bad {
            t.price = f64::NAN;
        }
        dl.put("grpc", &bad, "field `price` must be a finite number", 0)
            .unwrap();
        dl.put("influx", &trade("ok"), "400: transient", 1).unwrap();
    }
    let c = conf.to_str().unwrap();
    let (code, out) = run(&["dlq", "replay", "--config", c]);
    assert_ne!(
        code, 0,
        "a refused dead letter is reported as a failure: {out}"
    );
    assert!(out.contains("refused") && out.contains("price"), "{out}");
    assert!(
        out.contains("replayed 1"),
        "the good one behind it still goes: {out}"
    );
    let wal = Wal::open(WalConfig::new(dir.path().join("wal"))).unwrap();
    let in_log: Vec<Record> = wal
        .read_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|f| f.records)
        .collect();
    assert_eq!(
        in_log,
        vec![trade("ok")],
        "only the valid record reached the log"
    );
    let kept = wal.dead_letters().list(None, 10).unwrap();
    assert_eq!(kept.len(), 1, "the invalid one is kept");
    assert_eq!(kept[0].sink, "grpc");
}
