//! Times of `--since` / `--until` (`drain::rewind::parse_time` says which),
//! with errors naming the argument.

use super::AuditError;

/// Nanoseconds since the epoch of `value`, relative ones from `now_ns`.
///
/// # Errors
/// [`AuditError::BadTime`] naming `what` and the value.
pub fn parse_time(what: &'static str, value: &str, now_ns: i64) -> Result<i64, AuditError> {
    crate::drain::rewind::parse_time(value, now_ns).map_err(|detail| AuditError::BadTime {
        what,
        value: value.to_string(),
        detail,
    })
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
