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

/// The command name and CPU time (user + system) in one `/proc/.../stat`
/// line: the name is between the first `(` and the last `)` (it may hold
/// spaces), utime and stime are fields 14 and 15, counted in clock ticks.
fn parse_stat(stat: &str) -> Option<(&str, Duration)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((
        &stat[open + 1..close],
        Duration::from_nanos(ticks * 1_000_000_000 / hz),
    ))
}

/// CPU time (user + system) a process has used so far, from
/// `/proc/<pid>/stat`; `None` off Linux. Sampled at the start and end of a
/// timed region, the difference is the CPU that process spent on it, so a
/// bench can say which side used the cores.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, t)| t)
}

/// CPU time per thread name of this process (threads of one name, digits
/// at its end dropped, summed; threads that ended are not counted).
pub fn cpu_by_thread() -> BTreeMap<String, Duration> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if let Some((name, t)) = parse_stat(&stat) {
            let name = name.trim_end_matches(|c: char| c.is_ascii_digit());
            *out.entry(name.to_string()).or_insert(Duration::ZERO) += t;
        }
    }
    out
}

static THREADS: Mutex<BTreeMap<String, BTreeMap<String, Duration>>> = Mutex::new(BTreeMap::new());

/// CPU per benchmark id: (this process, the server's process) over the
/// timed regions noted with [`note_cpu`].
static CPU: Mutex<BTreeMap<String, (Duration, Duration)>> = Mutex::new(BTreeMap::new());

/// Adds CPU spent during `id`'s timed regions by this process and the server.
pub fn note_cpu(id: &str, own: Duration, server: Duration) {
    let mut m = CPU.lock().unwrap();
    let e = m
        .entry(id.to_string())
        .or_insert((Duration::ZERO, Duration::ZERO));
    e.0 += own;
    e.1 += server;
}

/// Samples this process's and `server`'s CPU time; [`CpuMark::noted`] adds
/// the difference since the mark to an id.
pub struct CpuMark {
    server: u32,
    own: Duration,
    theirs: Duration,
    threads: BTreeMap<String, Duration>,
}

impl CpuMark {
    pub fn now(server: u32) -> CpuMark {
        CpuMark {
            server,
            own: cpu_time(std::process::id()).unwrap_or_default(),
            theirs: cpu_time(server).unwrap_or_default(),
            threads: cpu_by_thread(),
        }
    }

    pub fn noted(self, id: &str) {
        let own = cpu_time(std::process::id()).unwrap_or_default();
        let theirs = cpu_time(self.server).unwrap_or_default();
        note_cpu(
            id,
            own.saturating_sub(self.own),
            theirs.saturating_sub(self.theirs),
        );
        let mut all = THREADS.lock().unwrap();
        let per = all.entry(id.to_string()).or_default();
        for (name, t) in cpu_by_thread() {
            let before = self.threads.get(&name).copied().unwrap_or_default();
            *per.entry(name).or_default() += t.saturating_sub(before);
        }
    }
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

    /// Per id with CPU noted: cores busy on average during its timed
    /// regions (this process, the server, both) and CPU microseconds per
    /// 1000 elements on each side.
    pub fn print_cpu(&self, width: usize, unit: &str) {
        let cpu = CPU.lock().unwrap().clone();
        if cpu.is_empty() {
            return;
        }
        println!(
            "CPU during the timed regions (cores busy of this machine's {}; µs per 1000 {unit}):",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        );
        for (id, (own, server)) in cpu {
            let Some((elements, elapsed)) = self.get(&id) else {
                continue;
            };
            let wall = elapsed.as_secs_f64();
            let per = |d: Duration| d.as_secs_f64() * 1e9 / elements as f64;
            println!(
                "{id:<width$} relay {:.2} + server {:.2} = {:.2} cores; relay {:.0} µs, server {:.0} µs",
                own.as_secs_f64() / wall,
                server.as_secs_f64() / wall,
                (own + server).as_secs_f64() / wall,
                per(own),
                per(server),
            );
            if let Some(threads) = THREADS.lock().unwrap().get(&id) {
                let mut v: Vec<_> = threads.iter().filter(|(_, t)| !t.is_zero()).collect();
                v.sort_by(|a, b| b.1.cmp(a.1));
                let parts: Vec<String> = v
                    .iter()
                    .map(|(n, t)| format!("{n} {:.0} µs", per(**t)))
                    .collect();
                println!("{:<width$}   relay threads: {}", "", parts.join(", "));
            }
        }
    }

    /// The lines kept with [`remark`], in order.
    pub fn print_remarks(&self) {
        for line in REMARKS.lock().unwrap().iter() {
            println!("{line}");
        }
    }
}

/// An open-loop schedule: `producers` threads each call `request` every
/// `period` (spread evenly over it), `iters` times, and each call is timed
/// from its scheduled start, so a late start counts against it. Returns
/// every latency.
pub fn open_loop(
    producers: usize,
    period: Duration,
    iters: u64,
    request: &(dyn Fn() + Sync),
) -> Vec<Duration> {
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..producers)
            .map(|p| {
                s.spawn(move || {
                    let mut out = Vec::with_capacity(iters as usize);
                    let offset = period * p as u32 / producers as u32;
                    for k in 0..iters as u32 {
                        let due = start + offset + period * k;
                        if let Some(w) = due.checked_duration_since(std::time::Instant::now()) {
                            std::thread::sleep(w);
                        }
                        request();
                        out.push(due.elapsed());
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}
