//! TLS to a real PostgreSQL 15 and a real VictoriaMetrics serving HTTPS, with
//! certificates from a throwaway CA (made with the `openssl` command):
//! libpq's `sslmode` semantics, CA files, SCRAM channel binding over our
//! connector, and a rejected certificate reported as a configuration error,
//! never retried as an outage.

mod common;

use std::path::Path;
use std::process::Command;

use common::pg::Pg;
use common::vm::Vm;
use walrelay::db::influx::{Client, InfluxError};
use walrelay::db::timescale::{connect, TimescaleConfig};
use walrelay::drain::ErrorClass;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for DNS name `localhost` only.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "30",
                "-subj",
                "/CN=walrelay test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "30",
            "-extfile",
            "san.ext",
        ],
    );
}

async fn uses_tls(cfg: &TimescaleConfig) -> Result<bool, walrelay::db::timescale::TimescaleError> {
    let client = connect(cfg).await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_against_a_server_with_a_private_ca() {
    let certs = tempfile::TempDir::new().unwrap();
    certificates(certs.path());
    // Password (SCRAM) authentication, so channel binding is exercised too.
    let mut pg = Pg::start_with_password("tls-test-pw");
    pg.enable_tls(
        &certs.path().join("server.crt"),
        &certs.path().join("server.key"),
    );
    let port = pg.port;
    let url = |host: &str, mode: &str| {
        format!("postgres://postgres:tls-test-pw@{host}:{port}/postgres{mode}")
    };
    let with_ca = |u: String| TimescaleConfig {
        tls_ca_file: Some(certs.path().join("ca.crt")),
        ..TimescaleConfig::new(u)
    };

    // Default (prefer) and require encrypt without checking the certificate,
    // as libpq does: a Debian cluster's self-signed certificate just works.
    assert!(uses_tls(&TimescaleConfig::new(url("127.0.0.1", "")))
        .await
        .unwrap());
    assert!(
        uses_tls(&TimescaleConfig::new(url("127.0.0.1", "?sslmode=require")))
            .await
            .unwrap()
    );
    // SCRAM with channel binding (tls-server-end-point over our connector):
    // with `channel_binding=require` the login fails unless the binding
    // matches the server's certificate.
    assert!(uses_tls(&TimescaleConfig::new(url(
        "127.0.0.1",
        "?sslmode=require&channel_binding=require"
    )))
    .await
    .unwrap());
    // disable stays in the clear.
    assert!(
        !uses_tls(&TimescaleConfig::new(url("127.0.0.1", "?sslmode=disable")))
            .await
            .unwrap()
    );

    // verify-full with our CA and the certificate's name.
    assert!(uses_tls(&with_ca(url("localhost", "?sslmode=verify-full")))
        .await
        .unwrap());
    // verify-ca does not check the name: 127.0.0.1 is fine.
    assert!(uses_tls(&with_ca(url("127.0.0.1", "?sslmode=verify-ca")))
        .await
        .unwrap());

    // verify-full to a name the certificate does not carry is refused.
    let e = uses_tls(&with_ca(url("127.0.0.1", "?sslmode=verify-full")))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Config, "{e}");
    assert!(e.to_string().contains("NotValidForName"), "{e}");

    // Without the CA file the public web roots do not know our CA: refused,
    // and as a configuration error that names the remedy.
    let e = uses_tls(&TimescaleConfig::new(url(
        "localhost",
        "?sslmode=verify-full",
    )))
    .await
    .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Config, "{e}");
    assert!(e.to_string().contains("tls_ca_file"), "{e}");

    // A CA file makes require check the chain (libpq's rule): a file holding
    // another CA refuses the server.
    let other = tempfile::TempDir::new().unwrap();
    certificates(other.path());
    let cfg = TimescaleConfig {
        tls_ca_file: Some(other.path().join("ca.crt")),
        ..TimescaleConfig::new(url("127.0.0.1", "?sslmode=require"))
    };
    let e = uses_tls(&cfg).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Config, "{e}");

    // A CA file that holds no certificate is named in the error.
    std::fs::write(other.path().join("empty.pem"), "").unwrap();
    let cfg = TimescaleConfig {
        tls_ca_file: Some(other.path().join("empty.pem")),
        ..TimescaleConfig::new(url("127.0.0.1", ""))
    };
    let e = uses_tls(&cfg).await.unwrap_err();
    assert!(
        e.to_string().contains("empty.pem") && e.to_string().contains("no PEM certificate"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influx_over_https_with_a_private_ca() {
    let certs = tempfile::TempDir::new().unwrap();
    certificates(certs.path());
    let vm = Vm::start_tls(
        &certs.path().join("server.crt"),
        &certs.path().join("server.key"),
    )
    .await;
    assert!(vm.url().starts_with("https://localhost:"), "{}", vm.url());
    let timeout = std::time::Duration::from_secs(5);
    let line = bytes::Bytes::from_static(b"tls_probe,exchange=X price=42.5 1700000000000000000\n");

    // With the CA file the write goes through and the point is stored.
    let client = Client::new(None, timeout, false, Some(&certs.path().join("ca.crt"))).unwrap();
    client
        .write(&vm.url(), "o", "b", line.clone())
        .await
        .unwrap();
    let stored = vm.sample_set("tls_probe_price").await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored
        .iter()
        .all(|(_, ts, v)| *ts == 1_700_000_000_000 && f64::from_bits(*v) == 42.5));

    // Without it the public web CAs do not know ours: a configuration error
    // (the drainer marks the sink unhealthy), not an outage to retry fast.
    let client = Client::new(None, timeout, false, None).unwrap();
    let e = client.write(&vm.url(), "o", "b", line).await.unwrap_err();
    assert!(matches!(e, InfluxError::Certificate { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Config, "{e}");
    assert!(e.to_string().contains("influx.tls_ca_file"), "{e}");

    // A CA file without a certificate is refused when the client is built.
    std::fs::write(certs.path().join("empty.pem"), "").unwrap();
    let err = Client::new(None, timeout, false, Some(&certs.path().join("empty.pem")))
        .err()
        .unwrap();
    assert!(
        err.contains("empty.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
}
