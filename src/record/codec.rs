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
