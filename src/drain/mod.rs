//! Drainers: replay the log into the sinks.
//!
//! Invariant: a sink's cursor advances only past frames whose every record the
//! sink has confirmed, either written or moved to the dead-letter store. A
//! failure that confirms nothing leaves the cursor where it was; the same frames
//! are offered again after a backoff, which is safe because both sinks write
//! idempotently (Influx overwrites the identical point, Timescale inserts with
//! `ON CONFLICT DO NOTHING`).
//!
//! Pipelining: a drainer keeps up to `drain.pipeline` batches started and not
//! yet passed by its cursor, plus one read ahead; sinks that can [`fork`](Sink::fork) deliver them
//! concurrently and they may be confirmed in any order, but the cursor moves
//! only over a prefix of batches that are all confirmed, in log order.

pub mod drainer;
pub mod health;
pub mod retry;
pub mod rewind;
pub(crate) mod verdict;

use std::future::Future;
use std::time::Duration;

use crate::record::{Record, RecordKind};

pub use health::{HealthSnapshot, SinkHealth, SinkState};

/// How a sink failure should be handled. Each sink's error enum maps itself to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Outage, timeout, overload: retry the same batch with backoff, forever.
    Transient,
    /// The data itself is refused: isolate the offending records, dead-letter
    /// them, write the rest.
    Data,
    /// Credentials, permissions, missing database/bucket: the sink is unhealthy;
    /// retry slowly, dead-letter nothing.
    Config,
}

impl ErrorClass {
    /// Every class, in the order of the docs' class table.
    pub const ALL: [ErrorClass; 3] = [ErrorClass::Transient, ErrorClass::Data, ErrorClass::Config];

    /// The class in lower case, as the `class` label of
    /// `walrelay_sink_retries_total` and in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Data => "data",
            ErrorClass::Config => "config",
        }
    }
}

/// What a successful delivery confirmed. Every record of the batch is either
/// written or dead-lettered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Records the sink stored.
    pub written: usize,
    /// Records moved to the dead-letter store with their reason.
    pub dead_lettered: usize,
}

/// A delivery that confirmed nothing; the batch must be offered again.
#[derive(Debug, Clone)]
pub struct SinkFailure {
    pub class: ErrorClass,
    /// Human-readable cause, free of secrets.
    pub message: String,
    /// A server-provided wait (HTTP `Retry-After`), honoured by the retry loop.
    pub retry_after: Option<Duration>,
}

/// A destination the drainer writes to.
pub trait Sink: Send {
    /// Stable name: the cursor name in the log and the `sink` label in metrics.
    fn name(&self) -> &'static str;

    /// Whether records of this kind go to this sink.
    fn accepts(&self, kind: RecordKind) -> bool;

    /// Another instance writing to the same destinations, independent of
    /// this one (own connection state, own timeout shrinking), so that a
    /// drainer can keep several deliveries in flight. `None` (the default)
    /// when deliveries must happen one at a time, for example because the
    /// outcome depends on the order in which batches arrive.
    fn fork(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }

    /// Writes one batch (all records accepted by this sink, in log order).
    ///
    /// `attempt` is the drainer's count of deliveries of this batch, this
    /// one included: 1 the first time, 2 after one failure, and so on. A sink
    /// keeps no count of its own; it stores `attempt` with the records it
    /// dead-letters.
    ///
    /// `Ok` confirms every record as written or dead-lettered; `Err` confirms
    /// nothing. Implementations bound every network call by a deadline.
    fn deliver(
        &mut self,
        batch: &[Record],
        attempt: u32,
    ) -> impl Future<Output = Result<Delivery, SinkFailure>> + Send;
}
