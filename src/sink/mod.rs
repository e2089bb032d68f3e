//! Where items end up. A [`Sink`] writes batches; [`drain`] feeds it from the queue and
//! acknowledges each record only once the sink has it: written and flushed, and, for a sink that
//! can be synced (`file:`), covered by an `fsync` as [`FsyncMode`] says.
//!
//! Group commit (`FsyncMode::Batch`): `fsync` runs on a blocking thread while the drain goes on
//! writing; the next `fsync` covers every batch written meanwhile. So one `fsync` serves
//! thousands of items, and neither the connections nor the writes wait for the disk: only the
//! acks do.

mod channel;
mod file;
mod stdout;

use std::future::Future;
use std::io;
use std::pin::Pin;

pub use channel::ChannelSink;
pub use file::FileSink;
pub use stdout::StdoutSink;

use crate::config::{FsyncMode, SinkSpec};
use crate::protocol::ErrorCode;
use crate::queue::Consumer;
use crate::record::Record;

/// Most records written (and flushed) at once: large enough to amortise a flush, small enough
/// that acks stay prompt.
pub const MAX_BATCH: usize = 1024;

/// A boxed future, so that sinks can be chosen at run time.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A destination for records.
pub trait Sink: Send + 'static {
    /// Writes a batch. Returning `Ok` means every record is stored (flushed, for a stream);
    /// unless [`Sink::sync`] has more to do, their acks are sent then, and not before.
    fn write_batch<'a>(&'a mut self, batch: &'a [Record]) -> SinkFuture<'a>;

    /// Makes durable everything written so far (`fsync`), or `None` for a sink whose writes are
    /// as durable as they get once written (a stream, a channel). The future owns what it needs,
    /// so that writing can go on while it runs.
    fn sync(&mut self) -> Option<SinkFuture<'static>> {
        None
    }

    /// A short name for logs.
    fn name(&self) -> String;
}

/// A failed write; the batch's records are not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write to {sink}")]
    /// An I/O error while writing or flushing.
    Io {
        /// The sink's name (`stdout`, `file:PATH`).
        sink: String,
        #[source]
        /// The I/O error.
        source: io::Error,
    },
    #[error("the receiver of {sink} is gone")]
    /// The receiving side went away.
    Closed {
        /// The sink's name.
        sink: String,
    },
}

/// Opens the sink a configuration names.
pub async fn open(spec: &SinkSpec) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match spec {
        SinkSpec::Stdout => Box::new(StdoutSink::new()),
        SinkSpec::File(path) => Box::new(FileSink::open(path).await?),
    })
}

/// What [`drain`] did, for the shutdown report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Records stored and acknowledged.
    pub written: u64,
    /// Records the sink failed to store (each reported to its sender).
    pub failed: u64,
    /// Syncs (`fsync`) completed or failed.
    pub syncs: u64,
}

/// Records written but not yet covered by a finished `fsync`, at most; beyond it the drain stops
/// taking records from the queue (the queue then pushes back on the connections).
pub const MAX_UNSYNCED: usize = 16 * MAX_BATCH;

/// Moves records from the queue to the sink until every producer is gone and the queue is empty,
/// acknowledging each once the sink has it (see [`FsyncMode`]). A failed write or `fsync` is
/// logged, counted and reported to each sender (`sink_failed`); it is never acknowledged.
pub async fn drain(
    mut consumer: Consumer<Record>,
    mut sink: Box<dyn Sink>,
    fsync: FsyncMode,
) -> DrainReport {
    let mut report = DrainReport::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Written, waiting for an `fsync` to start; and covered by the `fsync` in flight.
    let mut unsynced: Vec<Record> = Vec::new();
    let mut syncing: Vec<Record> = Vec::new();
    let mut in_flight: Option<SinkFuture<'static>> = None;
    let mut open = true;
    loop {
        if in_flight.is_none() && !unsynced.is_empty() {
            match sink.sync() {
                Some(sync) => {
                    in_flight = Some(sync);
                    std::mem::swap(&mut syncing, &mut unsynced);
                }
                None => settle(&mut unsynced, Ok(()), &mut report, &*sink),
            }
        }
        let may_write = open
            && unsynced.len() < MAX_UNSYNCED
            && !(fsync == FsyncMode::Always && (in_flight.is_some() || !unsynced.is_empty()));
        if !may_write && in_flight.is_none() {
            // Only once the queue is closed: otherwise nothing in flight means there is room.
            debug_assert!(!open, "the drain neither writes nor syncs");
            break;
        }
        tokio::select! {
            biased;
            result = async { in_flight.as_mut().expect("guarded by the condition").await },
                if in_flight.is_some() =>
            {
                in_flight = None;
                report.syncs += 1;
                settle(&mut syncing, result, &mut report, &*sink);
            }
            more = consumer.pop_batch(MAX_BATCH, &mut batch), if may_write => {
                if !more {
                    open = false;
                    continue;
                }
                let result = sink.write_batch(&batch).await;
                match (result, fsync) {
                    (Ok(()), FsyncMode::Never) => settle(&mut batch, Ok(()), &mut report, &*sink),
                    (Ok(()), _) => unsynced.append(&mut batch),
                    (Err(error), _) => settle(&mut batch, Err(error), &mut report, &*sink),
                }
            }
        }
    }
    if fsync == FsyncMode::Never {
        if let Some(sync) = sink.sync() {
            report.syncs += 1;
            if let Err(error) = sync.await {
                log_failure(&*sink, &error, 0);
            }
        }
    }
    report
}

/// Acknowledges `records` if `result` is `Ok`, or reports the failure to each sender.
fn settle(
    records: &mut Vec<Record>,
    result: Result<(), SinkError>,
    report: &mut DrainReport,
    sink: &dyn Sink,
) {
    let count = records.len() as u64;
    match result {
        Ok(()) => {
            report.written += count;
            records.drain(..).for_each(Record::acknowledge);
        }
        Err(error) => {
            report.failed += count;
            log_failure(sink, &error, count);
            records.drain(..).for_each(|r| {
                r.reject(ErrorCode::SinkFailed, "the sink could not store this item")
            });
        }
    }
}

fn log_failure(sink: &dyn Sink, error: &SinkError, records: u64) {
    tracing::error!(sink = %sink.name(), error = %error, cause = ?std::error::Error::source(error), records, "sink failed; records not acknowledged");
}

/// Serialises a batch as NDJSON.
pub(crate) fn encode_batch(batch: &[Record]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(batch.iter().map(|r| r.item.len() + 96).sum());
    for record in batch {
        record.write_ndjson(&mut buf);
    }
    buf
}
