//! Boundary validation: a record that passes can be carried by both sinks
//! and by the log's codec.
//!
//! The size limits live in [`Limits`] (`[ingest.limits]` in the config file,
//! documented in `docs/RECORDS.md`). Their defaults are far above what real
//! writers send and far below what breaks a sink: a dimension name must fit a
//! PostgreSQL btree index entry (at most about 2700 bytes for the whole
//! key) with margin, and an encoded record must stay well under the codec's
//! decode limit (`record::codec`, 16 MiB) so that nothing reaches the log that
//! the log cannot give back.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{FieldValue, Record};

/// Hard ceilings on [`Limits`]: a configuration above them is refused, since
/// past them a sink or the codec would fail on records the relay acknowledged.
pub const CEILING_NAME_BYTES: usize = 1024;
/// See [`CEILING_NAME_BYTES`]; half the codec's 16 MiB decode limit.
pub const CEILING_RECORD_BYTES: usize = 8 * 1024 * 1024;

/// Explicit limits every record and request must respect (`[ingest.limits]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest name or dimension value, bytes: venue, symbol, side, interval,
    /// index name, trade id, measurement, tag keys and values, field keys.
    /// Default 256 (ceiling 1024: three such columns must fit one PostgreSQL
    /// btree entry of about 2700 bytes).
    pub max_name_bytes: usize,
    /// Most fields in one generic point. Default 256.
    pub max_fields_per_point: usize,
    /// Most tags in one generic point. Default 64.
    pub max_tags_per_point: usize,
    /// Largest record in the log's binary form, bytes. Default 1 MiB
    /// (ceiling 8 MiB, half the codec's decode limit).
    pub max_record_bytes: usize,
    /// Longest line of a request body (line protocol or JSON), bytes.
    /// Default 1 MiB.
    pub max_line_bytes: usize,
    /// Most records in one request (or one in-process append). Default 50000:
    /// ten times the 5000-line batches of Telegraf and the official clients.
    pub max_records_per_request: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_name_bytes: 256,
            max_fields_per_point: 256,
            max_tags_per_point: 64,
            max_record_bytes: 1024 * 1024,
            max_line_bytes: 1024 * 1024,
            max_records_per_request: 50_000,
        }
    }
}

impl Limits {
    /// Checks the limits against their ceilings.
    ///
    /// # Errors
    /// A message naming the key that is out of range.
    pub fn check(&self) -> Result<(), String> {
        let pos = |k: &str, v: usize| {
            if v == 0 {
                Err(format!("ingest.limits.{k} must be > 0"))
            } else {
                Ok(())
            }
        };
        pos("max_name_bytes", self.max_name_bytes)?;
        pos("max_fields_per_point", self.max_fields_per_point)?;
        pos("max_tags_per_point", self.max_tags_per_point)?;
        pos("max_record_bytes", self.max_record_bytes)?;
        pos("max_line_bytes", self.max_line_bytes)?;
        pos("max_records_per_request", self.max_records_per_request)?;
        if self.max_name_bytes > CEILING_NAME_BYTES {
            return Err(format!(
                "ingest.limits.max_name_bytes = {} is over the ceiling of {CEILING_NAME_BYTES} (PostgreSQL btree entries)",
                self.max_name_bytes
            ));
        }
        if self.max_record_bytes > CEILING_RECORD_BYTES {
            return Err(format!(
                "ingest.limits.max_record_bytes = {} is over the ceiling of {CEILING_RECORD_BYTES} (the log codec's decode limit is 16 MiB)",
                self.max_record_bytes
            ));
        }
        Ok(())
    }
}

/// Nanoseconds in 100 years (365.25-day years): the accepted distance from now.
const MAX_TS_SKEW_NS: i64 = 36_525 * 86_400 * 1_000_000_000;

/// Longest string field InfluxDB accepts (64 KiB).
const MAX_STRING_FIELD: usize = 64 * 1024;

/// Why a record was rejected. Every variant names the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A required text field (venue, symbol, side, interval, ...) is empty.
    #[error("field `{field}` must not be empty")]
    Empty { field: String },
    /// A price or other float is NaN or infinite.
    #[error("field `{field}` must be a finite number, got {value}")]
    NotFinite { field: String, value: f64 },
    /// A quantity that cannot be negative is negative.
    #[error("field `{field}` must not be negative, got {value}")]
    Negative { field: String, value: f64 },
    /// The timestamp is more than 100 years away from now.
    #[error("field `{field}` ({ts} ns since epoch) is more than 100 years away from now")]
    TimestampOutOfRange { field: String, ts: i64 },
    /// A counter does not fit in a PostgreSQL BIGINT.
    #[error(
        "field `{field}` ({value}) does not fit in a signed 64-bit integer (PostgreSQL BIGINT)"
    )]
    CounterTooLarge { field: String, value: u64 },
    /// A name or tag value that line protocol cannot carry.
    #[error("field `{field}` cannot be carried by line protocol: {reason}")]
    Unrepresentable { field: String, reason: &'static str },
    /// A generic point without any field.
    #[error("field `fields` must hold at least one field")]
    NoFields,
    /// A name or value is longer than [`Limits::max_name_bytes`] (or a string
    /// field longer than 64 KiB).
    #[error("field `{field}` is {len} bytes, over the limit of {max} bytes ({limit})")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
        limit: &'static str,
    },
    /// A point has more tags or fields than [`Limits`] allows.
    #[error("field `{field}` holds {count} entries, over the limit of {max} ({limit})")]
    TooMany {
        field: String,
        count: usize,
        max: usize,
        limit: &'static str,
    },
}

impl RecordError {
    /// The name of the offending field (`fields` for a point without fields).
    pub fn field(&self) -> &str {
        match self {
            RecordError::Empty { field }
            | RecordError::NotFinite { field, .. }
            | RecordError::Negative { field, .. }
            | RecordError::TimestampOutOfRange { field, .. }
            | RecordError::CounterTooLarge { field, .. }
            | RecordError::Unrepresentable { field, .. }
            | RecordError::TooLong { field, .. }
            | RecordError::TooMany { field, .. } => field,
            RecordError::NoFields => "fields",
        }
    }
}

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

struct Check<'a> {
    now: i64,
    limits: &'a Limits,
}

impl Check<'_> {
    fn len(&self, field: &str, v: &str) -> Result<(), RecordError> {
        if v.len() > self.limits.max_name_bytes {
            return Err(RecordError::TooLong {
                field: field.into(),
                len: v.len(),
                max: self.limits.max_name_bytes,
                limit: "ingest.limits.max_name_bytes",
            });
        }
        Ok(())
    }

    fn count(
        &self,
        field: &str,
        n: usize,
        max: usize,
        limit: &'static str,
    ) -> Result<(), RecordError> {
        if n > max {
            return Err(RecordError::TooMany {
                field: field.into(),
                count: n,
                max,
                limit,
            });
        }
        Ok(())
    }

    /// An optional identifier (may be empty): bounded, no NUL.
    fn id(&self, field: &str, v: &str) -> Result<(), RecordError> {
        self.len(field, v)?;
        if v.contains('\0') {
            // PostgreSQL text cannot hold NUL.
            return Err(RecordError::Unrepresentable {
                field: field.into(),
                reason: "contains a NUL byte",
            });
        }
        Ok(())
    }

    /// A required text: not empty, then what [`Check::id`] checks.
    fn text(&self, field: &str, v: &str) -> Result<(), RecordError> {
        if v.is_empty() {
            return Err(RecordError::Empty {
                field: field.into(),
            });
        }
        self.id(field, v)
    }

    /// A value that becomes a tag value, measurement, tag key or field key.
    fn lp_text(&self, field: &str, v: &str, is_name: bool) -> Result<(), RecordError> {
        self.text(field, v)?;
        let bad = |reason| {
            Err(RecordError::Unrepresentable {
                field: field.into(),
                reason,
            })
        };
        if v.contains(['\n', '\r']) {
            return bad("contains a line break");
        }
        if v.ends_with('\\') {
            return bad("ends with a backslash, which would escape the next delimiter");
        }
        if is_name && v.starts_with('_') {
            return bad("names starting with `_` are reserved by InfluxDB");
        }
        Ok(())
    }

    fn finite(&self, field: &str, v: f64) -> Result<(), RecordError> {
        if !v.is_finite() {
            return Err(RecordError::NotFinite {
                field: field.into(),
                value: v,
            });
        }
        Ok(())
    }

    fn qty(&self, field: &str, v: f64) -> Result<(), RecordError> {
        self.finite(field, v)?;
        if v < 0.0 {
            return Err(RecordError::Negative {
                field: field.into(),
                value: v,
            });
        }
        Ok(())
    }

    fn ts(&self, v: i64) -> Result<(), RecordError> {
        if (v as i128 - self.now as i128).abs() > MAX_TS_SKEW_NS as i128 {
            return Err(RecordError::TimestampOutOfRange {
                field: "ts".into(),
                ts: v,
            });
        }
        Ok(())
    }

    fn counter(&self, field: &str, v: u64) -> Result<(), RecordError> {
        if v > i64::MAX as u64 {
            return Err(RecordError::CounterTooLarge {
                field: field.into(),
                value: v,
            });
        }
        Ok(())
    }

    fn venue_symbol(&self, venue: &str, symbol: &str) -> Result<(), RecordError> {
        self.lp_text("venue", venue, false)?;
        self.lp_text("symbol", symbol, false)
    }

    /// The fields bars and klines share, in the order they are reported:
    /// venue, symbol, interval, ts, open/high/low/close, volume.
    fn candle(
        &self,
        venue: &str,
        symbol: &str,
        interval: &str,
        ts: i64,
        [open, high, low, close]: [f64; 4],
        volume: f64,
    ) -> Result<(), RecordError> {
        self.venue_symbol(venue, symbol)?;
        self.text("interval", interval)?;
        self.ts(ts)?;
        for (name, v) in [
            ("open", open),
            ("high", high),
            ("low", low),
            ("close", close),
        ] {
            self.finite(name, v)?;
        }
        self.qty("volume", volume)
    }
}

impl Record {
    /// Checks the record against what both sinks can carry, with "now" taken
    /// from the system clock.
    ///
    /// # Errors
    /// The first problem found, naming its field.
    pub fn validate(&self) -> Result<(), RecordError> {
        self.validate_at(now_ns())
    }

    /// Like [`Record::validate`] with an explicit "now" (nanoseconds since epoch).
    ///
    /// # Errors
    /// The first problem found, naming its field.
    pub fn validate_at(&self, now_ns: i64) -> Result<(), RecordError> {
        self.validate_with(now_ns, &Limits::default())
    }

    /// Like [`Record::validate_at`] under explicit [`Limits`]. The encoded
    /// size (`max_record_bytes`) is checked where the record is encoded, by
    /// the ingest gate.
    ///
    /// # Errors
    /// The first problem found, naming its field.
    pub fn validate_with(&self, now_ns: i64, limits: &Limits) -> Result<(), RecordError> {
        let c = Check {
            now: now_ns,
            limits,
        };
        match self {
            Record::Trade(r) => {
                c.venue_symbol(&r.venue, &r.symbol)?;
                c.ts(r.ts)?;
                c.finite("price", r.price)?;
                c.qty("quantity", r.quantity)?;
                c.lp_text("side", &r.side, false)?;
                c.id("trade_id", &r.trade_id)
            }
            Record::OrderBookTop(r) => {
                c.venue_symbol(&r.venue, &r.symbol)?;
                c.ts(r.ts)?;
                c.finite("bid_price", r.bid_price)?;
                c.qty("bid_qty", r.bid_qty)?;
                c.finite("ask_price", r.ask_price)?;
                c.qty("ask_qty", r.ask_qty)
            }
            Record::Funding(r) => {
                c.venue_symbol(&r.venue, &r.symbol)?;
                c.ts(r.ts)?;
                c.finite("rate", r.rate)?;
                c.finite("mark_price", r.mark_price)?;
                c.finite("index_price", r.index_price)
            }
            Record::Liquidation(r) => {
                c.venue_symbol(&r.venue, &r.symbol)?;
                c.ts(r.ts)?;
                c.lp_text("side", &r.side, false)?;
                c.finite("price", r.price)?;
                c.qty("quantity", r.quantity)
            }
            Record::OpenInterest(r) => {
                c.venue_symbol(&r.venue, &r.symbol)?;
                c.ts(r.ts)?;
                c.qty("open_interest", r.open_interest)?;
                c.qty("open_interest_value", r.open_interest_value)
            }
            Record::OptionsTicker(r) => {
                c.venue_symbol(&r.venue, &r.symbol)?;
                c.ts(r.ts)?;
                c.qty("open_interest", r.open_interest)?;
                for (name, v) in [
                    ("mark_iv", r.mark_iv),
                    ("best_bid_price", r.best_bid_price),
                    ("best_ask_price", r.best_ask_price),
                    ("mark_price", r.mark_price),
                    ("underlying_price", r.underlying_price),
                    ("last_price", r.last_price),
                    ("bid_iv", r.bid_iv),
                    ("ask_iv", r.ask_iv),
                ] {
                    c.finite(name, v)?;
                }
                Ok(())
            }
            Record::PriceIndex(r) => {
                c.lp_text("venue", &r.venue, false)?;
                c.lp_text("index_name", &r.index_name, false)?;
                c.ts(r.ts)?;
                c.finite("price", r.price)
            }
            Record::Bar(r) => {
                c.candle(
                    &r.venue,
                    &r.symbol,
                    &r.interval,
                    r.ts,
                    [r.open, r.high, r.low, r.close],
                    r.volume,
                )?;
                c.counter("buy_ticks", r.buy_ticks)?;
                c.counter("sell_ticks", r.sell_ticks)?;
                c.counter("total_ticks", r.total_ticks)?;
                c.finite("theta", r.theta)
            }
            Record::Kline(r) => c.candle(
                &r.venue,
                &r.symbol,
                &r.interval,
                r.ts,
                [r.open, r.high, r.low, r.close],
                r.volume,
            ),
            Record::Point(p) => {
                c.lp_text("measurement", &p.measurement, true)?;
                c.ts(p.ts)?;
                c.count(
                    "tags",
                    p.tags.len(),
                    limits.max_tags_per_point,
                    "ingest.limits.max_tags_per_point",
                )?;
                c.count(
                    "fields",
                    p.fields.len(),
                    limits.max_fields_per_point,
                    "ingest.limits.max_fields_per_point",
                )?;
                for (k, v) in &p.tags {
                    c.lp_text(&format!("tags.{k}"), k, true)?;
                    c.lp_text(&format!("tags.{k}"), v, false)?;
                }
                if p.fields.is_empty() {
                    return Err(RecordError::NoFields);
                }
                for (k, v) in &p.fields {
                    let name = format!("fields.{k}");
                    c.lp_text(&name, k, true)?;
                    match v {
                        FieldValue::Float(f) => c.finite(&name, *f)?,
                        FieldValue::String(s) if s.len() > MAX_STRING_FIELD => {
                            return Err(RecordError::TooLong {
                                field: name,
                                len: s.len(),
                                max: MAX_STRING_FIELD,
                                limit: "InfluxDB's string field limit",
                            })
                        }
                        FieldValue::String(s) if s.contains('\0') => {
                            return Err(RecordError::Unrepresentable {
                                field: name,
                                reason: "contains a NUL byte",
                            })
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Bar, BarKind, Point, Trade};

    const NOW: i64 = 1_764_000_000_000_000_000;

    fn trade() -> Trade {
        Trade {
            venue: "BINANCE".into(),
            symbol: "BTCUSDT".into(),
            ts: NOW,
            price: 100.0,
            quantity: 1.0,
            side: "buy".into(),
            trade_id: "1".into(),
        }
    }

    fn field_of(r: Record) -> String {
        r.validate_at(NOW).unwrap_err().field().to_string()
    }

    #[test]
    fn valid_trade_passes() {
        Record::Trade(trade()).validate_at(NOW).unwrap();
    }

    #[test]
    fn each_rule_names_its_field() {
        let mut t = trade();
        t.symbol = crate::record::Text::new();
        assert_eq!(field_of(Record::Trade(t)), "symbol");
        let mut t = trade();
        t.venue = crate::record::Text::new();
        assert_eq!(field_of(Record::Trade(t)), "venue");
        let mut t = trade();
        t.price = f64::NAN;
        assert_eq!(field_of(Record::Trade(t)), "price");
        let mut t = trade();
        t.quantity = -1.0;
        assert_eq!(field_of(Record::Trade(t)), "quantity");
        let mut t = trade();
        t.ts = NOW + 101 * 365 * 86_400 * 1_000_000_000;
        assert_eq!(field_of(Record::Trade(t)), "ts");
        let mut t = trade();
        t.ts = NOW - 101 * 365 * 86_400 * 1_000_000_000;
        assert_eq!(field_of(Record::Trade(t)), "ts");
        let mut t = trade();
        t.symbol = "BTC\nUSDT".into();
        assert_eq!(field_of(Record::Trade(t)), "symbol");
        let mut t = trade();
        t.side = "buy\\".into();
        assert_eq!(field_of(Record::Trade(t)), "side");
        let mut t = trade();
        t.symbol = "BTC\0".into();
        assert_eq!(field_of(Record::Trade(t)), "symbol");
    }

    #[test]
    fn timestamps_within_a_century_pass() {
        let mut t = trade();
        t.ts = NOW - 99 * 365 * 86_400 * 1_000_000_000;
        Record::Trade(t).validate_at(NOW).unwrap();
    }

    #[test]
    fn bar_counters_must_fit_bigint() {
        let bar = Bar {
            kind: BarKind::Vpin,
            venue: "V".into(),
            symbol: "S".into(),
            interval: "1m".into(),
            ts: NOW,
            open: 1.0,
            high: 1.0,
            low: 1.0,
            close: 1.0,
            volume: 1.0,
            buy_ticks: 1,
            sell_ticks: u64::MAX,
            total_ticks: 1,
            theta: 0.0,
        };
        let err = Record::Bar(bar).validate_at(NOW).unwrap_err();
        assert_eq!(err.field(), "sell_ticks");
        assert!(err.to_string().contains("BIGINT"), "{err}");
    }

    #[test]
    fn point_rules() {
        let mut p = Point {
            measurement: "cpu".into(),
            tags: Default::default(),
            fields: Default::default(),
            ts: NOW,
        };
        assert_eq!(field_of(Record::Point(p.clone())), "fields");
        p.fields
            .insert("v".into(), FieldValue::Float(f64::INFINITY));
        assert_eq!(field_of(Record::Point(p.clone())), "fields.v");
        p.fields.insert("v".into(), FieldValue::Float(1.0));
        p.tags.insert("_reserved".into(), "x".into());
        assert_eq!(field_of(Record::Point(p.clone())), "tags._reserved");
        p.tags.clear();
        p.tags.insert("host".into(), "a\rb".into());
        assert_eq!(field_of(Record::Point(p.clone())), "tags.host");
        p.tags.clear();
        Record::Point(p).validate_at(NOW).unwrap();
    }
}
