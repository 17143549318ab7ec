//! What the retention tests (`tests/audit.rs`, `tests/rewind_kill.rs`)
//! share: a relay config with `[wal] retain` against a real InfluxDB 1.x and
//! PostgreSQL, the CLI run as a child, and the klines stored.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::pg::Pg;

/// The relay's config in `dir`: the log under `dir/wal` with `retain`, HTTP
/// ingest on `port` with `token`, InfluxDB 1.x (`database`) and TimescaleDB.
pub struct Retaining<'a> {
    pub port: u16,
    pub token: &'a str,
    pub retain: &'a str,
    pub influx_url: &'a str,
    pub database: &'a str,
    pub pg_url: &'a str,
    pub batch_records: usize,
}

impl Retaining<'_> {
    /// Writes `dir/walrelay.toml` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let conf = dir.join("walrelay.toml");
        let Retaining {
            port,
            token,
            retain,
            influx_url,
            database,
            pg_url,
            batch_records,
        } = self;
        std::fs::write(
            &conf,
            format!(
                "[wal]\ndir = \"{}\"\nretain = \"{retain}\"\n\n[ingest]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{token}\"\n\n[drain]\nbatch_records = {batch_records}\nretry_initial_ms = 50\nretry_max_ms = 500\nretry_config_ms = 500\n\n[influx]\nurl = \"{influx_url}\"\napi = \"v1\"\ndatabase = \"{database}\"\ntimeout_ms = 5000\n\n[timescale]\nurl = \"{pg_url}\"\nconnect_timeout_ms = 2000\nstatement_timeout_ms = 10000\n",
                dir.join("wal").display()
            ),
        )
        .unwrap();
        conf
    }
}

/// Runs the `walrelay` binary to completion: (exit code, stdout, stderr).
pub fn walrelay(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Klines stored in database `db`: (rows, distinct keys).
pub async fn kline_rows(pg: &Pg, db: &str) -> (i64, i64) {
    let c = pg.client(db).await;
    let r = c
        .query_one(
            "SELECT count(*), count(DISTINCT (time, symbol_id, exchange_id, interval_id)) FROM mart.bar__kline",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}
