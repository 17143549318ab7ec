//! InfluxDB 1.x (Debian's `influxdb`, 1.6.7): a real InfluxDB server with
//! databases, retention policies, field types and InfluxQL. One throwaway
//! `influxd run -config <file>` per test: meta, data and WAL directories in a
//! temporary directory, HTTP and the RPC `bind-address` on free loopback
//! ports, `reporting-disabled = true`, monitoring and the query log off.
//! Ready when `/ping` answers 204; killed on drop.
//!
//! Counts are the server's own: InfluxQL over `/query`
//! (`SELECT count(*) … GROUP BY time(1m)`), never what the relay says it sent.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::vm::free_port;

/// One point's columns (tags and fields) by name, as InfluxQL returns them.
pub type Columns = std::collections::BTreeMap<String, serde_json::Value>;

pub struct Influx1 {
    pub port: u16,
    rpc_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `auth-enabled = true`, with this admin user and password.
    admin: Option<(String, String)>,
}

fn binary() -> String {
    for p in ["/usr/bin/influxd", "/usr/local/bin/influxd"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    "influxd".into()
}

impl Influx1 {
    /// A server without authentication.
    pub async fn start() -> Influx1 {
        Influx1::start_with(None).await
    }

    /// A server with `auth-enabled = true` and one admin user (created
    /// through the first-user exception InfluxDB makes while no user exists).
    pub async fn start_auth(user: &str, password: &str) -> Influx1 {
        let s = Influx1::start_with(Some((user.into(), password.into()))).await;
        let q = format!("CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES");
        let r = s
            .http()
            .post(format!("{}/query", s.url()))
            .form(&[("q", q.as_str())])
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "create admin: {:?}",
            r.text().await
        );
        s
    }

    async fn start_with(admin: Option<(String, String)>) -> Influx1 {
        let mut s = Influx1 {
            port: free_port(),
            rpc_port: free_port(),
            dir: tempfile::TempDir::new().unwrap(),
            child: None,
            admin,
        };
        s.resume().await;
        s
    }

    fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// Starts the process (again) on the same ports and directories.
    pub async fn resume(&mut self) {
        let d = self.dir.path().display();
        let config = format!(
            r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  auth-enabled = {auth}
  log-enabled = false
[logging]
  level = "error"
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
"#,
            rpc = self.rpc_port,
            port = self.port,
            auth = self.admin.is_some(),
        );
        let path = self.dir.path().join("influxdb.conf");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(binary())
            .arg("run")
            .arg("-config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("influxd binary (install the Debian package influxdb; scripts/setup.sh does)");
        self.child = Some(child);
        let client = self.http();
        for _ in 0..300 {
            if let Ok(r) = client
                .get(format!("{}/ping", self.url()))
                .timeout(Duration::from_millis(200))
                .send()
                .await
            {
                if r.status().as_u16() == 204 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("influxd did not answer /ping on port {}", self.port);
    }

    /// Stops the process gracefully (SIGTERM).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
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

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs one InfluxQL statement (as the admin when auth is on) against
    /// `db` ("" for none) and returns the JSON answer; panics on an HTTP error
    /// or a statement error.
    pub async fn query(&self, db: &str, q: &str) -> serde_json::Value {
        let mut req = self.http().post(format!("{}/query", self.url())).form(&[
            ("q", q),
            ("db", db),
            ("epoch", "ns"),
        ]);
        if let Some((u, p)) = &self.admin {
            req = req.basic_auth(u, Some(p));
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(status.is_success(), "{q}: HTTP {status}: {v}");
        if let Some(e) = v["results"][0]["error"].as_str() {
            panic!("{q}: {e}");
        }
        v
    }

    pub async fn create_database(&self, db: &str) {
        self.query("", &format!("CREATE DATABASE \"{db}\"")).await;
    }

    pub async fn drop_database(&self, db: &str) {
        self.query("", &format!("DROP DATABASE \"{db}\"")).await;
    }

    /// Points of `measurement` in `db` (retention policy `rp`, or the
    /// default), counted by the server: `SELECT count(*) … GROUP BY time(1m)`
    /// over every minute from 1970 to 2100 that holds data, summed. A point's
    /// count is the largest of its fields' counts in its minute (every point
    /// of a measurement written here carries the same fields).
    pub async fn count(&self, db: &str, rp: Option<&str>, measurement: &str) -> u64 {
        let from = match rp {
            Some(rp) => format!("\"{db}\".\"{rp}\".\"{measurement}\""),
            None => format!("\"{measurement}\""),
        };
        let q = format!(
            "SELECT count(*) FROM {from} WHERE time >= 0 AND time < 4102444800000000000 GROUP BY time(1m) fill(none)"
        );
        let v = self.query(db, &q).await;
        let Some(rows) = v["results"][0]["series"][0]["values"].as_array() else {
            return 0;
        };
        rows.iter()
            .map(|row| {
                row.as_array().unwrap()[1..]
                    .iter()
                    .filter_map(|c| c.as_u64())
                    .max()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Every point of `measurement` as (time ns, column → value), by
    /// `SELECT * FROM …`, tags and fields alike as columns.
    pub async fn rows(&self, db: &str, measurement: &str) -> Vec<(i64, Columns)> {
        let v = self
            .query(db, &format!("SELECT * FROM \"{measurement}\""))
            .await;
        let Some(series) = v["results"][0]["series"][0].as_object() else {
            return Vec::new();
        };
        let cols: Vec<String> = series["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        series["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let row = row.as_array().unwrap();
                let t = row[0].as_i64().unwrap();
                let m = cols[1..]
                    .iter()
                    .cloned()
                    .zip(row[1..].iter().cloned())
                    .filter(|(_, v)| !v.is_null())
                    .collect();
                (t, m)
            })
            .collect()
    }

    /// Writes raw line protocol (ns) to `db` as the harness, bypassing the
    /// relay (to prepare stored data); returns the HTTP status and body.
    pub async fn write_raw(&self, db: &str, body: &str) -> (u16, String) {
        let mut req = self
            .http()
            .post(format!("{}/write", self.url()))
            .query(&[("db", db), ("precision", "ns")])
            .body(body.to_string());
        if let Some((u, p)) = &self.admin {
            req = req.basic_auth(u, Some(p));
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }
}

impl Drop for Influx1 {
    fn drop(&mut self) {
        self.kill();
    }
}
