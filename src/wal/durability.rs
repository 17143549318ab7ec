//! Every durability decision of the log, in one place. Nothing else in the
//! crate calls sled's `flush()`.
//!
//! | event                 | `sync`                     | `interval_ms = N`          |
//! |-----------------------|----------------------------|----------------------------|
//! | frames inserted       | flush, then acknowledge     | acknowledge; sled flushes every N ms |
//! | cursor advanced       | no flush (see below)        | no flush                   |
//! | dimension cache write | no flush (see below)        | no flush                   |
//! | dead letter written   | flush                       | flush                      |
//! | log closed            | flush                       | flush                      |
//!
//! Why cursor advances are not flushed: a lost advance only makes the sink see
//! the same frames again after a crash, and both sinks write idempotently. sled
//! recovers a prefix of its operations, so a cursor can never be durable while
//! the frames it points past are not. The background flusher (every second
//! under `sync`) bounds how much is redelivered.
//!
//! Why dimension-cache writes are not flushed: the cache is rebuilt from the
//! database on a miss; losing an entry costs one round trip.
//!
//! Why dead letters are flushed: the drainer advances its cursor right after
//! dead-lettering; the dead letter must not be the one thing a crash loses.

use super::{config::Durability, WalError};

pub(crate) struct Persist {
    db: sled::Db,
    policy: Durability,
}

impl Persist {
    pub(crate) fn new(db: sled::Db, policy: Durability) -> Self {
        Persist { db, policy }
    }

    /// sled's own background flush period for this policy.
    pub(crate) fn background_flush_ms(policy: Durability) -> u64 {
        match policy {
            Durability::Sync => 1000,
            Durability::Interval { interval_ms } => interval_ms,
        }
    }

    /// Called by the writer after inserting a group of frames and before
    /// acknowledging its producers.
    pub(crate) fn frames_inserted(&self) -> Result<(), WalError> {
        match self.policy {
            Durability::Sync => self.flush("flush after append"),
            Durability::Interval { .. } => Ok(()),
        }
    }

    /// Called after a sink's cursor moved forward.
    pub(crate) fn cursor_advanced(&self) -> Result<(), WalError> {
        Ok(())
    }

    /// Called after a meta entry (dimension cache) changed.
    pub(crate) fn meta_written(&self) -> Result<(), WalError> {
        Ok(())
    }

    /// Called after a dead letter was stored, before the caller moves on.
    pub(crate) fn dead_lettered(&self) -> Result<(), WalError> {
        self.flush("flush after dead letter")
    }

    /// Called when the log closes.
    pub(crate) fn closing(&self) -> Result<(), WalError> {
        self.flush("flush on close")
    }

    fn flush(&self, op: &'static str) -> Result<(), WalError> {
        self.db.flush().map(drop).map_err(WalError::sled(op))
    }
}
