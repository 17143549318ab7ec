//! Append memos: a small value an appender stores beside an append, read
//! back by commit time at startup. The ingest gate keeps the identity slots
//! an append took there (`ingest/identity.rs`), so that rebuilding its
//! window costs what the window holds, not a walk over the log's tail
//! (issue 23: restart cost independent of the backlog).
//!
//! Tree `memos`: key = commit time in ms (8 bytes, big-endian) ++ the
//! append's last frame seq (8 bytes, big-endian), value = the memo.
//!
//! Invariants:
//! - A memo is written in the same sled transaction as its frames (one per
//!   group commit, covered by the same flush): an append's frames never
//!   survive a crash without its memo. (Logs of older builds wrote it in a
//!   batch of its own just before; a memo whose frames were lost is
//!   harmless: its owner reads it as a slot taken.)
//! - Memos older than `retain_ms` (the identity window) are deleted by the
//!   writer, at most once a second; they are not counted against
//!   `max_bytes` (bounded by the window: 16 bytes per typed trade).
//! - Memos are independent of frames' truncation: a delivered frame's memo
//!   stays for the window, so the log no longer keeps delivered frames for
//!   the identity window's sake.

use std::sync::atomic::Ordering;

use super::{Shared, Wal, WalError};

/// The memo key of an append committed at `created_ms` ending at `seq`.
pub(super) fn key(created_ms: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&created_ms.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn created_ms(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(..8)?.try_into().ok()?))
}

impl Shared {
    /// Deletes memos committed before `now_ms - retain_ms`; at most once a
    /// second (the writer calls it after every group).
    pub(super) fn prune_memos(&self, now_ms: u64) -> Result<(), WalError> {
        let last = self.memos_pruned_ms.load(Ordering::Relaxed);
        if now_ms < last.saturating_add(1000) {
            return Ok(());
        }
        self.memos_pruned_ms.store(now_ms, Ordering::Relaxed);
        let cutoff = key(now_ms.saturating_sub(self.config.retain_ms), 0);
        let mut batch = sled::Batch::default();
        let mut any = false;
        for k in self.memos.range(..&cutoff[..]).keys() {
            batch.remove(k.map_err(WalError::sled("read memos"))?);
            any = true;
        }
        if any {
            self.memos
                .apply_batch(batch)
                .map_err(WalError::sled("prune memos"))?;
        }
        Ok(())
    }
}

impl Wal {
    /// The first frame whose append could carry a memo: 1 for a log this
    /// build created; frames before it were written by an older build.
    pub(crate) fn memos_from_seq(&self) -> u64 {
        self.inner.shared.memos_from
    }

    /// The memos committed at or after `cutoff_ms`, oldest first, with their
    /// commit times; read from the newest back, stopping once `max_bytes`
    /// of memos were read (the newest are kept).
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub(crate) fn memos_since(
        &self,
        cutoff_ms: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, sled::IVec)>, WalError> {
        let shared = &self.inner.shared;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for kv in shared.memos.range(&key(cutoff_ms, 0)[..]..).rev() {
            let (k, v) = kv.map_err(WalError::sled("read memos"))?;
            let Some(at) = created_ms(&k) else { continue };
            bytes += v.len();
            out.push((at, v));
            if bytes >= max_bytes {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::WalConfig;

    #[test]
    fn memos_are_read_by_commit_time_and_pruned_after_the_window() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut cfg = WalConfig::new(dir.path());
        cfg.retain_ms = 10_000;
        let wal = Wal::open(cfg.clone()).unwrap();
        let rec = |i: u64| {
            crate::record::Record::Trade(crate::record::Trade {
                venue: "V".into(),
                symbol: "S".into(),
                ts: 1_764_000_000_000_000_000 + i as i64,
                price: 1.0,
                quantity: 1.0,
                side: "buy".into(),
                trade_id: i.to_string().into(),
            })
        };
        for i in 0..3u64 {
            let mut payload = Vec::new();
            crate::record::encode_record(&rec(i), &mut payload).unwrap();
            let ends = vec![payload.len()];
            wal.append_encoded_with(payload, ends, 1, Some(vec![i as u8; 4]))
                .unwrap();
        }
        // One append without a memo.
        wal.append(&[rec(9)]).unwrap();
        let got = wal.memos_since(0, usize::MAX).unwrap();
        let values: Vec<Vec<u8>> = got.iter().map(|(_, v)| v.to_vec()).collect();
        assert_eq!(values, vec![vec![0; 4], vec![1; 4], vec![2; 4]]);
        // The byte bound keeps the newest.
        let newest = wal.memos_since(0, 4).unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].1.to_vec(), vec![2; 4]);
        // After a reopen, still there (written with their frames).
        drop(wal);
        let wal = Wal::open(cfg).unwrap();
        assert_eq!(wal.memos_since(0, usize::MAX).unwrap().len(), 3);
        // Pruning: everything committed before now - retain_ms goes.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let shared = &wal.inner.shared;
        shared.prune_memos(now).unwrap();
        assert_eq!(
            wal.memos_since(0, usize::MAX).unwrap().len(),
            3,
            "inside the window"
        );
        shared.memos_pruned_ms.store(0, Ordering::Relaxed);
        shared.prune_memos(now + 20_000).unwrap();
        assert!(wal.memos_since(0, usize::MAX).unwrap().is_empty());
    }
}
