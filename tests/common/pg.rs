//! A throwaway PostgreSQL 15 cluster from the machine's own binaries
//! (`/usr/lib/postgresql/15/bin`), on a free loopback port, in a temporary
//! directory; run as the `postgres` user when the tests run as root (initdb
//! refuses root). Each test creates its own database. Stopped and removed on
//! drop.
//!
//! Two flavours, so that both paths run in every test run where TimescaleDB
//! is present:
//! - [`Pg::start`]: TimescaleDB preloaded (`shared_preload_libraries =
//!   'timescaledb'`, `timescaledb.telemetry_level = off`) whenever the
//!   extension is installed into this PostgreSQL (scripts/setup.sh installs
//!   it from `../shared/timescaledb/install.sh` where that exists); plain
//!   PostgreSQL otherwise. The sink then creates hypertables.
//! - [`Pg::start_plain`]: never preloads: the plain-PostgreSQL fallback
//!   (TimescaleDB installed but not preloaded looks, to walrelay, like a
//!   server without it: plain tables and a warning).
//!
//! `WALRELAY_TEST_TIMESCALEDB=off` makes [`Pg::start`] plain as well, to run
//! the whole suite the way a machine without TimescaleDB runs it (tests that
//! need hypertables then print `SKIPPED` with the reason).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Files TimescaleDB's install puts into Debian's PostgreSQL 15.
const TS_LIB: &str = "/usr/lib/postgresql/15/lib/timescaledb.so";
const TS_CONTROL: &str = "/usr/share/postgresql/15/extension/timescaledb.control";

/// The switch that forces the plain path everywhere.
pub const TIMESCALEDB_SWITCH: &str = "WALRELAY_TEST_TIMESCALEDB";

/// Whether TimescaleDB's library and extension files are in this PostgreSQL.
pub fn timescaledb_installed() -> bool {
    std::path::Path::new(TS_LIB).exists() && std::path::Path::new(TS_CONTROL).exists()
}

/// Why [`Pg::start`] gives plain PostgreSQL, or `None` when it preloads
/// TimescaleDB.
pub fn timescaledb_missing() -> Option<String> {
    if std::env::var(TIMESCALEDB_SWITCH).is_ok_and(|v| v == "off") {
        Some(format!("{TIMESCALEDB_SWITCH}=off forces plain PostgreSQL"))
    } else if !timescaledb_installed() {
        Some(format!(
            "TimescaleDB is not installed into PostgreSQL 15 ({TS_LIB} missing; scripts/setup.sh installs it where ../shared/timescaledb/install.sh exists)"
        ))
    } else {
        None
    }
}

pub struct Pg {
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
    timescale: bool,
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Runs a PostgreSQL binary, as `postgres` when root.
fn pg_cmd(bin: &str) -> Command {
    let path = format!("{BIN}/{bin}");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

impl Pg {
    /// TimescaleDB preloaded when available (see the module doc), else plain.
    pub fn start() -> Pg {
        Pg::init(None, timescaledb_missing().is_none())
    }

    /// Plain PostgreSQL, even where TimescaleDB is installed.
    pub fn start_plain() -> Pg {
        Pg::init(None, false)
    }

    /// One cluster of each flavour this machine offers: TimescaleDB first
    /// (when available), then plain PostgreSQL. For tests that must hold on
    /// both.
    pub fn each_flavour() -> Vec<Pg> {
        let mut v = Vec::new();
        if timescaledb_missing().is_none() {
            v.push(Pg::start());
        }
        v.push(Pg::start_plain());
        v
    }

    /// A cluster that requires password authentication (scram-sha-256) for
    /// user `postgres` with `password`.
    pub fn start_with_password(password: &str) -> Pg {
        Pg::init(Some(password), timescaledb_missing().is_none())
    }

    /// Whether this cluster preloads TimescaleDB.
    pub fn timescale(&self) -> bool {
        self.timescale
    }

    /// `timescaledb` or `plain`, for messages.
    pub fn flavour(&self) -> &'static str {
        if self.timescale {
            "timescaledb"
        } else {
            "plain"
        }
    }

    fn init(password: Option<&str>, timescale: bool) -> Pg {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres", data.to_str().unwrap()])
                .status()
                .unwrap()
                .success();
            assert!(
                ok,
                "chown postgres (is the postgresql-15 package installed?)"
            );
        }
        let mut args = vec![
            "-D".to_string(),
            data.to_str().unwrap().to_string(),
            "-U".into(),
            "postgres".into(),
            "--no-sync".into(),
            "-E".into(),
            "UTF8".into(),
        ];
        match password {
            None => args.extend(["-A".to_string(), "trust".to_string()]),
            Some(pw) => {
                let pwfile = dir.path().join("pwfile");
                std::fs::write(&pwfile, pw).unwrap();
                std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644)).unwrap();
                args.extend([
                    "-A".to_string(),
                    "scram-sha-256".to_string(),
                    format!("--pwfile={}", pwfile.display()),
                ]);
            }
        }
        let out = pg_cmd("initdb").args(&args).output().expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if timescale {
            // In postgresql.conf, so that every restart keeps it.
            let mut conf = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join("data/postgresql.conf"))
                .unwrap();
            std::io::Write::write_all(
                &mut conf,
                b"\nshared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n",
            )
            .unwrap();
        }
        let mut pg = Pg {
            port,
            dir,
            running: false,
            timescale,
        };
        pg.restart();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server (again) on the same port and data.
    pub fn restart(&mut self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c max_connections=60 -c shared_buffers=64MB",
            self.port,
            self.data().display()
        );
        let out = pg_cmd("pg_ctl")
            .args([
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                self.data().join("server.log").to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-o",
                &opts,
                "start",
            ])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\nserver.log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            if self.timescale {
                "\n(TimescaleDB preloaded: if the log says it cannot be loaded, run scripts/setup.sh, \
                 or set WALRELAY_TEST_TIMESCALEDB=off to test on plain PostgreSQL)"
            } else {
                ""
            },
            std::fs::read_to_string(self.data().join("server.log")).unwrap_or_default()
        );
        self.running = true;
    }

    /// Turns TLS on with the given PEM certificate and key (copied into the
    /// data directory, key mode 0600 as the server demands) and restarts.
    pub fn enable_tls(&mut self, cert_pem: &std::path::Path, key_pem: &std::path::Path) {
        let data = self.data();
        std::fs::copy(cert_pem, data.join("server.crt")).unwrap();
        std::fs::copy(key_pem, data.join("server.key")).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(
            &mut conf,
            b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )
        .unwrap();
        if is_root() {
            for f in ["server.crt", "server.key"] {
                let ok = Command::new("chown")
                    .args(["postgres:postgres", data.join(f).to_str().unwrap()])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "chown {f}");
            }
        }
        self.stop_immediate();
        self.restart();
    }

    /// `pg_ctl stop -m immediate`: a crash from the clients' point of view.
    pub fn stop_immediate(&mut self) {
        let _ = pg_cmd("pg_ctl")
            .args([
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_db(&self, name: &str) -> String {
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        self.url(name)
    }

    /// The hypertables of schema `mart` in `db` with their partitioning
    /// column, as `table(column)`, sorted; empty where the database has no
    /// `timescaledb` extension.
    pub async fn hypertables(&self, db: &str) -> Vec<String> {
        let c = self.client(db).await;
        let has: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if !has {
            return Vec::new();
        }
        c.query(
            "SELECT h.hypertable_name || '(' || d.column_name || ')' \
             FROM timescaledb_information.hypertables h \
             JOIN timescaledb_information.dimensions d USING (hypertable_schema, hypertable_name) \
             WHERE h.hypertable_schema = 'mart'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect::<std::collections::BTreeSet<String>>()
        .into_iter()
        .collect()
    }

    /// A plain client on `db`.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.running {
            self.stop_immediate();
        }
    }
}
