//! `walrelay rewind` and `audit --repair` on a stopped relay's log: builds
//! the sink from the config and runs the rewind of `drain/rewind.rs` (which
//! states the rules: time index, progress, resumption).

use super::AuditError;
use crate::config::Config;
pub use crate::drain::rewind::{RewindReport, RewindRequest};
use crate::wal::Wal;

/// Delivers `req` again through the configured sink it names; `on_batch` is
/// told the running report after each confirmed batch.
///
/// # Errors
/// [`AuditError::NoSink`], the log's failure, or a sink that kept failing
/// (progress so far is kept).
pub async fn rewind(
    config: &Config,
    wal: &Wal,
    req: &RewindRequest,
    on_batch: &mut (dyn FnMut(&RewindReport) + Send),
) -> Result<RewindReport, AuditError> {
    let sink_err = |sink: &'static str| move |detail: String| AuditError::Database { sink, detail };
    let batch = config.drain.batch_records;
    let pipeline = config.drain.pipeline;
    let result = match (req.sink.as_str(), &config.influx, &config.timescale) {
        ("influx", Some(ic), _) => {
            let mut sink = crate::db::influx::InfluxSink::new(ic.clone(), wal.dead_letters())
                .map_err(|e| sink_err("influx")(e.to_string()))?;
            crate::drain::rewind::run(&mut sink, wal, req, batch, pipeline, on_batch).await
        }
        ("timescale", _, Some(tc)) => {
            let mut sink = crate::db::timescale::TimescaleSink::new(
                tc.clone(),
                wal.meta(),
                wal.dead_letters(),
            )
            .map_err(|e| sink_err("timescale")(e.to_string()))?;
            crate::drain::rewind::run(&mut sink, wal, req, batch, pipeline, on_batch).await
        }
        (other, _, _) => {
            return Err(AuditError::NoSink(
                other.to_string(),
                config.sink_names().join(", "),
            ))
        }
    };
    result.map_err(|e| match e {
        crate::drain::rewind::RewindError::Wal(w) => AuditError::Wal(w),
        other => AuditError::Database {
            sink: if req.sink == "timescale" {
                "timescale"
            } else {
                "influx"
            },
            detail: other.to_string(),
        },
    })
}
