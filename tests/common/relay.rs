//! A relay served in-process (`relay::serve`) on a free loopback port, with a
//! shutdown the test controls, for tests that drive it over HTTP.

use std::time::Duration;

use walrelay::config::Config;
use walrelay::relay::RelayError;

pub struct ServedRelay {
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), RelayError>>,
}

impl ServedRelay {
    /// Serves `config` and waits (up to 4 s) until it answers `/health`.
    pub async fn start(config: Config) -> ServedRelay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(walrelay::relay::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        for _ in 0..200 {
            if client.get(format!("{url}/health")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ServedRelay { url, stop, task }
    }

    /// Signals the shutdown and returns what `serve` returned. Drop the
    /// test's HTTP clients first: an idle keep-alive connection is waited
    /// for until the shutdown grace.
    pub async fn stop(self) -> Result<(), RelayError> {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// `walrelay run` as a child process: writes `dir/c.toml` with the log in
/// `dir/wal`, ingest listening on a free loopback port, then `extra` (more
/// TOML tables), and spawns the binary with its output discarded. Returns
/// the child and its port; the caller waits for it to answer.
pub fn spawn_binary(dir: &std::path::Path, extra: &str) -> (std::process::Child, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let conf = dir.join("c.toml");
    std::fs::write(
        &conf,
        format!(
            "[wal]\ndir = \"{}\"\n[ingest]\nlisten = \"127.0.0.1:{port}\"\n{extra}",
            dir.join("wal").display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["run", "--config", conf.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (child, port)
}
