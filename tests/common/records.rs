//! Records for tests and benches, written once (`#[path]`-included by the
//! benches). Every helper is deterministic: the same arguments give the same
//! record, so tests can count and compare exactly.

use walrelay::record::{Kline, Record, Trade};

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
        trade_id: id.into().into(),
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
        trade_id: (5_000_000_000 + i).to_string().into(),
    })
}

/// OKX 1-minute kline number `i` of `symbol`: at 2023-11-14 22:13:20 UTC
/// plus `i` minutes, OHLC 1 / 2 / 0.5 / 1.5, the given `volume` (the sink
/// tests vary it to make one kline refusable by an operator's rule).
pub fn kline_record(symbol: &str, i: i64, volume: f64) -> Record {
    Record::Kline(Kline {
        venue: "OKX".into(),
        symbol: symbol.into(),
        interval: "1m".into(),
        ts: 1_700_000_000_000_000_000 + i * 60_000_000_000,
        open: 1.0,
        high: 2.0,
        low: 0.5,
        close: 1.5,
        volume,
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
