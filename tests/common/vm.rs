//! VictoriaMetrics (Debian's `victoria-metrics`), which accepts InfluxDB v2
//! `POST /api/v2/write` and answers reads on `/api/v1/export`. One instance per
//! test, on a free loopback port, with a temporary data directory and
//! `-retentionPeriod=100y` so old fixture timestamps are kept. Killed on drop.
//!
//! VictoriaMetrics stores InfluxDB fields as metrics named
//! `<measurement>_<field>`, tags as labels, string fields as the value 0, and keeps
//! timestamps in **milliseconds**; it does not overwrite a sample with the same
//! timestamp, so reads are compared as sets of (timestamp, value) samples.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Vm {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// PEM certificate and key when serving HTTPS (`-tls`).
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// One exported series: labels (with `__name__`) and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub samples: Vec<(i64, f64)>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary() -> String {
    for p in [
        "/usr/bin/victoria-metrics",
        "/usr/local/bin/victoria-metrics",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    "victoria-metrics".into()
}

impl Vm {
    pub async fn start() -> Vm {
        Vm::start_with(None).await
    }

    /// Serving HTTPS with this certificate (for name `localhost`) and key.
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Vm {
        Vm::start_with(Some((cert.to_path_buf(), key.to_path_buf()))).await
    }

    async fn start_with(tls: Option<(std::path::PathBuf, std::path::PathBuf)>) -> Vm {
        let mut vm = Vm {
            port: free_port(),
            dir: tempfile::TempDir::new().unwrap(),
            child: None,
            tls,
        };
        vm.resume().await;
        vm
    }

    /// The harness's own reads (health, export) do not check the certificate:
    /// what is under test is the relay's client, not this one.
    fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .danger_accept_invalid_certs(self.tls.is_some())
            .build()
            .unwrap()
    }

    /// Starts the process (again) on the same port and data directory.
    pub async fn resume(&mut self) {
        let mut cmd = Command::new(binary());
        if let Some((cert, key)) = &self.tls {
            cmd.arg("-tls")
                .arg(format!("-tlsCertFile={}", cert.display()))
                .arg(format!("-tlsKeyFile={}", key.display()));
        }
        let child = cmd
            .arg(format!("-storageDataPath={}", self.dir.path().display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .arg("-retentionPeriod=100y")
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("victoria-metrics binary (install the Debian package victoria-metrics)");
        self.child = Some(child);
        let client = self.http();
        for _ in 0..200 {
            if let Ok(r) = client
                .get(format!("{}/health", self.url()))
                .timeout(Duration::from_millis(200))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "victoria-metrics did not become healthy on port {}",
            self.port
        );
    }

    /// Stops the process gracefully (SIGINT), as an operator or a service
    /// manager would: VictoriaMetrics flushes what it acknowledged. (It keeps
    /// recent samples in memory for up to 5 s; SIGKILL loses them, which is
    /// the server's own loss, not the relay's.)
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("http://127.0.0.1:{}", self.port),
            Some(_) => format!("https://localhost:{}", self.port),
        }
    }

    /// Every series whose name matches `name_regex`, after a forced flush.
    pub async fn export(&self, name_regex: &str) -> Vec<Series> {
        let client = self.http();
        client
            .get(format!("{}/internal/force_flush", self.url()))
            .send()
            .await
            .unwrap();
        let text = client
            .get(format!("{}/api/v1/export", self.url()))
            .query(&[
                ("match[]", format!("{{__name__=~\"{name_regex}\"}}")),
                ("start".into(), "0".into()),
                ("end".into(), "4102444800".into()),
            ])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let labels = v["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let values = v["values"].as_array().unwrap();
            let ts = v["timestamps"].as_array().unwrap();
            let samples = ts
                .iter()
                .zip(values)
                .map(|(t, v)| (t.as_i64().unwrap(), v.as_f64().unwrap()))
                .collect();
            out.push(Series { labels, samples });
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Distinct (labels, timestamp ms, value) samples of the matching series.
    pub async fn sample_set(
        &self,
        name_regex: &str,
    ) -> BTreeSet<(Vec<(String, String)>, i64, u64)> {
        let mut set = BTreeSet::new();
        for s in self.export(name_regex).await {
            let labels: Vec<_> = s.labels.clone().into_iter().collect();
            for (t, v) in s.samples {
                set.insert((labels.clone(), t, v.to_bits()));
            }
        }
        set
    }

    /// Distinct values (as bits) of the matching series, whatever their
    /// labels and timestamps.
    pub async fn value_set(&self, name_regex: &str) -> BTreeSet<u64> {
        self.export(name_regex)
            .await
            .iter()
            .flat_map(|s| s.samples.iter().map(|(_, v)| v.to_bits()))
            .collect()
    }

    /// [`Vm::value_set`], read again for up to 20 s while it holds fewer
    /// than `want` values. VictoriaMetrics makes rows searchable a moment
    /// after answering 204 for them: twice, in full test runs (two tests
    /// and their servers on two cores), rows it had acknowledged were
    /// missing from a read right after the relay reported them delivered
    /// (48,000 after its restart in `e2e`; 37,000 of 60,000 in `grpc`), and
    /// neither reproduced alone. What is still missing after 20 s is lost.
    pub async fn value_set_settled(&self, name_regex: &str, want: usize) -> BTreeSet<u64> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut got = self.value_set(name_regex).await;
        let first = got.len();
        while got.len() < want && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            got = self.value_set(name_regex).await;
        }
        if got.len() != first {
            eprintln!(
                "VictoriaMetrics showed {} more values after re-reading ({first} at first)",
                got.len() - first
            );
        }
        got
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
