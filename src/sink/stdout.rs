//! NDJSON on standard output, flushed after every batch.

use tokio::io::AsyncWriteExt;

use super::{encode_batch, Sink, SinkError, SinkFuture};
use crate::record::Record;

/// Writes records to standard output.
pub struct StdoutSink {
    out: tokio::io::Stdout,
}

impl StdoutSink {
    /// A sink on this process's standard output.
    pub fn new() -> StdoutSink {
        StdoutSink {
            out: tokio::io::stdout(),
        }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        StdoutSink::new()
    }
}

impl Sink for StdoutSink {
    fn write_batch<'a>(&'a mut self, batch: &'a [Record]) -> SinkFuture<'a> {
        Box::pin(async move {
            let buf = encode_batch(batch);
            let io = |source| SinkError::Io {
                sink: "stdout".into(),
                source,
            };
            self.out.write_all(&buf).await.map_err(io)?;
            self.out.flush().await.map_err(io)
        })
    }

    fn name(&self) -> String {
        "stdout".into()
    }
}
