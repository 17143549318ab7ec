//! Free space under the log. An append is refused while the filesystem
//! holding the log directory has less than `min_free_bytes` free, so that
//! sled itself never meets ENOSPC: sled keeps an I/O error for good, and a
//! write error on the log is fail-stop (`durability.rs`). Refusing early
//! keeps the relay running: drainers go on delivering and truncating (sled
//! reuses the freed space inside its file, which does not shrink), dead
//! letters go on being written, and appends resume by themselves as soon as
//! the filesystem has room again.
//!
//! `statvfs` costs a system call; it is made at most every
//! [`RECHECK`] per log, and on every append while space is short (so the
//! relay notices freed space at once).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{WalConfig, WalError};

/// How long a reading of the free space is trusted while it is ample.
const RECHECK: Duration = Duration::from_millis(50);

pub(crate) struct FreeSpace {
    last: Mutex<Option<(Instant, u64)>>,
}

impl FreeSpace {
    pub(crate) fn new() -> Self {
        FreeSpace {
            last: Mutex::new(None),
        }
    }

    /// `Ok` if an append of `bytes` leaves at least `min_free_bytes` free.
    pub(crate) fn check(&self, config: &WalConfig, bytes: u64) -> Result<(), WalError> {
        let min_free = config.min_free_bytes;
        if min_free == 0 {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let free = match *last {
            Some((at, free))
                if at.elapsed() < RECHECK && free >= min_free.saturating_add(bytes) * 2 =>
            {
                free
            }
            _ => {
                let free = free_bytes(&config.dir).map_err(|source| WalError::Dir {
                    path: config.dir.clone(),
                    source,
                })?;
                *last = Some((Instant::now(), free));
                free
            }
        };
        if free < min_free.saturating_add(bytes) {
            return Err(WalError::DiskFull {
                path: PathBuf::from(&config.dir),
                free,
                min_free,
            });
        }
        Ok(())
    }
}

/// Bytes an unprivileged process may still write on the filesystem of `path`.
fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_below_the_floor_and_is_off_at_zero() {
        let dir = tempfile::TempDir::new().unwrap();
        let free = free_bytes(dir.path()).unwrap();
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
}
