//! InfluxDB line protocol parser (the `/api/v2/write` body).
//!
//! ```text
//! measurement[,tag=value…] field=value[,field=value…] [timestamp]
//! ```
//! Escapes: in the measurement `\,` and `\ `; in tag keys, tag values and
//! field keys `\,`, `\=` and `\ `; in string field values `\"` and `\\`. A
//! backslash before any other character is kept literally. Field values:
//! floats (`1`, `-1.5e3`), integers (`1i`), unsigned (`1u`), strings
//! (`"…"`, which may span lines) and booleans (`t`, `T`, `true`, `True`,
//! `TRUE`, and the same for false). Lines that are empty or start with `#` are
//! skipped; a trailing `\r` is ignored. A missing timestamp means now, at the
//! request's precision.
//!
//! Invariant: a body parses completely or not at all — the first bad line is
//! reported with its 1-based line number and nothing of the body is kept.

use std::collections::BTreeMap;

use crate::record::{FieldValue, Point};

/// Timestamp precision of a write request (`precision=` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    /// InfluxDB 1.x only (`m`).
    Minutes,
    /// InfluxDB 1.x only (`h`).
    Hours,
}

impl Precision {
    /// Parses `ns`, `us`, `ms`, `s` (InfluxDB v2 names).
    pub fn parse(s: &str) -> Option<Precision> {
        Some(match s {
            "ns" => Precision::Nanoseconds,
            "us" => Precision::Microseconds,
            "ms" => Precision::Milliseconds,
            "s" => Precision::Seconds,
            _ => return None,
        })
    }

    /// Parses an InfluxDB 1.x `precision`: `n`, `ns`, `u`, `ms`, `s`, `m`,
    /// `h` (the set InfluxDB 1.x's `/write` accepts; `us` is a v2 name).
    pub fn parse_v1(s: &str) -> Option<Precision> {
        Some(match s {
            "n" | "ns" => Precision::Nanoseconds,
            "u" => Precision::Microseconds,
            "ms" => Precision::Milliseconds,
            "s" => Precision::Seconds,
            "m" => Precision::Minutes,
            "h" => Precision::Hours,
            _ => return None,
        })
    }

    fn factor(self) -> i64 {
        match self {
            Precision::Nanoseconds => 1,
            Precision::Microseconds => 1_000,
            Precision::Milliseconds => 1_000_000,
            Precision::Seconds => 1_000_000_000,
            Precision::Minutes => 60_000_000_000,
            Precision::Hours => 3_600_000_000_000,
        }
    }
}

/// The first problem in a body: its line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// 1-based line number where the bad line starts.
    pub line: usize,
    pub message: String,
}

/// Parses a whole body. `now_ns` is used for lines without a timestamp
/// (truncated to the precision).
///
/// # Errors
/// The first malformed line.
pub fn parse(body: &str, precision: Precision, now_ns: i64) -> Result<Vec<Point>, LineError> {
    Ok(parse_numbered(body, precision, now_ns)?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

/// Like [`parse`], with the 1-based line number where each point starts.
///
/// # Errors
/// The first malformed line.
pub fn parse_numbered(
    body: &str,
    precision: Precision,
    now_ns: i64,
) -> Result<Vec<(usize, Point)>, LineError> {
    let mut out = Vec::new();
    parse_each(body, precision, now_ns, |line, point| {
        out.push((line, point))
    })?;
    Ok(out)
}

/// Like [`parse_numbered`], handing each point to `each` with its line as
/// soon as it is parsed, so that a caller that turns points into something
/// smaller (ingest: typed records) never holds a whole body of points. On an
/// error, `each` has seen the points before the bad line; the caller drops
/// what it built from them (a rejected request appends nothing).
///
/// # Errors
/// The first malformed line.
pub fn parse_each(
    body: &str,
    precision: Precision,
    now_ns: i64,
    mut each: impl FnMut(usize, Point),
) -> Result<(), LineError> {
    let default_ts = now_ns / precision.factor() * precision.factor();
    let mut p = Parser {
        s: body.as_bytes(),
        pos: 0,
        line: 1,
    };
    while p.pos < p.s.len() {
        let start_line = p.line;
        let err = |message: String| LineError {
            line: start_line,
            message,
        };
        // Skip blank lines and comments.
        let rest = &p.s[p.pos..];
        let line_end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| p.pos + i)
            .unwrap_or(p.s.len());
        let trimmed: &[u8] = trim_ascii(&p.s[p.pos..line_end]);
        if trimmed.is_empty() || trimmed[0] == b'#' {
            p.pos = line_end + 1;
            p.line += 1;
            continue;
        }
        while p.pos < p.s.len() && matches!(p.s[p.pos], b' ' | b'\t') {
            p.pos += 1;
        }
        let point = p.point(default_ts, precision).map_err(err)?;
        each(start_line, point);
    }
    Ok(())
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map(|i| i + 1)
        .unwrap_or(start);
    &b[start..end.max(start)]
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    line: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn at_line_end(&self) -> bool {
        matches!(self.peek(), None | Some(b'\n'))
            || (self.peek() == Some(b'\r')
                && matches!(self.s.get(self.pos + 1), None | Some(b'\n')))
    }

    /// Reads an escaped identifier up to an unescaped delimiter in `stops`.
    /// `what` names the identifier in an error; it is a closure so that the
    /// success path (every line) formats nothing.
    fn ident<W: std::fmt::Display>(
        &mut self,
        stops: &[u8],
        escapable: &[u8],
        what: impl Fn() -> W,
    ) -> Result<String, String> {
        // Most identifiers have no backslash: find the end first and copy
        // the slice once, at its size (the byte loop below grew a vector
        // from empty, reallocating on every identifier).
        let start = self.pos;
        let mut end = start;
        while let Some(&c) = self.s.get(end) {
            if c == b'\\' || c == b'\r' || c == b'\n' || stops.contains(&c) {
                break;
            }
            end += 1;
        }
        if self.s.get(end) != Some(&b'\\') && self.s.get(end) != Some(&b'\r') {
            self.pos = end;
            if end == start {
                return Err(format!("missing {}", what()));
            }
            return std::str::from_utf8(&self.s[start..end])
                .map(str::to_owned)
                .map_err(|_| format!("{} is not valid UTF-8", what()));
        }
        let mut out = Vec::with_capacity(end - start + 8);
        while let Some(c) = self.peek() {
            if c == b'\\' {
                match self.s.get(self.pos + 1) {
                    Some(&n) if escapable.contains(&n) => {
                        out.push(n);
                        self.pos += 2;
                        continue;
                    }
                    _ => {
                        out.push(b'\\');
                        self.pos += 1;
                        continue;
                    }
                }
            }
            if stops.contains(&c) || c == b'\n' || (c == b'\r' && self.at_line_end()) {
                break;
            }
            out.push(c);
            self.pos += 1;
        }
        if out.is_empty() {
            return Err(format!("missing {}", what()));
        }
        String::from_utf8(out).map_err(|_| format!("{} is not valid UTF-8", what()))
    }

    fn expect<W: std::fmt::Display>(&mut self, c: u8, what: impl Fn() -> W) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {}", what()))
        }
    }

    fn point(&mut self, default_ts: i64, precision: Precision) -> Result<Point, String> {
        let measurement = self.ident(b", ", b", ", || "measurement")?;
        let mut tags = BTreeMap::new();
        while self.peek() == Some(b',') {
            self.pos += 1;
            let k = self.ident(b",= ", b",= ", || "tag key")?;
            self.expect(b'=', || format!("'=' after tag key {k:?}"))?;
            let v = self.ident(b", ", b",= ", || format!("value of tag {k:?}"))?;
            tags.insert(k, v);
        }
        if self.peek() != Some(b' ') {
            return Err("expected a space before the fields".into());
        }
        self.pos += 1;
        let mut fields = BTreeMap::new();
        loop {
            let k = self.ident(b",= ", b",= ", || "field key")?;
            self.expect(b'=', || format!("'=' after field key {k:?}"))?;
            let v = self.field_value(&k)?;
            fields.insert(k, v);
            if self.peek() == Some(b',') {
                self.pos += 1;
                continue;
            }
            break;
        }
        let ts = if self.peek() == Some(b' ') {
            while self.peek() == Some(b' ') {
                self.pos += 1;
            }
            if self.at_line_end() {
                default_ts
            } else {
                let start = self.pos;
                while let Some(c) = self.peek() {
                    if c == b'-' || c.is_ascii_digit() {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                let raw = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
                let t: i64 = raw
                    .parse()
                    .map_err(|_| format!("invalid timestamp {raw:?}"))?;
                while self.peek() == Some(b' ') {
                    self.pos += 1;
                }
                t.checked_mul(precision.factor())
                    .ok_or_else(|| format!("timestamp {t} overflows at this precision"))?
            }
        } else {
            default_ts
        };
        if self.peek() == Some(b'\r') {
            self.pos += 1;
        }
        match self.peek() {
            None => {}
            Some(b'\n') => {
                self.pos += 1;
                self.line += 1;
            }
            Some(c) => return Err(format!("unexpected {:?} after the timestamp", c as char)),
        }
        Ok(Point {
            measurement,
            tags,
            fields,
            ts,
        })
    }

    fn field_value(&mut self, key: &str) -> Result<FieldValue, String> {
        if self.peek() == Some(b'"') {
            self.pos += 1;
            let mut out = Vec::new();
            loop {
                match self.peek() {
                    None => return Err(format!("unterminated string in field {key:?}")),
                    Some(b'\\') if matches!(self.s.get(self.pos + 1), Some(b'"') | Some(b'\\')) => {
                        out.push(self.s[self.pos + 1]);
                        self.pos += 2;
                    }
                    Some(b'"') => {
                        self.pos += 1;
                        break;
                    }
                    Some(c) => {
                        if c == b'\n' {
                            self.line += 1;
                        }
                        out.push(c);
                        self.pos += 1;
                    }
                }
            }
            return String::from_utf8(out)
                .map(FieldValue::String)
                .map_err(|_| format!("field {key:?} is not valid UTF-8"));
        }
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == b',' || c == b' ' || c == b'\n' || c == b'\r' {
                break;
            }
            self.pos += 1;
        }
        let raw = std::str::from_utf8(&self.s[start..self.pos])
            .map_err(|_| format!("field {key:?} is not valid UTF-8"))?;
        let bad = || format!("invalid value {raw:?} for field {key:?}");
        if raw.is_empty() {
            return Err(format!("missing value for field {key:?}"));
        }
        match raw {
            "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Boolean(true)),
            "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Boolean(false)),
            _ => {}
        }
        if let Some(n) = raw.strip_suffix('i') {
            return n.parse().map(FieldValue::Integer).map_err(|_| bad());
        }
        if let Some(n) = raw.strip_suffix('u') {
            return n.parse().map(FieldValue::Unsigned).map_err(|_| bad());
        }
        // Only the characters of a decimal float: Rust would also accept
        // "inf" and "NaN", which InfluxDB rejects.
        if !raw
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
        {
            return Err(bad());
        }
        let f: f64 = raw.parse().map_err(|_| bad())?;
        if !f.is_finite() {
            return Err(bad());
        }
        Ok(FieldValue::Float(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Point {
        let mut v = parse(s, Precision::Nanoseconds, 999).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    fn err(s: &str) -> LineError {
        parse(s, Precision::Nanoseconds, 0).unwrap_err()
    }

    #[test]
    fn parses_every_field_type() {
        let p = one(r#"m,t=a f=1.5,i=-3i,u=3u,s="x",b=t,c=FALSE,g=1 1700000000000000000"#);
        assert_eq!(p.measurement, "m");
        assert_eq!(p.tags["t"], "a");
        assert_eq!(p.fields["f"], FieldValue::Float(1.5));
        assert_eq!(p.fields["i"], FieldValue::Integer(-3));
        assert_eq!(p.fields["u"], FieldValue::Unsigned(3));
        assert_eq!(p.fields["s"], FieldValue::String("x".into()));
        assert_eq!(p.fields["b"], FieldValue::Boolean(true));
        assert_eq!(p.fields["c"], FieldValue::Boolean(false));
        assert_eq!(p.fields["g"], FieldValue::Float(1.0));
        assert_eq!(p.ts, 1_700_000_000_000_000_000);
    }

    #[test]
    fn escapes() {
        let p = one(r#"my\ meas\,ure,ta\ g\=k=v\,a\ l\=ue fi\=eld\ k="q\"uo\\te" 1"#);
        assert_eq!(p.measurement, "my meas,ure");
        assert_eq!(p.tags["ta g=k"], "v,a l=ue");
        assert_eq!(
            p.fields["fi=eld k"],
            FieldValue::String(r#"q"uo\te"#.into())
        );
        // Backslash before other characters is literal; `=` needs no escape in a measurement.
        let p = one(r"a\b=c,t=x\y f=1 1");
        assert_eq!(p.measurement, r"a\b=c");
        assert_eq!(p.tags["t"], r"x\y");
        // A string field may hold a newline and commas/spaces.
        let p = one("m s=\"a b,c\nd\" 5");
        assert_eq!(p.fields["s"], FieldValue::String("a b,c\nd".into()));
    }

    #[test]
    fn influxdb_1x_precisions_scale_to_nanoseconds() {
        let cases = [
            (
                "n",
                1_764_000_000_000_000_123_i64,
                1_764_000_000_000_000_123,
            ),
            ("ns", 1_764_000_000_000_000_123, 1_764_000_000_000_000_123),
            ("u", 1_764_000_000_000_123, 1_764_000_000_000_123_000),
            ("ms", 1_764_000_000_123, 1_764_000_000_123_000_000),
            ("s", 1_764_000_000, 1_764_000_000_000_000_000),
            ("m", 29_400_000, 1_764_000_000_000_000_000),
            ("h", 490_000, 1_764_000_000_000_000_000),
        ];
        for (name, written, ns) in cases {
            let p = Precision::parse_v1(name).unwrap();
            let got = parse(&format!("m f=1 {written}"), p, 0).unwrap()[0].ts;
            assert_eq!(got, ns, "precision {name}");
        }
        // The 1.x names are not all v2 names and the other way round.
        assert_eq!(Precision::parse_v1("us"), None);
        assert_eq!(Precision::parse_v1("x"), None);
        assert_eq!(Precision::parse("h"), None);
        assert_eq!(Precision::parse("u"), None);
        // Out of range at the precision: an error naming the line, not a wrap.
        let e = parse("m f=1 1\nm f=1 3000000", Precision::Hours, 0).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("overflows"), "{e}");
        // Missing timestamp: now, truncated to the hour.
        assert_eq!(
            parse("m f=1", Precision::Hours, 3_600_000_000_000 + 5).unwrap()[0].ts,
            3_600_000_000_000
        );
    }

    #[test]
    fn timestamps_and_precision() {
        assert_eq!(
            parse("m f=1 5", Precision::Seconds, 0).unwrap()[0].ts,
            5_000_000_000
        );
        assert_eq!(
            parse("m f=1 5", Precision::Milliseconds, 0).unwrap()[0].ts,
            5_000_000
        );
        assert_eq!(
            parse("m f=1 5", Precision::Microseconds, 0).unwrap()[0].ts,
            5_000
        );
        assert_eq!(
            parse("m f=1 -5", Precision::Nanoseconds, 0).unwrap()[0].ts,
            -5
        );
        // Missing timestamp: now, truncated to the precision.
        assert_eq!(
            parse("m f=1", Precision::Milliseconds, 1_234_567_891).unwrap()[0].ts,
            1_234_000_000
        );
        assert_eq!(
            parse("m f=1 ", Precision::Nanoseconds, 77).unwrap()[0].ts,
            77
        );
        assert!(parse("m f=1 9223372036854775807", Precision::Seconds, 0).is_err());
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let v = parse(
            "# comment\n\nm f=1 1\r\n  \nm f=2 2\n",
            Precision::Nanoseconds,
            0,
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].fields["f"], FieldValue::Float(2.0));
    }

    #[test]
    fn errors_name_the_line_and_problem() {
        let e = err("m f=1 1\nm f=1 1\nm,t f=1 1");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("'=' after tag key"), "{e}");
        assert!(err("m").message.contains("space before the fields"));
        assert!(err("m f=").message.contains("missing value"));
        assert!(err("m f=abc").message.contains("invalid value"));
        assert!(err("m f=inf").message.contains("invalid value"));
        assert!(err("m f=NaN").message.contains("invalid value"));
        assert!(err("m f=99999999999999999999i")
            .message
            .contains("invalid value"));
        assert!(err("m f=-1u").message.contains("invalid value"));
        assert!(err("m f=\"open").message.contains("unterminated"));
        assert!(err("m,t= f=1").message.contains("missing value of tag"));
        assert!(err(",t=a f=1").message.contains("missing measurement"));
        assert!(err("m f=1 12x").message.contains("unexpected"));
        assert!(err("m f=1 abc").message.contains("invalid timestamp"));
        // A multi-line string shifts the line numbers of what follows.
        assert_eq!(err("m s=\"a\nb\" 1\nbad").line, 3);
    }
}
