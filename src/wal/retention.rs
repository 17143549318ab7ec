//! Retention (`[wal] retain`), the event-time index and the per-minute,
//! per-series counts: what lets an operator prove there are no gaps in a
//! database and refill them from the log.
//!
//! # Trees (both owned by this file)
//!
//! ```text
//! tree          key                         -> value
//! frame_counts  u64 BE seq                  -> i64 LE min event ts (ns), i64 LE max,
//!                                              u32 LE series, then per series:
//!                                              u16 LE len, label, u32 LE minutes,
//!                                              (u32 LE minute, u32 LE count) each
//! time_index    u32 BE minute ++ u64 BE seq -> (empty): frame `seq` holds records
//!                                              whose event time falls in `minute`
//! ```
//!
//! A label is `sink ␟ target ␟ exchange ␟ symbol ␟ interval` ([`series_label`]):
//! `T` and the TimescaleDB table, or `I` and the InfluxDB measurement, so the
//! audit can compare without decoding a record. Minutes are Unix minutes of the
//! record's event time.
//!
//! # Invariants
//!
//! - Only with `retain` on: with it off, nothing is computed or written, and
//!   the append path is that of a log without retention.
//! - Written off the append path: the writer hands each committed group's
//!   marks to a counting thread ([`count_loop`]), which builds the frames'
//!   counts and time-index entries and applies them, with the marker
//!   `retention/counted_to` (the last frame counted), in one sled
//!   transaction, several groups at a time. So counts may lag their frames
//!   (by what is queued, milliseconds): a crash can leave frames without
//!   counts, never counts without their frames (sled recovers a prefix). On
//!   open, frames after the marker are decoded and counted again
//!   ([`Retention::open`]); counts are keyed by frame, so counting a frame
//!   twice changes nothing. Readers that need every count (the audit, a
//!   rewind's frame list) first wait for the counter ([`Shared::settle_counts`]).
//! - Removed after their frames ([`Shared::prune_counts`], called by every
//!   path that prunes the kinds index), under the same lock the counter
//!   writes under, so the counter never writes counts of a deleted frame: it
//!   skips such frames and raises the horizon past their events instead.
//! - The horizon (`meta` key `retention/horizon_ns`) only grows: the newest
//!   event time of any frame deleted so far (or the time counting began).
//!   Minutes before it may be incomplete in the log; an audit reaching before
//!   it says so (exit 2) instead of reporting them.
//! - Retained frames (delivered by every configured sink, kept for `retain`)
//!   count against `max_bytes`. An append that does not fit deletes them,
//!   oldest first, before `when_full` applies ([`Shared::shed_retained`]),
//!   counting their records as `retained_dropped`; retention never refuses an
//!   append nor costs an undelivered record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use super::frame::{self, key_seq, peek_header, seq_key};
use super::state::STATE_KEY;
use super::{Frame, Guarded, Shared, Wal, WalError};
use crate::record::{decode_record, Record};

const HORIZON_KEY: &[u8] = b"retention/horizon_ns";
/// The last frame the counter has counted (u64 LE), in `meta`.
const COUNTED_KEY: &[u8] = b"retention/counted_to";
/// The counter applies what is queued at most this often (one sled
/// transaction, and one I/O buffer roll, per round).
const COUNT_ROUND: std::time::Duration = std::time::Duration::from_millis(20);
/// Within a round, the counter takes what is queued this often (the
/// writer's channel holds 64 groups: 32 k group commits/s before the writer
/// would wait for it).
const COUNT_SLICE: std::time::Duration = std::time::Duration::from_millis(2);
/// A round ends early after this many groups (bounds the marks it holds:
/// ~16 B per record plus the series of each append).
const ROUND_JOBS: usize = 1024;
/// How long the audit and a rewind wait for the counter to catch up.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long `/status` waits for it (the retained range's newest event).
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_millis(200);
const SEP: char = '\u{1f}';

/// How long delivered frames stay (`[wal] retain = "6h"`): a duration with a
/// unit `s`, `m`, `h` or `d`, or `"off"` / `"0"` (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retain {
    pub ms: u64,
}

impl Retain {
    /// Whether retention is on.
    pub fn on(&self) -> bool {
        self.ms > 0
    }
}

/// Parses `"6h"`, `"90m"`, `"30s"`, `"2d"`, `"0"` or `"off"` into milliseconds.
///
/// # Errors
/// A message naming the value and the accepted forms.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t == "0" || t.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    let bad =
        || format!(r#"bad duration "{s}": expected a number with s, m, h or d ("6h"), or "off""#);
    let unit = t.chars().last().ok_or_else(bad)?;
    let mult = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return Err(bad()),
    };
    let n: u64 = t[..t.len() - 1].trim().parse().map_err(|_| bad())?;
    n.checked_mul(mult).ok_or_else(bad)
}

impl<'de> Deserialize<'de> for Retain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration_ms(&s)
            .map(|ms| Retain { ms })
            .map_err(serde::de::Error::custom)
    }
}

/// The InfluxDB measurement of a record (the same names as
/// `db::influx::measurement`, which the audit's tests compare against).
fn measurement(r: &Record) -> &str {
    match r {
        Record::Trade(_) => "trades",
        Record::OrderBookTop(_) => "orderbook",
        Record::Funding(_) => "funding_rate",
        Record::Liquidation(_) => "liquidation",
        Record::OpenInterest(_) => "open_interest",
        Record::OptionsTicker(_) => "options_ticker",
        Record::PriceIndex(_) => "price_index",
        Record::Point(p) => &p.measurement,
        other => other.kind().as_str(),
    }
}

/// Writes the series label of `r` into `out` (cleared first); see the module
/// doc. TimescaleDB: table × exchange × symbol × interval; InfluxDB:
/// measurement × exchange × symbol (a price index's `index_name` stands for
/// the symbol; a point uses its `exchange` and `symbol` tags, if any).
pub fn series_label(r: &Record, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    let _ = match r {
        Record::Bar(b) => write!(
            out,
            "T{SEP}bar__{}{SEP}{}{SEP}{}{SEP}{}",
            b.kind.as_str(),
            b.venue,
            b.symbol,
            b.interval
        ),
        Record::Kline(k) => write!(
            out,
            "T{SEP}bar__kline{SEP}{}{SEP}{}{SEP}{}",
            k.venue, k.symbol, k.interval
        ),
        Record::Trade(t) => write!(
            out,
            "I{SEP}{}{SEP}{}{SEP}{}{SEP}",
            measurement(r),
            t.venue,
            t.symbol
        ),
        Record::Liquidation(t) => write!(
            out,
            "I{SEP}{}{SEP}{}{SEP}{}{SEP}",
            measurement(r),
            t.venue,
            t.symbol
        ),
        Record::OrderBookTop(t) => write!(
            out,
            "I{SEP}{}{SEP}{}{SEP}{}{SEP}",
            measurement(r),
            t.venue,
            t.symbol
        ),
        Record::Funding(t) => write!(
            out,
            "I{SEP}{}{SEP}{}{SEP}{}{SEP}",
            measurement(r),
            t.venue,
            t.symbol
        ),
        Record::OpenInterest(t) => write!(
            out,
            "I{SEP}{}{SEP}{}{SEP}{}{SEP}",
            measurement(r),
            t.venue,
            t.symbol
        ),
        Record::OptionsTicker(t) => write!(
            out,
            "I{SEP}{}{SEP}{}{SEP}{}{SEP}",
            measurement(r),
            t.venue,
            t.symbol
        ),
        Record::PriceIndex(t) => write!(
            out,
            "I{SEP}{}{SEP}{}{SEP}{}{SEP}",
            measurement(r),
            t.venue,
            t.index_name
        ),
        Record::Point(p) => write!(
            out,
            "I{SEP}{}{SEP}{}{SEP}{}{SEP}",
            p.measurement,
            p.tags.get("exchange").map(String::as_str).unwrap_or(""),
            p.tags.get("symbol").map(String::as_str).unwrap_or("")
        ),
    };
}

/// One series, from its label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Series {
    /// `"timescale"` or `"influx"`: the sink that stores it.
    pub sink: &'static str,
    /// Table (TimescaleDB) or measurement (InfluxDB).
    pub target: String,
    pub exchange: String,
    pub symbol: String,
    /// Empty for InfluxDB series.
    pub interval: String,
}

impl Series {
    /// Parses a label written by [`series_label`].
    pub fn from_label(label: &str) -> Option<Series> {
        let mut p = label.split(SEP);
        let sink = match p.next()? {
            "T" => "timescale",
            "I" => "influx",
            _ => return None,
        };
        Some(Series {
            sink,
            target: p.next()?.to_string(),
            exchange: p.next()?.to_string(),
            symbol: p.next()?.to_string(),
            interval: p.next().unwrap_or("").to_string(),
        })
    }
}

impl std::fmt::Display for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} exchange={} symbol={}",
            self.sink, self.target, self.exchange, self.symbol
        )?;
        if !self.interval.is_empty() {
            write!(f, " interval={}", self.interval)?;
        }
        Ok(())
    }
}

/// The Unix minute of an event time in ns (0 before 1970).
pub fn minute_of(ts_ns: i64) -> u32 {
    (ts_ns.max(0) / 60_000_000_000).min(u32::MAX as i64) as u32
}

/// A record's series, borrowed from it (kind, bar kind, then the strings
/// its label is made of): hashing it costs no allocation.
type SeriesKey<'a> = (u8, u8, &'a str, &'a str, &'a str);

fn series_key(r: &Record) -> SeriesKey<'_> {
    let k = r.kind().index() as u8;
    match r {
        Record::Bar(b) => (k, b.kind as u8, &b.venue, &b.symbol, &b.interval),
        Record::Kline(x) => (k, 0, &x.venue, &x.symbol, &x.interval),
        Record::Trade(t) => (k, 0, &t.venue, &t.symbol, ""),
        Record::Liquidation(t) => (k, 0, &t.venue, &t.symbol, ""),
        Record::OrderBookTop(t) => (k, 0, &t.venue, &t.symbol, ""),
        Record::Funding(t) => (k, 0, &t.venue, &t.symbol, ""),
        Record::OpenInterest(t) => (k, 0, &t.venue, &t.symbol, ""),
        Record::OptionsTicker(t) => (k, 0, &t.venue, &t.symbol, ""),
        Record::PriceIndex(t) => (k, 0, &t.venue, &t.index_name, ""),
        Record::Point(p) => (
            k,
            0,
            &p.measurement,
            p.tags.get("exchange").map(String::as_str).unwrap_or(""),
            p.tags.get("symbol").map(String::as_str).unwrap_or(""),
        ),
    }
}

/// The series and event times of one append, computed on the producer's
/// thread (only with retention on): per record its label's index and event
/// time, and the whole append's counts per (label, minute), so that the
/// counter adds an append packed whole into one frame in O(series).
/// A handful of allocations per append, however many series it holds: the
/// labels share one string.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    /// Every label of the append, one after another; `label_ends[i]` ends
    /// label `i`.
    label_text: String,
    label_ends: Vec<u32>,
    records: Vec<(u32, i64)>,
    /// (label, minute, count) over every record; one (label, minute) may
    /// appear more than once (a series whose records go back and forth
    /// across a minute's edge), [`FrameCounts::finish`] merges them.
    agg: Vec<(u32, u32, u32)>,
    min_ts: i64,
    max_ts: i64,
}

impl Marks {
    fn label(&self, i: u32) -> Option<&str> {
        let end = *self.label_ends.get(i as usize)? as usize;
        let start = match i {
            0 => 0,
            _ => self.label_ends[i as usize - 1] as usize,
        };
        self.label_text.get(start..end)
    }

    pub(crate) fn of_records(records: &[Record]) -> Marks {
        let mut m = Marks {
            records: Vec::with_capacity(records.len()),
            ..Marks::default()
        };
        // Per record one seeded 64-bit hash of its series (foldhash, seeded
        // per process) and, unless it is the series of the record before,
        // one lookup of that hash: no string is compared. Two series of one
        // append are counted together only if their hashes collide (about
        // n² / 2^65 for n series; not steerable without the seed).
        // Per series the newest (minute, count) entry is kept at hand: a
        // record of the same minute adds to it, another opens a new entry.
        let state = series_hasher();
        let mut index: HashMap<u64, u32, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(32, state.clone());
        let mut newest: Vec<u32> = Vec::new();
        let mut last: Option<(u64, u32)> = None;
        let mut buf = String::new();
        for (n, r) in records.iter().enumerate() {
            let h = state.hash_one(series_key(r));
            let i = match last {
                Some((lh, i)) if lh == h => i,
                _ => {
                    let i = match index.get(&h) {
                        Some(i) => *i,
                        None => {
                            let i = m.label_ends.len() as u32;
                            series_label(r, &mut buf);
                            m.label_text.push_str(&buf);
                            m.label_ends.push(m.label_text.len() as u32);
                            newest.push(u32::MAX);
                            index.insert(h, i);
                            i
                        }
                    };
                    last = Some((h, i));
                    i
                }
            };
            let ts = r.ts();
            if n == 0 {
                (m.min_ts, m.max_ts) = (ts, ts);
            }
            m.min_ts = m.min_ts.min(ts);
            m.max_ts = m.max_ts.max(ts);
            m.records.push((i, ts));
            let minute = minute_of(ts);
            let at = &mut newest[i as usize];
            match m.agg.get_mut(*at as usize) {
                Some(e) if e.1 == minute => e.2 += 1,
                _ => {
                    *at = m.agg.len() as u32;
                    m.agg.push((i, minute, 1));
                }
            }
        }
        m
    }

    /// From the log's binary form (`ends[i]` ends record `i`). A record that
    /// does not decode is not counted (it cannot have been encoded by us).
    #[allow(dead_code)] // used by `Wal::append_encoded`
    pub(crate) fn of_encoded(payload: &[u8], ends: &[usize]) -> Marks {
        let mut records = Vec::with_capacity(ends.len());
        let mut start = 0;
        for &end in ends {
            if let Ok((r, _)) = decode_record(&payload[start..end]) {
                records.push(r);
            }
            start = end;
        }
        if records.len() != ends.len() {
            // Positions no longer line up with records: count nothing.
            return Marks::default();
        }
        Marks::of_records(&records)
    }
}

/// The process's seeded series hasher (one seed per process).
fn series_hasher() -> &'static foldhash::fast::RandomState {
    static STATE: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(foldhash::fast::RandomState::default)
}

/// The counts of one frame being packed, borrowing the labels of the marks
/// they come from: entries are pushed as they come and merged once by
/// [`FrameCounts::finish`] (a sort of a few dozen entries), so building a
/// frame's counts clones no label and hashes nothing.
#[derive(Debug, Default)]
pub(crate) struct FrameCounts<'a> {
    /// (label, minute, count); after `finish`, sorted by label and minute,
    /// one entry per pair.
    entries: Vec<(&'a str, u32, u32)>,
    min_ts: i64,
    max_ts: i64,
}

impl<'a> FrameCounts<'a> {
    fn widen(&mut self, min_ts: i64, max_ts: i64) {
        if self.entries.is_empty() {
            (self.min_ts, self.max_ts) = (min_ts, max_ts);
        }
        self.min_ts = self.min_ts.min(min_ts);
        self.max_ts = self.max_ts.max(max_ts);
    }

    /// Adds a whole append (packed into this frame entirely).
    pub(crate) fn add_all(&mut self, marks: &'a Marks) {
        if marks.agg.is_empty() {
            return;
        }
        self.widen(marks.min_ts, marks.max_ts);
        for &(label, minute, count) in &marks.agg {
            if let Some(name) = marks.label(label) {
                self.entries.push((name, minute, count));
            }
        }
    }

    /// Adds records `from..to` of an append's marks.
    pub(crate) fn add(&mut self, marks: &'a Marks, from: usize, to: usize) {
        let Some(part) = marks.records.get(from..to) else {
            return;
        };
        for &(label, ts) in part {
            let Some(name) = marks.label(label) else {
                continue;
            };
            self.widen(ts, ts);
            let minute = minute_of(ts);
            match self.entries.last_mut() {
                Some(e) if e.1 == minute && e.0 == name => e.2 += 1,
                _ => self.entries.push((name, minute, 1)),
            }
        }
    }

    /// Sorts the entries and merges those of one (label, minute).
    pub(crate) fn finish(&mut self) {
        self.entries
            .sort_unstable_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
        self.entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0 && later.1 == kept.1;
            if same {
                kept.2 += later.2;
            }
            same
        });
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The stored form (after [`FrameCounts::finish`]): min and max event
    /// time, then per series its label and its (minute, count) pairs.
    fn encode(&self) -> Vec<u8> {
        let series = self.series();
        let mut out = Vec::with_capacity(20 + series.len() * 48);
        out.extend_from_slice(&self.min_ts.to_le_bytes());
        out.extend_from_slice(&self.max_ts.to_le_bytes());
        out.extend_from_slice(&(series.len() as u32).to_le_bytes());
        for run in series {
            let label = run[0].0;
            out.extend_from_slice(&(label.len() as u16).to_le_bytes());
            out.extend_from_slice(label.as_bytes());
            out.extend_from_slice(&(run.len() as u32).to_le_bytes());
            for &(_, m, c) in run {
                out.extend_from_slice(&m.to_le_bytes());
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        out
    }

    /// The entries in runs of one label each (sorted entries).
    fn series(&self) -> Vec<&[(&'a str, u32, u32)]> {
        self.entries.chunk_by(|a, b| a.0 == b.0).collect()
    }

    fn minutes(&self) -> BTreeSet<u32> {
        self.entries.iter().map(|e| e.1).collect()
    }
}

/// A decoded `frame_counts` value.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct StoredCounts {
    pub min_ts: i64,
    pub max_ts: i64,
    /// (label, minute, count)
    pub entries: Vec<(String, u32, u32)>,
}

fn decode_counts(b: &[u8]) -> Option<StoredCounts> {
    let mut p = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(p..p + n)?;
        p += n;
        Some(s)
    };
    let min_ts = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let max_ts = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let n = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut entries = Vec::new();
    for _ in 0..n {
        let len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let label = std::str::from_utf8(take(len)?).ok()?.to_string();
        let k = u32::from_le_bytes(take(4)?.try_into().ok()?);
        for _ in 0..k {
            let m = u32::from_le_bytes(take(4)?.try_into().ok()?);
            let c = u32::from_le_bytes(take(4)?.try_into().ok()?);
            entries.push((label.clone(), m, c));
        }
    }
    Some(StoredCounts {
        min_ts,
        max_ts,
        entries,
    })
}

/// Visits a `frame_counts` value's (label, minute, count) entries without
/// allocating; `false` if the value is truncated or not UTF-8 (entries up to
/// the fault were visited).
fn visit_counts(b: &[u8], mut each: impl FnMut(&str, u32, u32)) -> bool {
    fn take<'a>(b: &'a [u8], p: &mut usize, n: usize) -> Option<&'a [u8]> {
        let s = b.get(*p..*p + n)?;
        *p += n;
        Some(s)
    }
    fn u32_at(b: &[u8], p: &mut usize) -> Option<u32> {
        Some(u32::from_le_bytes(take(b, p, 4)?.try_into().ok()?))
    }
    let mut p = 16usize; // min and max event time
    let mut visit = || -> Option<()> {
        let n = u32_at(b, &mut p)?;
        for _ in 0..n {
            let len = u16::from_le_bytes(take(b, &mut p, 2)?.try_into().ok()?) as usize;
            let label = std::str::from_utf8(take(b, &mut p, len)?).ok()?;
            let k = u32_at(b, &mut p)?;
            for _ in 0..k {
                let m = u32_at(b, &mut p)?;
                let c = u32_at(b, &mut p)?;
                each(label, m, c);
            }
        }
        Some(())
    };
    b.len() >= 16 && visit().is_some()
}

fn index_key(minute: u32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&minute.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Retention's trees and counters, part of [`Shared`].
pub(crate) struct Retention {
    pub(crate) counts: sled::Tree,
    pub(crate) time_index: sled::Tree,
    /// Records of retained frames deleted to make room (since open).
    dropped: AtomicU64,
    /// The counter and the pruning paths write under this lock.
    counting: std::sync::Mutex<Counting>,
    counted: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct Counting {
    /// Frames up to here have been deleted: the counter must not count them.
    pruned_to: u64,
    /// Frames up to here are counted (or were skipped as deleted).
    counted_to: u64,
}

impl Retention {
    /// Opens the trees; with retention on and no horizon yet, counting
    /// starts now: on a log that already held frames, events before now were
    /// not counted (the horizon is now); on a fresh log nothing was missed.
    /// With counting on, frames after the `counted_to` marker (the counter's
    /// queue when the process stopped) are counted again here.
    pub(crate) fn open(
        db: &sled::Db,
        meta: &sled::Tree,
        frames: &sled::Tree,
        on: bool,
        fresh: bool,
    ) -> Result<Retention, WalError> {
        let tree = |name: &'static str| db.open_tree(name).map_err(WalError::sled("open tree"));
        let counts = tree("frame_counts")?;
        let time_index = tree("time_index")?;
        let has = meta
            .get(HORIZON_KEY)
            .map_err(WalError::sled("read horizon"))?
            .is_some();
        let last_frame = frames
            .last()
            .map_err(WalError::sled("read last frame"))?
            .and_then(|(k, _)| key_seq(&k))
            .unwrap_or(0);
        let mut counted_to = last_frame;
        if on && !has {
            let start = if fresh { i64::MIN } else { now_ns() };
            meta.insert(HORIZON_KEY, &start.to_le_bytes())
                .map_err(WalError::sled("write horizon"))?;
            meta.insert(COUNTED_KEY, &last_frame.to_le_bytes())
                .map_err(WalError::sled("write counted marker"))?;
        } else if on {
            // The marker, or (a log written before it existed, whose counts
            // were written with their frames) the last frame with counts.
            let marker = meta
                .get(COUNTED_KEY)
                .map_err(WalError::sled("read counted marker"))?
                .and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes));
            let from = match marker {
                Some(m) => m,
                None => counts
                    .last()
                    .map_err(WalError::sled("read frame counts"))?
                    .and_then(|(k, _)| key_seq(&k))
                    .unwrap_or(0),
            };
            recount(frames, &counts, &time_index, meta, from)?;
        } else if has {
            // Counting stops: the next time retention is turned on, what
            // arrived meanwhile was not counted, so the horizon starts anew.
            meta.remove(HORIZON_KEY)
                .map_err(WalError::sled("remove horizon"))?;
            meta.remove(COUNTED_KEY)
                .map_err(WalError::sled("remove counted marker"))?;
            counted_to = 0;
        }
        Ok(Retention {
            counts,
            time_index,
            dropped: AtomicU64::new(0),
            counting: std::sync::Mutex::new(Counting {
                pruned_to: 0,
                counted_to,
            }),
            counted: std::sync::Condvar::new(),
        })
    }
}

/// Counts the frames after `from` (those the counter had not written when
/// the process stopped) and sets the marker to the last frame.
fn recount(
    frames: &sled::Tree,
    counts: &sled::Tree,
    time_index: &sled::Tree,
    meta: &sled::Tree,
    from: u64,
) -> Result<(), WalError> {
    // In chunks, so the marks held at once stay bounded however many frames
    // there are; each chunk moves the marker past its frames.
    const CHUNK: usize = 256;
    let mut counted = 0usize;
    let mut last = from;
    let mut marks: Vec<(u64, Marks)> = Vec::with_capacity(CHUNK);
    let flush = |marks: &mut Vec<(u64, Marks)>, last: u64| -> Result<(), WalError> {
        let built: Vec<(u64, FrameCounts)> = marks
            .iter()
            .map(|(seq, m)| {
                let mut c = FrameCounts::default();
                c.add_all(m);
                c.finish();
                (*seq, c)
            })
            .collect();
        apply_counts(counts, time_index, meta, &built, last)?;
        marks.clear();
        Ok(())
    };
    for kv in frames.range(seq_key(from.saturating_add(1))..) {
        let (k, v) = kv.map_err(WalError::sled("read frame"))?;
        let Some(seq) = key_seq(&k) else { continue };
        last = seq;
        // A frame that does not decode is quarantined by the readers; it
        // has nothing countable.
        if let Ok(f) = frame::decode(seq, &v) {
            marks.push((seq, Marks::of_records(&f.records)));
            counted += 1;
        }
        if marks.len() >= CHUNK {
            flush(&mut marks, last)?;
        }
    }
    if last == from {
        return Ok(());
    }
    flush(&mut marks, last)?;
    tracing::info!(
        frames = counted,
        after_seq = from,
        "counted frames the counter had not written"
    );
    Ok(())
}

/// Writes the counts and time-index entries of `built` and the marker
/// `counted_to`, in one sled transaction.
fn apply_counts(
    counts: &sled::Tree,
    time_index: &sled::Tree,
    meta: &sled::Tree,
    built: &[(u64, FrameCounts)],
    counted_to: u64,
) -> Result<(), WalError> {
    let (mut cb, mut ib, mut mb) = (
        sled::Batch::default(),
        sled::Batch::default(),
        sled::Batch::default(),
    );
    for (seq, c) in built {
        if c.is_empty() {
            continue;
        }
        cb.insert(&seq_key(*seq)[..], c.encode());
        for m in c.minutes() {
            ib.insert(&index_key(m, *seq)[..], &[][..]);
        }
    }
    mb.insert(COUNTED_KEY, &counted_to.to_le_bytes()[..]);
    super::writer::apply_together(vec![(counts, cb), (time_index, ib), (meta, mb)])
}

/// One committed group's counting work, from the writer to [`count_loop`].
pub(crate) struct CountJob {
    /// Each append's marks, taken from its request.
    pub(crate) marks: Vec<Option<Marks>>,
    /// Per frame: its seq and the parts of appends packed into it.
    pub(crate) frames: Vec<(u64, Vec<Part>)>,
}

/// Records `from..to` of append `append` of a group, packed into one frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part {
    pub(crate) append: usize,
    pub(crate) from: usize,
    pub(crate) to: usize,
}

/// The counting thread: builds and writes the counts of committed groups,
/// everything queued at a time, at most one sled transaction per
/// [`COUNT_ROUND`]. Ends when the writer drops its sender.
pub(crate) fn count_loop(shared: &Shared, rx: crossbeam_channel::Receiver<CountJob>) {
    while let Ok(first) = rx.recv() {
        let round = std::time::Instant::now() + COUNT_ROUND;
        let mut jobs = vec![first];
        // What is queued is taken every COUNT_SLICE, not as each group
        // arrives: a wake per group commit (and the channel's spinning
        // before it parks) cost this thread more CPU than the counting.
        loop {
            while jobs.len() < ROUND_JOBS {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let now = std::time::Instant::now();
            if jobs.len() >= ROUND_JOBS || now >= round {
                break;
            }
            std::thread::sleep(COUNT_SLICE.min(round - now));
        }
        let mut built = Vec::new();
        for job in &jobs {
            for (seq, parts) in &job.frames {
                let mut c = FrameCounts::default();
                for p in parts {
                    let Some(Some(m)) = job.marks.get(p.append) else {
                        continue;
                    };
                    if p.from == 0 && p.to == m.records.len() {
                        c.add_all(m);
                    } else {
                        c.add(m, p.from, p.to);
                    }
                }
                c.finish();
                built.push((*seq, c));
            }
        }
        if let Err(e) = shared.write_counts(built) {
            // Fail-stop like every sled write error (durability.rs): sled
            // refuses writes after one, so nothing more is acknowledged.
            shared.persist.fail(&e);
            tracing::error!(error = %e, "writing retention counts failed");
            let mut g = shared
                .retention
                .counting
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            g.counted_to = u64::MAX;
            shared.retention.counted.notify_all();
        }
    }
}

impl Shared {
    /// Writes counts of frames just committed (the counter's round): frames
    /// already deleted are skipped, their events raise the horizon.
    fn write_counts(&self, built: Vec<(u64, FrameCounts)>) -> Result<(), WalError> {
        let Some(last) = built.iter().map(|(s, _)| *s).max() else {
            return Ok(());
        };
        let r = &self.retention;
        let mut g = r.counting.lock().unwrap_or_else(|p| p.into_inner());
        let pruned_to = g.pruned_to;
        let (keep, gone): (Vec<_>, Vec<_>) = built.into_iter().partition(|(s, _)| *s > pruned_to);
        if let Some(newest) = gone
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(_, c)| c.max_ts)
            .max()
        {
            self.raise_horizon(newest)?;
        }
        let counted_to = last.max(g.counted_to);
        apply_counts(&r.counts, &r.time_index, &self.meta, &keep, counted_to)?;
        g.counted_to = counted_to;
        r.counted.notify_all();
        Ok(())
    }

    /// Waits until the counter has written the counts of every frame
    /// committed so far (at most [`SETTLE_WAIT`]; a no-op with retention off).
    pub(crate) fn settle_counts(&self) {
        if !self.retention_on() {
            return;
        }
        let target = self
            .frames
            .last()
            .ok()
            .flatten()
            .and_then(|(k, _)| key_seq(&k))
            .unwrap_or(0);
        self.settle_counts_to(target, SETTLE_WAIT);
    }

    /// Waits until frames up to `target` are counted (at most `wait`).
    fn settle_counts_to(&self, target: u64, wait: std::time::Duration) {
        let r = &self.retention;
        let g = r.counting.lock().unwrap_or_else(|p| p.into_inner());
        let (g, waited) = r
            .counted
            .wait_timeout_while(g, wait, |g| g.counted_to < target)
            .unwrap_or_else(|p| p.into_inner());
        if waited.timed_out() {
            tracing::warn!(
                counted_to = g.counted_to,
                last_frame = target,
                "retention counts still behind the log"
            );
        }
    }

    /// Raises the horizon (events before it may be missing) past `newest_ns`.
    fn raise_horizon(&self, newest_ns: i64) -> Result<(), WalError> {
        if !self.retention_on() {
            return Ok(());
        }
        self.meta
            .fetch_and_update(HORIZON_KEY, |old| {
                let old = old
                    .and_then(|v| v.try_into().ok())
                    .map(i64::from_le_bytes)
                    .unwrap_or(i64::MIN);
                Some(old.max(newest_ns.saturating_add(1)).to_le_bytes().to_vec())
            })
            .map_err(WalError::sled("write horizon"))?;
        Ok(())
    }
}

/// The retained range: delivered frames kept for `retain`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Retained {
    pub frames: u64,
    pub records: u64,
    /// Approximate (proportional to records, like the backlog's).
    pub bytes: u64,
    /// Event time (ns) of the oldest and newest retained record, from the
    /// counts of the first and last retained frame.
    pub oldest_event_ns: Option<i64>,
    pub newest_event_ns: Option<i64>,
    /// Records of retained frames deleted to make room, since the log opened.
    pub dropped: u64,
    /// Events before this time (ns) may be missing from the log.
    pub horizon_ns: Option<i64>,
}

/// Per-minute, per-series counts of what the log accepted in a window.
#[derive(Debug, Clone, Default)]
pub struct AcceptedCounts {
    /// (Unix minute, series) → records.
    pub counts: BTreeMap<(u32, Series), u64>,
    /// Events before this time (ns) may be missing from the log; `None` when
    /// retention is off (nothing is counted).
    pub horizon_ns: Option<i64>,
}

impl Shared {
    fn retention_on(&self) -> bool {
        self.config.retain.on()
    }

    /// Marks of an append, if retention is on.
    #[allow(dead_code)] // used by `Wal::append_encoded`
    pub(crate) fn marks(&self, payload: &[u8], ends: &[usize]) -> Option<Marks> {
        self.retention_on()
            .then(|| Marks::of_encoded(payload, ends))
    }

    /// Marks of an append's records, if retention is on.
    pub(crate) fn marks_of(&self, records: &[Record]) -> Option<Marks> {
        self.retention_on().then(|| Marks::of_records(records))
    }

    /// Removes counts and time-index entries of frames up to `seq` (already
    /// deleted), raising the horizon to their newest event first.
    pub(crate) fn prune_counts(&self, seq: u64) -> Result<(), WalError> {
        let r = &self.retention;
        // Under the counter's lock: it writes no count of these frames after.
        let mut g = r.counting.lock().unwrap_or_else(|p| p.into_inner());
        g.pruned_to = g.pruned_to.max(seq);
        let (mut counts, mut index) = (sled::Batch::default(), sled::Batch::default());
        let mut newest = None::<i64>;
        for kv in r.counts.range(..=seq_key(seq)) {
            let (k, v) = kv.map_err(WalError::sled("read frame counts"))?;
            if let (Some(s), Some(c)) = (key_seq(&k), decode_counts(&v)) {
                newest = Some(newest.map_or(c.max_ts, |n| n.max(c.max_ts)));
                let minutes: BTreeSet<u32> = c.entries.iter().map(|e| e.1).collect();
                for m in minutes {
                    index.remove(&index_key(m, s)[..]);
                }
            }
            counts.remove(k);
        }
        if let Some(n) = newest {
            self.raise_horizon(n)?;
        }
        r.time_index
            .apply_batch(index)
            .map_err(WalError::sled("prune time index"))?;
        r.counts
            .apply_batch(counts)
            .map_err(WalError::sled("prune frame counts"))?;
        drop(g);
        Ok(())
    }

    /// The lowest cursor of the configured sinks: frames up to it are
    /// delivered everywhere (0 with no sink or none delivered).
    pub(crate) fn delivered_up_to(&self) -> Result<u64, WalError> {
        let mut min = u64::MAX;
        for sink in &self.config.sinks {
            min = min.min(self.cursor(sink)?);
        }
        Ok(if min == u64::MAX { 0 } else { min })
    }

    /// Commit time (ms) before which delivered frames may go, for `retain`.
    pub(crate) fn retain_keep_after_ms(&self) -> u64 {
        if !self.retention_on() {
            return u64::MAX;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        now.saturating_sub(self.config.retain.ms)
    }

    /// Counts retained records deleted by `drop_oldest`'s batch.
    pub(crate) fn count_retained_dropped(&self, records: u64) {
        self.retention.dropped.fetch_add(records, Ordering::Relaxed);
    }

    /// With retention on: deletes delivered frames, oldest first, until an
    /// append of `need` bytes fits `max_bytes` (or none is left), under the
    /// state lock held by the caller. Their records are counted as
    /// `retained_dropped`, never as dropped.
    pub(crate) fn shed_retained(&self, g: &mut Guarded, need: u64) -> Result<(), WalError> {
        let max = self.config.max_bytes;
        if !self.retention_on() || g.log.bytes + g.pending_bytes + need <= max {
            return Ok(());
        }
        let delivered = self.delivered_up_to()?;
        if delivered == 0 {
            return Ok(());
        }
        let mut st = g.log;
        let mut batch = sled::Batch::default();
        let (mut last, mut records) = (None, 0u64);
        for kv in self.frames.range(seq_key(0)..=seq_key(delivered)) {
            if st.bytes + g.pending_bytes + need <= max {
                break;
            }
            let (k, v) = kv.map_err(WalError::sled("read retained frame"))?;
            let Some(seq) = key_seq(&k) else { continue };
            let count = peek_header(&v).map(|h| u64::from(h.count)).unwrap_or(0);
            batch.remove(k);
            st.remove_frame(v.len() as u64 + 8, count);
            records += count;
            last = Some(seq);
        }
        let Some(last) = last else { return Ok(()) };
        batch.insert(STATE_KEY, &st.encode()[..]);
        self.frames
            .apply_batch(batch)
            .map_err(WalError::sled("delete retained frames"))?;
        g.log = st;
        self.count_retained_dropped(records);
        self.prune_index(last)?;
        tracing::info!(
            records,
            up_to_seq = last,
            "log full: deleted the oldest retained (delivered) frames to make room"
        );
        Ok(())
    }
}

impl Wal {
    /// The retained range and retention's counters.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn retained(&self) -> Result<Retained, WalError> {
        let s = self.shared();
        let dropped = s.retention.dropped.load(Ordering::Relaxed);
        let horizon_ns = s
            .meta
            .get(HORIZON_KEY)
            .map_err(WalError::sled("read horizon"))?
            .and_then(|v| v.as_ref().try_into().ok().map(i64::from_le_bytes));
        let mut out = Retained {
            dropped,
            horizon_ns,
            ..Retained::default()
        };
        let delivered = s.delivered_up_to()?;
        if !s.retention_on() || delivered == 0 {
            return Ok(out);
        }
        let range = || s.frames.range(seq_key(0)..=seq_key(delivered));
        let first = range()
            .next()
            .transpose()
            .map_err(WalError::sled("read retained"))?;
        let last = range()
            .next_back()
            .transpose()
            .map_err(WalError::sled("read retained"))?;
        let (Some((fk, fv)), Some((lk, lv))) = (first, last) else {
            return Ok(out);
        };
        let (Ok(fh), Ok(lh)) = (peek_header(&fv), peek_header(&lv)) else {
            return Ok(out);
        };
        let (Some(fseq), Some(lseq)) = (key_seq(&fk), key_seq(&lk)) else {
            return Ok(out);
        };
        // Delivered frames are normally counted long before; right after a
        // delivery this waits for the counter's round (milliseconds).
        s.settle_counts_to(lseq, STATUS_WAIT);
        let st = s.lock_state().log;
        out.records = (lh.first_record + u64::from(lh.count)).saturating_sub(fh.first_record);
        out.frames = lseq - fseq + 1;
        out.bytes = if st.records == 0 {
            0
        } else {
            (st.bytes as u128 * out.records as u128 / st.records as u128) as u64
        };
        let counts = |seq: u64| -> Result<Option<StoredCounts>, WalError> {
            Ok(s.retention
                .counts
                .get(seq_key(seq))
                .map_err(WalError::sled("read frame counts"))?
                .and_then(|v| decode_counts(&v)))
        };
        out.oldest_event_ns = counts(fseq)?.map(|c| c.min_ts);
        out.newest_event_ns = counts(lseq)?.map(|c| c.max_ts);
        Ok(out)
    }

    /// Frames holding records with event times in `[since_ns, until_ns)`, in
    /// log order, from the time index (no frame is read). Only frames still in
    /// the log; empty with retention off.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn frames_between(&self, since_ns: i64, until_ns: i64) -> Result<Vec<u64>, WalError> {
        let s = self.shared();
        if until_ns <= since_ns {
            return Ok(Vec::new());
        }
        s.settle_counts();
        let (from, to) = (minute_of(since_ns), minute_of(until_ns - 1));
        let mut seqs = BTreeSet::new();
        for k in s
            .retention
            .time_index
            .range(index_key(from, 0)..=index_key(to, u64::MAX))
            .keys()
        {
            let k = k.map_err(WalError::sled("read time index"))?;
            if let Some(seq) = k.get(4..).and_then(key_seq) {
                seqs.insert(seq);
            }
        }
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if s.frames
                .contains_key(seq_key(seq))
                .map_err(WalError::sled("read frames"))?
            {
                out.push(seq);
            }
        }
        Ok(out)
    }

    /// One frame, decoded; `None` if it is no longer in the log or does not
    /// decode (the normal read path quarantines such frames).
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn read_frame(&self, seq: u64) -> Result<Option<Frame>, WalError> {
        let v = self
            .shared()
            .frames
            .get(seq_key(seq))
            .map_err(WalError::sled("read frame"))?;
        Ok(v.and_then(|v| frame::decode(seq, &v).ok()))
    }

    /// Per-minute, per-series counts of the records the log accepted with
    /// event times in `[since_ns, until_ns)` (whole minutes: `since` rounds
    /// down, `until` up), from the stored counts: no record is decoded.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn accepted_counts(
        &self,
        since_ns: i64,
        until_ns: i64,
    ) -> Result<AcceptedCounts, WalError> {
        let s = self.shared();
        let horizon_ns = if s.retention_on() {
            self.retained()?.horizon_ns
        } else {
            None
        };
        let mut out = AcceptedCounts {
            counts: BTreeMap::new(),
            horizon_ns,
        };
        if !s.retention_on() || until_ns <= since_ns {
            return Ok(out);
        }
        let (from, to) = (minute_of(since_ns), minute_of(until_ns - 1));
        // Summed per (label number, minute); labels interned once each, so
        // a frame's entries cost no allocation (an hour is ~350k frames).
        let mut labels: HashMap<String, u32> = HashMap::new();
        let mut sums: HashMap<(u32, u32), u64> = HashMap::new();
        for seq in self.frames_between(since_ns, until_ns)? {
            let Some(v) = s
                .retention
                .counts
                .get(seq_key(seq))
                .map_err(WalError::sled("read frame counts"))?
            else {
                continue;
            };
            visit_counts(&v, |label, m, n| {
                if m < from || m > to {
                    return;
                }
                let id = match labels.get(label) {
                    Some(id) => *id,
                    None => {
                        let id = labels.len() as u32;
                        labels.insert(label.to_string(), id);
                        id
                    }
                };
                *sums.entry((id, m)).or_default() += u64::from(n);
            });
        }
        let mut series: Vec<Option<Series>> = vec![None; labels.len()];
        for (label, id) in labels {
            series[id as usize] = Series::from_label(&label);
        }
        for ((id, m), n) in sums {
            if let Some(Some(sr)) = series.get(id as usize) {
                *out.counts.entry((m, sr.clone())).or_default() += n;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_are_named() {
        assert_eq!(parse_duration_ms("6h"), Ok(6 * 3_600_000));
        assert_eq!(parse_duration_ms("90m"), Ok(90 * 60_000));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("2d"), Ok(2 * 86_400_000));
        assert_eq!(parse_duration_ms("off"), Ok(0));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        let e = parse_duration_ms("6 hours").unwrap_err();
        assert!(e.contains("6 hours"), "{e}");
        assert!(parse_duration_ms("h").is_err());
    }

    #[test]
    fn wal_section_takes_retain_and_names_a_bad_value() {
        let c: crate::wal::WalConfig = toml::from_str("retain = \"6h\"").unwrap();
        assert_eq!(c.retain, Retain { ms: 6 * 3_600_000 });
        let c: crate::wal::WalConfig = toml::from_str("").unwrap();
        assert!(!c.retain.on(), "retention is off by default");
        let e = toml::from_str::<crate::wal::WalConfig>("retain = \"6 hours\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("retain") && e.contains("6 hours"), "{e}");
    }

    /// Marks of three trades of one series: two in a minute, one in the next.
    fn three_trades() -> Marks {
        Marks::of_records(&[
            crate::wal::test_trade(1),
            crate::wal::test_trade(2),
            crate::wal::test_trade(60_000_000_001),
        ])
    }

    #[test]
    fn counts_of_appends_in_one_frame_merge_by_series_and_minute() {
        // Two appends (their own label strings) over the same series and a
        // third series; a part of the second counted record by record.
        let a = three_trades();
        let b = Marks::of_records(&[crate::wal::test_trade(3), crate::wal::test_trade(4)]);
        let mut other = crate::wal::test_trade(5);
        if let Record::Trade(t) = &mut other {
            t.symbol = "ETHUSDT".into();
        }
        let c3 = Marks::of_records(&[other]);
        let mut c = FrameCounts::default();
        c.add_all(&a);
        c.add(&b, 0, 1);
        c.add_all(&c3);
        c.add(&b, 1, 2);
        c.finish();
        let d = decode_counts(&c.encode()).unwrap();
        let m0 = minute_of(crate::wal::test_trade(0).ts());
        let got: Vec<(bool, u32, u32)> = d
            .entries
            .iter()
            .map(|(l, m, n)| (l.contains("ETHUSDT"), m - m0, *n))
            .collect();
        // One entry per (series, minute), counts summed across appends.
        assert_eq!(
            got,
            vec![(false, 0, 4), (false, 1, 1), (true, 0, 1)],
            "{d:?}"
        );
        assert_eq!(
            c.minutes().into_iter().collect::<Vec<_>>(),
            vec![m0, m0 + 1]
        );
    }

    #[test]
    fn counts_round_trip_and_truncations_fail() {
        let marks = three_trades();
        let mut c = FrameCounts::default();
        c.add(&marks, 0, 3);
        c.finish();
        let bytes = c.encode();
        let d = decode_counts(&bytes).unwrap();
        let base = crate::wal::test_trade(0).ts();
        assert_eq!(d.min_ts, base + 1);
        assert_eq!(d.max_ts, base + 60_000_000_001);
        let mut e = d.entries.clone();
        e.sort();
        let m0 = minute_of(base);
        assert_eq!(
            e.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>(),
            vec![(m0, 2), (m0 + 1, 1)]
        );
        let s = Series::from_label(&e[0].0).unwrap();
        assert_eq!((s.sink, s.target.as_str()), ("influx", "trades"));
        for n in 0..bytes.len() {
            assert!(
                decode_counts(&bytes[..n]).is_none(),
                "truncated to {n} decoded"
            );
            assert!(
                !visit_counts(&bytes[..n], |_, _, _| {}),
                "truncated to {n} visited whole"
            );
        }
        // The borrowing visitor sees what the decoder sees.
        let mut v = Vec::new();
        assert!(visit_counts(&bytes, |l, m, c| v.push((
            l.to_string(),
            m,
            c
        ))));
        assert_eq!(v, d.entries);
    }
}
