//! No silent overwrites: InfluxDB keeps one point per series and timestamp, and
//! venues report several trades of one symbol and side in the same
//! millisecond. The rule, applied to typed trades and liquidations **before
//! they are appended to the log** (so every replay writes the same line):
//!
//! 1. Identity: a trade's `trade_id`; for a trade without one, and for
//!    liquidations, a hash of the record's content (venue, symbol, side,
//!    price, quantity, timestamp). A producer's retry of the same trade has
//!    the same identity.
//! 2. If the timestamp has millisecond precision (`ts % 1_000_000 == 0`), the
//!    sub-millisecond nanoseconds become `fnv1a(identity) % 1_000_000`.
//!    If it carries finer precision, the microsecond is kept and only the
//!    sub-microsecond nanoseconds become `fnv1a(identity) % 1_000`.
//! 3. Clash: when two records of one append with different identities land
//!    on the same series and timestamp, the later one (in append order) moves
//!    forward by 1 ns until it is unique within the append. Appends are
//!    all-or-nothing and replayed byte for byte, so this is deterministic.
//!    Clashes across separate appends are not detected (probability about
//!    n²/2·10⁻⁶ for n distinct trades of one series in one millisecond).
//!
//! Line-protocol points keep their timestamps exactly (the writer meant what
//! it wrote); this rule is only for records that arrive typed.

use std::collections::HashSet;

use crate::record::Record;

/// 64-bit FNV-1a: stable across builds and platforms (unlike std's hasher).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff; // separator, so ("ab","c") != ("a","bc")
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn identity_hash(r: &Record) -> Option<u64> {
    match r {
        Record::Trade(t) if !t.trade_id.is_empty() => Some(fnv1a(&[
            t.venue.as_bytes(),
            t.symbol.as_bytes(),
            t.trade_id.as_bytes(),
        ])),
        Record::Trade(t) => Some(fnv1a(&[
            t.venue.as_bytes(),
            t.symbol.as_bytes(),
            t.side.as_bytes(),
            &t.price.to_bits().to_le_bytes(),
            &t.quantity.to_bits().to_le_bytes(),
            &t.ts.to_le_bytes(),
        ])),
        Record::Liquidation(t) => Some(fnv1a(&[
            t.venue.as_bytes(),
            t.symbol.as_bytes(),
            t.side.as_bytes(),
            &t.price.to_bits().to_le_bytes(),
            &t.quantity.to_bits().to_le_bytes(),
            &t.ts.to_le_bytes(),
        ])),
        _ => None,
    }
}

fn ts_mut(r: &mut Record) -> Option<&mut i64> {
    match r {
        Record::Trade(t) => Some(&mut t.ts),
        Record::Liquidation(t) => Some(&mut t.ts),
        _ => None,
    }
}

/// The series key of a trade or liquidation (measurement + tags).
fn series(r: &Record) -> Option<(u8, &str, &str, &str)> {
    match r {
        Record::Trade(t) => Some((0, &t.venue, &t.symbol, &t.side)),
        Record::Liquidation(t) => Some((1, &t.venue, &t.symbol, &t.side)),
        _ => None,
    }
}

/// Applies the identity rule to every trade and liquidation of one append.
pub fn assign_identity_timestamps(records: &mut [Record]) {
    let mut taken: HashSet<(u8, String, String, String, i64)> = HashSet::new();
    for r in records.iter_mut() {
        let Some(h) = identity_hash(r) else { continue };
        let ts = ts_mut(r).expect("trade or liquidation");
        *ts = if ts.rem_euclid(1_000_000) == 0 {
            *ts + (h % 1_000_000) as i64
        } else {
            *ts - ts.rem_euclid(1_000) + (h % 1_000) as i64
        };
        let (kind, venue, symbol, side) = series(r).expect("trade or liquidation");
        let mut key = (
            kind,
            venue.to_string(),
            symbol.to_string(),
            side.to_string(),
            r.ts(),
        );
        while taken.contains(&key) {
            key.4 += 1;
        }
        *ts_mut(r).unwrap() = key.4;
        taken.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Liquidation, Trade};

    fn trade(id: &str, ts: i64, price: f64) -> Record {
        Record::Trade(Trade {
            venue: "BINANCE".into(),
            symbol: "BTCUSDT".into(),
            ts,
            price,
            quantity: 1.0,
            side: "buy".into(),
            trade_id: id.into(),
        })
    }

    const MS: i64 = 1_764_000_000_123_000_000;

    #[test]
    fn same_millisecond_distinct_trades_get_distinct_timestamps() {
        let mut v: Vec<Record> = (0..200)
            .map(|i| trade(&format!("{}", 9_000 + i), MS, 1.0 + i as f64))
            .collect();
        assign_identity_timestamps(&mut v);
        let ts: HashSet<i64> = v.iter().map(|r| r.ts()).collect();
        assert_eq!(ts.len(), 200);
        assert!(
            v.iter().all(|r| r.ts() / 1_000_000 == MS / 1_000_000),
            "stays within its millisecond"
        );
    }

    #[test]
    fn a_retry_of_the_same_trade_maps_to_the_same_point() {
        let mut a = vec![trade("42", MS, 1.0)];
        let mut b = vec![trade("x", MS, 5.0), trade("42", MS, 1.0)];
        assign_identity_timestamps(&mut a);
        assign_identity_timestamps(&mut b);
        assert_eq!(a[0], b[1]);
        // Content identity when there is no trade id.
        let mut c = vec![trade("", MS, 3.0)];
        let mut d = vec![trade("", MS, 3.0)];
        assign_identity_timestamps(&mut c);
        assign_identity_timestamps(&mut d);
        assert_eq!(c, d);
    }

    #[test]
    fn microsecond_timestamps_keep_their_microsecond() {
        let mut v = vec![trade("1", MS + 456_789, 1.0)];
        assign_identity_timestamps(&mut v);
        assert_eq!(v[0].ts() / 1_000, (MS + 456_789) / 1_000);
    }

    #[test]
    fn clashes_are_resolved_deterministically() {
        // Find two ids that hash to the same sub-millisecond offset.
        let mut seen = std::collections::HashMap::new();
        let (a, b) = (0..)
            .map(|i: u64| i.to_string())
            .find_map(|id| {
                let h = fnv1a(&[b"BINANCE", b"BTCUSDT", id.as_bytes()]) % 1_000_000;
                seen.insert(h, id.clone()).map(|other| (other, id))
            })
            .unwrap();
        let mut v = vec![trade(&a, MS, 1.0), trade(&b, MS, 2.0)];
        assign_identity_timestamps(&mut v);
        assert_eq!(v[1].ts(), v[0].ts() + 1);
        let mut again = vec![trade(&a, MS, 1.0), trade(&b, MS, 2.0)];
        assign_identity_timestamps(&mut again);
        assert_eq!(v, again);
    }

    #[test]
    fn liquidations_use_content_identity_and_points_are_untouched() {
        let liq = |p: f64| {
            Record::Liquidation(Liquidation {
                venue: "V".into(),
                symbol: "S".into(),
                ts: MS,
                side: "sell".into(),
                price: p,
                quantity: 1.0,
            })
        };
        let mut v = vec![
            liq(1.0),
            liq(2.0),
            crate::record::codec_samples()[9].clone(),
        ];
        let point_ts = v[2].ts();
        assign_identity_timestamps(&mut v);
        assert_ne!(v[0].ts(), v[1].ts());
        assert_eq!(v[2].ts(), point_ts);
    }
}
