//! Collector messages → typed records. Pure functions.

use super::config::CandleTarget;
use super::proto::market_data_message::Data;
use super::proto::MarketDataMessage;
use crate::record::*;

/// What one message became.
#[derive(Debug, Clone, PartialEq)]
pub enum Converted {
    Record(Record),
    /// Not a record for the relay (wallet updates, an empty book side, a
    /// candle of an unknown producer); the reason is counted and logged.
    Skipped(&'static str),
}

fn ms(ts: i64) -> i64 {
    ts.saturating_mul(1_000_000)
}

/// Converts one message; `venue` is the subscription's, used when the
/// message does not name one.
pub fn convert(
    m: MarketDataMessage,
    venue: &str,
    producers: &[(String, CandleTarget)],
) -> Converted {
    let venue = if m.venue.is_empty() {
        venue.to_string()
    } else {
        m.venue.clone()
    };
    let Some(data) = m.data else {
        return Converted::Skipped("empty message");
    };
    Converted::Record(match data {
        Data::Orderbook(b) => {
            let bid = b.bids.iter().max_by(|x, y| x.price.total_cmp(&y.price));
            let ask = b.asks.iter().min_by(|x, y| x.price.total_cmp(&y.price));
            let (Some(bid), Some(ask)) = (bid, ask) else {
                return Converted::Skipped("order book without a bid or an ask");
            };
            Record::OrderBookTop(OrderBookTop {
                venue: venue.into(),
                symbol: b.symbol.into(),
                ts: ms(b.timestamp),
                bid_price: bid.price,
                bid_qty: bid.quantity,
                ask_price: ask.price,
                ask_qty: ask.quantity,
            })
        }
        Data::Trade(t) => Record::Trade(Trade {
            venue: venue.into(),
            symbol: t.symbol.into(),
            ts: ms(t.timestamp),
            price: t.price,
            quantity: t.quantity,
            side: t.side.into(),
            trade_id: t.trade_id.into(),
        }),
        Data::Candle(c) => {
            let Some(target) = producers
                .iter()
                .find(|(k, _)| m.producer.contains(k.as_str()))
                .map(|(_, t)| *t)
            else {
                return Converted::Skipped(
                    "candle from a producer with no bar kind (see grpc.producers)",
                );
            };
            match target {
                CandleTarget::Kline => Record::Kline(Kline {
                    venue: venue.into(),
                    symbol: c.symbol.into(),
                    interval: c.interval.into(),
                    ts: ms(c.timestamp),
                    open: c.open,
                    high: c.high,
                    low: c.low,
                    close: c.close,
                    volume: c.volume,
                }),
                CandleTarget::Bar(kind) => Record::Bar(Bar {
                    kind,
                    venue: venue.into(),
                    symbol: c.symbol.into(),
                    interval: c.interval.into(),
                    ts: ms(c.timestamp),
                    open: c.open,
                    high: c.high,
                    low: c.low,
                    close: c.close,
                    volume: c.volume,
                    buy_ticks: c.buy_ticks,
                    sell_ticks: c.sell_ticks,
                    total_ticks: c.total_ticks,
                    theta: c.theta,
                }),
            }
        }
        Data::Funding(f) => Record::Funding(Funding {
            venue: venue.into(),
            symbol: f.symbol.into(),
            ts: ms(f.timestamp),
            rate: f.rate,
            mark_price: f.mark_price,
            index_price: f.index_price,
            next_funding_time: f.next_funding_time,
        }),
        Data::Wallet(_) => return Converted::Skipped("wallet update (not market data)"),
        Data::OptionsTicker(o) => Record::OptionsTicker(OptionsTicker {
            venue: venue.into(),
            symbol: o.symbol.into(),
            ts: ms(o.timestamp),
            open_interest: o.open_interest,
            mark_iv: o.mark_iv,
            best_bid_price: o.best_bid_price,
            best_ask_price: o.best_ask_price,
            mark_price: o.mark_price,
            underlying_price: o.underlying_price,
            last_price: o.last_price,
            bid_iv: o.bid_iv,
            ask_iv: o.ask_iv,
        }),
        Data::PriceIndex(p) => Record::PriceIndex(PriceIndex {
            venue: venue.into(),
            index_name: p.index_name.into(),
            ts: ms(p.timestamp),
            price: p.price,
        }),
        Data::Liquidation(l) => Record::Liquidation(Liquidation {
            venue: venue.into(),
            symbol: l.symbol.into(),
            ts: ms(l.timestamp),
            side: l.side.into(),
            price: l.price,
            quantity: l.quantity,
        }),
        Data::OpenInterest(o) => Record::OpenInterest(OpenInterest {
            venue: venue.into(),
            symbol: o.symbol.into(),
            ts: ms(o.timestamp),
            open_interest: o.open_interest,
            open_interest_value: o.open_interest_value,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::super::proto::*;
    use super::*;

    fn msg(data: market_data_message::Data, producer: &str) -> MarketDataMessage {
        MarketDataMessage {
            venue: "BINANCE_FUTURES".into(),
            producer: producer.into(),
            data: Some(data),
        }
    }

    fn rules() -> Vec<(String, CandleTarget)> {
        super::super::config::GrpcConfig::default().producer_rules()
    }

    #[test]
    fn book_top_from_best_levels() {
        let b = OrderBookSnapshot {
            symbol: "BTCUSDT".into(),
            timestamp: 1_700_000_000_123,
            bids: vec![
                PriceLevel {
                    price: 99.0,
                    quantity: 1.0,
                },
                PriceLevel {
                    price: 100.0,
                    quantity: 2.0,
                },
            ],
            asks: vec![
                PriceLevel {
                    price: 102.0,
                    quantity: 5.0,
                },
                PriceLevel {
                    price: 101.0,
                    quantity: 3.0,
                },
            ],
            sequence: 7,
        };
        match convert(
            msg(market_data_message::Data::Orderbook(b), "book"),
            "X",
            &rules(),
        ) {
            Converted::Record(Record::OrderBookTop(t)) => {
                assert_eq!(
                    (t.bid_price, t.bid_qty, t.ask_price, t.ask_qty),
                    (100.0, 2.0, 101.0, 3.0)
                );
                assert_eq!(t.ts, 1_700_000_000_123_000_000);
                assert_eq!(t.venue, "BINANCE_FUTURES");
            }
            other => panic!("{other:?}"),
        }
        let empty = OrderBookSnapshot {
            symbol: "S".into(),
            timestamp: 1,
            bids: vec![],
            asks: vec![],
            sequence: 0,
        };
        assert!(matches!(
            convert(
                msg(market_data_message::Data::Orderbook(empty), ""),
                "X",
                &rules()
            ),
            Converted::Skipped(_)
        ));
    }

    #[test]
    fn candles_follow_the_producer() {
        let c = |p: &str| {
            let candle = Candle {
                symbol: "S".into(),
                timestamp: 1,
                open: 1.0,
                high: 2.0,
                low: 0.5,
                close: 1.5,
                volume: 3.0,
                interval: "tick_100".into(),
                buy_ticks: 4,
                sell_ticks: 5,
                total_ticks: 9,
                theta: 0.1,
            };
            convert(
                msg(market_data_message::Data::Candle(candle), p),
                "X",
                &rules(),
            )
        };
        assert!(matches!(
            c("binance-tibs-1"),
            Converted::Record(Record::Bar(Bar {
                kind: BarKind::TickImbalance,
                ..
            }))
        ));
        assert!(matches!(
            c("trbs"),
            Converted::Record(Record::Bar(Bar {
                kind: BarKind::TickImbalance,
                ..
            }))
        ));
        assert!(matches!(
            c("vibs-x"),
            Converted::Record(Record::Bar(Bar {
                kind: BarKind::VolumeImbalance,
                buy_ticks: 4,
                ..
            }))
        ));
        assert!(matches!(
            c("vpin"),
            Converted::Record(Record::Bar(Bar {
                kind: BarKind::Vpin,
                ..
            }))
        ));
        assert!(matches!(
            c("klines_1m"),
            Converted::Record(Record::Kline(_))
        ));
        assert!(matches!(c("unknown"), Converted::Skipped(_)));
    }

    #[test]
    fn wallet_is_ignored_and_venue_falls_back() {
        let w = WalletUpdate {
            user_id: "u".into(),
            timestamp: 1,
            balances: vec![],
        };
        assert!(matches!(
            convert(msg(market_data_message::Data::Wallet(w), ""), "X", &rules()),
            Converted::Skipped(_)
        ));
        let mut m = msg(
            market_data_message::Data::PriceIndex(super::super::proto::PriceIndex {
                index_name: "btc_usd".into(),
                price: 1.5,
                timestamp: 2,
            }),
            "",
        );
        m.venue.clear();
        assert_eq!(
            convert(m, "DERIBIT", &rules()),
            Converted::Record(Record::PriceIndex(crate::record::PriceIndex {
                venue: "DERIBIT".into(),
                index_name: "btc_usd".into(),
                ts: 2_000_000,
                price: 1.5
            }))
        );
    }
}
