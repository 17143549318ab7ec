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

/// The nearest existing entry at or above `path` (a relative path's
/// ancestors end at the working directory), made absolute for messages.
fn nearest_existing(path: &Path) -> Option<std::path::PathBuf> {
    let mut p = path;
    while !p.exists() {
        p = match p.parent()? {
            q if q.as_os_str().is_empty() => Path::new("."),
            q => q,
        };
    }
    Some(std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
}

/// Free space on the filesystem holding `path` (or its nearest existing parent).
fn free_space(path: &Path) -> Option<crate::wal::disk::Free> {
    crate::wal::disk::free_space(&nearest_existing(path)?).ok()
}

/// Whether the relay could write its log in `dir`, leaving nothing behind:
/// an existing directory gets a probe file that is removed at once; a missing
/// one is not created (the relay creates it, mode 0700, when it runs): its
/// nearest existing ancestor gets the probe instead.
fn dir_writable(dir: &Path) -> std::io::Result<String> {
    let probe_in = |d: &Path| {
        let probe = d.join(format!(".walrelay-write-probe-{}", std::process::id()));
        std::fs::write(&probe, b"x")?;
        std::fs::remove_file(&probe)
    };
    if dir.is_dir() {
        probe_in(dir)?;
        return Ok(dir.display().to_string());
    }
    if dir.exists() {
        return Err(std::io::Error::other("exists and is not a directory"));
    }
    let ancestor = nearest_existing(dir)
        .ok_or_else(|| std::io::Error::other("no existing parent directory"))?;
    let ancestor = ancestor.as_path();
    if !ancestor.is_dir() {
        return Err(std::io::Error::other(format!(
            "cannot be created: {} is not a directory",
            ancestor.display()
        )));
    }
    probe_in(ancestor).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "does not exist and cannot be created in {}: {e}",
                ancestor.display()
            ),
        )
    })?;
    Ok(format!(
        "{} (does not exist yet; `walrelay run` creates it, mode 0700, in {})",
        dir.display(),
        ancestor.display()
    ))
}

/// The checks that need no sink: log directory and ingest port.
pub fn local_checks(config: &Config) -> Vec<Check> {
    let mut out = vec![check("config", Verdict::Ok, "parsed; no unknown keys")];
    let dir = &config.wal.dir;
    out.push(match dir_writable(dir) {
        Ok(detail) => check("wal directory writable", Verdict::Ok, detail),
        Err(e) => check(
            "wal directory writable",
            Verdict::Fail,
            format!("{}: {e}", dir.display()),
        ),
    });
    out.push(check(
        "wal durability",
        Verdict::Ok,
        config.wal.durability.promise(),
    ));
    use crate::wal::disk::Free;
    out.push(match free_space(dir) {
        Some(Free::Unmeasurable) => check(
            "wal free space",
            Verdict::Warn,
            format!(
                "the filesystem reports no size (statvfs: 0 blocks; FUSE or network?): wal.min_free_bytes ({} MiB) cannot be enforced; appends are accepted and sled's ENOSPC fail-stop still protects the log",
                config.wal.min_free_bytes >> 20
            ),
        ),
        Some(Free::Bytes(free)) if free >= config.wal.max_bytes => check("wal free space", Verdict::Ok, format!("{} MiB free, max_bytes {} MiB", free >> 20, config.wal.max_bytes >> 20)),
        Some(Free::Bytes(free)) => check(
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
    if let Some(tls) = &config.ingest.tls {
        out.push(ingest_tls_check(tls));
    }
    out.extend(exposure_check(&config.ingest));
    out
}

/// Beyond loopback: a warning for what would travel in clear or
/// unauthenticated (docs/OPERATIONS.md, "Binding beyond loopback"); nothing
/// for a loopback listener.
fn exposure_check(ic: &crate::ingest::config::IngestConfig) -> Option<Check> {
    const NAME: &str = "ingest exposure";
    let loopback = match ic.listen.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => ic.listen.starts_with("localhost:"),
    };
    if loopback {
        return None;
    }
    let mut missing = Vec::new();
    if ic.tls.is_none() {
        missing.push("[ingest.tls] (the token and every record travel in clear)");
    }
    if ic.token.is_none() {
        missing.push("a token (anyone who reaches the port can write)");
    }
    Some(if missing.is_empty() {
        let mutual = ic.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
        check(
            NAME,
            Verdict::Ok,
            format!(
                "{}: TLS{}, token",
                ic.listen,
                if mutual {
                    " with client certificates"
                } else {
                    ""
                }
            ),
        )
    } else {
        check(
            NAME,
            Verdict::Warn,
            format!(
                "{} is beyond loopback without {}",
                ic.listen,
                missing.join(" and ")
            ),
        )
    })
}

/// `[ingest.tls]`: the pair loads (readable, key matches the certificate,
/// valid now, client CA usable); days to expiry, a warning under 14.
fn ingest_tls_check(tls: &crate::ingest::tls::TlsConfig) -> Check {
    const NAME: &str = "ingest tls certificate";
    match crate::ingest::tls::load(tls) {
        Ok((_, info)) => {
            let detail = format!(
                "{}: key matches, {} certificate(s), expires in {} days{}",
                tls.cert_file.display(),
                info.chain_len,
                info.days_left,
                if info.mutual {
                    ", client certificates required"
                } else {
                    ""
                }
            );
            let verdict = if info.days_left < 14 {
                Verdict::Warn
            } else {
                Verdict::Ok
            };
            check(NAME, verdict, detail)
        }
        Err(e) => check(NAME, Verdict::Fail, e.to_string()),
    }
}

/// Every check, sinks included.
pub async fn run_checks(config: &Config) -> Vec<Check> {
    let mut out = local_checks(config);
    if let Some(tc) = &config.timescale {
        out.extend(timescale_checks(tc).await);
    }
    if let Some(ic) = &config.influx {
        out.extend(influx_checks(ic).await);
    }
    if config.sink_names().is_empty() {
        out.push(check(
            "sinks",
            Verdict::Warn,
            "no [influx] or [timescale] section: records stay in the log",
        ));
    }
    out
}

async fn timescale_checks(tc: &crate::db::timescale::TimescaleConfig) -> Vec<Check> {
    use crate::db::timescale::schema::{detect, Timescale};
    let mut out = Vec::new();
    let client = match crate::db::timescale::connect(tc).await {
        Ok(c) => {
            out.push(check(
                "postgres reachable+auth",
                Verdict::Ok,
                crate::db::timescale::redacted(&tc.url),
            ));
            c
        }
        Err(e) => {
            out.push(check(
                "postgres reachable+auth",
                Verdict::Fail,
                e.to_string(),
            ));
            return out;
        }
    };
    let strict = if tc.require_timescaledb {
        Verdict::Fail
    } else {
        Verdict::Warn
    };
    out.push(match detect(&client).await {
        Ok(Timescale::Installed | Timescale::AvailablePreloaded) => check("timescaledb extension", Verdict::Ok, "available: fact tables become hypertables"),
        Ok(Timescale::AvailableNotPreloaded) => check(
            "timescaledb extension",
            strict,
            "installed but not preloaded: add shared_preload_libraries = 'timescaledb' to postgresql.conf and restart",
        ),
        Ok(Timescale::Absent) => check("timescaledb extension", strict, "not available: plain PostgreSQL tables"),
        Err(e) => check("timescaledb extension", Verdict::Fail, e.to_string()),
    });
    out
}

async fn influx_checks(ic: &crate::db::influx::InfluxConfig) -> Vec<Check> {
    use crate::db::influx::InfluxError;
    if let Err(e) = ic.resolve_token() {
        return vec![check("influx token", Verdict::Fail, e)];
    }
    let v1 = ic.api == crate::db::influx::Api::V1;
    let client = match crate::db::influx::Client::from_config(
        ic,
        std::time::Duration::from_millis(ic.timeout_ms.min(5000)),
        false,
    ) {
        Ok(c) => c,
        Err(e) => return vec![check("influx reachable", Verdict::Fail, e)],
    };
    // A comment-only body: the server checks the token and the bucket before
    // parsing, and nothing is stored.
    let probe = client
        .write(
            &ic.url,
            &ic.org,
            &ic.default_bucket(),
            bytes::Bytes::from_static(b"# walrelay check\n"),
        )
        .await;
    let (verdict, detail) = match probe {
        Ok(()) => (
            Verdict::Ok,
            format!("{} org={} bucket={}", ic.url, ic.org, ic.default_bucket()),
        ),
        Err(e @ InfluxError::Http { status: 400, .. }) => (
            Verdict::Ok,
            format!(
                "{e} (token and bucket accepted; the empty probe body was refused as expected)"
            ),
        ),
        Err(
            e @ InfluxError::Http {
                status: 401 | 403, ..
            },
        ) => (
            Verdict::Fail,
            format!("{e} (check influx.token or WALRELAY_INFLUX_TOKEN)"),
        ),
        Err(e @ InfluxError::Http { status: 404, .. }) if v1 => (
            Verdict::Fail,
            format!("{e} (check influx.database, or run `walrelay init`)"),
        ),
        Err(e @ InfluxError::Http { status: 404, .. }) => (
            Verdict::Fail,
            format!("{e} (check influx.org and influx.bucket)"),
        ),
        Err(e) => (Verdict::Fail, e.to_string()),
    };
    let mut out = vec![check("influx bucket writable", verdict, detail)];
    if v1 {
        out.extend(influx_v1_checks(ic).await);
    } else {
        out.extend(influx_admin_checks(ic).await);
    }
    out
}

/// InfluxDB 1.x: `/ping`, then every configured database (and retention
/// policy) by `SHOW DATABASES` / `SHOW RETENTION POLICIES`.
async fn influx_v1_checks(ic: &crate::db::influx::InfluxConfig) -> Vec<Check> {
    use crate::db::influx::admin::{configured_databases, v1_find, v1_ping};
    let timeout = std::time::Duration::from_millis(ic.timeout_ms.min(5000));
    let mut out = match v1_ping(ic, timeout).await {
        Ok(v) => vec![check("influx ping", Verdict::Ok, v)],
        Err(e) => return vec![check("influx ping", Verdict::Fail, e.to_string())],
    };
    for (url, db, rp) in configured_databases(ic) {
        let name = "influx database exists";
        let at = match &rp {
            Some(rp) => format!("{url} database={db} retention_policy={rp}"),
            None => format!("{url} database={db}"),
        };
        out.push(match v1_find(ic, &url, &db, rp.as_deref(), timeout).await {
            Ok(None) => check(name, Verdict::Ok, at),
            Ok(Some(missing)) => check(name, Verdict::Fail, format!("{url}: {missing} (`walrelay init` creates a missing database; a retention policy is the operator's: CREATE RETENTION POLICY)")),
            Err(e) => check(name, Verdict::Fail, e.to_string()),
        });
    }
    out
}

/// Health and bucket lookup through the management API (`influxdb2`). A
/// server without it (VictoriaMetrics) gets one `Warn` line saying so; the
/// write probe above is what decides whether the relay can run.
async fn influx_admin_checks(ic: &crate::db::influx::InfluxConfig) -> Vec<Check> {
    use crate::db::influx::admin::{configured_buckets, find_bucket, health, Admin};
    let timeout = std::time::Duration::from_millis(ic.timeout_ms.min(5000));
    let not_influx = |why: String| {
        check(
            "influx management API",
            Verdict::Warn,
            format!("not a full InfluxDB 2 ({why}): health and bucket lookup skipped; `walrelay init` cannot create buckets there"),
        )
    };
    match health(ic, timeout).await {
        Ok(Admin::Influx(h)) => {
            let mut out = vec![check("influx health", Verdict::Ok, h)];
            for (url, org, bucket) in configured_buckets(ic) {
                let name = "influx bucket exists";
                out.push(match find_bucket(ic, &url, &org, &bucket, timeout).await {
                    Ok(Admin::Influx(Some(id))) => check(name, Verdict::Ok, format!("{url} org={org} bucket={bucket} id={id}")),
                    Ok(Admin::Influx(None)) => check(name, Verdict::Fail, format!("{url} org={org}: no bucket {bucket:?} (create it, or run `walrelay init` with a token allowed to)")),
                    Ok(Admin::NotInflux(why)) => not_influx(why),
                    Err(e) => check(name, Verdict::Fail, e.to_string()),
                });
            }
            out
        }
        Ok(Admin::NotInflux(why)) => vec![not_influx(why)],
        Err(e) => vec![check("influx health", Verdict::Warn, e.to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_loopback_without_tls_or_token_is_a_warning() {
        let mut ic = crate::ingest::config::IngestConfig::default();
        assert!(exposure_check(&ic).is_none(), "loopback: no line");
        ic.listen = "0.0.0.0:8429".into();
        let c = exposure_check(&ic).unwrap();
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(
            c.detail.contains("[ingest.tls]") && c.detail.contains("a token"),
            "{c}"
        );
        ic.token = Some(crate::secret::Secret::new("t"));
        ic.tls = Some(crate::ingest::tls::TlsConfig {
            cert_file: "a.crt".into(),
            key_file: "a.key".into(),
            client_ca_file: None,
        });
        let c = exposure_check(&ic).unwrap();
        assert_eq!(c.verdict, Verdict::Ok, "{c}");
        ic.token = None;
        let c = exposure_check(&ic).unwrap();
        assert!(
            c.verdict == Verdict::Warn && !c.detail.contains("[ingest.tls]"),
            "{c}"
        );
    }

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
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "a missing log directory is not created, and no probe is left"
        );
        std::fs::create_dir(&c.wal.dir).unwrap();
        let checks = local_checks(&c);
        assert_eq!(checks[1].verdict, Verdict::Ok, "{checks:?}");
        assert!(
            std::fs::read_dir(&c.wal.dir).unwrap().next().is_none(),
            "the probe in an existing directory is removed"
        );
    }
}
