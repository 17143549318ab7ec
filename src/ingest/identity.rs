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
//! 3. Clash: the gate keeps, per series, the timestamps it assigned during
//!    the last `ingest.identity_window_ms` (default 10 s) with the identity
//!    that holds each. A record whose timestamp is held by a *different*
//!    identity moves forward by 1 ns until it finds a free timestamp or its
//!    own; a record whose timestamp is held by the *same* identity (a
//!    producer's retry) keeps it. So two distinct trades of one series never
//!    share a nanosecond, whichever requests they came in, as long as they
//!    arrive within the window of each other. The window holds at most
//!    500 000 slots; past that the oldest go first.
//! 4. The decision is made before the append and the result is what the log
//!    stores, so every replay writes the same line. Each append stores the
//!    slots it holds as a memo beside its frames (`wal/memo.rs`, kept for
//!    the window, `WalConfig::retain_ms`); at startup the window is rebuilt
//!    from the memos committed within the window, so a restart costs what
//!    the window holds, whatever the backlog. For frames written before
//!    memos existed (an older walrelay's log), the window is rebuilt from
//!    the log's tail, once. There, a stored record's identity is recomputed from it: exact for trades
//!    with a `trade_id`; for content identities (which hash the original
//!    timestamp) it is recovered when the original had millisecond
//!    precision, otherwise the slot is kept as "held by someone", so a
//!    distinct record still moves past it (only a retry of such a record
//!    across a restart would get a new nanosecond).
//!
//! Line-protocol points keep their timestamps exactly (the writer meant what
//! it wrote); this rule is only for records that arrive typed.

use std::collections::{HashMap, VecDeque};

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
        Record::Trade(t) => Some(content_hash(
            &t.venue, &t.symbol, &t.side, t.price, t.quantity, t.ts,
        )),
        Record::Liquidation(t) => Some(content_hash(
            &t.venue, &t.symbol, &t.side, t.price, t.quantity, t.ts,
        )),
        _ => None,
    }
}

/// The identity of a trade without an id, or of a liquidation: every field
/// that tells two of them apart.
fn content_hash(venue: &str, symbol: &str, side: &str, price: f64, quantity: f64, ts: i64) -> u64 {
    fnv1a(&[
        venue.as_bytes(),
        symbol.as_bytes(),
        side.as_bytes(),
        &price.to_bits().to_le_bytes(),
        &quantity.to_bits().to_le_bytes(),
        &ts.to_le_bytes(),
    ])
}

fn ts_mut(r: &mut Record) -> Option<&mut i64> {
    match r {
        Record::Trade(t) => Some(&mut t.ts),
        Record::Liquidation(t) => Some(&mut t.ts),
        _ => None,
    }
}

/// A 64-bit key of the series of a trade or liquidation (measurement +
/// tags). A collision between two series only costs a needless 1 ns move.
fn series(r: &Record) -> Option<u64> {
    let (kind, venue, symbol, side): (&[u8], &str, &str, &str) = match r {
        Record::Trade(t) => (b"t", &t.venue, &t.symbol, &t.side),
        Record::Liquidation(t) => (b"l", &t.venue, &t.symbol, &t.side),
        _ => return None,
    };
    Some(fnv1a(&[
        kind,
        venue.as_bytes(),
        symbol.as_bytes(),
        side.as_bytes(),
    ]))
}

/// Where rule 2 puts a timestamp for identity `h`.
fn base_ts(ts: i64, h: u64) -> i64 {
    if ts.rem_euclid(1_000_000) == 0 {
        ts + (h % 1_000_000) as i64
    } else {
        ts - ts.rem_euclid(1_000) + (h % 1_000) as i64
    }
}

/// Most slots the window holds (about 20 MiB at the cap); past it the oldest
/// go first, so under a very high trade rate (over 50 000 trades and
/// liquidations a second with the default 10 s) the window is shorter than
/// `window_ms`.
pub(crate) const MAX_SLOTS: usize = 500_000;

/// One 64-bit key per (series, nanosecond). For a fixed series the map from
/// timestamp to key is a bijection (odd multiplier), so neighbouring
/// nanoseconds never share a key; two series meet only by a 2^-64 chance,
/// which costs at most a needless 1 ns move.
fn slot(series: u64, ts: i64) -> u64 {
    series.wrapping_add((ts as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Identity of a slot whose holder is not known (rebuilt content identity):
/// matches no record's identity except by a 2^-64 chance.
const UNKNOWN: u64 = 0x5eed_0f_5107_u64;

/// The recent assignments: (series, ts) → identity, expiring after `window_ms`.
pub(crate) struct IdentityWindow {
    window_ms: u64,
    /// slot → identity holding it.
    held: HashMap<u64, u64>,
    /// (when held, slot), oldest first.
    order: VecDeque<(u64, u64)>,
}

impl IdentityWindow {
    pub(crate) fn new(window_ms: u64) -> Self {
        IdentityWindow {
            window_ms,
            held: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Slots held now.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    fn expire(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.window_ms);
        while let Some((at, key)) = self.order.front().copied() {
            if at >= cutoff {
                break;
            }
            self.order.pop_front();
            self.held.remove(&key);
        }
    }

    fn hold(&mut self, key: u64, id: u64, at_ms: u64) {
        if self.held.insert(key, id).is_none() {
            self.order.push_back((at_ms, key));
            if self.order.len() > MAX_SLOTS {
                if let Some((_, old)) = self.order.pop_front() {
                    self.held.remove(&old);
                }
            }
        }
    }

    /// Applies the rule to every trade and liquidation of one append, in
    /// order, against (and into) the window. Returns the memo of the slots
    /// the append holds ([`memo_of`] format), which the gate stores with it.
    pub(crate) fn assign(&mut self, records: &mut [Record], now_ms: u64) -> Vec<u8> {
        let mut memo = Vec::new();
        self.expire(now_ms);
        for r in records.iter_mut() {
            let Some(h) = identity_hash(r) else { continue };
            let s = series(r).expect("trade or liquidation");
            let ts = ts_mut(r).expect("trade or liquidation");
            let mut t = base_ts(*ts, h);
            loop {
                match self.held.get(&slot(s, t)) {
                    None => {
                        self.hold(slot(s, t), h, now_ms);
                        break;
                    }
                    Some(&held) if held == h => break,
                    Some(_) => t += 1,
                }
            }
            *ts = t;
            push_slot(&mut memo, slot(s, t), h);
        }
        memo
    }

    /// Rebuilds from a memo stored at `at_ms` (startup); memos must come
    /// oldest first.
    pub(crate) fn remember_memo(&mut self, memo: &[u8], at_ms: u64) {
        for pair in memo.chunks_exact(16) {
            let key = u64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
            let id = u64::from_le_bytes(pair[8..].try_into().expect("8 bytes"));
            self.hold(key, id, at_ms);
        }
    }

    /// Records an assignment already in the log (startup rebuild), made at
    /// `at_ms` (the frame's commit time). Calls must come oldest first.
    #[cfg(test)]
    pub(crate) fn remember(&mut self, r: &Record, at_ms: u64) {
        if let Some((key, id)) = stored_slot(r) {
            self.remember_slot(key, id, at_ms);
        }
    }

    /// Like [`IdentityWindow::remember`] with the slot already computed
    /// ([`stored_slot`]).
    pub(crate) fn remember_slot(&mut self, key: u64, id: u64, at_ms: u64) {
        self.hold(key, id, at_ms);
    }
}

/// A memo is the slots an append holds: (slot, identity) pairs, 16 bytes
/// each, little-endian.
fn push_slot(memo: &mut Vec<u8>, key: u64, id: u64) {
    memo.extend_from_slice(&key.to_le_bytes());
    memo.extend_from_slice(&id.to_le_bytes());
}

/// The memo of records already stamped (a dead-letter replay).
pub(crate) fn memo_of(records: &[Record]) -> Vec<u8> {
    let mut memo = Vec::new();
    for r in records {
        if let Some((key, id)) = stored_slot(r) {
            push_slot(&mut memo, key, id);
        }
    }
    memo
}

/// The slot a stored trade or liquidation holds and the identity holding it
/// (`UNKNOWN` when it cannot be recovered, see rule 4).
pub(crate) fn stored_slot(r: &Record) -> Option<(u64, u64)> {
    let s = series(r)?;
    Some((slot(s, r.ts()), stored_identity(r).unwrap_or(UNKNOWN)))
}

/// The identity of a record as stored in the log (after the rule ran), when
/// it can be recovered (see rule 4).
fn stored_identity(r: &Record) -> Option<u64> {
    if let Record::Trade(t) = r {
        if !t.trade_id.is_empty() {
            return identity_hash(r);
        }
    }
    // Content identity: hypothesis "the original had millisecond precision".
    let stored = r.ts();
    let original_ms = stored - stored.rem_euclid(1_000_000);
    let mut probe = r.clone();
    *ts_mut(&mut probe)? = original_ms;
    let h = identity_hash(&probe)?;
    let base = base_ts(original_ms, h);
    // Moves past clashes are rare and short.
    (stored >= base && stored < base + 64).then_some(h)
}

/// Where rule 2 alone (before any clash move) puts the timestamp of a trade
/// or liquidation; `None` for other records. Lets tests find identities
/// that collide.
pub fn base_timestamp(r: &Record) -> Option<i64> {
    identity_hash(r).map(|h| base_ts(r.ts(), h))
}

/// Applies the rule within one append only (no history): the stateless form
/// for tools and tests that build logs directly.
pub fn assign_identity_timestamps(records: &mut [Record]) {
    let _ = IdentityWindow::new(u64::MAX).assign(records, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Liquidation, Trade};
    use std::collections::HashSet;

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

    fn colliding_ids() -> (String, String) {
        let mut seen = std::collections::HashMap::new();
        (0..)
            .map(|i: u64| i.to_string())
            .find_map(|id| {
                let h = fnv1a(&[b"BINANCE", b"BTCUSDT", id.as_bytes()]) % 1_000_000;
                seen.insert(h, id.clone()).map(|other| (other, id))
            })
            .unwrap()
    }

    #[test]
    fn colliding_trades_of_separate_appends_get_distinct_timestamps() {
        let (a, b) = colliding_ids();
        let mut w = IdentityWindow::new(10_000);
        let mut first = vec![trade(&a, MS, 1.0)];
        let mut second = vec![trade(&b, MS, 2.0)];
        w.assign(&mut first, 1_000);
        w.assign(&mut second, 1_001);
        assert_ne!(first[0].ts(), second[0].ts());
        // A retry of either maps to its own point again.
        let mut retry = vec![trade(&b, MS, 2.0), trade(&a, MS, 1.0)];
        w.assign(&mut retry, 1_002);
        assert_eq!(retry[0], second[0]);
        assert_eq!(retry[1], first[0]);
    }

    #[test]
    fn the_window_forgets_after_its_length_and_rebuilds_from_stored_records() {
        let (a, b) = colliding_ids();
        let mut w = IdentityWindow::new(10_000);
        let mut first = vec![trade(&a, MS, 1.0)];
        w.assign(&mut first, 1_000);
        w.assign(&mut vec![trade("zz", MS, 1.0)], 20_000);
        assert_eq!(w.len(), 1, "the first slot expired");
        // A new window rebuilt from the stored record holds the slot.
        let mut rebuilt = IdentityWindow::new(10_000);
        rebuilt.remember(&first[0], 1_000);
        let mut second = vec![trade(&b, MS, 2.0)];
        rebuilt.assign(&mut second, 1_500);
        assert_ne!(first[0].ts(), second[0].ts());
        // Content identities with millisecond originals are recovered.
        let liq = Record::Liquidation(Liquidation {
            venue: "V".into(),
            symbol: "S".into(),
            ts: MS,
            side: "sell".into(),
            price: 1.0,
            quantity: 1.0,
        });
        let mut once = vec![liq.clone()];
        w.assign(&mut once, 30_000);
        let mut from_log = IdentityWindow::new(10_000);
        from_log.remember(&once[0], 30_000);
        let mut retry = vec![liq];
        from_log.assign(&mut retry, 30_001);
        assert_eq!(retry, once);
    }

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
