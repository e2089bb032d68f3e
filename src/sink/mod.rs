//! Where items end up. A [`Sink`] writes batches; [`drain`] feeds it from the queue and
//! acknowledges each record only after its batch was written and flushed.

mod channel;
mod file;
mod stdout;

use std::future::Future;
use std::io;
use std::pin::Pin;

pub use channel::ChannelSink;
pub use file::FileSink;
pub use stdout::StdoutSink;

use crate::config::SinkSpec;
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
    /// Writes a batch. Returning `Ok` means every record is stored (flushed, for a stream):
    /// their acks are sent then, and not before.
    fn write_batch<'a>(&'a mut self, batch: &'a [Record]) -> SinkFuture<'a>;

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
}

/// Moves records from the queue to the sink until every producer is gone and the queue is empty.
/// A failed batch is logged, counted and reported to each sender (`sink_failed`); it is never
/// acknowledged.
pub async fn drain(mut consumer: Consumer<Record>, mut sink: Box<dyn Sink>) -> DrainReport {
    let mut report = DrainReport::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while consumer.pop_batch(MAX_BATCH, &mut batch).await {
        let count = batch.len() as u64;
        match sink.write_batch(&batch).await {
            Ok(()) => {
                report.written += count;
                batch.drain(..).for_each(Record::acknowledge);
            }
            Err(error) => {
                report.failed += count;
                tracing::error!(sink = %sink.name(), error = %error, cause = ?std::error::Error::source(&error), records = count, "sink write failed; records not acknowledged");
                batch.drain(..).for_each(|r| {
                    r.reject(ErrorCode::SinkFailed, "the sink could not store this item")
                });
            }
        }
    }
    report
}

/// Serialises a batch as NDJSON.
pub(crate) fn encode_batch(batch: &[Record]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(batch.iter().map(|r| r.item.len() + 96).sum());
    for record in batch {
        record.write_ndjson(&mut buf);
    }
    buf
}
