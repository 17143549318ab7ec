//! The log's binary form of a record: one tag byte, then the bincode 2 body of
//! the variant's struct (standard config: varint integers, little-endian floats).
//!
//! Tags are part of the on-disk format: never renumber one, only add new ones.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};

use super::{
    Bar, Funding, Kline, Liquidation, OpenInterest, OptionsTicker, OrderBookTop, Point, PriceIndex,
    Record, Trade,
};

/// Largest record body we decode (guards allocations against a corrupt length).
const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

type Cfg = Configuration<LittleEndian, Varint, Limit<MAX_RECORD_BYTES>>;

fn cfg() -> Cfg {
    config::standard().with_limit::<MAX_RECORD_BYTES>()
}

/// The on-disk tag byte of each record variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum RecordTag {
    Trade = 1,
    OrderBookTop = 2,
    Funding = 3,
    Liquidation = 4,
    OpenInterest = 5,
    OptionsTicker = 6,
    PriceIndex = 7,
    Bar = 8,
    Kline = 9,
    Point = 10,
}

impl RecordTag {
    /// Every tag, in numeric order.
    pub const ALL: [RecordTag; 10] = [
        RecordTag::Trade,
        RecordTag::OrderBookTop,
        RecordTag::Funding,
        RecordTag::Liquidation,
        RecordTag::OpenInterest,
        RecordTag::OptionsTicker,
        RecordTag::PriceIndex,
        RecordTag::Bar,
        RecordTag::Kline,
        RecordTag::Point,
    ];

    fn from_u8(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == b)
    }
}

/// Why bytes did not decode into a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input ended before a tag byte.
    #[error("record is empty: no tag byte")]
    Empty,
    /// The tag byte names no known variant (a newer format, or corruption).
    #[error("unknown record tag {0}")]
    UnknownTag(u8),
    /// The body after the tag did not decode.
    #[error("record body (tag {tag}) does not decode: {source}")]
    Body {
        tag: u8,
        #[source]
        source: bincode::error::DecodeError,
    },
    /// Encoding failed (only on a writer that cannot grow).
    #[error("record does not encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

/// Appends the binary form of `record` to `buf`.
///
/// # Errors
/// Only if bincode fails to encode into a `Vec`, which does not happen for valid input.
pub fn encode_record(record: &Record, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    macro_rules! put {
        ($tag:ident, $v:expr) => {{
            buf.push(RecordTag::$tag as u8);
            bincode::encode_into_std_write($v, buf, cfg())?;
        }};
    }
    match record {
        Record::Trade(v) => put!(Trade, v),
        Record::OrderBookTop(v) => put!(OrderBookTop, v),
        Record::Funding(v) => put!(Funding, v),
        Record::Liquidation(v) => put!(Liquidation, v),
        Record::OpenInterest(v) => put!(OpenInterest, v),
        Record::OptionsTicker(v) => put!(OptionsTicker, v),
        Record::PriceIndex(v) => put!(PriceIndex, v),
        Record::Bar(v) => put!(Bar, v),
        Record::Kline(v) => put!(Kline, v),
        Record::Point(v) => put!(Point, v),
    }
    Ok(())
}

/// Decodes one record from the front of `bytes`, returning it and the number of
/// bytes it used.
///
/// # Errors
/// [`CodecError`] when the tag is unknown or the body is truncated or malformed.
pub fn decode_record(bytes: &[u8]) -> Result<(Record, usize), CodecError> {
    let (&tag_byte, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    let tag = RecordTag::from_u8(tag_byte).ok_or(CodecError::UnknownTag(tag_byte))?;
    macro_rules! get {
        ($ty:ident) => {{
            let (v, n) = bincode::decode_from_slice::<$ty, _>(body, cfg()).map_err(|source| {
                CodecError::Body {
                    tag: tag_byte,
                    source,
                }
            })?;
            (Record::$ty(v), n)
        }};
    }
    let (record, used) = match tag {
        RecordTag::Trade => get!(Trade),
        RecordTag::OrderBookTop => get!(OrderBookTop),
        RecordTag::Funding => get!(Funding),
        RecordTag::Liquidation => get!(Liquidation),
        RecordTag::OpenInterest => get!(OpenInterest),
        RecordTag::OptionsTicker => get!(OptionsTicker),
        RecordTag::PriceIndex => get!(PriceIndex),
        RecordTag::Bar => get!(Bar),
        RecordTag::Kline => get!(Kline),
        RecordTag::Point => get!(Point),
    };
    Ok((record, used + 1))
}

/// The series fields and event time at the front of a record's binary form,
/// borrowed from it: for every kind but a point, its strings before `ts`
/// (venue, symbol, and a bar's or kline's interval; a price index's
/// `index_name` as the symbol), a bar's kind, and `ts`. What retention counts
/// a record by, read without decoding (or allocating) the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head<'a> {
    pub(crate) kind: super::RecordKind,
    /// `BarKind as u8` for a bar, 0 otherwise.
    pub(crate) bar: u8,
    pub(crate) venue: &'a str,
    pub(crate) symbol: &'a str,
    /// Empty unless a bar or a kline.
    pub(crate) interval: &'a str,
    pub(crate) ts: i64,
}

/// A [`Head`] before its strings are checked as UTF-8, with `key`: every byte
/// from the tag through the last series string (the same series always
/// encodes to the same bytes: bincode's varints are canonical).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawHead<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) ts: i64,
    kind: super::RecordKind,
    bar: u8,
    /// Venue, symbol and interval (empty unless a bar or a kline).
    strings: [&'a [u8]; 3],
}

impl<'a> RawHead<'a> {
    /// The strings checked as UTF-8 (`None` if one is not).
    pub(crate) fn text(&self) -> Option<Head<'a>> {
        let [venue, symbol, interval] = self.strings.map(std::str::from_utf8);
        Some(Head {
            kind: self.kind,
            bar: self.bar,
            venue: venue.ok()?,
            symbol: symbol.ok()?,
            interval: interval.ok()?,
            ts: self.ts,
        })
    }
}

/// The [`RawHead`] of one record's binary form, found by reading the bincode
/// 2 length prefixes of the variant's leading fields (in their declared
/// order; bincode has no framing between fields) and the zigzag varint of
/// `ts`. `None` for a point (its series lives in its tag map: decode it
/// whole) or bytes too short. `tests::heads_match_the_decoded_records` keeps
/// this in step with the structs.
pub(crate) fn raw_head(bytes: &[u8]) -> Option<RawHead<'_>> {
    /// A bincode 2 varint (standard config): one byte below 251, else a
    /// marker byte and a 2, 4 or 8-byte little-endian integer.
    fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
        let first = *b.get(*at)?;
        let (v, n) = match first {
            0..=250 => (u64::from(first), 1),
            251 => (
                u64::from(u16::from_le_bytes(
                    b.get(*at + 1..*at + 3)?.try_into().ok()?,
                )),
                3,
            ),
            252 => (
                u64::from(u32::from_le_bytes(
                    b.get(*at + 1..*at + 5)?.try_into().ok()?,
                )),
                5,
            ),
            253 => (
                u64::from_le_bytes(b.get(*at + 1..*at + 9)?.try_into().ok()?),
                9,
            ),
            _ => return None,
        };
        *at += n;
        Some(v)
    }
    let tag = RecordTag::from_u8(*bytes.first()?)?;
    let kind = super::RecordKind::ALL[tag as usize - RecordTag::ALL[0] as usize];
    let count = match tag {
        RecordTag::Point => return None,
        RecordTag::Bar | RecordTag::Kline => 3,
        _ => 2,
    };
    let mut at = 1;
    let bar = match tag {
        RecordTag::Bar => u8::try_from(varint(bytes, &mut at)?).ok()?,
        _ => 0,
    };
    let mut strings: [&[u8]; 3] = [&[]; 3];
    for s in strings.iter_mut().take(count) {
        let len = usize::try_from(varint(bytes, &mut at)?).ok()?;
        let end = at.checked_add(len).filter(|&end| end <= bytes.len())?;
        *s = &bytes[at..end];
        at = end;
    }
    let key = &bytes[..at];
    // i64 is zigzag-encoded, then a varint.
    let z = varint(bytes, &mut at)?;
    Some(RawHead {
        key,
        ts: (z >> 1) as i64 ^ -((z & 1) as i64),
        kind,
        bar,
        strings,
    })
}

/// The [`Head`] of one record's binary form: [`raw_head`] with its strings
/// checked as UTF-8 (the tests' view; the counter checks only a new series'
/// strings, through [`RawHead::text`]).
#[cfg(test)]
pub(crate) fn decode_head(bytes: &[u8]) -> Option<Head<'_>> {
    raw_head(bytes)?.text()
}

/// One record of every variant, in tag order (test fixture).
#[cfg(test)]
pub(crate) fn one_of_each() -> Vec<Record> {
    use super::{BarKind, FieldValue};
    {
        let ts = 1_764_000_000_123_456_789;
        let (v, s) = ("BINANCE_FUTURES".to_string(), "BTCUSDT".to_string());
        let mut point = Point {
            measurement: "cpu load".into(),
            tags: Default::default(),
            fields: Default::default(),
            ts,
        };
        point.tags.insert("host".into(), "a,b=c".into());
        point.fields.insert("f".into(), FieldValue::Float(-0.5));
        point
            .fields
            .insert("i".into(), FieldValue::Integer(i64::MIN));
        point
            .fields
            .insert("u".into(), FieldValue::Unsigned(u64::MAX));
        point
            .fields
            .insert("s".into(), FieldValue::String("say \"hi\"\n".into()));
        point.fields.insert("b".into(), FieldValue::Boolean(true));
        vec![
            Record::Trade(Trade {
                venue: v.clone().into(),
                symbol: s.clone().into(),
                ts,
                price: 97_000.5,
                quantity: 0.012,
                side: "buy".into(),
                trade_id: "5521".into(),
            }),
            Record::OrderBookTop(OrderBookTop {
                venue: v.clone().into(),
                symbol: s.clone().into(),
                ts,
                bid_price: 1.0,
                bid_qty: 2.0,
                ask_price: 1.5,
                ask_qty: 3.0,
            }),
            Record::Funding(Funding {
                venue: v.clone().into(),
                symbol: s.clone().into(),
                ts,
                rate: -0.0001,
                mark_price: 1.0,
                index_price: 1.1,
                next_funding_time: 1_764_028_800_000,
            }),
            Record::Liquidation(Liquidation {
                venue: v.clone().into(),
                symbol: s.clone().into(),
                ts,
                side: "sell".into(),
                price: 9.0,
                quantity: 1.0,
            }),
            Record::OpenInterest(OpenInterest {
                venue: v.clone().into(),
                symbol: s.clone().into(),
                ts,
                open_interest: 10.0,
                open_interest_value: 1e9,
            }),
            Record::OptionsTicker(OptionsTicker {
                venue: "DERIBIT".into(),
                symbol: "BTC-27DEC26-100000-C".into(),
                ts,
                open_interest: 1.0,
                mark_iv: 55.0,
                best_bid_price: 0.01,
                best_ask_price: 0.02,
                mark_price: 0.015,
                underlying_price: 97_000.0,
                last_price: 0.014,
                bid_iv: 54.0,
                ask_iv: 56.0,
            }),
            Record::PriceIndex(PriceIndex {
                venue: "DERIBIT".into(),
                index_name: "btc_usd".into(),
                ts,
                price: 97_001.25,
            }),
            Record::Bar(Bar {
                kind: BarKind::VolumeImbalance,
                venue: v.clone().into(),
                symbol: s.clone().into(),
                interval: "tib_100".into(),
                ts,
                open: 1.0,
                high: 2.0,
                low: 0.5,
                close: 1.5,
                volume: 10.0,
                buy_ticks: 6,
                sell_ticks: 4,
                total_ticks: 10,
                theta: 0.25,
            }),
            Record::Kline(Kline {
                venue: v.into(),
                symbol: s.into(),
                interval: "1m".into(),
                ts,
                open: 1.0,
                high: 2.0,
                low: 0.5,
                close: 1.5,
                volume: 10.0,
            }),
            Record::Point(point),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tag_round_trips() {
        let records = one_of_each();
        assert_eq!(records.len(), RecordTag::ALL.len());
        for (record, tag) in records.iter().zip(RecordTag::ALL) {
            let mut buf = Vec::new();
            encode_record(record, &mut buf).unwrap();
            assert_eq!(buf[0], tag as u8, "{record:?}");
            let (back, used) = decode_record(&buf).unwrap();
            assert_eq!(&back, record);
            assert_eq!(used, buf.len());
        }
    }

    #[test]
    fn kind_index_and_bit_follow_the_order_of_all() {
        for (i, kind) in crate::record::RecordKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind:?}");
            assert_eq!(kind.bit(), 1 << i, "{kind:?}");
        }
        for (record, tag) in one_of_each().iter().zip(RecordTag::ALL) {
            assert_eq!(
                record.kind().index(),
                tag as usize - RecordTag::ALL[0] as usize,
                "{record:?}"
            );
        }
    }

    #[test]
    fn truncated_records_fail_to_decode() {
        for record in one_of_each() {
            let mut buf = Vec::new();
            encode_record(&record, &mut buf).unwrap();
            for cut in 0..buf.len() {
                assert!(
                    decode_record(&buf[..cut]).is_err(),
                    "{record:?} cut at {cut}"
                );
            }
        }
    }

    /// The head read from the binary form equals the decoded record's fields,
    /// for every variant and for strings whose length prefixes take one,
    /// three and five bytes.
    #[test]
    fn heads_match_the_decoded_records() {
        use crate::record::{BarKind, RecordKind};
        let long = "v".repeat(300);
        let longer = "w".repeat(70_000);
        for (venue, symbol) in [("", ""), ("OKX", "ETH-USDT"), (&long[..], &longer[..])] {
            for mut record in one_of_each() {
                match &mut record {
                    Record::Trade(r) => (r.venue, r.symbol) = (venue.into(), symbol.into()),
                    Record::OrderBookTop(r) => (r.venue, r.symbol) = (venue.into(), symbol.into()),
                    Record::Funding(r) => (r.venue, r.symbol) = (venue.into(), symbol.into()),
                    Record::Liquidation(r) => (r.venue, r.symbol) = (venue.into(), symbol.into()),
                    Record::OpenInterest(r) => (r.venue, r.symbol) = (venue.into(), symbol.into()),
                    Record::OptionsTicker(r) => (r.venue, r.symbol) = (venue.into(), symbol.into()),
                    Record::PriceIndex(r) => {
                        (r.venue, r.index_name) = (venue.into(), symbol.into())
                    }
                    Record::Bar(r) => {
                        (r.venue, r.symbol, r.interval) =
                            (venue.into(), symbol.into(), symbol.into());
                        r.kind = BarKind::Vpin;
                    }
                    Record::Kline(r) => {
                        (r.venue, r.symbol, r.interval) =
                            (venue.into(), symbol.into(), venue.into())
                    }
                    Record::Point(_) => {}
                }
                let mut buf = Vec::new();
                encode_record(&record, &mut buf).unwrap();
                let head = decode_head(&buf);
                let want = match &record {
                    Record::Trade(r) => Some((0, &r.venue[..], &r.symbol[..], "")),
                    Record::OrderBookTop(r) => Some((0, &r.venue[..], &r.symbol[..], "")),
                    Record::Funding(r) => Some((0, &r.venue[..], &r.symbol[..], "")),
                    Record::Liquidation(r) => Some((0, &r.venue[..], &r.symbol[..], "")),
                    Record::OpenInterest(r) => Some((0, &r.venue[..], &r.symbol[..], "")),
                    Record::OptionsTicker(r) => Some((0, &r.venue[..], &r.symbol[..], "")),
                    Record::PriceIndex(r) => Some((0, &r.venue[..], &r.index_name[..], "")),
                    Record::Bar(r) => {
                        Some((r.kind as u8, &r.venue[..], &r.symbol[..], &r.interval[..]))
                    }
                    Record::Kline(r) => Some((0, &r.venue[..], &r.symbol[..], &r.interval[..])),
                    Record::Point(_) => None,
                };
                let got = head.map(|h| (h.bar, h.venue, h.symbol, h.interval));
                assert_eq!(got, want, "{record:?}");
                if let Some(h) = head {
                    assert_eq!((h.kind, h.ts), (record.kind(), record.ts()), "{record:?}");
                } else {
                    assert_eq!(record.kind(), RecordKind::Point);
                }
                // The raw head: the bytes before `ts`, and `ts`.
                match (raw_head(&buf).map(|r| (r.key, r.ts)), head) {
                    (Some((key, ts)), Some(h)) => {
                        let strings = match record.kind() {
                            RecordKind::Bar | RecordKind::Kline => {
                                bincode::encode_to_vec((h.venue, h.symbol, h.interval), cfg())
                            }
                            _ => bincode::encode_to_vec((h.venue, h.symbol), cfg()),
                        }
                        .unwrap();
                        let kind = match record.kind() {
                            RecordKind::Bar => vec![h.bar],
                            _ => vec![],
                        };
                        assert_eq!(key, [&buf[..1], &kind, &strings].concat(), "{record:?}");
                        assert_eq!(ts, record.ts(), "{record:?}");
                    }
                    (None, None) => {}
                    other => panic!("{record:?}: {other:?}"),
                }
                // A cut record has no head.
                assert_eq!(decode_head(&buf[..buf.len().min(3)]), None, "{record:?}");
                assert_eq!(raw_head(&buf[..buf.len().min(3)]), None, "{record:?}");
            }
        }
    }

    #[test]
    fn raw_heads_read_every_size_of_timestamp() {
        let ts = [
            0,
            -1,
            1,
            125,
            -126,
            40_000,
            -70_000,
            1 << 40,
            i64::MAX,
            i64::MIN,
        ];
        for t in ts {
            let mut record = one_of_each().remove(0);
            if let Record::Trade(r) = &mut record {
                r.ts = t;
            }
            let mut buf = Vec::new();
            encode_record(&record, &mut buf).unwrap();
            assert_eq!(raw_head(&buf).map(|h| h.ts), Some(t));
        }
    }

    #[test]
    fn unknown_tag_is_named() {
        match decode_record(&[0xEE, 1, 2]) {
            Err(CodecError::UnknownTag(0xEE)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn trade_is_about_eighty_bytes() {
        let mut buf = Vec::new();
        encode_record(&one_of_each()[0], &mut buf).unwrap();
        assert!((40..=100).contains(&buf.len()), "{}", buf.len());
    }

    #[test]
    fn json_shape_is_tagged_by_type() {
        let json = serde_json::to_value(&one_of_each()[0]).unwrap();
        assert_eq!(json["type"], "trade");
        assert_eq!(json["symbol"], "BTCUSDT");
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, one_of_each()[0]);
        let bad = serde_json::from_str::<Record>(
            r#"{"type":"trade","venue":"V","symbol":"S","ts":1,"price":1,"quantity":1,"side":"buy","bogus":1}"#,
        );
        assert!(bad.unwrap_err().to_string().contains("bogus"));
    }
}
