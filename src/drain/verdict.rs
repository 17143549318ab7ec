//! What the bisection of one delivery found, record by record, and how the
//! delivery is settled. Both sinks bisect a refused batch down to single
//! records; this is the one place that decides what their findings mean.
//!
//! Invariants:
//! - A record refused alone for a data reason is dead-lettered with it.
//! - A record refused alone with an error of unknown class is dead-lettered
//!   only if other records of the same delivery were written: one bad record
//!   never holds the rest hostage.
//! - When nothing of the delivery was written and single records keep failing
//!   alike, no record is to blame: the first such error is returned and the
//!   delivery confirms nothing (the drainer treats it by its class).

use std::fmt::Display;

use crate::record::Record;
use crate::wal::{DeadLetters, WalError};

/// Unclassified errors on single records tolerated while nothing of the
/// delivery was written, before they are taken as not about the data.
const MAX_SUSPECTS_WITHOUT_WRITES: usize = 8;

/// What the bisection of one delivery found (indices into the batch).
pub(crate) struct Found<E> {
    /// Records refused for a data reason, with it.
    pub rejected: Vec<(usize, String)>,
    /// Records refused alone with an error of unknown class.
    suspects: Vec<(usize, E)>,
    /// Records written.
    pub written: usize,
}

impl<E> Default for Found<E> {
    fn default() -> Self {
        Found {
            rejected: Vec::new(),
            suspects: Vec::new(),
            written: 0,
        }
    }
}

impl<E: Display + From<WalError>> Found<E> {
    /// Notes record `i` refused alone with an error of unknown class.
    ///
    /// # Errors
    /// The error itself when nothing of the delivery has been written and
    /// enough single records already failed alike: stop bisecting.
    pub fn suspect(&mut self, i: usize, e: E) -> Result<(), E> {
        if self.written == 0 && self.suspects.len() >= MAX_SUSPECTS_WITHOUT_WRITES {
            return Err(e);
        }
        self.suspects.push((i, e));
        Ok(())
    }

    /// Settles the delivery: dead-letters what was refused (one atomic write
    /// and one flush, off the async workers) and returns how many.
    ///
    /// # Errors
    /// The first unclassified error when it hit every record it met (nothing
    /// written); the dead-letter store's failure otherwise.
    pub async fn settle(
        self,
        sink: &'static str,
        batch: &[Record],
        dead: &DeadLetters,
        attempts: u32,
    ) -> Result<usize, E> {
        let Found {
            mut rejected,
            suspects,
            written,
        } = self;
        if let Some((_, first)) = suspects.first() {
            if written == 0 {
                // It hit every record it met: not about the data.
                let (_, e) = suspects.into_iter().next().expect("first exists");
                return Err(e);
            }
            tracing::warn!(sink = sink, records = suspects.len(), written, error = %first, "an unclassified error hit single records while the rest were written: dead-lettering them");
            rejected.extend(suspects.into_iter().map(|(i, e)| {
                (
                    i,
                    format!("{e} (an error of unknown class that refused this record alone while {written} others of its batch were written)"),
                )
            }));
        }
        let items: Vec<(Record, String)> = rejected
            .iter()
            .map(|(i, reason)| (batch[*i].clone(), reason.clone()))
            .collect();
        dead.put_many_async(sink, items, attempts).await?;
        for (i, reason) in &rejected {
            tracing::warn!(sink = sink, kind = %batch[*i].kind(), reason = %reason, "record dead-lettered");
        }
        Ok(rejected.len())
    }
}
