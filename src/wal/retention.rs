//! Retention (`[wal] retain`), the event-time index and the per-minute,
//! per-series counts: what lets an operator prove there are no gaps in a
//! database and refill them from the log.
//!
//! # Trees (all owned by this file)
//!
//! ```text
//! tree             key                         -> value
//! frame_counts_v2  u64 BE last ++ u64 BE first -> i64 LE min event ts (ns), i64 LE max,
//!                                                 varint base minute, varint series,
//!                                                 then per series: varint series id,
//!                                                 varint minutes, (varint minute delta,
//!                                                 varint count) each
//! series           b'L' ++ label               -> u32 BE series id
//!                  b'N' ++ u32 BE series id    -> label
//! time_index       u32 BE minute ++ counts key -> (empty): frames `first..=last`
//!                                                 hold records whose event time falls
//!                                                 in `minute`
//! ```
//!
//! Counts are kept per run of frames: what one counter round counted (the
//! groups committed in ~20 ms), frames `first..=last`, merged. So the
//! counter writes one counts entry and one index entry per minute per round,
//! not per frame: fewer inserts beside the writer's group commits (they were
//! most of what retention cost acknowledgements). A counts key of 8 bytes is one
//! frame's (`first = last`), as logs written before runs have them.
//!
//! A label is `sink ␟ target ␟ exchange ␟ symbol ␟ interval` ([`series_label`]):
//! `T` and the TimescaleDB table, or `I` and the InfluxDB measurement, so the
//! audit can compare without decoding a record. Each label is stored once, in
//! `series`, under a number the counts refer to (a frame's counts are ~5
//! bytes per series instead of the label again); labels are never removed
//! (one per series ever counted, tens of bytes each). Minutes are Unix
//! minutes of the record's event time; a frame's minutes are deltas from its
//! base minute (the lowest), varints are LEB128.
//!
//! Logs written before the series numbers kept the labels in every count
//! (tree `frame_counts`); [`Retention::open`] converts them, a chunk per
//! transaction, and drops that tree.
//!
//! # Invariants
//!
//! - Only with `retain` on: with it off, nothing is computed or written, and
//!   the append path is that of a log without retention.
//! - Written off the append path, and producers do nothing for it: the
//!   writer hands each committed group's frames (their bytes shared, not
//!   copied, up to [`COUNT_HOLD_BYTES`]; past it they are read back from
//!   the log) and its layout (which records of which append went into which
//!   frame, and where each record ends) to a counting thread
//!   ([`count_loop`]). It reads each record's series and event time from
//!   the frame's bytes (the leading fields only: [`raw_head`]), builds the
//!   frames' counts and time-index entries and writes them, then the marker
//!   `retention/counted_to` (the last frame counted), as plain sled inserts
//!   in that order, several groups at a time (not a transaction: see
//!   [`apply_counts`]). So counts may lag their frames (by what is queued,
//!   milliseconds): a crash can leave frames without counts, never counts
//!   without their frames (sled recovers a prefix of its log). On open,
//!   frames after the marker are decoded and counted again
//!   ([`Retention::open`]), after the runs written past the marker are
//!   removed (so no frame is counted twice; runs never overlap). Readers
//!   that need every count (the audit, a rewind's frame list) first wait
//!   for the counter ([`Shared::settle_counts`]).
//! - Removed after their frames ([`Shared::prune_counts`], called by every
//!   path that prunes the kinds index), under the same lock the counter
//!   writes under, so the counter never writes counts of a deleted frame: it
//!   skips such frames and raises the horizon past their events instead. A
//!   run cut by a prune (frames deleted up to a frame inside it) goes
//!   whole, raising the horizon past all its events, and its frames still
//!   in the log are counted again from the log as a run of their own.
//! - The horizon (`meta` key `retention/horizon_ns`) only grows: the newest
//!   event time of any frame deleted so far, or of the run it was counted
//!   in (or the time counting began; or the time of the counter's round,
//!   for a frame deleted before it was counted whose bytes were not held
//!   for it: its events are unknown).
//!   Minutes before it may be incomplete in the log; an audit reaching before
//!   it says so (exit 2) instead of reporting them.
//! - Retained frames (delivered by every configured sink, kept for `retain`)
//!   count against `max_bytes`. An append that does not fit deletes them,
//!   oldest first, before `when_full` applies ([`Shared::shed_retained`]),
//!   counting their records as `retained_dropped`; retention never refuses an
//!   append nor costs an undelivered record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Deserialize;

use super::frame::{self, key_seq, peek_header, seq_key};
use super::state::STATE_KEY;
use super::{Frame, Guarded, Shared, Wal, WalError};
use crate::record::{decode_record, raw_head, BarKind, Head, Record, RecordKind};

const HORIZON_KEY: &[u8] = b"retention/horizon_ns";
/// The counts, labels by number (see the module docs).
const COUNTS_TREE: &str = "frame_counts_v2";
/// Counts of logs written before the series numbers, converted on open.
const OLD_COUNTS_TREE: &str = "frame_counts";
/// The last frame the counter has counted (u64 LE), in `meta`.
const COUNTED_KEY: &[u8] = b"retention/counted_to";
/// The counter applies what is queued at most this often (one pass of sled
/// inserts per round).
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

/// The InfluxDB measurement of a record kind other than a point (the same
/// names as `db::influx::measurement`, which the audit's tests compare
/// against).
fn measurement(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Trade => "trades",
        RecordKind::OrderBookTop => "orderbook",
        RecordKind::Funding => "funding_rate",
        RecordKind::Liquidation => "liquidation",
        RecordKind::OpenInterest => "open_interest",
        RecordKind::OptionsTicker => "options_ticker",
        RecordKind::PriceIndex => "price_index",
        other => other.as_str(),
    }
}

/// Writes the series label of `r` into `out` (cleared first); see the module
/// doc. TimescaleDB: table × exchange × symbol × interval; InfluxDB:
/// measurement × exchange × symbol (a price index's `index_name` stands for
/// the symbol; a point uses its `exchange` and `symbol` tags, if any).
pub fn series_label(r: &Record, out: &mut String) {
    label_of(series_key(r), out)
}

/// The label of a series key: the one place labels are spelled, whether the
/// key comes from a record or from a record's binary form ([`Head`]).
fn label_of(key: SeriesKey<'_>, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    let (kind, bar, a, b, c) = key;
    let kind = RecordKind::ALL.get(kind as usize).copied();
    let _ = match kind {
        Some(RecordKind::Bar) => {
            let bar = BarKind::ALL.get(bar as usize).map_or("", |k| k.as_str());
            write!(out, "T{SEP}bar__{bar}{SEP}{a}{SEP}{b}{SEP}{c}")
        }
        Some(RecordKind::Kline) => write!(out, "T{SEP}bar__kline{SEP}{a}{SEP}{b}{SEP}{c}"),
        // A point's key is (measurement, exchange tag, symbol tag).
        Some(RecordKind::Point) => write!(out, "I{SEP}{a}{SEP}{b}{SEP}{c}{SEP}"),
        Some(k) => write!(out, "I{SEP}{}{SEP}{a}{SEP}{b}{SEP}", measurement(k)),
        None => Ok(()),
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

/// A record's series, borrowed from it or from its binary form (kind, bar
/// kind, then the strings its label is made of): hashing it costs no
/// allocation.
type SeriesKey<'a> = (u8, u8, &'a str, &'a str, &'a str);

fn head_key<'a>(h: &Head<'a>) -> SeriesKey<'a> {
    (h.kind.index() as u8, h.bar, h.venue, h.symbol, h.interval)
}

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

/// The series and event-time counts of one frame: per (label, minute) how
/// many records, and the frame's oldest and newest event time. Built by the
/// counter from the frame's binary form ([`Marks::of_frame`]), or on open
/// from decoded records ([`Marks::of_records`]). A handful of allocations
/// per frame, however many series it holds: the labels share one string.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    /// Every label of the frame, one after another; `label_ends[i]` ends
    /// label `i`.
    label_text: String,
    label_ends: Vec<u32>,
    /// (label, minute, count) over every record; one (label, minute) may
    /// appear more than once (a series whose records go back and forth
    /// across a minute's edge), [`FrameCounts::finish`] merges them.
    agg: Vec<(u32, u32, u32)>,
    min_ts: i64,
    max_ts: i64,
}

/// Builds [`Marks`] record by record.
struct MarksBuilder {
    m: Marks,
    /// Per record one seeded 64-bit hash of its series (foldhash, seeded per
    /// process) and, unless it is the series of the record before, one
    /// lookup of that hash: no string is compared. Two series of one frame
    /// are counted together only if their hashes collide (about n² / 2^65
    /// for n series; not steerable without the seed).
    index: HashMap<u64, u32, foldhash::fast::RandomState>,
    /// Per series its newest `agg` entry: a record of the same minute adds
    /// to it, another opens a new entry.
    newest: Vec<u32>,
    last: Option<(u64, u32)>,
    buf: String,
    records: usize,
}

impl MarksBuilder {
    fn new() -> MarksBuilder {
        MarksBuilder {
            m: Marks::default(),
            index: HashMap::with_capacity_and_hasher(32, *series_hasher()),
            newest: Vec::new(),
            last: None,
            buf: String::new(),
            records: 0,
        }
    }

    fn push(&mut self, key: SeriesKey<'_>, ts: i64) {
        let h = series_hasher().hash_one(key);
        self.push_hashed(h, ts, |out| label_of(key, out));
    }

    /// Counts one record of the series hashed `h`; `label` writes the
    /// series' label (called once per series).
    fn push_hashed(&mut self, h: u64, ts: i64, label: impl FnOnce(&mut String)) {
        let m = &mut self.m;
        let i = match self.last {
            Some((lh, i)) if lh == h => i,
            _ => {
                let i = match self.index.get(&h) {
                    Some(i) => *i,
                    None => {
                        let i = m.label_ends.len() as u32;
                        label(&mut self.buf);
                        m.label_text.push_str(&self.buf);
                        m.label_ends.push(m.label_text.len() as u32);
                        self.newest.push(u32::MAX);
                        self.index.insert(h, i);
                        i
                    }
                };
                self.last = Some((h, i));
                i
            }
        };
        if self.records == 0 {
            (m.min_ts, m.max_ts) = (ts, ts);
        }
        self.records += 1;
        m.min_ts = m.min_ts.min(ts);
        m.max_ts = m.max_ts.max(ts);
        let minute = minute_of(ts);
        let at = &mut self.newest[i as usize];
        match m.agg.get_mut(*at as usize) {
            Some(e) if e.1 == minute => e.2 += 1,
            _ => {
                *at = m.agg.len() as u32;
                m.agg.push((i, minute, 1));
            }
        }
    }

    /// Counts one record's binary form by its raw series bytes (hashed as
    /// they are: no string is checked or built unless the series is new to
    /// this frame). One that does not decode is not counted, and one whose
    /// strings are not UTF-8 counts under an empty label, which the audit
    /// ignores: neither can have been encoded by us.
    fn push_encoded(&mut self, record: &[u8]) {
        match raw_head(record) {
            Some(raw) => {
                // Raw bytes and `SeriesKey`s hash apart: a point's series
                // and another kind's never share a label anyway.
                let h = series_hasher().hash_one(raw.key);
                self.push_hashed(h, raw.ts, |out| match raw.text() {
                    Some(head) => label_of(head_key(&head), out),
                    // Not UTF-8: not ours (frames are encoded from strings).
                    None => out.clear(),
                });
            }
            // A point (its series is in its tags), decoded whole.
            None => {
                if let Ok((r, _)) = decode_record(record) {
                    self.push(series_key(&r), r.ts());
                }
            }
        }
    }
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
        let mut b = MarksBuilder::new();
        for r in records {
            b.push(series_key(r), r.ts());
        }
        b.m
    }

    /// The marks of a frame as the writer packed it (`frame` its bytes):
    /// its records are the `parts` of the group's appends, one after
    /// another, and `ends[a][i]` ends record `i` of append `a` in that
    /// append's payload. Only each record's leading fields are read.
    pub(crate) fn of_frame(frame: &[u8], parts: &[Part], ends: &[Vec<usize>]) -> Marks {
        let mut b = MarksBuilder::new();
        let mut at = frame::HEADER_LEN;
        for p in parts {
            let Some(ends) = ends.get(p.append) else {
                continue;
            };
            let base = match p.from {
                0 => 0,
                from => ends.get(from - 1).copied().unwrap_or(0),
            };
            let mut start = base;
            for &end in ends.get(p.from..p.to).unwrap_or(&[]) {
                if let Some(record) = frame.get(at + start - base..at + end - base) {
                    b.push_encoded(record);
                }
                start = end;
            }
            at += start - base;
        }
        b.m
    }
}

/// The process's seeded series hasher (one seed per process).
fn series_hasher() -> &'static foldhash::fast::RandomState {
    static STATE: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(foldhash::fast::RandomState::default)
}

/// The counts of one frame, borrowing the labels of the marks they come
/// from: entries are pushed as they come and merged once by
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

    /// The finished counts of one frame holding exactly `marks`' records.
    #[cfg(test)]
    fn of(marks: &'a Marks) -> FrameCounts<'a> {
        let mut c = FrameCounts::default();
        c.add_all(marks);
        c.finish();
        c
    }

    /// The finished counts of a run: the frames of `marks`, merged.
    fn of_run(marks: &'a [(u64, Marks)]) -> FrameCounts<'a> {
        let mut c = FrameCounts::default();
        for (_, m) in marks {
            c.add_all(m);
        }
        c.finish();
        c
    }

    /// Adds the counts of `marks`.
    fn add_all(&mut self, marks: &'a Marks) {
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

    /// The stored form (after [`FrameCounts::finish`], see the module docs):
    /// labels by number, numbers new to `dict` added to `labels` (to be
    /// stored before these counts).
    fn encode(
        &self,
        dict: &mut SeriesDict,
        tree: &sled::Tree,
        labels: &mut NewLabels,
    ) -> Result<Vec<u8>, WalError> {
        let series = self.series();
        let base = self.entries.iter().map(|e| e.1).min().unwrap_or(0);
        let mut out = Vec::with_capacity(24 + series.len() * 6);
        out.extend_from_slice(&self.min_ts.to_le_bytes());
        out.extend_from_slice(&self.max_ts.to_le_bytes());
        put_varint(&mut out, u64::from(base));
        put_varint(&mut out, series.len() as u64);
        for run in series {
            put_varint(&mut out, u64::from(dict.id(run[0].0, tree, labels)?));
            put_varint(&mut out, run.len() as u64);
            let mut prev = base;
            for &(_, m, c) in run {
                put_varint(&mut out, u64::from(m - prev));
                put_varint(&mut out, u64::from(c));
                prev = m;
            }
        }
        Ok(out)
    }

    fn series(&self) -> Vec<&[(&'a str, u32, u32)]> {
        self.entries.chunk_by(|a, b| a.0 == b.0).collect()
    }

    fn minutes(&self) -> BTreeSet<u32> {
        self.entries.iter().map(|e| e.1).collect()
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], p: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*p)?;
        *p += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

fn get_u32(b: &[u8], p: &mut usize) -> Option<u32> {
    get_varint(b, p).and_then(|v| u32::try_from(v).ok())
}

/// A frame's event-time range from its stored counts.
fn count_times(b: &[u8]) -> Option<(i64, i64)> {
    let min = i64::from_le_bytes(b.get(0..8)?.try_into().ok()?);
    let max = i64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    Some((min, max))
}

/// Calls `each(series id, minute, count)` for every entry of a frame's
/// stored counts; false if they do not decode whole (nothing is trusted
/// then, though `each` may have seen a prefix).
fn visit_counts(b: &[u8], mut each: impl FnMut(u32, u32, u32)) -> bool {
    let mut p = 16usize; // min and max event time
    let mut visit = || -> Option<()> {
        let base = get_u32(b, &mut p)?;
        for _ in 0..get_varint(b, &mut p)? {
            let id = get_u32(b, &mut p)?;
            let mut minute = base;
            for _ in 0..get_varint(b, &mut p)? {
                minute = minute.checked_add(get_u32(b, &mut p)?)?;
                each(id, minute, get_u32(b, &mut p)?);
            }
        }
        (p == b.len()).then_some(())
    };
    b.len() >= 16 && visit().is_some()
}

/// The minutes of a frame's stored counts (its time-index keys).
fn count_minutes(b: &[u8]) -> Option<BTreeSet<u32>> {
    let mut minutes = BTreeSet::new();
    visit_counts(b, |_, m, _| {
        minutes.insert(m);
    })
    .then_some(minutes)
}

/// Series labels by number, as the counter writes them: a bounded cache of
/// the `series` tree, which stays the reference (numbers are never reused).
#[derive(Debug, Default)]
pub(crate) struct SeriesDict {
    ids: HashMap<Box<str>, u32>,
    next: u32,
}

/// Labels numbered for the first time, to be stored (number and label).
type NewLabels = Vec<(u32, Box<str>)>;

/// The `series` tree's two entries of a new label: number -> label first,
/// then label -> number (the order the counter's plain inserts keep).
fn label_entries(id: u32, label: &str) -> [(Vec<u8>, Vec<u8>); 2] {
    [
        (number_key(id).to_vec(), label.as_bytes().to_vec()),
        (label_key(label), id.to_be_bytes().to_vec()),
    ]
}

/// The `series` tree's writes of `new`, for a transaction.
fn label_batch(new: &NewLabels) -> sled::Batch {
    let mut b = sled::Batch::default();
    for (k, v) in new.iter().flat_map(|(id, label)| label_entries(*id, label)) {
        b.insert(k, v);
    }
    b
}

/// Labels the dictionary keeps in memory; past this the cache starts over
/// and labels are read back from the `series` tree as they come.
const DICT_CACHE: usize = 65_536;

fn label_key(label: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + label.len());
    k.push(b'L');
    k.extend_from_slice(label.as_bytes());
    k
}

fn number_key(id: u32) -> [u8; 5] {
    let mut k = [b'N'; 5];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

impl SeriesDict {
    /// Loads the next free number from `tree`.
    fn open(tree: &sled::Tree) -> Result<SeriesDict, WalError> {
        let next = tree
            .scan_prefix(b"N")
            .next_back()
            .transpose()
            .map_err(WalError::sled("read series"))?
            .and_then(|(k, _)| k.get(1..5)?.try_into().ok().map(u32::from_be_bytes))
            .map_or(0, |n| n + 1);
        Ok(SeriesDict {
            ids: HashMap::new(),
            next,
        })
    }

    /// The number of `label`; a new one is added to `new`, which must be
    /// stored before (or with) the counts that use it (or
    /// [`SeriesDict::forget`] called if that fails).
    fn id(&mut self, label: &str, tree: &sled::Tree, new: &mut NewLabels) -> Result<u32, WalError> {
        if let Some(id) = self.ids.get(label) {
            return Ok(*id);
        }
        let key = label_key(label);
        let id =
            match tree.get(&key).map_err(WalError::sled("read series"))? {
                Some(v) => v.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| {
                    WalError::Corrupt {
                        what: "series number",
                        detail: format!("{} bytes for label {label:?}", v.len()),
                    }
                })?,
                None => {
                    let id = self.next;
                    self.next = id.checked_add(1).ok_or_else(|| WalError::Corrupt {
                        what: "series number",
                        detail: "all 2^32 series numbers used".into(),
                    })?;
                    new.push((id, label.into()));
                    id
                }
            };
        if self.ids.len() >= DICT_CACHE {
            self.ids.clear();
        }
        self.ids.insert(label.into(), id);
        Ok(id)
    }

    /// After a failed write: numbers handed out since the last one applied
    /// may not be stored, so the cache and the next number start over.
    fn forget(&mut self, tree: &sled::Tree) {
        match SeriesDict::open(tree) {
            Ok(fresh) => *self = fresh,
            Err(_) => self.ids.clear(),
        }
    }
}

/// Applies a transaction that may store labels `dict` has just numbered;
/// if it fails, the dictionary forgets those numbers.
fn apply_numbered(
    dict: &mut SeriesDict,
    series: &sled::Tree,
    built: Result<Vec<(&sled::Tree, sled::Batch)>, WalError>,
) -> Result<(), WalError> {
    let applied = built.and_then(super::writer::apply_together);
    if applied.is_err() {
        dict.forget(series);
    }
    applied
}

/// Labels by number for readers (the audit), each read once per reader.
struct SeriesNames<'t> {
    tree: &'t sled::Tree,
    names: HashMap<u32, Option<Series>>,
}

impl<'t> SeriesNames<'t> {
    fn get(&mut self, id: u32) -> Result<Option<&Series>, WalError> {
        if !self.names.contains_key(&id) {
            let label = self
                .tree
                .get(number_key(id))
                .map_err(WalError::sled("read series"))?;
            let series = label
                .as_deref()
                .and_then(|l| std::str::from_utf8(l).ok())
                .and_then(Series::from_label);
            self.names.insert(id, series);
        }
        Ok(self.names.get(&id).and_then(Option::as_ref))
    }
}

/// Counts in the older form ([`decode_counts_v1`]), for tests.
#[cfg(test)]
pub(crate) fn encode_counts_v1(
    min_ts: i64,
    max_ts: i64,
    entries: &[(String, u32, u32)],
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&min_ts.to_le_bytes());
    out.extend_from_slice(&max_ts.to_le_bytes());
    let runs: Vec<&[(String, u32, u32)]> = entries.chunk_by(|a, b| a.0 == b.0).collect();
    out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    for run in runs {
        out.extend_from_slice(&(run[0].0.len() as u16).to_le_bytes());
        out.extend_from_slice(run[0].0.as_bytes());
        out.extend_from_slice(&(run.len() as u32).to_le_bytes());
        for (_, m, c) in run {
            out.extend_from_slice(&m.to_le_bytes());
            out.extend_from_slice(&c.to_le_bytes());
        }
    }
    out
}

/// A stored count in the older form (labels inline), for the conversion
/// test: what a log written before the series numbers holds.
#[cfg(test)]
pub(crate) fn counts_as_v1(value: &[u8], series: &sled::Tree) -> Vec<u8> {
    let (min_ts, max_ts) = count_times(value).expect("counts decode");
    let mut entries = Vec::new();
    assert!(visit_counts(value, |id, m, c| {
        let label = series.get(number_key(id)).unwrap().expect("label stored");
        entries.push((String::from_utf8(label.to_vec()).unwrap(), m, c));
    }));
    entries.sort();
    encode_counts_v1(min_ts, max_ts, &entries)
}

/// Counts as logs before the series numbers stored them (tree
/// `frame_counts`): i64 LE min, i64 LE max, u32 LE series, then per series
/// u16 LE label length, label, u32 LE minutes, (u32 LE minute, u32 LE count)
/// each. Read only to convert them.
fn decode_counts_v1(b: &[u8]) -> Option<(i64, i64, Vec<(String, u32, u32)>)> {
    fn take<'a>(b: &'a [u8], p: &mut usize, n: usize) -> Option<&'a [u8]> {
        let s = b.get(*p..*p + n)?;
        *p += n;
        Some(s)
    }
    fn u32_at(b: &[u8], p: &mut usize) -> Option<u32> {
        Some(u32::from_le_bytes(take(b, p, 4)?.try_into().ok()?))
    }
    let (min, max) = count_times(b)?;
    let mut p = 16usize;
    let mut entries = Vec::new();
    for _ in 0..u32_at(b, &mut p)? {
        let len = u16::from_le_bytes(take(b, &mut p, 2)?.try_into().ok()?) as usize;
        let label = std::str::from_utf8(take(b, &mut p, len)?).ok()?.to_string();
        for _ in 0..u32_at(b, &mut p)? {
            let m = u32_at(b, &mut p)?;
            let c = u32_at(b, &mut p)?;
            entries.push((label.clone(), m, c));
        }
    }
    Some((min, max, entries))
}

/// The key of the counts of frames `first..=last` (a run): the last frame
/// first, so a range over keys is a range over runs' last frames.
fn run_key(first: u64, last: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&last.to_be_bytes());
    k[8..].copy_from_slice(&first.to_be_bytes());
    k
}

/// The frames a counts key covers: a run's (16 bytes), or one frame's (8
/// bytes: counts written one frame each, before runs).
pub(crate) fn key_run(k: &[u8]) -> Option<(u64, u64)> {
    match k.len() {
        8 => key_seq(k).map(|s| (s, s)),
        16 => Some((key_seq(&k[8..])?, key_seq(&k[..8])?)),
        _ => None,
    }
}

/// The time-index key of `minute` in the counts under `counts_key`.
fn index_key_of(minute: u32, counts_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + counts_key.len());
    k.extend_from_slice(&minute.to_be_bytes());
    k.extend_from_slice(counts_key);
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
    pub(crate) series: sled::Tree,
    pub(crate) time_index: sled::Tree,
    /// Records of retained frames deleted to make room (since open).
    dropped: AtomicU64,
    /// Frame bytes on their way to the counter.
    pub(crate) queue: CountQueue,
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
    /// Series numbers as the counter hands them out.
    dict: SeriesDict,
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
        let counts = tree(COUNTS_TREE)?;
        let series = tree("series")?;
        let time_index = tree("time_index")?;
        let mut dict = SeriesDict::open(&series)?;
        convert_v1(db, &counts, &series, &mut dict)?;
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
                    .and_then(|(k, _)| key_run(&k))
                    .map_or(0, |(_, last)| last),
            };
            let trees = CountTrees {
                counts: &counts,
                series: &series,
                time_index: &time_index,
                meta,
            };
            recount(frames, &trees, &mut dict, from)?;
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
            series,
            time_index,
            dropped: AtomicU64::new(0),
            queue: CountQueue::new(),
            counting: std::sync::Mutex::new(Counting {
                pruned_to: 0,
                counted_to,
                dict,
            }),
            counted: std::sync::Condvar::new(),
        })
    }
}

/// Counts the frames after `from` (those the counter had not written when
/// the process stopped) and sets the marker to the last frame.
fn recount(
    frames: &sled::Tree,
    trees: &CountTrees,
    dict: &mut SeriesDict,
    from: u64,
) -> Result<(), WalError> {
    // Runs written after the marker (a crash between a run and the marker)
    // go first, with their index entries, and their frames are counted
    // again: runs never overlap, so no frame is counted twice.
    let mut from = from;
    let mut stale = Vec::new();
    for kv in trees.counts.range(seq_key(from.saturating_add(1))..) {
        let (k, v) = kv.map_err(WalError::sled("read frame counts"))?;
        if let Some((first, _)) = key_run(&k) {
            from = from.min(first.saturating_sub(1));
        }
        stale.push((k, v));
    }
    for (k, v) in stale {
        for m in count_minutes(&v).unwrap_or_default() {
            trees
                .time_index
                .remove(index_key_of(m, &k))
                .map_err(WalError::sled("remove time index"))?;
        }
        trees
            .counts
            .remove(k)
            .map_err(WalError::sled("remove frame counts"))?;
    }
    // In chunks, so the marks held at once stay bounded however many frames
    // there are; each chunk is one run and moves the marker past its frames.
    const CHUNK: usize = 256;
    let mut counted = 0usize;
    let mut last = from;
    let mut marks: Vec<(u64, Marks)> = Vec::with_capacity(CHUNK);
    let mut flush = |marks: &mut Vec<(u64, Marks)>, last: u64| -> Result<(), WalError> {
        let built = match marks.first() {
            Some((first, _)) => vec![(*first, last, FrameCounts::of_run(marks))],
            None => Vec::new(),
        };
        apply_counts(trees, dict, &built, last)?;
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

/// The trees counting writes to, together.
struct CountTrees<'t> {
    counts: &'t sled::Tree,
    series: &'t sled::Tree,
    time_index: &'t sled::Tree,
    meta: &'t sled::Tree,
}

/// Writes the counts and time-index entries of `built`, the series labels
/// they number for the first time and the marker `counted_to`.
///
/// Plain sled inserts, in an order that keeps the invariants in any prefix
/// sled recovers: each new label (its number first), then per frame its
/// time-index entries and its counts, then the marker. Not a transaction
/// (nor a batch): sled takes a process-wide write lock for those, which
/// waits for a flush in progress (its read side is held through the flush's
/// I/O) and holds up the writer's next group (a transaction too) behind
/// it. A count then refers only to a stored label, and the marker passes a
/// frame only once its counts are stored; what a crash leaves after the
/// marker is counted again on open (keys are per frame, so that is
/// idempotent).
fn apply_counts(
    trees: &CountTrees,
    dict: &mut SeriesDict,
    built: &[(u64, u64, FrameCounts)],
    counted_to: u64,
) -> Result<(), WalError> {
    let written = (|| -> Result<(), WalError> {
        let mut new = NewLabels::new();
        let mut encoded = Vec::with_capacity(built.len());
        for (first, last, c) in built.iter().filter(|(_, _, c)| !c.is_empty()) {
            encoded.push((
                run_key(*first, *last),
                c,
                c.encode(dict, trees.series, &mut new)?,
            ));
        }
        for (k, v) in new.iter().flat_map(|(id, label)| label_entries(*id, label)) {
            trees
                .series
                .insert(k, v)
                .map_err(WalError::sled("write series label"))?;
        }
        for (key, c, v) in encoded {
            for m in c.minutes() {
                trees
                    .time_index
                    .insert(index_key_of(m, &key), &[][..])
                    .map_err(WalError::sled("write time index"))?;
            }
            trees
                .counts
                .insert(&key[..], v)
                .map_err(WalError::sled("write frame counts"))?;
        }
        trees
            .meta
            .insert(COUNTED_KEY, &counted_to.to_le_bytes()[..])
            .map_err(WalError::sled("write counted marker"))?;
        Ok(())
    })();
    if written.is_err() {
        dict.forget(trees.series);
    }
    written
}

/// Converts the counts of a log written before series numbers (tree
/// `frame_counts`, labels in every count) and drops that tree. A chunk per
/// transaction moves its entries to the new tree, so a crash midway leaves
/// the rest for the next open. A count that does not decode is dropped with
/// a warning (its frame then shows as not counted in an audit).
fn convert_v1(
    db: &sled::Db,
    counts: &sled::Tree,
    series: &sled::Tree,
    dict: &mut SeriesDict,
) -> Result<(), WalError> {
    const CHUNK: usize = 256;
    let exists = db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == OLD_COUNTS_TREE.as_bytes());
    if !exists {
        return Ok(());
    }
    let old = db
        .open_tree(OLD_COUNTS_TREE)
        .map_err(WalError::sled("open tree"))?;
    let (mut converted, mut bad) = (0u64, 0u64);
    loop {
        let chunk = old
            .iter()
            .take(CHUNK)
            .collect::<Result<Vec<_>, _>>()
            .map_err(WalError::sled("read old frame counts"))?;
        if chunk.is_empty() {
            break;
        }
        let (mut nb, mut new, mut ob) = (
            sled::Batch::default(),
            NewLabels::new(),
            sled::Batch::default(),
        );
        let mut encoded = || -> Result<(), WalError> {
            for (k, v) in &chunk {
                ob.remove(k.clone());
                let Some((min_ts, max_ts, entries)) = decode_counts_v1(v) else {
                    bad += 1;
                    continue;
                };
                let mut c = FrameCounts {
                    entries: entries
                        .iter()
                        .map(|(l, m, n)| (l.as_str(), *m, *n))
                        .collect(),
                    min_ts,
                    max_ts,
                };
                c.finish();
                nb.insert(k.clone(), c.encode(dict, series, &mut new)?);
                converted += 1;
            }
            Ok(())
        };
        let batches =
            encoded().map(|()| vec![(counts, nb), (series, label_batch(&new)), (&old, ob)]);
        apply_numbered(dict, series, batches)?;
    }
    drop(old);
    db.drop_tree(OLD_COUNTS_TREE)
        .map_err(WalError::sled("drop old frame counts"))?;
    if bad > 0 {
        tracing::warn!(
            frames = bad,
            "old retention counts that did not decode were dropped"
        );
    }
    tracing::info!(
        frames = converted,
        "retention counts converted to series numbers"
    );
    Ok(())
}

/// One committed group's counting work, from the writer to [`count_loop`].
pub(crate) struct CountJob {
    /// The group's frames.
    pub(crate) frames: Vec<CountFrame>,
    /// Each append's record ends (`Request::ends`, moved).
    pub(crate) ends: Vec<Vec<usize>>,
    /// Frame bytes this job holds (counted in [`CountQueue`]).
    pub(crate) held: usize,
}

/// One frame of a [`CountJob`].
pub(crate) struct CountFrame {
    pub(crate) seq: u64,
    /// The frame's bytes, shared with the batch that stored them (an `IVec`
    /// clone, no copy); `None` past [`COUNT_HOLD_BYTES`], when the counter
    /// reads the frame from the log instead.
    pub(crate) bytes: Option<sled::IVec>,
    /// The parts of appends packed into it, in order.
    pub(crate) parts: Vec<Part>,
}

/// Records `from..to` of append `append` of a group, packed into one frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part {
    pub(crate) append: usize,
    pub(crate) from: usize,
    pub(crate) to: usize,
}

/// At most this many frame bytes wait in the counter's queue (beside the 64
/// groups its channel holds): the writer hands over frames past it without
/// their bytes, and the counter reads those from the log. Frames held are
/// shared with sled's cache as long as it keeps them, so this bounds only
/// what counting adds to memory.
pub(crate) const COUNT_HOLD_BYTES: usize = 32 * 1024 * 1024;

/// Frame bytes queued for the counter (see [`COUNT_HOLD_BYTES`]); only the
/// writer holds and only the counter releases.
#[derive(Debug)]
pub(crate) struct CountQueue {
    held: AtomicUsize,
    /// [`COUNT_HOLD_BYTES`]; tests lower it.
    pub(crate) limit: AtomicUsize,
}

impl CountQueue {
    fn new() -> CountQueue {
        CountQueue {
            held: AtomicUsize::new(0),
            limit: AtomicUsize::new(COUNT_HOLD_BYTES),
        }
    }

    /// Whether `bytes` more may be held; if so they are counted as held.
    pub(crate) fn hold(&self, bytes: usize) -> bool {
        let held = self.held.load(Ordering::Relaxed);
        if held + bytes > self.limit.load(Ordering::Relaxed) {
            return false;
        }
        self.held.fetch_add(bytes, Ordering::Relaxed);
        true
    }

    pub(crate) fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// The counting thread: reads the series and event time of every record of
/// committed groups from the frames themselves (each record's leading
/// fields, at the record ends the writer passes along), builds the frames'
/// counts and writes them, everything queued at a time, at most one pass of
/// inserts per [`COUNT_ROUND`]. Producers do nothing for it. Ends when the
/// writer drops its sender.
pub(crate) fn count_loop(shared: &Shared, rx: crossbeam_channel::Receiver<CountJob>) {
    let queue = &shared.retention.queue;
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
        let mut marks: Vec<(u64, Marks)> = Vec::new();
        let (mut lost, mut last) = (false, 0);
        for job in jobs {
            for f in &job.frames {
                last = last.max(f.seq);
                let bytes = match &f.bytes {
                    Some(b) => Some(b.clone()),
                    None => shared.frames.get(seq_key(f.seq)).unwrap_or_else(|e| {
                        // Counted as gone (the horizon rises past it).
                        tracing::warn!(seq = f.seq, error = %e, "reading a frame to count it failed");
                        None
                    }),
                };
                match bytes {
                    Some(b) => marks.push((f.seq, Marks::of_frame(&b, &f.parts, &job.ends))),
                    // Deleted before it was counted, its bytes not held:
                    // its event times are unknown.
                    None => lost = true,
                }
            }
            queue.release(job.held);
        }
        let written = (|| {
            if lost {
                // Events before now may be missing from the counts (a frame
                // deleted this fast holds recent events, if its clock is
                // right): the audit says so instead of reporting a gap.
                tracing::warn!("a frame was deleted before it was counted; horizon raised to now");
                shared.raise_horizon(now_ns())?;
            }
            shared.write_counts(&marks, last)
        })();
        if let Err(e) = written {
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
    /// Writes the counts of frames just committed (the counter's round,
    /// `marks` in log order) as one run: frames already deleted are
    /// skipped, their events raise the horizon.
    fn write_counts(&self, marks: &[(u64, Marks)], last: u64) -> Result<(), WalError> {
        let r = &self.retention;
        let mut g = r.counting.lock().unwrap_or_else(|p| p.into_inner());
        let pruned_to = g.pruned_to;
        // Frames are deleted oldest first, so those kept are a suffix.
        let (gone, keep) = marks.split_at(marks.partition_point(|(s, _)| *s <= pruned_to));
        if let Some(newest) = gone
            .iter()
            .filter(|(_, m)| !m.agg.is_empty())
            .map(|(_, m)| m.max_ts)
            .max()
        {
            self.raise_horizon(newest)?;
        }
        let keep = match (keep.first(), keep.last()) {
            (Some((first, _)), Some((last, _))) => vec![(*first, *last, FrameCounts::of_run(keep))],
            _ => Vec::new(),
        };
        let counted_to = last.max(g.counted_to);
        let trees = CountTrees {
            counts: &r.counts,
            series: &r.series,
            time_index: &r.time_index,
            meta: &self.meta,
        };
        apply_counts(&trees, &mut g.dict, &keep, counted_to)?;
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

    /// The runs of counts holding events in `[since_ns, until_ns)` (whole
    /// minutes), by counts key, from the time index, once the counter has
    /// caught up.
    fn runs_between(
        &self,
        since_ns: i64,
        until_ns: i64,
    ) -> Result<BTreeMap<Vec<u8>, (u64, u64)>, WalError> {
        self.settle_counts();
        let (from, to) = (minute_of(since_ns), minute_of(until_ns - 1));
        let mut runs = BTreeMap::new();
        let end = to.checked_add(1).map(u32::to_be_bytes);
        let index = &self.retention.time_index;
        let keys = match end {
            Some(end) => index.range(from.to_be_bytes()..end),
            None => index.range(from.to_be_bytes()..),
        };
        for k in keys.keys() {
            let k = k.map_err(WalError::sled("read time index"))?;
            if let Some(run) = k.get(4..).and_then(key_run) {
                runs.insert(k[4..].to_vec(), run);
            }
        }
        Ok(runs)
    }

    /// Removes counts and time-index entries of frames up to `seq` (already
    /// deleted), raising the horizon to their newest event first; a run
    /// holding `seq` and later frames is replaced by the counts of those.
    pub(crate) fn prune_counts(&self, seq: u64) -> Result<(), WalError> {
        let r = &self.retention;
        // Under the counter's lock: it writes no count of these frames after.
        let mut g = r.counting.lock().unwrap_or_else(|p| p.into_inner());
        g.pruned_to = g.pruned_to.max(seq);
        let (mut counts, mut index) = (sled::Batch::default(), sled::Batch::default());
        let mut newest = None::<i64>;
        let mut rest = None;
        // Runs that end by `seq`, and the one `seq` falls inside (if any):
        // that one goes too, and its frames after `seq` are counted again
        // below as a run of their own. The horizon rises past all its
        // events (those of the deleted frames are not known apart).
        for kv in r.counts.range(..seq_key(seq.saturating_add(1))).chain(
            r.counts
                .range(seq_key(seq.saturating_add(1))..)
                .take(1)
                .filter(|kv| {
                    kv.as_ref()
                        .ok()
                        .and_then(|(k, _)| key_run(k))
                        .is_some_and(|(first, _)| first <= seq)
                }),
        ) {
            let (k, v) = kv.map_err(WalError::sled("read frame counts"))?;
            if let Some((_, last)) = key_run(&k).filter(|(_, last)| *last > seq) {
                rest = Some(last);
            }
            if let (Some((_, max_ts)), Some(minutes)) = (count_times(&v), count_minutes(&v)) {
                newest = Some(newest.map_or(max_ts, |n| n.max(max_ts)));
                for m in minutes {
                    index.remove(index_key_of(m, &k));
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
        if let Some(last) = rest {
            // At most one counter round of frames, decoded from the log. A
            // crash before this leaves them uncounted, under the horizon.
            let mut marks = Vec::new();
            for kv in self.frames.range(seq_key(seq + 1)..=seq_key(last)) {
                let (k, v) = kv.map_err(WalError::sled("read frame"))?;
                if let Some(f) = key_seq(&k).and_then(|s| frame::decode(s, &v).ok()) {
                    marks.push((f.seq, Marks::of_records(&f.records)));
                }
            }
            let c = FrameCounts::of_run(&marks);
            let trees = CountTrees {
                counts: &r.counts,
                series: &r.series,
                time_index: &r.time_index,
                meta: &self.meta,
            };
            let counted_to = g.counted_to.max(last);
            apply_counts(&trees, &mut g.dict, &[(seq + 1, last, c)], counted_to)?;
        }
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
        // The event times of the run holding frame `seq` (its whole run's:
        // the newest may be that of a frame after the delivered ones, in
        // the same counter round).
        let times = |seq: u64| -> Result<Option<(i64, i64)>, WalError> {
            let run = s
                .retention
                .counts
                .range(seq_key(seq)..)
                .next()
                .transpose()
                .map_err(WalError::sled("read frame counts"))?;
            Ok(run
                .filter(|(k, _)| key_run(k).is_some_and(|(first, _)| first <= seq))
                .and_then(|(_, v)| count_times(&v)))
        };
        out.oldest_event_ns = times(fseq)?.map(|t| t.0);
        out.newest_event_ns = times(lseq)?.map(|t| t.1);
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
        let mut out = Vec::new();
        for (first, last) in s.runs_between(since_ns, until_ns)?.into_values() {
            for seq in first..=last {
                if s.frames
                    .contains_key(seq_key(seq))
                    .map_err(WalError::sled("read frames"))?
                {
                    out.push(seq);
                }
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
        // Summed per (series number, minute): a frame's entries cost no
        // allocation (an hour is ~350k frames); labels are read once each.
        let mut sums: HashMap<(u32, u32), u64> = HashMap::new();
        let mut entries = Vec::new();
        for (key, (first, last)) in s.runs_between(since_ns, until_ns)? {
            // A run whose last frame is gone is being pruned (deletes go
            // oldest first; the horizon covers it). One whose first frame
            // alone is gone (quarantined, unreadable) still says what the
            // log accepted.
            if !s
                .frames
                .contains_key(seq_key(last))
                .map_err(WalError::sled("read frames"))?
            {
                continue;
            }
            let Some(v) = s
                .retention
                .counts
                .get(&key)
                .map_err(WalError::sled("read frame counts"))?
            else {
                continue;
            };
            entries.clear();
            let whole = visit_counts(&v, |id, m, n| {
                if (from..=to).contains(&m) {
                    entries.push((id, m, n));
                }
            });
            if !whole {
                tracing::warn!(
                    first,
                    last,
                    "frame counts do not decode; their frames are not counted"
                );
                continue;
            }
            for &(id, m, n) in &entries {
                *sums.entry((id, m)).or_default() += u64::from(n);
            }
        }
        let mut names = SeriesNames {
            tree: &s.retention.series,
            names: HashMap::new(),
        };
        for ((id, m), n) in sums {
            match names.get(id)? {
                Some(sr) => *out.counts.entry((m, sr.clone())).or_default() += n,
                None => tracing::warn!(id, "a count names a series number with no label"),
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

    /// Encodes `c` with a fresh dictionary in a temporary sled, the labels
    /// it numbered stored; returns the bytes and the `series` tree.
    fn encoded(c: &FrameCounts) -> (Vec<u8>, sled::Tree) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("series").unwrap();
        let mut dict = SeriesDict::open(&tree).unwrap();
        let mut labels = NewLabels::new();
        let bytes = c.encode(&mut dict, &tree, &mut labels).unwrap();
        tree.apply_batch(label_batch(&labels)).unwrap();
        (bytes, tree)
    }

    /// Stored counts as (label, minute, count), labels read from `tree`.
    fn entries(bytes: &[u8], tree: &sled::Tree) -> Vec<(String, u32, u32)> {
        let mut out = Vec::new();
        assert!(visit_counts(bytes, |id, m, c| {
            let label = tree.get(number_key(id)).unwrap().expect("label stored");
            out.push((String::from_utf8(label.to_vec()).unwrap(), m, c));
        }));
        out
    }

    /// Entries of finished counts, with their labels.
    fn listed(c: &FrameCounts) -> Vec<(String, u32, u32)> {
        c.entries
            .iter()
            .map(|&(l, m, n)| (l.to_string(), m, n))
            .collect()
    }

    #[test]
    fn a_frames_counts_read_from_its_bytes_equal_those_of_its_records() {
        use crate::record::{codec_samples, encode_record};
        use crate::wal::frame::FrameBuilder;
        // Three appends packed as the writer packs them: the second (every
        // kind, a point among them) split around the third, the first
        // crossing a minute's edge and back.
        let mut eth = crate::wal::test_trade(5);
        if let Record::Trade(t) = &mut eth {
            t.symbol = "ETHUSDT".into();
        }
        let appends: Vec<Vec<Record>> = vec![
            vec![
                crate::wal::test_trade(1),
                crate::wal::test_trade(60_000_000_001),
                crate::wal::test_trade(2),
            ],
            codec_samples(),
            vec![eth],
        ];
        let ends: Vec<Vec<usize>> = appends
            .iter()
            .map(|recs| {
                let mut buf = Vec::new();
                recs.iter()
                    .map(|r| {
                        encode_record(r, &mut buf).unwrap();
                        buf.len()
                    })
                    .collect()
            })
            .collect();
        let parts = [(0, 0, 3), (1, 0, 4), (2, 0, 1), (1, 4, 10)].map(|(append, from, to)| Part {
            append,
            from,
            to,
        });
        let mut b = FrameBuilder::new();
        let mut packed = Vec::new();
        for p in &parts {
            let records = &appends[p.append][p.from..p.to];
            let mut buf = Vec::new();
            for r in records {
                encode_record(r, &mut buf).unwrap();
            }
            b.push_encoded(&buf, records.len() as u32);
            packed.extend_from_slice(records);
        }
        let frame = b.seal(1, 0);
        let (from_bytes, from_records) = (
            Marks::of_frame(&frame, &parts, &ends),
            Marks::of_records(&packed),
        );
        let (x, y) = (FrameCounts::of(&from_bytes), FrameCounts::of(&from_records));
        assert_eq!(listed(&x), listed(&y));
        assert_eq!((x.min_ts, x.max_ts), (y.min_ts, y.max_ts));
        assert_eq!(listed(&x).len(), 2 + 10 + 1, "{:?}", listed(&x));
        // One entry per (series, minute), counts summed across appends.
        let m0 = minute_of(crate::wal::test_trade(0).ts());
        let mut label = String::new();
        series_label(&crate::wal::test_trade(0), &mut label);
        let trades: Vec<(u32, u32)> = listed(&x)
            .into_iter()
            .filter(|e| e.0 == label && e.1 <= m0 + 1)
            .map(|e| (e.1 - m0, e.2))
            .collect();
        assert_eq!(trades, vec![(0, 2), (1, 1)]);
        let (bytes, _) = encoded(&x);
        assert_eq!(
            count_minutes(&bytes).unwrap(),
            x.minutes(),
            "stored minutes"
        );
    }

    #[test]
    fn the_counters_queue_holds_frame_bytes_up_to_its_bound() {
        let q = CountQueue::new();
        assert_eq!(q.limit.load(Ordering::Relaxed), COUNT_HOLD_BYTES);
        q.limit.store(100, Ordering::Relaxed);
        assert!(q.hold(60));
        assert!(q.hold(40), "up to the bound itself");
        assert!(!q.hold(1), "past the bound the frame is read from the log");
        q.release(60);
        assert!(!q.hold(61));
        assert!(q.hold(60));
    }

    #[test]
    fn counts_round_trip_and_truncations_fail() {
        let marks = three_trades();
        let c = FrameCounts::of(&marks);
        let (bytes, tree) = encoded(&c);
        let base = crate::wal::test_trade(0).ts();
        assert_eq!(count_times(&bytes), Some((base + 1, base + 60_000_000_001)));
        let e = entries(&bytes, &tree);
        let m0 = minute_of(base);
        assert_eq!(
            e.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>(),
            vec![(m0, 2), (m0 + 1, 1)]
        );
        let s = Series::from_label(&e[0].0).unwrap();
        assert_eq!((s.sink, s.target.as_str()), ("influx", "trades"));
        // One series, two minutes: times, base minute (a 4-byte varint
        // today), series, its number and minutes, two (delta, count); the
        // label is not in the counts.
        assert_eq!(bytes.len(), 16 + 4 + 1 + 1 + 1 + 2 * 2, "{bytes:?}");
        for n in 0..bytes.len() {
            assert!(
                !visit_counts(&bytes[..n], |_, _, _| {}),
                "truncated to {n} visited whole"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            !visit_counts(&longer, |_, _, _| {}),
            "trailing byte accepted"
        );
    }

    #[test]
    fn a_label_keeps_its_number_and_new_ones_continue_after_a_reopen() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("series").unwrap();
        let mut dict = SeriesDict::open(&tree).unwrap();
        let mut batch = NewLabels::new();
        let a = dict
            .id("I\u{1f}trades\u{1f}X\u{1f}A\u{1f}", &tree, &mut batch)
            .unwrap();
        let b = dict
            .id("I\u{1f}trades\u{1f}X\u{1f}B\u{1f}", &tree, &mut batch)
            .unwrap();
        assert_eq!(
            dict.id("I\u{1f}trades\u{1f}X\u{1f}A\u{1f}", &tree, &mut batch)
                .unwrap(),
            a
        );
        assert_ne!(a, b);
        tree.apply_batch(label_batch(&batch)).unwrap();
        // A new dictionary (a restart, or the cache started over) finds the
        // stored numbers and hands out new ones after them.
        let mut again = SeriesDict::open(&tree).unwrap();
        let mut batch = NewLabels::new();
        assert_eq!(
            again
                .id("I\u{1f}trades\u{1f}X\u{1f}B\u{1f}", &tree, &mut batch)
                .unwrap(),
            b
        );
        let c = again
            .id("I\u{1f}trades\u{1f}X\u{1f}C\u{1f}", &tree, &mut batch)
            .unwrap();
        assert!(c > a.max(b), "number {c} reused");
        // A write that failed: numbers handed out since are forgotten.
        again.forget(&tree);
        let mut batch = NewLabels::new();
        assert_eq!(
            again
                .id("I\u{1f}trades\u{1f}X\u{1f}D\u{1f}", &tree, &mut batch)
                .unwrap(),
            c
        );
    }

    #[test]
    fn old_counts_decode_for_their_conversion() {
        let entries = vec![("I\u{1f}trades\u{1f}X\u{1f}A\u{1f}".to_string(), 7, 3)];
        let bytes = encode_counts_v1(1, 2, &entries);
        assert_eq!(decode_counts_v1(&bytes), Some((1, 2, entries)));
        for n in 0..bytes.len() {
            assert!(decode_counts_v1(&bytes[..n]).is_none(), "truncated to {n}");
        }
    }
}
