//! Typed market-data records: what the log stores and what the sinks encode.
//!
//! Invariant: every [`Record`] that reaches the log has passed [`Record::validate`].
//! Validation happens at the boundary (ingest, the in-process API); nothing behind
//! the log re-checks, so a record that validates must be encodable by both sinks:
//! finite prices, non-negative quantities, counters that fit a PostgreSQL `BIGINT`,
//! timestamps within ±100 years of now, and tag keys/values that line protocol can
//! carry.
//!
//! Timestamps (`ts`) are exchange event times in **nanoseconds since the Unix
//! epoch** (UTC). Two encodings exist: JSON (serde, the `/v1/records` ingest shape
//! documented in `docs/RECORDS.md`) and the log's binary form (`codec`), an explicit
//! tag byte followed by a bincode 2 body.

mod codec;
mod text;
mod validate;

#[cfg(test)]
pub(crate) use codec::one_of_each as codec_samples;
pub use codec::{decode_record, encode_record, CodecError, RecordTag};
pub(crate) use codec::{raw_head, Head};
pub use text::Text;
pub use validate::now_ns;
pub use validate::{Limits, RecordError};

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// One market-data record. The enum grows with new data types, hence `non_exhaustive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Record {
    Trade(Trade),
    OrderBookTop(OrderBookTop),
    Funding(Funding),
    Liquidation(Liquidation),
    OpenInterest(OpenInterest),
    OptionsTicker(OptionsTicker),
    PriceIndex(PriceIndex),
    Bar(Bar),
    Kline(Kline),
    Point(Point),
}

/// The kind of a record, used for routing, metrics labels and log fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RecordKind {
    Trade,
    OrderBookTop,
    Funding,
    Liquidation,
    OpenInterest,
    OptionsTicker,
    PriceIndex,
    Bar,
    Kline,
    Point,
}

impl RecordKind {
    /// Every kind, in tag order.
    pub const ALL: [RecordKind; 10] = [
        RecordKind::Trade,
        RecordKind::OrderBookTop,
        RecordKind::Funding,
        RecordKind::Liquidation,
        RecordKind::OpenInterest,
        RecordKind::OptionsTicker,
        RecordKind::PriceIndex,
        RecordKind::Bar,
        RecordKind::Kline,
        RecordKind::Point,
    ];

    /// Stable snake_case name (matches the JSON `type` field).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Trade => "trade",
            RecordKind::OrderBookTop => "order_book_top",
            RecordKind::Funding => "funding",
            RecordKind::Liquidation => "liquidation",
            RecordKind::OpenInterest => "open_interest",
            RecordKind::OptionsTicker => "options_ticker",
            RecordKind::PriceIndex => "price_index",
            RecordKind::Bar => "bar",
            RecordKind::Kline => "kline",
            RecordKind::Point => "point",
        }
    }

    /// This kind's position in [`RecordKind::ALL`] (tag order), for tables
    /// indexed by kind.
    pub fn index(self) -> usize {
        // The variants are declared in the order of `ALL`; a unit test
        // checks the two agree.
        self as usize
    }

    /// This kind's bit in a kinds mask (see the WAL's frame index).
    pub fn bit(self) -> u16 {
        1 << self.index()
    }

    /// The collector data-type name used in routing keys (`"VENUE:DATA_TYPE"`).
    pub fn data_type(self) -> &'static str {
        match self {
            RecordKind::Trade => "TRADE",
            RecordKind::OrderBookTop => "ORDERBOOK",
            RecordKind::Funding => "FUNDING",
            RecordKind::Liquidation => "LIQUIDATION",
            RecordKind::OpenInterest => "OPEN_INTEREST",
            RecordKind::OptionsTicker => "TICKER",
            RecordKind::PriceIndex => "PRICE_INDEX",
            RecordKind::Bar | RecordKind::Kline => "CANDLE",
            RecordKind::Point => "POINT",
        }
    }

    /// Whether records of this kind go to the warehouse (TimescaleDB) rather than
    /// to InfluxDB.
    pub fn is_warehouse(self) -> bool {
        matches!(self, RecordKind::Bar | RecordKind::Kline)
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A single executed trade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct Trade {
    pub venue: Text,
    pub symbol: Text,
    pub ts: i64,
    pub price: f64,
    pub quantity: f64,
    /// As the venue reports it (usually `buy` / `sell`); carried verbatim.
    pub side: Text,
    /// The venue's trade identifier; empty when the venue gives none.
    #[serde(default)]
    pub trade_id: Text,
}

/// Best bid and ask of an order book.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct OrderBookTop {
    pub venue: Text,
    pub symbol: Text,
    pub ts: i64,
    pub bid_price: f64,
    pub bid_qty: f64,
    pub ask_price: f64,
    pub ask_qty: f64,
}

impl OrderBookTop {
    /// `ask_price - bid_price`.
    pub fn spread(&self) -> f64 {
        self.ask_price - self.bid_price
    }
    /// `(ask_price + bid_price) / 2`.
    pub fn mid_price(&self) -> f64 {
        (self.ask_price + self.bid_price) / 2.0
    }
    /// `bid_qty / (bid_qty + ask_qty)`; 0 when both sides are empty.
    pub fn imbalance(&self) -> f64 {
        let total = self.bid_qty + self.ask_qty;
        if total > 0.0 {
            self.bid_qty / total
        } else {
            0.0
        }
    }
}

/// A perpetual funding-rate update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct Funding {
    pub venue: Text,
    pub symbol: Text,
    pub ts: i64,
    pub rate: f64,
    pub mark_price: f64,
    pub index_price: f64,
    /// Next funding time as the venue gives it (epoch milliseconds for most venues).
    pub next_funding_time: i64,
}

/// A forced liquidation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct Liquidation {
    pub venue: Text,
    pub symbol: Text,
    pub ts: i64,
    pub side: Text,
    pub price: f64,
    pub quantity: f64,
}

/// Open interest of a derivative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct OpenInterest {
    pub venue: Text,
    pub symbol: Text,
    pub ts: i64,
    pub open_interest: f64,
    pub open_interest_value: f64,
}

/// An options ticker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct OptionsTicker {
    pub venue: Text,
    pub symbol: Text,
    pub ts: i64,
    pub open_interest: f64,
    pub mark_iv: f64,
    pub best_bid_price: f64,
    pub best_ask_price: f64,
    pub mark_price: f64,
    pub underlying_price: f64,
    pub last_price: f64,
    pub bid_iv: f64,
    pub ask_iv: f64,
}

/// A price index value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct PriceIndex {
    pub venue: Text,
    pub index_name: Text,
    pub ts: i64,
    pub price: f64,
}

/// The sampling rule a [`Bar`] was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum BarKind {
    TickImbalance,
    VolumeImbalance,
    Vpin,
}

impl BarKind {
    /// Every bar kind.
    pub const ALL: [BarKind; 3] = [
        BarKind::TickImbalance,
        BarKind::VolumeImbalance,
        BarKind::Vpin,
    ];

    /// Stable snake_case name (matches the JSON value and the table suffix).
    pub fn as_str(self) -> &'static str {
        match self {
            BarKind::TickImbalance => "tick_imbalance",
            BarKind::VolumeImbalance => "volume_imbalance",
            BarKind::Vpin => "vpin",
        }
    }
}

/// An information-driven bar (tick/volume imbalance, VPIN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct Bar {
    pub kind: BarKind,
    pub venue: Text,
    pub symbol: Text,
    pub interval: Text,
    pub ts: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
    #[serde(default)]
    pub buy_ticks: u64,
    #[serde(default)]
    pub sell_ticks: u64,
    #[serde(default)]
    pub total_ticks: u64,
    #[serde(default)]
    pub theta: f64,
}

/// A time bar (candlestick).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct Kline {
    pub venue: Text,
    pub symbol: Text,
    pub interval: Text,
    pub ts: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
}

/// A field value of a generic [`Point`], with InfluxDB's five field types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum FieldValue {
    Float(f64),
    Integer(i64),
    Unsigned(u64),
    String(String),
    Boolean(bool),
}

/// A generic InfluxDB point, carried verbatim so the relay can transport any
/// line-protocol data. Tags and fields are kept sorted by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub measurement: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub fields: BTreeMap<String, FieldValue>,
    /// Nanoseconds since the Unix epoch, exactly as the writer gave it.
    pub ts: i64,
}

impl Record {
    /// The record's kind.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Trade(_) => RecordKind::Trade,
            Record::OrderBookTop(_) => RecordKind::OrderBookTop,
            Record::Funding(_) => RecordKind::Funding,
            Record::Liquidation(_) => RecordKind::Liquidation,
            Record::OpenInterest(_) => RecordKind::OpenInterest,
            Record::OptionsTicker(_) => RecordKind::OptionsTicker,
            Record::PriceIndex(_) => RecordKind::PriceIndex,
            Record::Bar(_) => RecordKind::Bar,
            Record::Kline(_) => RecordKind::Kline,
            Record::Point(_) => RecordKind::Point,
        }
    }

    /// Event time in nanoseconds since the Unix epoch.
    pub fn ts(&self) -> i64 {
        match self {
            Record::Trade(r) => r.ts,
            Record::OrderBookTop(r) => r.ts,
            Record::Funding(r) => r.ts,
            Record::Liquidation(r) => r.ts,
            Record::OpenInterest(r) => r.ts,
            Record::OptionsTicker(r) => r.ts,
            Record::PriceIndex(r) => r.ts,
            Record::Bar(r) => r.ts,
            Record::Kline(r) => r.ts,
            Record::Point(r) => r.ts,
        }
    }

    /// The venue, or `None` for a generic point.
    pub fn venue(&self) -> Option<&str> {
        Some(match self {
            Record::Trade(r) => &r.venue,
            Record::OrderBookTop(r) => &r.venue,
            Record::Funding(r) => &r.venue,
            Record::Liquidation(r) => &r.venue,
            Record::OpenInterest(r) => &r.venue,
            Record::OptionsTicker(r) => &r.venue,
            Record::PriceIndex(r) => &r.venue,
            Record::Bar(r) => &r.venue,
            Record::Kline(r) => &r.venue,
            Record::Point(_) => return None,
        })
    }
}
