//! A throwaway PostgreSQL 15 cluster from the machine's own binaries
//! (`/usr/lib/postgresql/15/bin`), on a free loopback port, in a temporary
//! directory; run as the `postgres` user when the tests run as root (initdb
//! refuses root). Each test creates its own database. Stopped and removed on
//! drop.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Pg {
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
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
    pub fn start() -> Pg {
        Pg::init(None)
    }

    /// A cluster that requires password authentication (scram-sha-256) for
    /// user `postgres` with `password`.
    pub fn start_with_password(password: &str) -> Pg {
        Pg::init(Some(password))
    }

    fn init(password: Option<&str>) -> Pg {
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
        let mut pg = Pg {
            port,
            dir,
            running: false,
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
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
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
