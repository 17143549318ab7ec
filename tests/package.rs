//! The Debian package (`scripts/package.sh`) installed on this machine with
//! `dpkg -i`: binary, conffile, systemd unit, the `walrelay` user owning
//! `/var/lib/walrelay`; the installed `walrelay check` runs against the
//! installed configuration as the service would; then the package is purged.
//!
//! Needs root and dpkg, and a built package; otherwise it says why and
//! skips — except that `scripts/test.sh` builds the package and sets
//! `WALRELAY_REQUIRE_DEB=1`, so in CI a missing package fails. It never
//! touches an existing installation (skips if one is present).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// The newest `walrelay_*.deb` in the target directory's `debian/`.
fn find_deb() -> Option<PathBuf> {
    let target = Path::new(env!("CARGO_BIN_EXE_walrelay"))
        .parent()?
        .parent()?
        .to_path_buf();
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(target.join("debian"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("walrelay_") && name.ends_with(".deb")
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    debs.sort();
    debs.pop().map(|(_, p)| p)
}

fn skip(why: &str) {
    eprintln!("skipped: {why}");
}

#[test]
fn deb_installs_runs_check_and_purges() {
    let required = std::env::var("WALRELAY_REQUIRE_DEB").is_ok_and(|v| v == "1");
    if unsafe { libc::geteuid() } != 0 {
        return skip("installing a .deb needs root");
    }
    if Command::new("dpkg").arg("--version").output().is_err() {
        return skip("dpkg is not installed (not a Debian-like system)");
    }
    let Some(deb) = find_deb() else {
        assert!(
            !required,
            "WALRELAY_REQUIRE_DEB=1 but no walrelay_*.deb was built (bash scripts/package.sh)"
        );
        return skip("no package built: run `bash scripts/package.sh` first");
    };
    if sh("dpkg", &["-s", "walrelay"]).status.success() || Path::new("/etc/walrelay").exists() {
        return skip("walrelay is already installed here; not touching it");
    }
    let user_existed = sh("getent", &["passwd", "walrelay"]).status.success();
    let group_existed = sh("getent", &["group", "walrelay"]).status.success();
    let home_existed = Path::new("/var/lib/walrelay").exists();

    let installed = sh("dpkg", &["-i", deb.to_str().unwrap()]);
    let result = std::panic::catch_unwind(|| {
        assert!(installed.status.success(), "dpkg -i: {}", text(&installed));
        verify_installed();
    });
    let purged = sh("dpkg", &["--purge", "walrelay"]);
    // Leave the machine as it was: the package keeps the user and the log
    // directory on purge by design (docs/OPERATIONS.md).
    if !home_existed {
        let _ = std::fs::remove_dir_all("/var/lib/walrelay");
    }
    if !user_existed {
        let _ = sh("userdel", &["walrelay"]);
    }
    if !group_existed && sh("getent", &["group", "walrelay"]).status.success() {
        let _ = sh("groupdel", &["walrelay"]);
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(purged.status.success(), "dpkg --purge: {}", text(&purged));
    assert!(!Path::new("/usr/bin/walrelay").exists(), "binary removed");
    assert!(
        !Path::new("/etc/walrelay/walrelay.toml").exists(),
        "conffile removed on purge"
    );
    assert!(
        !sh("dpkg", &["-s", "walrelay"]).status.success(),
        "package gone"
    );
}

fn verify_installed() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let files = text(&sh("dpkg", &["-L", "walrelay"]));
    for f in [
        "/usr/bin/walrelay",
        "/etc/walrelay/walrelay.toml",
        "/usr/share/doc/walrelay/grafana/walrelay.json",
    ] {
        assert!(
            files.lines().any(|l| l == f),
            "{f} not in the package:\n{files}"
        );
    }
    assert!(
        files
            .lines()
            .any(|l| l.ends_with("/systemd/system/walrelay.service")),
        "no systemd unit:\n{files}"
    );
    let conffiles = text(&sh("dpkg-query", &["-W", "-f=${Conffiles}", "walrelay"]));
    assert!(
        conffiles.contains("/etc/walrelay/walrelay.toml"),
        "the config is not a conffile: {conffiles}"
    );
    let unit = std::fs::read_to_string(
        files
            .lines()
            .find(|l| l.ends_with("/systemd/system/walrelay.service"))
            .unwrap(),
    )
    .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/walrelay run --config /etc/walrelay/walrelay.toml"),
        "{unit}"
    );
    // Certificate rotation: `systemctl reload` sends SIGHUP; the conffile
    // shows the TLS keys, commented out.
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{unit}"
    );
    let installed = std::fs::read_to_string("/etc/walrelay/walrelay.toml").unwrap();
    assert!(
        installed.contains("# [ingest.tls]") && installed.contains("# tls_ca_file"),
        "{installed}"
    );

    // The user and its directory.
    let pw = text(&sh("getent", &["passwd", "walrelay"]));
    let fields: Vec<&str> = pw.trim().split(':').collect();
    assert_eq!(fields.get(5), Some(&"/var/lib/walrelay"), "{pw}");
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "a system user: {pw}");
    let home = std::fs::metadata("/var/lib/walrelay").unwrap();
    assert_eq!(home.uid(), uid, "/var/lib/walrelay owned by walrelay");
    assert_eq!(home.permissions().mode() & 0o777, 0o700);
    let conf = std::fs::metadata("/etc/walrelay/walrelay.toml").unwrap();
    assert_eq!(
        conf.permissions().mode() & 0o777,
        0o640,
        "config not world-readable"
    );
    assert_eq!(
        conf.gid(),
        home.gid(),
        "config readable by the walrelay group"
    );

    // The installed binary checks the installed configuration as the
    // service runs it: user walrelay, in /var/lib/walrelay.
    let version = sh("/usr/bin/walrelay", &["--version"]);
    assert!(
        text(&version).starts_with("walrelay "),
        "{}",
        text(&version)
    );
    let check = Command::new("runuser")
        .args([
            "-u",
            "walrelay",
            "--",
            "/usr/bin/walrelay",
            "check",
            "--config",
            "/etc/walrelay/walrelay.toml",
        ])
        .current_dir("/var/lib/walrelay")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let out = text(&check);
    // The example's databases and collectors are not running here: sink
    // checks may fail (exit 1); the configuration and the log must pass.
    assert!(matches!(check.status.code(), Some(0 | 1)), "{out}");
    assert!(out.contains("[ok  ] config "), "{out}");
    assert!(
        out.contains("[ok  ] wal directory writable       walrelay-data (does not exist yet")
            && out.contains("in /var/lib/walrelay)"),
        "{out}"
    );
    assert!(
        out.contains("postgres reachable+auth") && out.contains("influx bucket writable"),
        "{out}"
    );
    assert!(
        out.lines().last().unwrap_or("").contains("required checks"),
        "{out}"
    );
    assert!(
        std::fs::read_dir("/var/lib/walrelay")
            .unwrap()
            .next()
            .is_none(),
        "check left something in /var/lib/walrelay"
    );
}
