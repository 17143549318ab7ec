//! Line-protocol encoding: pure functions writing into a reusable buffer.
//!
//! Escaping follows the InfluxDB line protocol reference: in measurements,
//! commas and spaces; in tag keys, tag values and field keys, commas, equals
//! signs and spaces; in string field values, double quotes and backslashes.
//! Floats are written with the shortest representation that round-trips
//! (ryu); integers get the `i` suffix, unsigned integers `u`. Tags are sorted
//! by key. Timestamps are nanoseconds, written exactly as the record holds
//! them (the identity rule in `identity.rs` is applied before the log).

use crate::record::{FieldValue, Record};

/// The measurement a typed record is written to.
pub fn measurement(r: &Record) -> &str {
    match r {
        Record::Trade(_) => "trades",
        Record::OrderBookTop(_) => "orderbook",
        Record::Funding(_) => "funding_rate",
        Record::Liquidation(_) => "liquidation",
        Record::OpenInterest(_) => "open_interest",
        Record::OptionsTicker(_) => "options_ticker",
        Record::PriceIndex(_) => "price_index",
        Record::Point(p) => &p.measurement,
        // Bars and klines go to TimescaleDB; encoded under their kind for completeness.
        other => other.kind().as_str(),
    }
}

/// Which bytes get a backslash, as a table indexed by byte (one lookup per
/// byte instead of a scan of the specials).
struct Specials([bool; 256]);

impl Specials {
    const fn of(bytes: &[u8]) -> Specials {
        let mut t = [false; 256];
        let mut i = 0;
        while i < bytes.len() {
            t[bytes[i] as usize] = true;
            i += 1;
        }
        Specials(t)
    }
}

/// Measurements: commas and spaces.
const MEASUREMENT: Specials = Specials::of(b", ");
/// Tag keys, tag values and field keys: commas, equals signs and spaces.
const NAME: Specials = Specials::of(b", =");
/// String field values: double quotes and backslashes.
const STRING: Specials = Specials::of(b"\"\\");

fn escape(buf: &mut Vec<u8>, s: &str, specials: &Specials) {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|b| specials.0[*b as usize]) {
        buf.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        if specials.0[b as usize] {
            buf.push(b'\\');
        }
        buf.push(b);
    }
}

fn name(buf: &mut Vec<u8>, s: &str) {
    escape(buf, s, &NAME);
}

fn tag(buf: &mut Vec<u8>, k: &str, v: &str) {
    buf.push(b',');
    name(buf, k);
    buf.push(b'=');
    name(buf, v);
}

/// Writes `v` the way ryu would when it is a decimal with few fraction
/// digits (what market data mostly is: prices and sizes parsed from decimal
/// text), without ryu's shortest-digit search, which profiling showed to be
/// half of the drainer's encoding time. Returns false, writing nothing, for
/// every other value; the caller then uses ryu.
///
/// Why the output is exactly ryu's: with `scale = 10^d`, `n = round(|v| ×
/// scale)` is accepted only if `n / scale == |v|` in f64 arithmetic, which is
/// correctly rounded since `n < 2^53` and `scale` is exact, so the decimal
/// `n × 10^-d` parses back to `v`. The magnitude bounds keep v's rounding
/// interval narrower than `10^-d`, so no other decimal with at most `d`
/// fraction digits parses to `v`, and the shortest one (ryu's) is `n` with
/// its trailing zeros removed. The lower bound keeps to the range where ryu
/// writes plain decimals, not exponents. A unit test compares the two on
/// hundreds of thousands of values.
fn short_decimal(buf: &mut Vec<u8>, v: f64) -> bool {
    // (upper bound of |v|, fraction digits tried, 10^digits); ulp(2^19) = 2^-33 < 10^-9
    // and ulp(2^33) = 2^-19 < 10^-4, and both scaled bounds stay below 2^53.
    const TIERS: [(f64, u32, f64); 2] = [(524_288.0, 9, 1e9), (8_589_934_592.0, 4, 1e4)];
    let a = v.abs();
    if a.is_nan() || a < 1e-4 {
        return false; // zero, tiny, NaN: ryu
    }
    let Some(&(_, digits, scale)) = TIERS.iter().find(|t| a < t.0) else {
        return false;
    };
    // Round half up by truncation (one instruction; `f64::round` is a libm
    // call on baseline x86-64). A near-tie rounded the other way only fails
    // the check below and goes to ryu; nothing wrong is ever written.
    let n = (a * scale + 0.5) as u64;
    if n as f64 / scale != a {
        return false;
    }
    let (mut n, mut d) = (n, digits);
    while d > 0 && n % 10 == 0 {
        n /= 10;
        d -= 1;
    }
    if v < 0.0 {
        buf.push(b'-');
    }
    let mut ib = itoa::Buffer::new();
    let digits = ib.format(n).as_bytes();
    let d = d as usize;
    if d == 0 {
        buf.extend_from_slice(digits);
        buf.extend_from_slice(b".0");
    } else if digits.len() > d {
        let (int, frac) = digits.split_at(digits.len() - d);
        buf.extend_from_slice(int);
        buf.push(b'.');
        buf.extend_from_slice(frac);
    } else {
        buf.extend_from_slice(b"0.");
        buf.resize(buf.len() + d - digits.len(), b'0');
        buf.extend_from_slice(digits);
    }
    true
}

struct Fields<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, k: &str) {
        self.buf.push(if self.first { b' ' } else { b',' });
        self.first = false;
        name(self.buf, k);
        self.buf.push(b'=');
    }

    fn float(&mut self, k: &str, v: f64) {
        self.key(k);
        if short_decimal(self.buf, v) {
            return;
        }
        let mut b = ryu::Buffer::new();
        let s = b.format_finite(v);
        // ryu writes integral values as "1.0"; keep them unambiguous floats.
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, k: &str, v: i64) {
        self.key(k);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self.buf.push(b'i');
    }

    fn value(&mut self, k: &str, v: &FieldValue) {
        match v {
            FieldValue::Float(f) => self.float(k, *f),
            FieldValue::Integer(i) => self.int(k, *i),
            FieldValue::Unsigned(u) => {
                self.key(k);
                self.buf
                    .extend_from_slice(itoa::Buffer::new().format(*u).as_bytes());
                self.buf.push(b'u');
            }
            FieldValue::Boolean(b) => {
                self.key(k);
                self.buf
                    .extend_from_slice(if *b { b"true" } else { b"false" });
            }
            FieldValue::String(s) => {
                self.key(k);
                self.buf.push(b'"');
                escape(self.buf, s, &STRING);
                self.buf.push(b'"');
            }
        }
    }
}

/// Appends the line for `r` (with a trailing newline) to `buf`.
/// Bars and klines are not InfluxDB records; they encode nothing and return false.
pub fn encode(r: &Record, buf: &mut Vec<u8>) -> bool {
    let m = measurement(r);
    match r {
        Record::Bar(_) | Record::Kline(_) => return false,
        _ => {}
    }
    escape(buf, m, &MEASUREMENT);
    // Tags in key order.
    match r {
        Record::Trade(t) => {
            tag(buf, "exchange", &t.venue);
            tag(buf, "side", &t.side);
            tag(buf, "symbol", &t.symbol);
        }
        Record::Liquidation(t) => {
            tag(buf, "exchange", &t.venue);
            tag(buf, "side", &t.side);
            tag(buf, "symbol", &t.symbol);
        }
        Record::OrderBookTop(t) => {
            tag(buf, "exchange", &t.venue);
            tag(buf, "symbol", &t.symbol);
        }
        Record::Funding(t) => {
            tag(buf, "exchange", &t.venue);
            tag(buf, "symbol", &t.symbol);
        }
        Record::OpenInterest(t) => {
            tag(buf, "exchange", &t.venue);
            tag(buf, "symbol", &t.symbol);
        }
        Record::OptionsTicker(t) => {
            tag(buf, "exchange", &t.venue);
            tag(buf, "symbol", &t.symbol);
        }
        Record::PriceIndex(t) => {
            tag(buf, "exchange", &t.venue);
            tag(buf, "index_name", &t.index_name);
        }
        Record::Point(p) => {
            for (k, v) in &p.tags {
                tag(buf, k, v);
            }
        }
        _ => {}
    }
    let mut f = Fields { buf, first: true };
    match r {
        Record::Trade(t) => {
            f.float("price", t.price);
            f.float("quantity", t.quantity);
        }
        Record::Liquidation(t) => {
            f.float("price", t.price);
            f.float("quantity", t.quantity);
        }
        Record::OrderBookTop(t) => {
            f.float("bid_price", t.bid_price);
            f.float("bid_qty", t.bid_qty);
            f.float("ask_price", t.ask_price);
            f.float("ask_qty", t.ask_qty);
            f.float("spread", t.spread());
            f.float("mid_price", t.mid_price());
            f.float("imbalance", t.imbalance());
        }
        Record::Funding(t) => {
            f.float("rate", t.rate);
            f.float("mark_price", t.mark_price);
            f.float("index_price", t.index_price);
            f.int("next_funding_time", t.next_funding_time);
        }
        Record::OpenInterest(t) => {
            f.float("open_interest", t.open_interest);
            f.float("open_interest_value", t.open_interest_value);
        }
        Record::OptionsTicker(t) => {
            for (k, v) in [
                ("open_interest", t.open_interest),
                ("mark_iv", t.mark_iv),
                ("best_bid_price", t.best_bid_price),
                ("best_ask_price", t.best_ask_price),
                ("mark_price", t.mark_price),
                ("underlying_price", t.underlying_price),
                ("last_price", t.last_price),
                ("bid_iv", t.bid_iv),
                ("ask_iv", t.ask_iv),
            ] {
                f.float(k, v);
            }
        }
        Record::PriceIndex(t) => f.float("price", t.price),
        Record::Point(p) => {
            for (k, v) in &p.fields {
                f.value(k, v);
            }
        }
        _ => {}
    }
    buf.push(b' ');
    buf.extend_from_slice(itoa::Buffer::new().format(r.ts()).as_bytes());
    buf.push(b'\n');
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::line_protocol::{parse, Precision};
    use crate::record::*;

    fn line(r: &Record) -> String {
        let mut b = Vec::new();
        assert!(encode(r, &mut b));
        String::from_utf8(b).unwrap()
    }

    fn point(m: &str, tags: &[(&str, &str)], fields: Vec<(&str, FieldValue)>) -> Record {
        Record::Point(Point {
            measurement: m.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            ts: 7,
        })
    }

    #[test]
    fn every_measurement_byte_for_byte() {
        let s = crate::record::codec_samples();
        assert_eq!(line(&s[0]), "trades,exchange=BINANCE_FUTURES,side=buy,symbol=BTCUSDT price=97000.5,quantity=0.012 1764000000123456789\n");
        assert_eq!(line(&s[1]), "orderbook,exchange=BINANCE_FUTURES,symbol=BTCUSDT bid_price=1.0,bid_qty=2.0,ask_price=1.5,ask_qty=3.0,spread=0.5,mid_price=1.25,imbalance=0.4 1764000000123456789\n");
        assert_eq!(line(&s[2]), "funding_rate,exchange=BINANCE_FUTURES,symbol=BTCUSDT rate=-0.0001,mark_price=1.0,index_price=1.1,next_funding_time=1764028800000i 1764000000123456789\n");
        assert_eq!(line(&s[3]), "liquidation,exchange=BINANCE_FUTURES,side=sell,symbol=BTCUSDT price=9.0,quantity=1.0 1764000000123456789\n");
        assert_eq!(line(&s[4]), "open_interest,exchange=BINANCE_FUTURES,symbol=BTCUSDT open_interest=10.0,open_interest_value=1000000000.0 1764000000123456789\n");
        assert_eq!(line(&s[5]), "options_ticker,exchange=DERIBIT,symbol=BTC-27DEC26-100000-C open_interest=1.0,mark_iv=55.0,best_bid_price=0.01,best_ask_price=0.02,mark_price=0.015,underlying_price=97000.0,last_price=0.014,bid_iv=54.0,ask_iv=56.0 1764000000123456789\n");
        assert_eq!(
            line(&s[6]),
            "price_index,exchange=DERIBIT,index_name=btc_usd price=97001.25 1764000000123456789\n"
        );
        let mut b = Vec::new();
        assert!(!encode(&s[7], &mut b), "bars are not written to InfluxDB");
        assert!(!encode(&s[8], &mut b), "klines are not written to InfluxDB");
        assert!(b.is_empty());
    }

    #[test]
    fn escape_rules() {
        use FieldValue::*;
        // Measurement: comma and space escaped, '=' not.
        assert_eq!(
            line(&point("a b,c=d", &[], vec![("f", Float(1.0))])),
            "a\\ b\\,c=d f=1.0 7\n"
        );
        // Tag keys and values, field keys: comma, equals, space.
        assert_eq!(
            line(&point("m", &[("k ,=", "v ,=")], vec![("f ,=", Float(1.0))])),
            "m,k\\ \\,\\==v\\ \\,\\= f\\ \\,\\==1.0 7\n"
        );
        // String values: quote and backslash escaped; comma, space, '=' and newline kept.
        assert_eq!(
            line(&point(
                "m",
                &[],
                vec![("s", String("a \"q\" \\ ,=\nz".into()))]
            )),
            "m s=\"a \\\"q\\\" \\\\ ,=\nz\" 7\n"
        );
        // Backslash elsewhere is literal.
        assert_eq!(
            line(&point("m\\x", &[("t", "a\\b")], vec![("f", Float(1.0))])),
            "m\\x,t=a\\b f=1.0 7\n"
        );
    }

    #[test]
    fn field_types_and_tag_order() {
        use FieldValue::*;
        let r = point(
            "m",
            &[("z", "1"), ("a", "2")],
            vec![
                ("i", Integer(-5)),
                ("u", Unsigned(u64::MAX)),
                ("b", Boolean(false)),
                ("t", Boolean(true)),
                ("f", Float(1e21)),
                ("g", Float(-0.000_001_5)),
            ],
        );
        assert_eq!(
            line(&r),
            "m,a=2,z=1 b=false,f=1e21,g=-1.5e-6,i=-5i,t=true,u=18446744073709551615u 7\n"
        );
    }

    #[test]
    fn floats_round_trip_exactly() {
        let values = [
            0.1,
            1.0 / 3.0,
            97_000.123_456_789,
            f64::MIN_POSITIVE,
            f64::MAX,
            -2.5e-300,
            123_456_789_012_345_680.0,
        ];
        for v in values {
            let r = point("m", &[], vec![("f", FieldValue::Float(v))]);
            let parsed = parse(&line(&r), Precision::Nanoseconds, 0).unwrap();
            assert_eq!(parsed[0].fields["f"], FieldValue::Float(v), "{v:e}");
        }
    }

    #[test]
    fn what_we_encode_parses_back_to_the_same_point() {
        let mut samples = crate::record::codec_samples();
        samples.retain(|r| !matches!(r, Record::Bar(_) | Record::Kline(_)));
        for r in samples {
            let text = line(&r);
            let p = parse(&text, Precision::Nanoseconds, 0).unwrap().remove(0);
            let back = crate::ingest::typed::classify(p.clone(), r.ts());
            // Typed records come back typed (trade ids are not part of the line).
            match (&r, &back) {
                (Record::Trade(a), Record::Trade(b)) => assert_eq!(
                    Trade {
                        trade_id: String::new().into(),
                        ..a.clone()
                    },
                    *b
                ),
                _ => assert_eq!(r, back, "{text}"),
            }
            // Re-encoding the parsed point describes the same point (field
            // order may differ, which InfluxDB ignores).
            let again = parse(&line(&Record::Point(p.clone())), Precision::Nanoseconds, 0)
                .unwrap()
                .remove(0);
            assert_eq!(again, p);
        }
    }

    #[test]
    fn short_decimals_are_written_exactly_as_ryu_writes_them() {
        let ryu = |v: f64| ryu::Buffer::new().format_finite(v).to_string();
        let fast = |v: f64| {
            let mut b = Vec::new();
            short_decimal(&mut b, v).then(|| String::from_utf8(b).unwrap())
        };
        let mut taken = 0;
        let mut check = |v: f64| {
            if let Some(s) = fast(v) {
                taken += 1;
                assert_eq!(s, ryu(v), "{v:e}");
                assert_eq!(s.parse::<f64>().unwrap(), v, "{s}");
            }
        };
        // Decimals as collectors send them, at every magnitude the tiers
        // cover and across their bounds, both signs.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (x % 12) as i32;
            let mantissa = (x >> 8) % 10u64.pow((x % 11) as u32 + 1);
            let v = format!("{mantissa}e-{digits}").parse::<f64>().unwrap();
            check(v);
            check(-v);
            // Arbitrary bit patterns: mostly refused, never wrong.
            check(f64::from_bits(x));
        }
        for v in [
            1e-4,
            0.0001,
            0.00011,
            524_287.999_999_999,
            524_288.0,
            524_288.5,
            8_589_934_591.5,
            8_589_934_592.0,
            37_000.75,
            0.001 * 7.0,
            0.1 + 0.2,
            1.0,
            100.0,
            123_456.789,
        ] {
            check(v);
            check(-v);
        }
        assert!(taken > 100_000, "the fast path took only {taken} values");
        // Left to ryu: zero (and its sign), values below 1e-4, values too
        // large for the tiers, and non-finite input.
        for v in [
            0.0,
            -0.0,
            1e-5,
            9e-5,
            1e10,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert_eq!(fast(v), None, "{v:e}");
        }
    }
}
