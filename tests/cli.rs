//! The `walrelay` binary's offline commands on a real log.

#[allow(dead_code)]
mod common;

use std::process::Command;

use walrelay::{Record, Wal, WalConfig};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_walrelay"))
}

fn trade(id: &str) -> Record {
    common::records::trade_record("BTCUSDT", id, common::records::TS, 1.0, 1.0)
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
            Record::Trade(t) => t.trade_id.into(),
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

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn check_prints_each_cause_once_and_leaves_nothing_behind() {
    let dir = tempfile::TempDir::new().unwrap();
    let (influx_port, pg_port) = (closed_port(), closed_port());
    let conf = dir.path().join("c.toml");
    std::fs::write(
        &conf,
        format!(
            "[wal]\ndir = \"{}\"\n[ingest]\nlisten = \"127.0.0.1:0\"\n\
             [influx]\nurl = \"http://127.0.0.1:{influx_port}\"\norg = \"o\"\nbucket = \"b\"\ntoken = \"influx-secret-7\"\n\
             [timescale]\nurl = \"postgres://u:pg-secret-9@127.0.0.1:{pg_port}/db\"\n",
            dir.path().join("data/wal").display()
        ),
    )
    .unwrap();
    let (code, out) = run(&["check", "--config", conf.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"))
            .to_string()
    };
    let influx = line("[FAIL] influx bucket writable");
    assert_eq!(
        influx.matches("Connection refused").count(),
        1,
        "the cause once: {influx}"
    );
    assert_eq!(
        influx.matches("tcp connect error").count(),
        1,
        "each layer once: {influx}"
    );
    assert!(
        influx.contains(&format!("http://127.0.0.1:{influx_port}")) && !influx.contains("()"),
        "the URL named, no empty one: {influx}"
    );
    let pg = line("[FAIL] postgres reachable+auth");
    assert_eq!(
        pg.matches("Connection refused").count(),
        1,
        "the cause once: {pg}"
    );
    assert!(
        !out.contains("influx-secret-7") && !out.contains("pg-secret-9"),
        "{out}"
    );
    let wal = line("[ok  ] wal directory writable");
    assert!(wal.contains("does not exist yet"), "{wal}");
    assert_eq!(
        entries(dir.path()),
        vec!["c.toml"],
        "check created nothing (no log directory, no probe)"
    );
}

/// `walrelay check` states the durability policy's promise exactly as
/// `tests/crash_durability.rs` holds it, for both policies.
#[test]
fn check_states_the_durability_promise() {
    let dir = tempfile::TempDir::new().unwrap();
    let conf = dir.path().join("c.toml");
    for (toml, expect) in [
        ("", "[ok  ] wal durability               sync: an acknowledged record survives a crash of the relay and a power loss"),
        (
            "durability = { interval_ms = 50 }\n",
            "[ok  ] wal durability               interval_ms = 50: an acknowledged record survives a crash of the relay; \
             a power loss or kernel crash may lose the records acknowledged in the last 50 ms",
        ),
    ] {
        std::fs::write(
            &conf,
            format!(
                "[wal]\ndir = \"{}\"\n{toml}[ingest]\nlisten = \"127.0.0.1:0\"\n",
                dir.path().join("wal").display()
            ),
        )
        .unwrap();
        let (_, out) = run(&["check", "--config", conf.to_str().unwrap()]);
        assert!(
            out.lines().any(|l| l.starts_with(expect)),
            "no line starting {expect:?} in:\n{out}"
        );
    }
}

/// A relay started by its binary with stderr captured; lines are collected
/// by a thread until the process exits.
struct Running {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn start_relay(args: &[&str]) -> Running {
    use std::io::BufRead;
    let mut child = bin()
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("WALRELAY_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr).lines() {
            sink.lock().unwrap().push(l.unwrap());
        }
    });
    Running {
        child,
        lines,
        reader: Some(reader),
    }
}

impl Running {
    fn wait_for(&self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{needle:?} never logged: {:?}", self.lines.lock().unwrap());
    }

    /// SIGTERM, wait for a clean exit, and return every stderr line.
    fn stop(mut self) -> Vec<String> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "relay exited with {status}");
        self.reader.take().unwrap().join().unwrap();
        let v = self.lines.lock().unwrap().clone();
        v
    }
}

fn relay_config(dir: &std::path::Path, port: u16, log: &str) -> std::path::PathBuf {
    let conf = dir.join("relay.toml");
    std::fs::write(
        &conf,
        format!(
            "[wal]\ndir = \"{}\"\n[ingest]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"ingest-secret-3\"\n\
             [influx]\nurl = \"http://127.0.0.1:{}\"\norg = \"o\"\nbucket = \"b\"\ntoken = \"influx-secret-7\"\n\
             [drain]\nretry_initial_ms = 50\nretry_max_ms = 200\n{log}",
            dir.join("wal").display(),
            closed_port()
        ),
    )
    .unwrap();
    conf
}

/// Posts one trade with the ingest token; returns the HTTP status line.
fn post_trade(port: u16) -> String {
    use std::io::{Read, Write};
    let body = r#"{"type":"trade","venue":"BINANCE","symbol":"BTCUSDT","ts":1764000000000000000,"price":1.5,"quantity":2.0,"side":"buy","trade_id":"t1"}"#;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "POST /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Token ingest-secret-3\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.lines().next().unwrap_or("").to_string()
}

#[test]
fn json_logs_are_one_object_per_line_with_fields_and_no_secrets() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = closed_port();
    // The config key alone selects JSON.
    let conf = relay_config(dir.path(), port, "[log]\nformat = \"json\"\n");
    let relay = start_relay(&["run", "--config", conf.to_str().unwrap()]);
    relay.wait_for("relay ready");
    assert_eq!(post_trade(port), "HTTP/1.1 204 No Content");
    // The Influx port is closed: the drainer logs its failed deliveries.
    relay.wait_for("delivery failed");
    let lines = relay.stop();
    assert!(lines.len() >= 4, "{lines:?}");
    let mut events = Vec::new();
    for l in &lines {
        assert!(
            !l.contains('\u{1b}'),
            "escape code in a JSON log line: {l:?}"
        );
        let v: serde_json::Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l:?}"));
        assert!(v.is_object(), "{l}");
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v.get(key).is_some(), "no {key} in {l}");
        }
        events.push(v);
    }
    let failed = events
        .iter()
        .find(|v| v["message"] == "delivery failed; will retry")
        .expect("the retry warning");
    assert_eq!(failed["level"], "WARN");
    assert_eq!(
        failed["sink"], "influx",
        "tracing fields are top-level keys"
    );
    assert_eq!(failed["class"], "transient");
    assert_eq!(failed["records"], 1);
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{failed}"
    );
    assert!(events
        .iter()
        .any(|v| v["message"] == "log flushed; relay stopped"));
    let all = lines.join("\n");
    assert!(
        !all.contains("ingest-secret-3") && !all.contains("influx-secret-7"),
        "a secret in the logs:\n{all}"
    );
}

#[test]
fn text_logs_have_no_escape_codes_off_a_terminal_and_the_flag_wins() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = closed_port();
    let conf = relay_config(dir.path(), port, "[log]\nformat = \"json\"\n");
    // The flag overrides the config's json.
    let relay = start_relay(&[
        "--log-format",
        "text",
        "run",
        "--config",
        conf.to_str().unwrap(),
    ]);
    relay.wait_for("relay ready");
    let lines = relay.stop();
    let all = lines.join("\n");
    assert!(!all.contains('\u{1b}'), "escape codes in a pipe:\n{all:?}");
    assert!(
        lines.iter().all(|l| !l.starts_with('{')),
        "text, not JSON: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("INFO")
            && l.contains("drainer started")
            && l.contains("sink=\"influx\"")),
        "{lines:?}"
    );
}

#[test]
fn text_logs_are_coloured_on_a_terminal() {
    // util-linux `script` runs the relay on a pseudo-terminal; the relay is
    // stopped by `timeout` with SIGINT after it is up.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: util-linux `script` is not installed");
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let port = closed_port();
    let conf = relay_config(dir.path(), port, "");
    let cmd = format!(
        "RUST_LOG=info timeout -s INT 3 {} run --config {}",
        env!("CARGO_BIN_EXE_walrelay"),
        conf.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env_remove("NO_COLOR")
        .env_remove("WALRELAY_LOG_FORMAT")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("relay ready"), "{text:?}");
    assert!(
        text.contains("\u{1b}["),
        "no colour on a terminal: {text:?}"
    );
}
