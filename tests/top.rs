//! `walrelay top` driven in a real terminal: tmux runs the binary on a
//! pseudo-terminal, the test reads the screen with `capture-pane` and types
//! `q`. The relay runs in-process with its Influx sink pointed at a closed
//! port, so the sink is retrying with a known backlog and a known last error.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A private tmux server (own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(tag: &str) -> Tmux {
        let found = Command::new("tmux").arg("-V").output();
        assert!(
            found.is_ok(),
            "tmux is not installed: run scripts/setup.sh (it installs tmux)"
        );
        Tmux {
            socket: format!("walrelay-top-{}-{tag}", std::process::id()),
        }
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Starts `cmd` (a shell command) in a 120x30 terminal.
    fn start(&self, cmd: &str) {
        let out = self.tmux(&["new-session", "-d", "-x", "120", "-y", "30", cmd]);
        assert!(out.status.success(), "{out:?}");
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p"]).stdout).into_owned()
    }

    /// Waits until the screen satisfies `ok`; panics with the last screen.
    fn wait_screen(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("screen never showed {what}:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&self, k: &str) {
        assert!(self.tmux(&["send-keys", k]).status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// The shell command running `top` that writes its exit status to `status`,
/// then keeps the pane open so the screen after `top` can be read.
fn top_command(url: &str, status: &Path) -> String {
    format!(
        "{} top --url {url}; echo exit=$? > {}; sleep 60",
        env!("CARGO_BIN_EXE_walrelay"),
        status.display()
    )
}

fn wait_exit(status: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(s) = std::fs::read_to_string(status) {
            if !s.is_empty() {
                return s.trim().to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("top did not exit after q");
}

fn trades(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| {
            format!(
                "{{\"type\":\"trade\",\"venue\":\"BINANCE\",\"symbol\":\"BTCUSDT\",\"ts\":{},\"price\":1.5,\"quantity\":2.0,\"side\":\"buy\",\"trade_id\":\"{i}\"}}\n",
                1_764_000_000_000_000_000i64 + i as i64 * 1_000_000
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_running_relay_refreshes_and_quits_on_q() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let influx_port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::TempDir::new().unwrap();
    let conf = dir.path().join("relay.toml");
    std::fs::write(
        &conf,
        format!(
            "[wal]\ndir = \"{}\"\n[influx]\nurl = \"http://127.0.0.1:{influx_port}\"\norg = \"o\"\nbucket = \"b\"\n\
             [drain]\nretry_initial_ms = 100\nretry_max_ms = 300\n",
            dir.path().join("wal").display()
        ),
    )
    .unwrap();
    let config = walrelay::config::Config::load(&conf).unwrap();
    let relay = common::relay::ServedRelay::start(config).await;
    let url = relay.url.clone();
    let post = |body: String| {
        let url = url.clone();
        async move {
            let c = reqwest::Client::new();
            let r = c
                .post(format!("{url}/v1/records"))
                .header("Connection", "close")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 204);
        }
    };
    post(trades(0, 100)).await;

    let tmux = Tmux::new("live");
    let exit = dir.path().join("top.exit");
    tmux.start(&top_command(&url, &exit));
    let screen = tmux.wait_screen("the retrying influx sink with 100 records", |s| {
        s.lines()
            .any(|l| l.starts_with("influx") && l.contains("retrying") && l.contains(" 100 "))
    });
    assert!(screen.contains(&format!("walrelay top  {url}")), "{screen}");
    assert!(screen.contains("(q quits)"), "{screen}");
    assert!(
        screen.contains("log ") && screen.contains("100 records"),
        "{screen}"
    );
    assert!(
        screen.contains(&format!(
            "last error: cannot reach http://127.0.0.1:{influx_port}: client error (Connect)"
        )) && screen.contains("Connection refused"),
        "{screen}"
    );
    let header = screen.lines().find(|l| l.starts_with("SINK")).unwrap();
    for col in [
        "STATE", "BACKLOG", "DRAIN/s", "ETA", "OLDEST", "DEAD", "RETRY/s",
    ] {
        assert!(header.contains(col), "{header}");
    }
    // The retries the drainer makes show as a rate once two samples exist.
    tmux.wait_screen("a retry rate above zero", |s| {
        s.lines().any(|l| {
            l.starts_with("influx")
                && l.split_whitespace()
                    .last()
                    .and_then(|r| r.parse::<f64>().ok())
                    .is_some_and(|r| r > 0.0)
        })
    });

    // More records: the next refresh shows them, and the ingest rate.
    post(trades(100, 50)).await;
    tmux.wait_screen("the new backlog of 150", |s| {
        s.lines()
            .any(|l| l.starts_with("influx") && l.contains(" 150 "))
    });

    tmux.keys("q");
    assert_eq!(wait_exit(&exit), "exit=0");
    let after = tmux.screen();
    assert!(
        !after.contains("SINK") && !after.contains("walrelay top"),
        "the alternate screen is left on quit, the shell's screen is back:\n{after}"
    );

    // A relay that does not answer is reported on the screen, not fatal.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone_url = format!("http://{}", gone.local_addr().unwrap());
    drop(gone);
    let tmux = Tmux::new("down");
    let exit = dir.path().join("top-down.exit");
    tmux.start(&top_command(&gone_url, &exit));
    tmux.wait_screen("that the relay is not answering", |s| {
        s.contains("relay not answering") && s.contains("Connection refused")
    });
    tmux.keys("q");
    assert_eq!(wait_exit(&exit), "exit=0");

    relay.stop().await.unwrap();
}
