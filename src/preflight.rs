//! `walrelay check`: everything that can be verified before the relay starts,
//! one line per check. Required checks that fail make the command exit non-zero.

use std::path::Path;

use crate::config::Config;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Worth attention, does not stop the relay.
    Warn,
    /// The relay cannot run correctly.
    Fail,
}

/// One line of the preflight report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match self.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        write!(f, "[{tag}] {:<28} {}", self.name, self.detail)
    }
}

fn check(name: &str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        verdict,
        detail: detail.into(),
    }
}

/// Free bytes on the filesystem holding `path` (or its nearest existing parent).
fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The checks that need no sink: log directory and ingest port.
pub fn local_checks(config: &Config) -> Vec<Check> {
    let mut out = vec![check("config", Verdict::Ok, "parsed; no unknown keys")];
    let dir = &config.wal.dir;
    let probe = dir.join(".walrelay-write-probe");
    let writable = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&probe, b"x"))
        .and_then(|_| std::fs::remove_file(&probe));
    out.push(match writable {
        Ok(()) => check(
            "wal directory writable",
            Verdict::Ok,
            dir.display().to_string(),
        ),
        Err(e) => check(
            "wal directory writable",
            Verdict::Fail,
            format!("{}: {e}", dir.display()),
        ),
    });
    out.push(match free_bytes(dir) {
        Some(free) if free >= config.wal.max_bytes => check("wal free space", Verdict::Ok, format!("{} MiB free, max_bytes {} MiB", free >> 20, config.wal.max_bytes >> 20)),
        Some(free) => check(
            "wal free space",
            Verdict::Warn,
            format!("{} MiB free is less than wal.max_bytes ({} MiB): the disk fills before the log limit applies", free >> 20, config.wal.max_bytes >> 20),
        ),
        None => check("wal free space", Verdict::Warn, "could not read free space"),
    });
    out.push(match std::net::TcpListener::bind(&config.ingest.listen) {
        Ok(_) => check(
            "ingest port free",
            Verdict::Ok,
            config.ingest.listen.clone(),
        ),
        Err(e) => check(
            "ingest port free",
            Verdict::Fail,
            format!("{}: {e} (another relay running?)", config.ingest.listen),
        ),
    });
    out
}

/// Every check, sinks included.
pub async fn run_checks(config: &Config) -> Vec<Check> {
    local_checks(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_port_and_unwritable_dir_fail() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = Config::default();
        c.ingest.listen = busy.local_addr().unwrap().to_string();
        c.wal.dir = "/proc/walrelay-cannot-write-here".into();
        let checks = local_checks(&c);
        let verdict = |n: &str| checks.iter().find(|c| c.name == n).unwrap().verdict.clone();
        assert_eq!(verdict("ingest port free"), Verdict::Fail);
        assert_eq!(verdict("wal directory writable"), Verdict::Fail);
        let dir = tempfile::TempDir::new().unwrap();
        c.wal.dir = dir.path().join("wal");
        c.ingest.listen = "127.0.0.1:0".into();
        let checks = local_checks(&c);
        assert!(
            checks
                .iter()
                .filter(|c| c.name != "wal free space")
                .all(|c| c.verdict == Verdict::Ok),
            "{checks:?}"
        );
    }
}
