//! Measurement notes shared by every bench (`mod common;` in each of
//! benches/*.rs), written once.
//!
//! A bench records what each benchmark id measured with [`note`] (elements
//! and elapsed time, from inside `iter_custom`, the same figures criterion is
//! given) and free-form lines with [`remark`]. At the end it prints one
//! summary from a [`Summary`] of this run, so every rate and ratio printed
//! there compares figures taken in the same run. Criterion's own reports
//! and the benchmark ids are not touched by any of this.
//!
//! Records for benches come from `tests/common/records.rs`, included with
//! `#[path]` by the benches that build records from it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// (elements, elapsed) accumulated per benchmark id.
static MEASURED: Mutex<BTreeMap<String, (u64, Duration)>> = Mutex::new(BTreeMap::new());
/// Lines printed after the rates (memory, prefill times, ...).
static REMARKS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Adds `elements` measured in `elapsed` to benchmark `id`.
pub fn note(id: &str, elements: u64, elapsed: Duration) {
    let mut m = MEASURED.lock().unwrap();
    let e = m.entry(id.to_string()).or_insert((0, Duration::ZERO));
    e.0 += elements;
    e.1 += elapsed;
}

/// Keeps `line` for the end of the summary ([`Summary::print_remarks`]).
pub fn remark(line: String) {
    REMARKS.lock().unwrap().push(line);
}

/// Elements per second.
pub fn rate((elements, elapsed): (u64, Duration)) -> f64 {
    elements as f64 / elapsed.as_secs_f64()
}

/// What this run measured, taken once at the end.
pub struct Summary {
    measured: BTreeMap<String, (u64, Duration)>,
}

/// A snapshot of everything noted so far.
pub fn summary() -> Summary {
    Summary {
        measured: MEASURED.lock().unwrap().clone(),
    }
}

impl Summary {
    /// (elements, elapsed) of `id`, if it ran.
    pub fn get(&self, id: &str) -> Option<(u64, Duration)> {
        self.measured.get(id).copied()
    }

    /// Elements per second of `id`, if it ran.
    pub fn rate(&self, id: &str) -> Option<f64> {
        self.get(id).map(rate)
    }

    /// `id`'s rate as a percentage of `limit`'s, if both ran.
    pub fn percent_of(&self, id: &str, limit: &str) -> Option<f64> {
        Some(100.0 * self.rate(id)? / self.rate(limit)?)
    }

    /// Every id that ran, in id order, with (elements, elapsed).
    pub fn iter(&self) -> impl Iterator<Item = (&str, (u64, Duration))> {
        self.measured.iter().map(|(id, v)| (id.as_str(), *v))
    }

    /// Every id that ran whose name starts with `prefix`.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, (u64, Duration))> + 'a {
        self.iter().filter(move |(id, _)| id.starts_with(prefix))
    }

    /// Prints `== <title> ==` after an empty line.
    pub fn print_heading(&self, title: &str) {
        println!("\n== {title} ==");
    }

    /// One summary line: `id` padded to `width`, its rate in `unit`/s.
    pub fn print_rate(&self, id: &str, width: usize, v: (u64, Duration), unit: &str) {
        println!("{id:<width$} {:>12.0} {unit}/s", rate(v));
    }

    /// The heading, then one rate line per id that ran (`unit`: "records",
    /// "lines", "rows").
    pub fn print_rates(&self, title: &str, width: usize, unit: &str) {
        self.print_heading(title);
        for (id, v) in self.iter() {
            self.print_rate(id, width, v, unit);
        }
    }

    /// The lines kept with [`remark`], in order.
    pub fn print_remarks(&self) {
        for line in REMARKS.lock().unwrap().iter() {
            println!("{line}");
        }
    }
}
