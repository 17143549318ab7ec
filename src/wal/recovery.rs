//! Opening the log. The startup sequence, in order:
//!
//! 1. Create the directory with mode 0700 (or tighten an existing one).
//! 2. Open sled with the page-cache bound, the segment size (an existing
//!    log's own, read from sled's `conf`; `wal.segment_bytes` for a new one)
//!    and the background flush period. sled replays its own log and
//!    discards a torn tail: that is sled's contract, tested once as such
//!    (`tests/crash.rs`), not re-implemented here.
//! 3. Check the format version in the meta tree: absent means a new log (the
//!    current version is written), newer than this build is an error.
//! 4. Load the totals record (`state.rs`). It is missing only in a new log.
//! 5. Reconcile the next sequence number with the last frame key (one O(log n)
//!    lookup): totals and frames change in one atomic batch, so a mismatch
//!    means outside interference; the frames win and a warning is logged.
//! 6. Read since which frame appends carry memos (`memo.rs`); a log without
//!    the key gets the next sequence number (1 for a new log): frames before
//!    it were written by a build without memos.
//!
//! What opening does **not** do: scan frames. Startup time does not grow with
//! the backlog. A frame that fails its CRC or does not decode is found by the
//! reader that reaches it, moved to the `quarantine` tree with its reason
//! (counted and logged), and reading continues; `walrelay wal verify` checks
//! every frame offline. Cursors of sinks that are no longer configured are
//! kept but do not hold truncation back.

use std::path::Path;

use super::frame::{key_seq, seq_key};
use super::state::{LogState, STATE_KEY};
use super::{WalConfig, WalError};

/// The format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
const VERSION_KEY: &[u8] = b"wal/format_version";
/// The first seq whose append could carry a memo (`memo.rs`).
const MEMOS_FROM_KEY: &[u8] = b"wal/memos_from_seq";

pub(crate) struct Store {
    pub db: sled::Db,
    pub frames: sled::Tree,
    pub cursors: sled::Tree,
    pub meta: sled::Tree,
    pub dead: sled::Tree,
    pub quarantine: sled::Tree,
    pub index: sled::Tree,
    pub memos: sled::Tree,
    pub memos_from: u64,
    pub retention: super::retention::Retention,
    pub state: LogState,
}

fn prepare_dir(dir: &Path) -> Result<(), WalError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| WalError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// sled releases its directory lock only when its background threads have
/// finished, shortly after the last handle is dropped; a reopen right after a
/// close (or a restart) can see the lock still held. Retry for up to 2 s with
/// growing waits; a lock held by another live process still fails after that.
/// sled reports the condition only as an I/O error text, hence the match.
fn open_with_lock_retry(cfg: &sled::Config) -> Result<sled::Db, WalError> {
    let mut wait = std::time::Duration::from_millis(10);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match cfg.open() {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(wait);
                wait = (wait * 2).min(std::time::Duration::from_millis(200));
            }
            other => return other.map_err(WalError::sled("open")),
        }
    }
}

/// The segment size an existing log was created with, from sled's own
/// `conf` file (`segment_size: N` on a line of its own); `None` for a new
/// log or an unreadable file (sled then judges it).
pub(crate) fn existing_segment_size(dir: &Path) -> Option<usize> {
    let conf = std::fs::read(dir.join("conf")).ok()?;
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|l| l.strip_prefix("segment_size: ")?.trim().parse().ok())
}

pub(crate) fn open_store(config: &WalConfig) -> Result<Store, WalError> {
    prepare_dir(&config.dir)?;
    // `segment_bytes` is fixed when a log is created: an existing log keeps
    // opening with its own, whatever the configured default is now.
    let segment_bytes = match existing_segment_size(&config.dir) {
        Some(existing) if existing != config.segment_bytes => {
            tracing::info!(
                existing,
                configured = config.segment_bytes,
                "the log keeps the segment size it was created with (wal.segment_bytes applies to new logs)"
            );
            existing
        }
        _ => config.segment_bytes,
    };
    let sled_config = sled::Config::new()
        .path(&config.dir)
        .cache_capacity(config.cache_bytes)
        .segment_size(segment_bytes)
        .flush_every_ms(Some(super::durability::Persist::background_flush_ms(
            config.durability,
        )))
        .mode(sled::Mode::HighThroughput);
    let db = open_with_lock_retry(&sled_config)?;
    let tree = |name: &'static str| db.open_tree(name).map_err(WalError::sled("open tree"));
    let (frames, cursors, meta, dead, quarantine, index) = (
        tree("frames")?,
        tree("cursors")?,
        tree("meta")?,
        tree("dead_letters")?,
        tree("quarantine")?,
        tree("frame_kinds")?,
    );
    let memos = tree("memos")?;

    match meta
        .get(VERSION_KEY)
        .map_err(WalError::sled("read version"))?
    {
        None => {
            meta.insert(VERSION_KEY, &FORMAT_VERSION.to_le_bytes())
                .map_err(WalError::sled("write version"))?;
        }
        Some(v) => {
            let found =
                u32::from_le_bytes(v.as_ref().try_into().map_err(|_| WalError::Corrupt {
                    what: "format version",
                    detail: format!("{} bytes", v.len()),
                })?);
            if found > FORMAT_VERSION {
                return Err(WalError::UnsupportedVersion {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
        }
    }

    let mut state = match frames
        .get(STATE_KEY)
        .map_err(WalError::sled("read totals"))?
    {
        Some(v) => LogState::decode(&v)?,
        None => LogState::default(),
    };
    let last = frames
        .range(seq_key(0)..)
        .next_back()
        .transpose()
        .map_err(WalError::sled("read last frame"))?
        .and_then(|(k, _)| key_seq(&k));
    if let Some(last) = last {
        if last >= state.next_seq {
            tracing::warn!(
                last_frame = last,
                next_seq = state.next_seq,
                "log totals behind the last frame; continuing after the last frame"
            );
            state.next_seq = last + 1;
        }
    }
    // Step 6: since which frame appends carry memos (`memo.rs`): 1 for a log
    // created by this build, the next frame for a log an older build wrote.
    let memos_from = match meta
        .get(MEMOS_FROM_KEY)
        .map_err(WalError::sled("read memos start"))?
    {
        Some(v) if v.len() == 8 => u64::from_le_bytes(v.as_ref().try_into().expect("8 bytes")),
        _ => {
            meta.insert(MEMOS_FROM_KEY, &state.next_seq.to_le_bytes())
                .map_err(WalError::sled("write memos start"))?;
            state.next_seq
        }
    };
    tracing::info!(
        dir = %config.dir.display(),
        frames = state.frames,
        records = state.records,
        bytes = state.bytes,
        next_seq = state.next_seq,
        "write-ahead log opened"
    );
    let retention = super::retention::Retention::open(
        &db,
        &meta,
        &frames,
        config.retain.on(),
        state.next_seq <= 1,
    )?;
    Ok(Store {
        retention,
        db,
        frames,
        cursors,
        meta,
        dead,
        quarantine,
        index,
        memos,
        memos_from,
        state,
    })
}
