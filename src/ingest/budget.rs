//! The ingest memory budget: a bound on bytes held by requests in flight
//! (received bodies, decompressed text, parsed records), across all requests.
//!
//! Invariants:
//! - A request holds a [`Held`] for everything it keeps in memory, taken
//!   *before* the memory is allocated (a body chunk before it is kept, text
//!   before it is inflated, records before they are parsed), and released
//!   when the request ends, whatever the outcome.
//! - When the budget is spent, a request waits up to `budget_wait_ms` for
//!   others to finish, then is refused with 503 and `Retry-After`, exactly
//!   like a full log. A request needing more than the whole budget is
//!   refused at once.
//! - Sync and async callers share one budget: async code awaits, blocking
//!   code (decompression and parsing run on blocking threads) blocks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::IngestError;

/// Accounting unit: the semaphore counts KiB so that a budget of many GiB
/// fits its permit count (`u32` per acquisition).
const UNIT: u64 = 1024;

/// What a request holds for its parsed records, their encoded form and the
/// frames built from it, beyond the body and its decompressed text: three
/// times the text plus a fixed cost per record (allocation headers, maps).
pub fn records_estimate(text_bytes: usize, records: usize) -> u64 {
    3 * text_bytes as u64 + 256 * records as u64
}

/// The most one request can hold: body and text (both at most
/// `max_body_bytes`) plus [`records_estimate`]. The budget must cover it.
pub fn request_ceiling(max_body_bytes: usize, max_records: usize) -> u64 {
    2 * max_body_bytes as u64 + records_estimate(max_body_bytes, max_records)
}

/// The shared budget.
#[derive(Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    units: u64,
    wait: Duration,
}

/// What one request holds; released on drop.
pub struct Held {
    budget: Budget,
    permits: Vec<OwnedSemaphorePermit>,
    /// Bytes taken but not yet rounded up into a unit.
    bytes: u64,
    units: u64,
}

impl Budget {
    /// A budget of `bytes`, with `wait` as the longest wait for room.
    pub fn new(bytes: u64, wait: Duration) -> Budget {
        let units = (bytes / UNIT).max(1);
        Budget {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
            wait,
        }
    }

    /// An empty holding for one request.
    pub fn hold(&self) -> Held {
        Held {
            budget: self.clone(),
            permits: Vec::new(),
            bytes: 0,
            units: 0,
        }
    }

    /// Bytes currently held by all requests (for status and tests).
    pub fn in_use(&self) -> u64 {
        (self.units - self.sem.available_permits() as u64) * UNIT
    }

    fn busy(&self) -> IngestError {
        IngestError::Busy {
            retry_after: Duration::from_secs(1),
        }
    }
}

impl Held {
    /// Units still to take so that `bytes` more are covered.
    fn need(&mut self, bytes: u64) -> u64 {
        self.bytes += bytes;
        let want = self.bytes.div_ceil(UNIT);
        want.saturating_sub(self.units)
    }

    /// Takes room for `bytes` more, waiting asynchronously.
    ///
    /// # Errors
    /// [`IngestError::Busy`] when no room came free within the wait.
    pub async fn take(&mut self, bytes: u64) -> Result<(), IngestError> {
        let n = self.need(bytes);
        if n == 0 {
            return Ok(());
        }
        if self.units + n <= self.budget.units {
            let sem = self.budget.sem.clone();
            if let Ok(Ok(p)) =
                tokio::time::timeout(self.budget.wait, sem.acquire_many_owned(n as u32)).await
            {
                self.permits.push(p);
                self.units += n;
                return Ok(());
            }
        }
        self.bytes -= bytes;
        Err(self.budget.busy())
    }

    /// Like [`Held::take`] from a blocking thread (one inside a Tokio runtime,
    /// as `spawn_blocking` provides).
    ///
    /// # Errors
    /// As [`Held::take`].
    pub fn take_blocking(&mut self, bytes: u64) -> Result<(), IngestError> {
        let n = self.need(bytes);
        if n == 0 {
            return Ok(());
        }
        if let Ok(p) = self.budget.sem.clone().try_acquire_many_owned(n as u32) {
            self.permits.push(p);
            self.units += n;
            return Ok(());
        }
        self.bytes -= bytes;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| self.budget.busy())?;
        let mut me = std::mem::replace(self, self.budget.hold());
        let r = handle.block_on(async {
            let r = me.take(bytes).await;
            (me, r)
        });
        *self = r.0;
        r.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_get_their_own_mappings_only_during_a_large_backlog() {
        assert_eq!(threshold_for(0), MMAP_THRESHOLD_LIGHT_BYTES);
        assert_eq!(
            threshold_for(LARGE_BACKLOG_RECORDS - 1),
            MMAP_THRESHOLD_LIGHT_BYTES
        );
        assert_eq!(threshold_for(LARGE_BACKLOG_RECORDS), MMAP_THRESHOLD_BYTES);
        assert_eq!(threshold_for(10_000_000), MMAP_THRESHOLD_BYTES);
    }

    #[test]
    fn the_heap_is_trimmed_only_when_there_is_enough_to_hand_back() {
        assert!(worth_trimming(100 * 1024 * 1024));
        assert!(worth_trimming(TRIM_FREE_BYTES));
        assert!(!worth_trimming(TRIM_FREE_BYTES - 1));
    }

    #[test]
    fn glibc_tunables_set_by_the_operator_are_left_alone() {
        assert_eq!(
            allocator_settings(""),
            (Some(MMAP_THRESHOLD_BYTES), Some(4))
        );
        assert_eq!(
            allocator_settings("glibc.malloc.mmap_threshold=262144"),
            (None, Some(4))
        );
        assert_eq!(
            allocator_settings("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=2"),
            (Some(MMAP_THRESHOLD_BYTES), None)
        );
        // Another tunable whose name merely contains ours changes nothing.
        assert_eq!(
            allocator_settings("glibc.malloc.mmap_threshold_max=1"),
            (Some(MMAP_THRESHOLD_BYTES), Some(4))
        );
    }

    #[tokio::test]
    async fn requests_share_the_budget_and_the_late_one_waits_then_is_refused() {
        let b = Budget::new(10 * UNIT, Duration::from_millis(50));
        let mut one = b.hold();
        one.take(6 * UNIT).await.unwrap();
        let mut two = b.hold();
        assert!(matches!(
            two.take(6 * UNIT).await,
            Err(IngestError::Busy { .. })
        ));
        assert_eq!(b.in_use(), 6 * UNIT);
        drop(one);
        two.take(6 * UNIT).await.unwrap();
        assert_eq!(b.in_use(), 6 * UNIT);
        // More than the whole budget is refused at once.
        let mut three = b.hold();
        assert!(three.take(11 * UNIT).await.is_err());
        drop(two);
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_takes_count_in_the_same_budget() {
        let b = Budget::new(4 * UNIT, Duration::from_millis(50));
        let b2 = b.clone();
        let held = tokio::task::spawn_blocking(move || {
            let mut h = b2.hold();
            for _ in 0..3 * UNIT {
                h.take_blocking(1).unwrap();
            }
            h
        })
        .await
        .unwrap();
        assert_eq!(b.in_use(), 3 * UNIT);
        let b3 = b.clone();
        let refused = tokio::task::spawn_blocking(move || b3.hold().take_blocking(2 * UNIT))
            .await
            .unwrap();
        assert!(refused.is_err());
        drop(held);
        assert_eq!(b.in_use(), 0);
    }
}

/// Hands memory the allocator keeps but no longer uses back to the
/// operating system (glibc's `malloc_trim`), checked every `every` until
/// `stop`: after a burst or a drained backlog, the heap's freed pages
/// otherwise stay resident (issue 23: 140 MiB an idle minute after a 10 M
/// record drain). At most every [`TRIM_EVERY`], and only when the heap's
/// free chunks hold at least [`TRIM_FREE_BYTES`] ([`worth_trimming`]):
/// trimming under load hands back pages the next requests fault in again,
/// and every 5 s it cost a saturated relay ~3–4% more CPU per record
/// (docs/PERFORMANCE.md). A trim runs on a blocking thread. A no-op on
/// other C libraries.
///
/// At the same pace it sets glibc's mmap threshold from `backlog_records`
/// (the largest sink backlog): [`threshold_for`].
pub async fn hand_back_memory(
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    backlog_records: impl Fn() -> u64 + Send + 'static,
) {
    let operator_threshold =
        allocator_settings(&std::env::var("GLIBC_TUNABLES").unwrap_or_default())
            .0
            .is_none();
    // What tune_allocator set at startup.
    let mut threshold = MMAP_THRESHOLD_BYTES;
    let mut last_trim = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let wanted = threshold_for(backlog_records());
        let set = (!operator_threshold && wanted != threshold).then_some(wanted);
        if let Some(t) = set {
            threshold = t;
            tracing::debug!(mmap_threshold = t, "allocator mmap threshold changed");
        }
        let may_trim = last_trim.elapsed() >= TRIM_EVERY;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters (glibc allows it
        // at any time, under its arena lock); mallinfo2 only reads the
        // allocator's statistics; malloc_trim only returns free pages of the
        // heap to the OS.
        if let Ok(true) = tokio::task::spawn_blocking(move || unsafe {
            if let Some(t) = set {
                libc::mallopt(libc::M_MMAP_THRESHOLD, t);
            }
            let trim = may_trim && worth_trimming(libc::mallinfo2().fordblks as u64);
            if trim {
                libc::malloc_trim(0);
            }
            trim
        })
        .await
        {
            last_trim = std::time::Instant::now();
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        let _ = (set, may_trim, &mut last_trim);
    }
}

/// A sink backlog from which sled's copies of undelivered frames are many
/// enough to fragment an arena (issue 23's outage: 10 M records).
const LARGE_BACKLOG_RECORDS: u64 = 2_000_000;

/// glibc's mmap threshold without a large backlog: buffers up to this size
/// come from the arenas, reused without a system call or a page fault.
const MMAP_THRESHOLD_LIGHT_BYTES: i32 = 256 * 1024;

/// The mmap threshold for a largest sink backlog of `backlog_records`:
/// [`MMAP_THRESHOLD_BYTES`] while it is large (frame copies then get their
/// own mappings and leave no fragmented arena behind when the backlog
/// drains), [`MMAP_THRESHOLD_LIGHT_BYTES`] otherwise (16 KiB cost a
/// saturated relay ~2–5% more CPU per record in mappings, page faults and
/// TLB shootdowns).
fn threshold_for(backlog_records: u64) -> i32 {
    if backlog_records >= LARGE_BACKLOG_RECORDS {
        MMAP_THRESHOLD_BYTES
    } else {
        MMAP_THRESHOLD_LIGHT_BYTES
    }
}

/// Free heap below which a trim is not worth its page faults.
const TRIM_FREE_BYTES: u64 = 2 * 1024 * 1024;

/// Trims at most this often (a drained backlog's memory is back within it).
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the heap's `free` bytes (in free chunks) are worth handing back.
fn worth_trimming(free: u64) -> bool {
    free >= TRIM_FREE_BYTES
}

/// glibc's mmap threshold: allocations from this size on get their own
/// mapping, returned to the operating system when freed.
///
/// Why 16 KiB and not 256 KiB: during an outage sled holds a copy of every
/// undelivered frame (tens of KiB each, ~96 MiB for 10 M records) in the
/// writer thread's arena, which then grows past 100 MiB; the ~2 MiB of
/// long-lived allocations made between those copies (sled's nodes and page
/// entries) pin ~6 MiB of that arena's pages after the drain, which
/// `malloc_trim` cannot return (heap profile in docs/PERFORMANCE.md). Served
/// by mmap, freed frame copies go back at once and the arena stays small.
const MMAP_THRESHOLD_BYTES: i32 = 16 * 1024;

/// Makes freed request buffers and frame copies go back to the operating
/// system, so the process's resident set follows the budget instead of its
/// high-water mark. glibc raises its mmap threshold after each large free
/// (up to 32 MiB), and then serves later bodies from per-thread arenas that
/// it keeps; fixing the threshold (`MMAP_THRESHOLD_BYTES`) keeps every
/// large buffer in its own mapping, and four arenas bound what the blocking
/// threads keep. glibc's own tunables win: with
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=N` (or `…arena_max=N`) in the
/// environment, that parameter is left as the operator set it. Called once
/// by the binary at startup; a no-op on other C libraries.
pub fn tune_allocator() {
    let (threshold, arenas) =
        allocator_settings(&std::env::var("GLIBC_TUNABLES").unwrap_or_default());
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before
    // any thread is started.
    unsafe {
        if let Some(t) = threshold {
            libc::mallopt(libc::M_MMAP_THRESHOLD, t);
        }
        if let Some(a) = arenas {
            libc::mallopt(libc::M_ARENA_MAX, a);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (threshold, arenas);
}

/// What [`tune_allocator`] sets given `GLIBC_TUNABLES` (`name=value` pairs
/// separated by `:`): the mmap threshold and the arena count, each `None`
/// where the operator set glibc's own tunable.
fn allocator_settings(tunables: &str) -> (Option<i32>, Option<i32>) {
    let set_by_operator = |name: &str| {
        tunables
            .split(':')
            .any(|t| t.trim().starts_with(&format!("glibc.malloc.{name}=")))
    };
    (
        (!set_by_operator("mmap_threshold")).then_some(MMAP_THRESHOLD_BYTES),
        (!set_by_operator("arena_max")).then_some(4),
    )
}
