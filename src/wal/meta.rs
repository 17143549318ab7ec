//! Small durable facts kept beside the log (format version, the Timescale
//! sink's dimension-ID cache). Keys are namespaced by their owner, e.g.
//! `timescale/dim/…`.

use super::{durability::Persist, WalError};
use std::sync::Arc;

/// Handle to the meta tree.
#[derive(Clone)]
pub struct Meta {
    pub(crate) tree: sled::Tree,
    pub(crate) persist: Arc<Persist>,
}

impl Meta {
    /// The value stored under `key`.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WalError> {
        Ok(self
            .tree
            .get(key)
            .map_err(WalError::sled("meta get"))?
            .map(|v| v.to_vec()))
    }

    /// Stores `value` under `key`.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), WalError> {
        self.tree
            .insert(key, value)
            .map_err(WalError::sled("meta insert"))?;
        self.persist.meta_written()
    }

    /// Stores `value` under `key` as progress that a resumed operation
    /// trusts (a rewind's last confirmed frame): written out of the process
    /// before this returns, so a crash of the process keeps it
    /// (`wal/durability.rs` says why and what it costs).
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure; a failed write-out fails the log.
    pub fn insert_progress(&self, key: &[u8], value: &[u8]) -> Result<(), WalError> {
        self.tree
            .insert(key, value)
            .map_err(WalError::sled("meta insert"))?;
        self.persist.rewind_progressed()
    }

    /// Removes `key`.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn remove(&self, key: &[u8]) -> Result<(), WalError> {
        self.tree
            .remove(key)
            .map_err(WalError::sled("meta remove"))?;
        self.persist.meta_written()
    }

    /// Every entry whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, WalError> {
        self.tree
            .scan_prefix(prefix)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .map_err(WalError::sled("meta scan"))
    }

    /// Removes every entry whose key starts with `prefix`; returns how many.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn remove_prefix(&self, prefix: &[u8]) -> Result<usize, WalError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.tree.scan_prefix(prefix).keys() {
            batch.remove(kv.map_err(WalError::sled("meta scan"))?);
            n += 1;
        }
        self.tree
            .apply_batch(batch)
            .map_err(WalError::sled("meta remove"))?;
        self.persist.meta_written()?;
        Ok(n)
    }
}
