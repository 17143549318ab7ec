//! Free space under the log. An append is refused while the filesystem
//! holding the log directory has less than `min_free_bytes` free, so that
//! sled itself never meets ENOSPC: sled keeps an I/O error for good, and a
//! write error on the log is fail-stop (`durability.rs`). Refusing early
//! keeps the relay running: drainers go on delivering and truncating (sled
//! reuses the freed space inside its file, which does not shrink), dead
//! letters go on being written, and appends resume by themselves as soon as
//! the filesystem has room again.
//!
//! A filesystem whose `statvfs` reports no size at all (0 total blocks:
//! FUSE and some network filesystems) has free space that cannot be
//! measured, which is not a full disk: appends are accepted there, the log
//! warns once that `min_free_bytes` cannot be enforced (at open, and
//! `walrelay check` says so), and sled's ENOSPC fail-stop still protects the
//! log.
//!
//! `statvfs` costs a system call; it is made at most every
//! [`RECHECK`] per log, and on every append while space is short (so the
//! relay notices freed space at once).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{WalConfig, WalError};

/// How long a reading of the free space is trusted while it is ample.
const RECHECK: Duration = Duration::from_millis(50);

/// What `statvfs` tells of the free space under a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Free {
    /// Bytes an unprivileged process may still write.
    Bytes(u64),
    /// The filesystem reports no size (0 total blocks): free space cannot
    /// be measured there.
    Unmeasurable,
}

impl Free {
    /// From `statvfs`'s total blocks, available blocks and fragment size.
    pub(crate) fn from_statvfs(blocks: u64, available: u64, fragment: u64) -> Free {
        if blocks == 0 {
            Free::Unmeasurable
        } else {
            Free::Bytes(available.saturating_mul(fragment))
        }
    }
}

/// The decision for an append of `bytes`: `Err(free)` when it would leave
/// less than `min_free` (0: no floor); free space that cannot be measured
/// is accepted, since it is not a full disk.
pub(crate) fn decide(free: Free, min_free: u64, bytes: u64) -> Result<(), u64> {
    match free {
        Free::Bytes(free) if min_free > 0 && free < min_free.saturating_add(bytes) => Err(free),
        _ => Ok(()),
    }
}

pub(crate) struct FreeSpace {
    /// The last reading and when it was taken.
    last: Mutex<Option<(Instant, Free)>>,
    /// Whether the "cannot be enforced" warning was logged.
    warned: AtomicBool,
}

impl FreeSpace {
    pub(crate) fn new() -> Self {
        FreeSpace {
            last: Mutex::new(None),
            warned: AtomicBool::new(false),
        }
    }

    /// At open: warns (once per log) when the floor cannot be enforced.
    pub(crate) fn startup(&self, config: &WalConfig) {
        if config.min_free_bytes > 0 {
            if let Ok(Free::Unmeasurable) = free_space(&config.dir) {
                self.warn_unmeasurable(config);
            }
        }
    }

    fn warn_unmeasurable(&self, config: &WalConfig) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                dir = %config.dir.display(),
                min_free_bytes = config.min_free_bytes,
                "the filesystem under the log reports no size (statvfs: 0 blocks): \
                 wal.min_free_bytes cannot be enforced there; appends are accepted \
                 and sled's ENOSPC fail-stop still protects the log"
            );
        }
    }

    /// `Ok` if an append of `bytes` leaves at least `min_free_bytes` free.
    pub(crate) fn check(&self, config: &WalConfig, bytes: u64) -> Result<(), WalError> {
        let min_free = config.min_free_bytes;
        if min_free == 0 {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        // A recent reading is trusted while it is ample (or unmeasurable).
        let trusted = |free: Free| match free {
            Free::Bytes(b) => b >= min_free.saturating_add(bytes) * 2,
            Free::Unmeasurable => true,
        };
        let free = match *last {
            Some((at, free)) if at.elapsed() < RECHECK && trusted(free) => free,
            _ => {
                let free = free_space(&config.dir).map_err(|source| WalError::Dir {
                    path: config.dir.clone(),
                    source,
                })?;
                if free == Free::Unmeasurable {
                    self.warn_unmeasurable(config);
                }
                *last = Some((Instant::now(), free));
                free
            }
        };
        decide(free, min_free, bytes).map_err(|free| WalError::DiskFull {
            path: PathBuf::from(&config.dir),
            free,
            min_free,
        })
    }
}

/// What `statvfs` says of the free space on the filesystem of `path`.
pub(crate) fn free_space(path: &std::path::Path) -> std::io::Result<Free> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Free::from_statvfs(
        st.f_blocks as u64,
        st.f_bavail as u64,
        st.f_frsize as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_below_the_floor_and_is_off_at_zero() {
        let dir = tempfile::TempDir::new().unwrap();
        let Free::Bytes(free) = free_space(dir.path()).unwrap() else {
            panic!("the test's temporary directory has a measurable size")
        };
        assert!(free > 0);
        let space = FreeSpace::new();
        let mut cfg = WalConfig::new(dir.path());
        cfg.min_free_bytes = 1;
        space.check(&cfg, 0).unwrap();
        cfg.min_free_bytes = u64::MAX / 4;
        let err = space.check(&cfg, 0).unwrap_err();
        assert!(
            matches!(err, WalError::DiskFull { .. }) && err.is_retriable(),
            "{err}"
        );
        cfg.min_free_bytes = 0;
        space.check(&cfg, u64::MAX).unwrap();
    }

    #[test]
    fn a_filesystem_without_a_size_is_not_full() {
        // FUSE and some network filesystems: statvfs reports 0 blocks.
        assert_eq!(Free::from_statvfs(0, 0, 4096), Free::Unmeasurable);
        assert_eq!(Free::from_statvfs(100, 10, 4096), Free::Bytes(40_960));
        // Unmeasurable: accepted whatever the floor and the size.
        assert_eq!(decide(Free::Unmeasurable, 64 << 20, u64::MAX), Ok(()));
        // A measured filesystem with 0 bytes free is full.
        assert_eq!(decide(Free::Bytes(0), 64 << 20, 1), Err(0));
        assert_eq!(decide(Free::from_statvfs(100, 0, 4096), 1, 0), Err(0));
        // Exactly at the floor passes, one byte under fails; 0 turns it off.
        assert_eq!(decide(Free::Bytes(100), 60, 40), Ok(()));
        assert_eq!(decide(Free::Bytes(99), 60, 40), Err(99));
        assert_eq!(decide(Free::Bytes(0), 0, 1 << 40), Ok(()));
    }
}
