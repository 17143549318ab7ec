//! Boundary validation: a record that passes can be carried by both sinks.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{FieldValue, Record};

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
            | RecordError::Unrepresentable { field, .. } => field,
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

struct Check {
    now: i64,
}

impl Check {
    fn text(&self, field: &str, v: &str) -> Result<(), RecordError> {
        if v.is_empty() {
            return Err(RecordError::Empty {
                field: field.into(),
            });
        }
        if v.contains('\0') {
            // PostgreSQL text cannot hold NUL.
            return Err(RecordError::Unrepresentable {
                field: field.into(),
                reason: "contains a NUL byte",
            });
        }
        Ok(())
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
        let c = Check { now: now_ns };
        match self {
            Record::Trade(r) => {
                c.venue_symbol(&r.venue, &r.symbol)?;
                c.ts(r.ts)?;
                c.finite("price", r.price)?;
                c.qty("quantity", r.quantity)?;
                c.lp_text("side", &r.side, false)
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
                c.venue_symbol(&r.venue, &r.symbol)?;
                c.text("interval", &r.interval)?;
                c.ts(r.ts)?;
                for (name, v) in [
                    ("open", r.open),
                    ("high", r.high),
                    ("low", r.low),
                    ("close", r.close),
                ] {
                    c.finite(name, v)?;
                }
                c.qty("volume", r.volume)?;
                c.counter("buy_ticks", r.buy_ticks)?;
                c.counter("sell_ticks", r.sell_ticks)?;
                c.counter("total_ticks", r.total_ticks)?;
                c.finite("theta", r.theta)
            }
            Record::Kline(r) => {
                c.venue_symbol(&r.venue, &r.symbol)?;
                c.text("interval", &r.interval)?;
                c.ts(r.ts)?;
                for (name, v) in [
                    ("open", r.open),
                    ("high", r.high),
                    ("low", r.low),
                    ("close", r.close),
                ] {
                    c.finite(name, v)?;
                }
                c.qty("volume", r.volume)
            }
            Record::Point(p) => {
                c.lp_text("measurement", &p.measurement, true)?;
                c.ts(p.ts)?;
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
                            return Err(RecordError::Unrepresentable {
                                field: name,
                                reason: "string field longer than 64 KiB",
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
        t.symbol.clear();
        assert_eq!(field_of(Record::Trade(t)), "symbol");
        let mut t = trade();
        t.venue.clear();
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
