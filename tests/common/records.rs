//! Records for tests and benches, written once (`#[path]`-included by the
//! benches). Every helper is deterministic: the same arguments give the same
//! record, so tests can count and compare exactly.

use walrelay::record::{Record, Trade};

/// A fixed timestamp (2025-11-24), ns since the epoch.
pub const TS: i64 = 1_764_000_000_000_000_000;

/// A BINANCE buy trade with every field given.
pub fn trade_record(
    symbol: &str,
    id: impl Into<String>,
    ts: i64,
    price: f64,
    quantity: f64,
) -> Record {
    Record::Trade(Trade {
        venue: "BINANCE".into(),
        symbol: symbol.into(),
        ts,
        price,
        quantity,
        side: "buy".into(),
        trade_id: id.into(),
    })
}

/// Trade number `i`: BTCUSDT, id `i`, at `TS + i` ns (distinct per `i`).
pub fn trade(i: u64) -> Record {
    trade_record("BTCUSDT", i.to_string(), TS + i as i64, 97_000.0, 0.5)
}

/// A market-like BINANCE_FUTURES trade for benches: sides alternate with
/// `i`, the id is `5_000_000_000 + i`.
pub fn market_trade(i: u64, symbol: &str, ts: i64, price: f64, quantity: f64) -> Record {
    Record::Trade(Trade {
        venue: "BINANCE_FUTURES".into(),
        symbol: symbol.into(),
        ts,
        price,
        quantity,
        side: if i % 2 == 0 { "buy" } else { "sell" }.into(),
        trade_id: (5_000_000_000 + i).to_string(),
    })
}

/// The trade ids (numeric, as `trade` makes them) of every record in the
/// log, in log order.
pub fn trade_ids(wal: &walrelay::Wal) -> Vec<u64> {
    wal.read_after(0, usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|f| &f.records)
        .map(|r| match r {
            Record::Trade(t) => t.trade_id.parse().unwrap(),
            other => panic!("{other:?}"),
        })
        .collect()
}
