//! A synthetic collector: realistic trades, book tops, funding, liquidations,
//! open interest, option tickers, index prices, bars and klines, from a seeded
//! random walk. Used by `walrelay run --synthetic-rate`, demos and load tests.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::record::*;

const VENUES: [&str; 3] = ["BINANCE_FUTURES", "BYBIT", "OKX"];

/// Deterministic generator of valid records of every kind.
pub struct Synthetic {
    rng: StdRng,
    symbols: Vec<String>,
    prices: Vec<f64>,
    next_trade_id: u64,
    step: u64,
    /// Last minute a kline was emitted for, per (venue, symbol): a kline is
    /// emitted once, when its minute is first reached, as a collector that
    /// sends closed klines does (a fact key holds one row).
    kline_minutes: std::collections::HashMap<(String, usize), i64>,
}

impl Synthetic {
    /// A generator over `symbols` symbols (`SYM0USDT`, `SYM1USDT`, … after the
    /// well-known first few), seeded for reproducibility.
    pub fn new(seed: u64, symbols: usize) -> Self {
        let known = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"];
        let symbols: Vec<String> = (0..symbols.max(1))
            .map(|i| {
                known
                    .get(i)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| format!("SYM{i}USDT"))
            })
            .collect();
        let prices = (0..symbols.len())
            .map(|i| 100.0 * (i as f64 + 1.0).powi(2))
            .collect();
        Synthetic {
            rng: StdRng::seed_from_u64(seed),
            symbols,
            prices,
            next_trade_id: 1,
            step: 0,
            kline_minutes: std::collections::HashMap::new(),
        }
    }

    /// The next `n` records stamped from `now_ns` on, one microsecond apart
    /// (PostgreSQL keeps microseconds, so two bars of one batch never share a
    /// key); about 70% trades, the rest spread over the other kinds.
    pub fn batch(&mut self, n: usize, now_ns: i64) -> Vec<Record> {
        (0..n)
            .map(|i| self.one(now_ns + i as i64 * 1_000))
            .collect()
    }

    fn one(&mut self, ts: i64) -> Record {
        self.step += 1;
        let s = self.rng.gen_range(0..self.symbols.len());
        let venue = VENUES[self.rng.gen_range(0..VENUES.len())].to_string();
        let symbol = self.symbols[s].clone();
        let p = &mut self.prices[s];
        *p = (*p * (1.0 + self.rng.gen_range(-0.0005..0.0005))).max(0.0001);
        let price = (*p * 100.0).round() / 100.0;
        let qty = (self.rng.gen_range(0.001..2.0f64) * 1000.0).round() / 1000.0;
        let side = if self.rng.gen_bool(0.5) {
            "buy"
        } else {
            "sell"
        }
        .to_string();
        let mut pick = self.rng.gen_range(0..100);
        if pick >= 97 {
            let minute = ts / 60_000_000_000;
            let last = self.kline_minutes.insert((venue.clone(), s), minute);
            if last == Some(minute) {
                pick = 0; // this minute's kline is out: a trade instead
            }
        }
        match pick {
            0..=69 => {
                self.next_trade_id += 1;
                Record::Trade(Trade {
                    venue: venue.into(),
                    symbol: symbol.into(),
                    ts,
                    price,
                    quantity: qty,
                    side: side.into(),
                    trade_id: self.next_trade_id.to_string().into(),
                })
            }
            70..=81 => Record::OrderBookTop(OrderBookTop {
                venue: venue.into(),
                symbol: symbol.into(),
                ts,
                bid_price: price - 0.01,
                bid_qty: qty,
                ask_price: price + 0.01,
                ask_qty: qty * 1.3,
            }),
            82..=83 => Record::Funding(Funding {
                venue: venue.into(),
                symbol: symbol.into(),
                ts,
                rate: self.rng.gen_range(-0.0005..0.0005),
                mark_price: price,
                index_price: price * 0.9999,
                next_funding_time: (ts / 1_000_000 / 28_800_000 + 1) * 28_800_000,
            }),
            84..=85 => Record::Liquidation(Liquidation {
                venue: venue.into(),
                symbol: symbol.into(),
                ts,
                side: side.into(),
                price,
                quantity: qty * 10.0,
            }),
            86..=87 => Record::OpenInterest(OpenInterest {
                venue: venue.into(),
                symbol: symbol.into(),
                ts,
                open_interest: 50_000.0 + qty,
                open_interest_value: (50_000.0 + qty) * price,
            }),
            88..=89 => Record::OptionsTicker(OptionsTicker {
                venue: "DERIBIT".into(),
                symbol: format!("{}-27DEC26-{}-C", &symbol[..3], (price * 1.1).round()).into(),
                ts,
                open_interest: qty * 100.0,
                mark_iv: 55.0,
                best_bid_price: 0.01,
                best_ask_price: 0.012,
                mark_price: 0.011,
                underlying_price: price,
                last_price: 0.011,
                bid_iv: 54.0,
                ask_iv: 56.0,
            }),
            90..=91 => Record::PriceIndex(PriceIndex {
                venue: "DERIBIT".into(),
                index_name: format!("{}_usd", symbol[..3].to_lowercase()).into(),
                ts,
                price,
            }),
            92..=96 => {
                let buy = self.rng.gen_range(0..100u64);
                let sell = self.rng.gen_range(0..100u64);
                Record::Bar(Bar {
                    kind: BarKind::ALL[(self.step % 3) as usize],
                    venue: venue.into(),
                    symbol: symbol.into(),
                    interval: "tick_100".into(),
                    ts,
                    open: price,
                    high: price * 1.001,
                    low: price * 0.999,
                    close: price,
                    volume: qty * 100.0,
                    buy_ticks: buy,
                    sell_ticks: sell,
                    total_ticks: buy + sell,
                    theta: self.rng.gen_range(0.0..1.0),
                })
            }
            _ => Record::Kline(Kline {
                venue: venue.into(),
                symbol: symbol.into(),
                interval: "1m".into(),
                ts: (ts / 60_000_000_000 - 1) * 60_000_000_000, // the minute just closed
                open: price,
                high: price * 1.001,
                low: price * 0.999,
                close: price,
                volume: qty * 100.0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_record_is_valid_and_every_kind_appears() {
        let now = crate::record::now_ns();
        let mut g = Synthetic::new(7, 5);
        let batch = g.batch(5000, now);
        let mut kinds = HashSet::new();
        for r in &batch {
            r.validate_at(now).unwrap_or_else(|e| panic!("{r:?}: {e}"));
            kinds.insert(r.kind());
        }
        assert_eq!(kinds.len(), 9, "all kinds but generic points: {kinds:?}");
    }

    #[test]
    fn each_kline_key_is_emitted_once() {
        let now = crate::record::now_ns();
        let mut g = Synthetic::new(3, 4);
        let mut keys = HashSet::new();
        let mut klines = 0;
        for minute in 0..3 {
            for r in g.batch(5000, now + minute * 60_000_000_000) {
                if let Record::Kline(k) = r {
                    klines += 1;
                    keys.insert((k.venue, k.symbol, k.ts));
                }
            }
        }
        assert!(klines > 12, "{klines}");
        assert_eq!(keys.len(), klines);
    }

    #[test]
    fn bars_of_a_batch_have_distinct_keys_at_microsecond_precision() {
        let now = crate::record::now_ns();
        let mut g = Synthetic::new(11, 4);
        let mut keys = HashSet::new();
        let mut bars = 0;
        for r in g.batch(5000, now) {
            if let Record::Bar(b) = r {
                bars += 1;
                keys.insert((b.kind, b.venue, b.symbol, b.interval, b.ts / 1_000));
            }
        }
        assert!(bars > 100, "{bars}");
        assert_eq!(
            keys.len(),
            bars,
            "bars sharing a fact-table key would collapse"
        );
    }
}
