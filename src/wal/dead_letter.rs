//! Dead letters: records a sink rejected permanently, kept with the reason.
//!
//! Key: `sink`, a 0 byte, the time in ns (big-endian i64 offset to sort), a
//! unique id (big-endian u64) — so entries list per sink, oldest first. Value:
//! the fields below, encoded with bincode; the record in its log encoding.
//!
//! Totals: one more key in the same tree, `0xFF "totals"` (a sink name is
//! UTF-8 and never starts with 0xFF, so it sorts after every entry and no
//! scan of entries meets it), holds per sink the entries, their bytes (key +
//! value) and how many were dropped for the budget. It changes in the same
//! atomic sled batch as the entries, so `count` and `/metrics` read counters
//! instead of scanning, and the totals cannot drift across a crash. A log
//! written before the totals existed is counted once, when first opened.
//!
//! Budget: entries may hold at most `wal.dead_letter_max_bytes` (their own
//! bound, next to the frames' `max_bytes`). A put that would exceed it first
//! deletes the oldest entries of the same sink (the one producing the flood),
//! then the oldest of other sinks, in the same batch, and counts every one
//! dropped (`walrelay_dead_letters_dropped_total`, a warning in the log). The
//! newest dead letters are kept because they describe the current problem.
//!
//! Writes flush (`durability.rs`), so async callers use
//! [`DeadLetters::put_many_async`], which runs them on tokio's blocking pool,
//! one flush per delivery rather than per record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bincode::{Decode, Encode};

use super::{durability::Persist, WalError};
use crate::record::{decode_record, encode_record, now_ns, Record};

/// Key of the totals entry (sorts after every dead letter).
const TOTALS_KEY: &[u8] = b"\xFFtotals";

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

/// Counters of one sink's dead letters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
pub struct DeadLetterTotals {
    /// Entries stored now.
    pub count: u64,
    /// Bytes they hold (key + value).
    pub bytes: u64,
    /// Entries ever deleted to keep within the budget.
    pub dropped: u64,
}

/// Shared by every handle of one log: the totals and the writers' lock.
pub(crate) struct Book {
    max_bytes: u64,
    totals: Mutex<BTreeMap<String, DeadLetterTotals>>,
}

impl Book {
    /// Reads the totals entry, or counts the entries once if there is none.
    pub(crate) fn load(tree: &sled::Tree, max_bytes: u64) -> Result<Book, WalError> {
        let totals = match tree
            .get(TOTALS_KEY)
            .map_err(WalError::sled("read dead-letter totals"))?
        {
            Some(v) => {
                bincode::decode_from_slice(&v, bincode::config::standard())
                    .map_err(|e| WalError::Corrupt {
                        what: "dead-letter totals",
                        detail: e.to_string(),
                    })?
                    .0
            }
            None => {
                let mut totals: BTreeMap<String, DeadLetterTotals> = BTreeMap::new();
                for kv in tree.range(..TOTALS_KEY) {
                    let (k, v) = kv.map_err(WalError::sled("count dead letters"))?;
                    let t = totals.entry(sink_of(&k)?).or_default();
                    t.count += 1;
                    t.bytes += (k.len() + v.len()) as u64;
                }
                tree.insert(TOTALS_KEY, encode_totals(&totals)?)
                    .map_err(WalError::sled("write dead-letter totals"))?;
                totals
            }
        };
        Ok(Book {
            max_bytes,
            totals: Mutex::new(totals),
        })
    }

    /// Dead letters stored, all sinks.
    pub(crate) fn count_all(&self) -> u64 {
        self.lock().values().map(|t| t.count).sum()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, DeadLetterTotals>> {
        // Totals are replaced only after their batch applied: a panic leaves them consistent.
        self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn encode_totals(t: &BTreeMap<String, DeadLetterTotals>) -> Result<Vec<u8>, WalError> {
    bincode::encode_to_vec(t, bincode::config::standard()).map_err(|e| WalError::Corrupt {
        what: "dead-letter totals",
        detail: e.to_string(),
    })
}

fn sink_of(key: &[u8]) -> Result<String, WalError> {
    let nul = key.iter().position(|b| *b == 0).ok_or(WalError::Corrupt {
        what: "dead letter",
        detail: "key without sink".into(),
    })?;
    Ok(String::from_utf8_lossy(&key[..nul]).into_owned())
}

/// Handle to the dead-letter store.
#[derive(Clone)]
pub struct DeadLetters {
    pub(crate) tree: sled::Tree,
    pub(crate) db: sled::Db,
    pub(crate) persist: Arc<Persist>,
    pub(crate) book: Arc<Book>,
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
    /// Entries of `sink` (all sinks with `None`), oldest first per sink;
    /// never the totals entry.
    fn scan(&self, sink: Option<&str>) -> sled::Iter {
        match sink {
            Some(_) => self.tree.scan_prefix(prefix(sink)),
            None => self.tree.range(..TOTALS_KEY),
        }
    }

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
        self.put_many(sink, &[(record.clone(), error.to_string())], attempts)
    }

    /// Stores several records rejected by `sink` (each with its reason) in one
    /// atomic batch and one flush, dropping the oldest entries if the budget
    /// requires (see the module doc). Blocks on the flush.
    ///
    /// # Errors
    /// [`WalError::Sled`] or [`WalError::Failed`] on I/O failure: nothing of
    /// the call is stored, and the caller must not advance its cursor.
    pub fn put_many(
        &self,
        sink: &str,
        items: &[(Record, String)],
        attempts: u32,
    ) -> Result<(), WalError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut entries = Vec::with_capacity(items.len());
        for (record, error) in items {
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
                    error: error.clone(),
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
            entries.push((key, value));
        }
        let size = |(k, v): &(Vec<u8>, Vec<u8>)| (k.len() + v.len()) as u64;
        let mut added: u64 = entries.iter().map(size).sum();
        // A call larger than the whole budget keeps its newest entries only;
        // the older ones are counted as dropped without being stored.
        let mut dropped = 0u64;
        let mut skip = 0;
        while added > self.book.max_bytes && skip + 1 < entries.len() {
            added -= size(&entries[skip]);
            skip += 1;
            dropped += 1;
        }
        entries.drain(..skip);

        let mut guard = self.book.lock();
        let mut totals = guard.clone();
        totals.entry(sink.to_string()).or_default().dropped += dropped;
        let mut batch = sled::Batch::default();
        // Room first: oldest of this sink, then of the others.
        let mut held: u64 = totals.values().map(|t| t.bytes).sum();
        if held + added > self.book.max_bytes {
            let own = self.tree.scan_prefix(prefix(Some(sink)));
            let rest = self.tree.range(..TOTALS_KEY);
            for kv in own.chain(rest) {
                if held + added <= self.book.max_bytes {
                    break;
                }
                let (k, v) = kv.map_err(WalError::sled("dead letter scan"))?;
                let t = totals.entry(sink_of(&k)?).or_default();
                if t.count == 0 {
                    continue; // already dropped by the first pass over this sink
                }
                let bytes = (k.len() + v.len()) as u64;
                t.count -= 1;
                t.bytes = t.bytes.saturating_sub(bytes);
                t.dropped += 1;
                held = held.saturating_sub(bytes);
                dropped += 1;
                batch.remove(k);
            }
        }
        let t = totals.entry(sink.to_string()).or_default();
        t.count += entries.len() as u64;
        t.bytes += added;
        for (k, v) in entries {
            batch.insert(k, v);
        }
        batch.insert(TOTALS_KEY, encode_totals(&totals)?);
        self.tree
            .apply_batch(batch)
            .map_err(WalError::sled("dead letter insert"))?;
        *guard = totals;
        drop(guard);
        if dropped > 0 {
            tracing::warn!(
                sink,
                dropped,
                max_bytes = self.book.max_bytes,
                "dead-letter budget full: dropped the oldest dead letters"
            );
        }
        self.persist.dead_lettered()
    }

    /// [`DeadLetters::put_many`] from async code: runs on tokio's blocking
    /// pool so the flush never stalls an async worker.
    ///
    /// # Errors
    /// As [`DeadLetters::put_many`].
    pub async fn put_many_async(
        &self,
        sink: &'static str,
        items: Vec<(Record, String)>,
        attempts: u32,
    ) -> Result<(), WalError> {
        if items.is_empty() {
            return Ok(());
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.put_many(sink, &items, attempts))
            .await
            .map_err(|e| WalError::Corrupt {
                what: "dead-letter writer task",
                detail: e.to_string(),
            })?
    }

    /// How many dead letters `sink` has (all sinks with `None`), from the
    /// counters: no scan.
    ///
    /// # Errors
    /// None today; kept fallible for callers.
    pub fn count(&self, sink: Option<&str>) -> Result<u64, WalError> {
        let totals = self.book.lock();
        Ok(match sink {
            Some(s) => totals.get(s).map_or(0, |t| t.count),
            None => totals.values().map(|t| t.count).sum(),
        })
    }

    /// Counts by scanning the keys, as `count` did before the counters
    /// existed; kept only so `benches/wal.rs` can measure the difference.
    #[doc(hidden)]
    pub fn count_by_scan(&self, sink: Option<&str>) -> Result<u64, WalError> {
        let mut n = 0;
        for k in self.scan(sink).keys() {
            k.map_err(WalError::sled("dead letter scan"))?;
            n += 1;
        }
        Ok(n)
    }

    /// The counters of every sink that has or had dead letters.
    pub fn totals(&self) -> BTreeMap<String, DeadLetterTotals> {
        self.book.lock().clone()
    }

    /// The budget in bytes (`wal.dead_letter_max_bytes`).
    pub fn max_bytes(&self) -> u64 {
        self.book.max_bytes
    }

    /// Up to `limit` dead letters of `sink` (all sinks with `None`), oldest first per sink.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure, [`WalError::Corrupt`] for an unreadable entry.
    pub fn list(&self, sink: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, WalError> {
        self.scan(sink)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(WalError::sled("dead letter scan"))?;
                parse(&k, &v)
            })
            .collect()
    }

    /// The dead letter `id`, if it is there (one lookup, no scan).
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure, [`WalError::Corrupt`] for an unreadable entry.
    pub fn get(&self, id: &[u8]) -> Result<Option<DeadLetter>, WalError> {
        if id.first() == Some(&0xFF) {
            return Ok(None);
        }
        self.tree
            .get(id)
            .map_err(WalError::sled("dead letter read"))?
            .map(|v| parse(id, &v))
            .transpose()
    }

    /// Removes and returns the dead letter `id` (to replay it into the log).
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn take(&self, id: &[u8]) -> Result<Option<DeadLetter>, WalError> {
        if id.first() == Some(&0xFF) {
            return Ok(None);
        }
        let mut guard = self.book.lock();
        let Some(v) = self
            .tree
            .get(id)
            .map_err(WalError::sled("dead letter read"))?
        else {
            return Ok(None);
        };
        let out = parse(id, &v)?;
        let mut totals = guard.clone();
        let t = totals.entry(out.sink.clone()).or_default();
        t.count = t.count.saturating_sub(1);
        t.bytes = t.bytes.saturating_sub((id.len() + v.len()) as u64);
        let mut batch = sled::Batch::default();
        batch.remove(id);
        batch.insert(TOTALS_KEY, encode_totals(&totals)?);
        self.tree
            .apply_batch(batch)
            .map_err(WalError::sled("dead letter remove"))?;
        *guard = totals;
        drop(guard);
        self.persist.dead_lettered()?;
        Ok(Some(out))
    }

    /// Deletes every dead letter of `sink` (all with `None`); returns how many.
    ///
    /// # Errors
    /// [`WalError::Sled`] on I/O failure.
    pub fn purge(&self, sink: Option<&str>) -> Result<u64, WalError> {
        let mut guard = self.book.lock();
        let mut totals = guard.clone();
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.scan(sink) {
            let (k, v) = kv.map_err(WalError::sled("dead letter scan"))?;
            let t = totals.entry(sink_of(&k)?).or_default();
            t.count = t.count.saturating_sub(1);
            t.bytes = t.bytes.saturating_sub((k.len() + v.len()) as u64);
            batch.remove(k);
            n += 1;
        }
        batch.insert(TOTALS_KEY, encode_totals(&totals)?);
        self.tree
            .apply_batch(batch)
            .map_err(WalError::sled("dead letter purge"))?;
        *guard = totals;
        drop(guard);
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
