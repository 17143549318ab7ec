//! Dead letters: records a sink rejected permanently, kept with the reason.
//!
//! Key: `sink`, a 0 byte, the time in ns (big-endian i64 offset to sort), a
//! unique id (big-endian u64) — so entries list per sink, oldest first. Value:
//! the fields below, encoded with bincode; the record in its log encoding.

use std::sync::Arc;

use bincode::{Decode, Encode};

use super::{durability::Persist, WalError};
use crate::record::{decode_record, encode_record, now_ns, Record};

/// One permanently rejected record.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Opaque key, for `take` and `remove`.
    pub id: Vec<u8>,
    pub sink: String,
    pub record: Record,
    /// The sink's error text (server message, SQLSTATE).
    pub error: String,
    /// Delivery attempts made before giving up.
    pub attempts: u32,
    /// When it was dead-lettered, ns since epoch.
    pub at_ns: i64,
}

#[derive(Encode, Decode)]
struct Stored {
    error: String,
    attempts: u32,
    at_ns: i64,
    record: Vec<u8>,
}

/// Handle to the dead-letter store.
#[derive(Clone)]
pub struct DeadLetters {
    pub(crate) tree: sled::Tree,
    pub(crate) db: sled::Db,
    pub(crate) persist: Arc<Persist>,
}

fn prefix(sink: Option<&str>) -> Vec<u8> {
    match sink {
        Some(s) => {
            let mut p = s.as_bytes().to_vec();
            p.push(0);
            p
        }
        None => Vec::new(),
    }
}

impl DeadLetters {
    /// Stores `record` as rejected by `sink`, durably, before returning.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure; the caller must then not advance its cursor.
    pub fn put(
        &self,
        sink: &str,
        record: &Record,
        error: &str,
        attempts: u32,
    ) -> Result<(), WalError> {
        let at_ns = now_ns();
        let mut key = prefix(Some(sink));
        key.extend_from_slice(&((at_ns as u64) ^ (1 << 63)).to_be_bytes());
        let id = self
            .db
            .generate_id()
            .map_err(WalError::sled("dead letter id"))?;
        key.extend_from_slice(&id.to_be_bytes());
        let mut rec = Vec::new();
        encode_record(record, &mut rec)?;
        let value = bincode::encode_to_vec(
            Stored {
                error: error.to_string(),
                attempts,
                at_ns,
                record: rec,
            },
            bincode::config::standard(),
        )
        .map_err(|e| WalError::Corrupt {
            what: "dead letter",
            detail: e.to_string(),
        })?;
        self.tree
            .insert(key, value)
            .map_err(WalError::sled("dead letter insert"))?;
        self.persist.dead_lettered()
    }

    /// How many dead letters `sink` has (all sinks with `None`).
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn count(&self, sink: Option<&str>) -> Result<u64, WalError> {
        if sink.is_none() {
            return Ok(self.tree.len() as u64);
        }
        let mut n = 0;
        for k in self.tree.scan_prefix(prefix(sink)).keys() {
            k.map_err(WalError::sled("dead letter scan"))?;
            n += 1;
        }
        Ok(n)
    }

    /// Up to `limit` dead letters of `sink` (all sinks with `None`), oldest first per sink.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure, [`WalError::Corrupt`] for an unreadable entry.
    pub fn list(&self, sink: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, WalError> {
        self.tree
            .scan_prefix(prefix(sink))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(WalError::sled("dead letter scan"))?;
                parse(&k, &v)
            })
            .collect()
    }

    /// Removes and returns the dead letter `id` (to replay it into the log).
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn take(&self, id: &[u8]) -> Result<Option<DeadLetter>, WalError> {
        let old = self
            .tree
            .remove(id)
            .map_err(WalError::sled("dead letter remove"))?;
        let out = old.map(|v| parse(id, &v)).transpose()?;
        self.persist.dead_lettered()?;
        Ok(out)
    }

    /// Deletes every dead letter of `sink` (all with `None`); returns how many.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn purge(&self, sink: Option<&str>) -> Result<u64, WalError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for k in self.tree.scan_prefix(prefix(sink)).keys() {
            batch.remove(k.map_err(WalError::sled("dead letter scan"))?);
            n += 1;
        }
        self.tree
            .apply_batch(batch)
            .map_err(WalError::sled("dead letter purge"))?;
        self.persist.dead_lettered()?;
        Ok(n)
    }
}

fn parse(key: &[u8], value: &[u8]) -> Result<DeadLetter, WalError> {
    let corrupt = |detail: String| WalError::Corrupt {
        what: "dead letter",
        detail,
    };
    let nul = key
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| corrupt("key without sink".into()))?;
    let sink = String::from_utf8_lossy(&key[..nul]).into_owned();
    let (s, _): (Stored, usize) = bincode::decode_from_slice(value, bincode::config::standard())
        .map_err(|e| corrupt(e.to_string()))?;
    let (record, _) = decode_record(&s.record).map_err(|e| corrupt(e.to_string()))?;
    Ok(DeadLetter {
        id: key.to_vec(),
        sink,
        record,
        error: s.error,
        attempts: s.attempts,
        at_ns: s.at_ns,
    })
}
