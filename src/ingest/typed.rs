//! Recognising typed records in line protocol.
//!
//! A line becomes a typed record only when its measurement is one of the seven
//! typed ones **and** its tag keys and field keys/types are exactly those the
//! Influx sink writes for that record (see `docs/INFLUX.md`), and the typed
//! record validates. Anything else travels as a generic [`Point`], so that the
//! relay writes to InfluxDB exactly what the writer sent (transparency): a
//! typed record built here encodes back to the same series, fields and
//! timestamp. For `orderbook`, the derived fields must equal what the encoder
//! would derive, or the line stays a point.

use crate::record::*;

fn tags_are(p: &Point, keys: &[&str]) -> bool {
    p.tags.len() == keys.len() && keys.iter().all(|k| p.tags.contains_key(*k))
}

fn floats(p: &Point, keys: &[&str]) -> Option<Vec<f64>> {
    if p.fields.len() != keys.len() {
        return None;
    }
    keys.iter()
        .map(|k| match p.fields.get(*k) {
            Some(FieldValue::Float(f)) => Some(*f),
            _ => None,
        })
        .collect()
}

fn tag(p: &Point, k: &str) -> Text {
    p.tags[k].as_str().into()
}

/// The typed record for `p`, or `p` itself as a generic point.
pub fn classify(p: Point, now_ns: i64) -> Record {
    let typed = match p.measurement.as_str() {
        "trades" if tags_are(&p, &["symbol", "exchange", "side"]) => {
            floats(&p, &["price", "quantity"]).map(|f| {
                Record::Trade(Trade {
                    venue: tag(&p, "exchange"),
                    symbol: tag(&p, "symbol"),
                    ts: p.ts,
                    price: f[0],
                    quantity: f[1],
                    side: tag(&p, "side"),
                    trade_id: Text::new(),
                })
            })
        }
        "liquidation" if tags_are(&p, &["symbol", "exchange", "side"]) => {
            floats(&p, &["price", "quantity"]).map(|f| {
                Record::Liquidation(Liquidation {
                    venue: tag(&p, "exchange"),
                    symbol: tag(&p, "symbol"),
                    ts: p.ts,
                    side: tag(&p, "side"),
                    price: f[0],
                    quantity: f[1],
                })
            })
        }
        "orderbook" if tags_are(&p, &["symbol", "exchange"]) => floats(
            &p,
            &[
                "bid_price",
                "bid_qty",
                "ask_price",
                "ask_qty",
                "spread",
                "mid_price",
                "imbalance",
            ],
        )
        .and_then(|f| {
            let top = OrderBookTop {
                venue: tag(&p, "exchange"),
                symbol: tag(&p, "symbol"),
                ts: p.ts,
                bid_price: f[0],
                bid_qty: f[1],
                ask_price: f[2],
                ask_qty: f[3],
            };
            let same = top.spread().to_bits() == f[4].to_bits()
                && top.mid_price().to_bits() == f[5].to_bits()
                && top.imbalance().to_bits() == f[6].to_bits();
            same.then_some(Record::OrderBookTop(top))
        }),
        "funding_rate" if tags_are(&p, &["symbol", "exchange"]) && p.fields.len() == 4 => {
            match (
                p.fields.get("rate"),
                p.fields.get("mark_price"),
                p.fields.get("index_price"),
                p.fields.get("next_funding_time"),
            ) {
                (
                    Some(FieldValue::Float(rate)),
                    Some(FieldValue::Float(mark)),
                    Some(FieldValue::Float(index)),
                    Some(FieldValue::Integer(next)),
                ) => Some(Record::Funding(Funding {
                    venue: tag(&p, "exchange"),
                    symbol: tag(&p, "symbol"),
                    ts: p.ts,
                    rate: *rate,
                    mark_price: *mark,
                    index_price: *index,
                    next_funding_time: *next,
                })),
                _ => None,
            }
        }
        "open_interest" if tags_are(&p, &["symbol", "exchange"]) => {
            floats(&p, &["open_interest", "open_interest_value"]).map(|f| {
                Record::OpenInterest(OpenInterest {
                    venue: tag(&p, "exchange"),
                    symbol: tag(&p, "symbol"),
                    ts: p.ts,
                    open_interest: f[0],
                    open_interest_value: f[1],
                })
            })
        }
        "options_ticker" if tags_are(&p, &["symbol", "exchange"]) => floats(
            &p,
            &[
                "open_interest",
                "mark_iv",
                "best_bid_price",
                "best_ask_price",
                "mark_price",
                "underlying_price",
                "last_price",
                "bid_iv",
                "ask_iv",
            ],
        )
        .map(|f| {
            Record::OptionsTicker(OptionsTicker {
                venue: tag(&p, "exchange"),
                symbol: tag(&p, "symbol"),
                ts: p.ts,
                open_interest: f[0],
                mark_iv: f[1],
                best_bid_price: f[2],
                best_ask_price: f[3],
                mark_price: f[4],
                underlying_price: f[5],
                last_price: f[6],
                bid_iv: f[7],
                ask_iv: f[8],
            })
        }),
        "price_index" if tags_are(&p, &["index_name", "exchange"]) => {
            floats(&p, &["price"]).map(|f| {
                Record::PriceIndex(PriceIndex {
                    venue: tag(&p, "exchange"),
                    index_name: tag(&p, "index_name"),
                    ts: p.ts,
                    price: f[0],
                })
            })
        }
        _ => None,
    };
    match typed {
        Some(r) if r.validate_at(now_ns).is_ok() => r,
        _ => Record::Point(p),
    }
}

/// Test helper: a point from parts.
#[cfg(test)]
pub(crate) fn point(
    m: &str,
    tags: &[(&str, &str)],
    fields: &[(&str, FieldValue)],
    ts: i64,
) -> Point {
    Point {
        measurement: m.into(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>(),
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FieldValue::*;

    const NOW: i64 = 1_764_000_000_000_000_000;

    /// An orderbook top whose levels are consistent; only `spread` varies.
    fn orderbook(spread: f64) -> Point {
        point(
            "orderbook",
            &[("symbol", "S"), ("exchange", "E")],
            &[
                ("bid_price", Float(1.0)),
                ("bid_qty", Float(1.0)),
                ("ask_price", Float(2.0)),
                ("ask_qty", Float(1.0)),
                ("spread", Float(spread)),
                ("mid_price", Float(1.5)),
                ("imbalance", Float(0.5)),
            ],
            NOW,
        )
    }

    /// A funding rate point; only the type of `next_funding_time` varies.
    fn funding(next_funding_time: FieldValue) -> Point {
        point(
            "funding_rate",
            &[("symbol", "S"), ("exchange", "E")],
            &[
                ("rate", Float(0.1)),
                ("mark_price", Float(1.0)),
                ("index_price", Float(1.0)),
                ("next_funding_time", next_funding_time),
            ],
            NOW,
        )
    }

    #[test]
    fn exact_trades_become_typed() {
        let p = point(
            "trades",
            &[
                ("symbol", "BTCUSDT"),
                ("exchange", "BINANCE"),
                ("side", "buy"),
            ],
            &[("price", Float(1.5)), ("quantity", Float(2.0))],
            NOW,
        );
        match classify(p, NOW) {
            Record::Trade(t) => {
                assert_eq!(
                    (
                        t.venue.as_str(),
                        t.symbol.as_str(),
                        t.side.as_str(),
                        t.price,
                        t.quantity,
                        t.ts
                    ),
                    ("BINANCE", "BTCUSDT", "buy", 1.5, 2.0, NOW)
                );
                assert!(t.trade_id.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn anything_else_stays_a_point() {
        let tags = [
            ("symbol", "BTCUSDT"),
            ("exchange", "BINANCE"),
            ("side", "buy"),
        ];
        // Extra field, integer price, extra tag, negative quantity, unknown measurement.
        let cases = vec![
            point(
                "trades",
                &tags,
                &[
                    ("price", Float(1.5)),
                    ("quantity", Float(2.0)),
                    ("x", Float(1.0)),
                ],
                NOW,
            ),
            point(
                "trades",
                &tags,
                &[("price", Integer(1)), ("quantity", Float(2.0))],
                NOW,
            ),
            point(
                "trades",
                &[
                    ("symbol", "B"),
                    ("exchange", "E"),
                    ("side", "buy"),
                    ("desk", "x"),
                ],
                &[("price", Float(1.5)), ("quantity", Float(2.0))],
                NOW,
            ),
            point(
                "trades",
                &tags,
                &[("price", Float(1.5)), ("quantity", Float(-2.0))],
                NOW,
            ),
            point("cpu", &[], &[("v", Float(1.0))], NOW),
            // A float funding time.
            funding(Float(5.0)),
            // The spread is not ask - bid.
            orderbook(9.0),
        ];
        for p in cases {
            let r = classify(p.clone(), NOW);
            assert_eq!(r, Record::Point(p));
        }
    }

    #[test]
    fn consistent_orderbook_and_funding_become_typed() {
        let ob = orderbook(1.0);
        assert!(matches!(classify(ob, NOW), Record::OrderBookTop(_)));
        let f = funding(Integer(5));
        assert!(matches!(classify(f, NOW), Record::Funding(_)));
    }
}
