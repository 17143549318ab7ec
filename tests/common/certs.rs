//! Certificates made at test time with the `openssl` command (scripts/setup.sh
//! installs it): throwaway CAs, server certificates for `localhost` and
//! `127.0.0.1`, client certificates, and certificates outside their validity
//! period (through `openssl ca`, which takes explicit dates).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Certs {
    pub dir: tempfile::TempDir,
}

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

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl Certs {
    pub fn new() -> Certs {
        Certs {
            dir: tempfile::TempDir::new().unwrap(),
        }
    }

    /// `dir/<name>`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// A self-signed CA: `<name>.crt`, `<name>.key`.
    pub fn ca(&self, name: &str) -> &Self {
        let (crt, key, subj) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("/CN=walrelay test CA {name}"),
        );
        openssl(
            self.dir.path(),
            &[
                &["req", "-x509"][..],
                &EC,
                &["-keyout", &key, "-out", &crt, "-days", "30", "-subj", &subj],
            ]
            .concat(),
        );
        self
    }

    fn csr(&self, name: &str, cn: &str, client: bool) -> String {
        let (key, csr, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN={cn}");
        openssl(
            self.dir.path(),
            &[
                &["req"][..],
                &EC,
                &["-keyout", &key, "-out", &csr, "-subj", &subj],
            ]
            .concat(),
        );
        let usage = if client {
            "extendedKeyUsage=clientAuth\n".to_string()
        } else {
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n".to_string()
        };
        std::fs::write(self.path(&ext), usage).unwrap();
        ext
    }

    /// A certificate signed by CA `ca`, valid 30 days: `<name>.crt`,
    /// `<name>.key`; a server certificate for `localhost` and `127.0.0.1`,
    /// or a client certificate.
    pub fn leaf(&self, ca: &str, name: &str, cn: &str, client: bool) -> &Self {
        let ext = self.csr(name, cn, client);
        let (csr, crt, cacrt, cakey) = (
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{ca}.crt"),
            format!("{ca}.key"),
        );
        openssl(
            self.dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &cacrt,
                "-CAkey",
                &cakey,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "30",
                "-sha256",
                "-extfile",
                &ext,
            ],
        );
        self
    }

    /// A server certificate signed by `ca` valid from `start` to `end`
    /// (`YYYYMMDDHHMMSSZ`), e.g. one that expired in 2020.
    pub fn dated_leaf(&self, ca: &str, name: &str, start: &str, end: &str) -> &Self {
        let ext = self.csr(name, "localhost", false);
        let db = self.dir.path().join(format!("{name}.db"));
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("index.txt"), "").unwrap();
        std::fs::write(db.join("serial"), "1000\n").unwrap();
        let cnf = format!("{name}.cnf");
        std::fs::write(
            self.path(&cnf),
            format!(
                "[ca]\ndefault_ca = d\n[d]\ndatabase = {0}/index.txt\nnew_certs_dir = {0}\nserial = {0}/serial\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n",
                db.display()
            ),
        )
        .unwrap();
        let (csr, crt, cacrt, cakey) = (
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{ca}.crt"),
            format!("{ca}.key"),
        );
        openssl(
            self.dir.path(),
            &[
                "ca",
                "-batch",
                "-notext",
                "-config",
                &cnf,
                "-cert",
                &cacrt,
                "-keyfile",
                &cakey,
                "-in",
                &csr,
                "-out",
                &crt,
                "-startdate",
                start,
                "-enddate",
                end,
                "-extfile",
                &ext,
            ],
        );
        self
    }
}
