//! Times of `--since` / `--until`: RFC 3339 (`2026-12-06T07:00:00Z`), a time
//! relative to now (`-2h`, `-90m`, `-30s`, `-1d`), or `now`.

use super::AuditError;

/// Nanoseconds since the epoch of `value`, relative ones from `now_ns`.
///
/// # Errors
/// [`AuditError::BadTime`] naming `what` and the value.
pub fn parse_time(what: &'static str, value: &str, now_ns: i64) -> Result<i64, AuditError> {
    let v = value.trim();
    let bad = |detail: String| AuditError::BadTime {
        what,
        value: value.to_string(),
        detail,
    };
    if v == "now" {
        return Ok(now_ns);
    }
    if let Some(rel) = v.strip_prefix('-') {
        let ms = crate::wal::parse_duration_ms(rel).map_err(|_| {
            bad(r#"expected RFC 3339 ("2026-12-06T07:00:00Z"), "now" or a relative time ("-2h", "-30m")"#.into())
        })?;
        return Ok(now_ns.saturating_sub((ms as i64).saturating_mul(1_000_000)));
    }
    let t = chrono::DateTime::parse_from_rfc3339(v).map_err(|e| {
        bad(format!(
            r#"{e}: expected RFC 3339 ("2026-12-06T07:00:00Z"), "now" or a relative time ("-2h")"#
        ))
    })?;
    t.timestamp_nanos_opt()
        .ok_or_else(|| bad("out of range".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_relative_and_bad_times() {
        let now = 1_764_000_000_000_000_000;
        assert_eq!(parse_time("--since", "now", now).unwrap(), now);
        assert_eq!(
            parse_time("--since", "-2h", now).unwrap(),
            now - 7_200_000_000_000
        );
        assert_eq!(
            parse_time("--since", "2025-11-24T16:00:00Z", now).unwrap(),
            1_764_000_000_000_000_000
        );
        let e = parse_time("--until", "yesterday", now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--until") && e.contains("yesterday"), "{e}");
    }
}
