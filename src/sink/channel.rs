//! Hands records to the embedding program through a channel: the library's way to receive items
//! in your own code.

use tokio::sync::mpsc;

use super::{Sink, SinkError, SinkFuture};
use crate::record::Record;

/// A sink that sends each record to an `mpsc` channel. A record is acknowledged once the
/// channel has taken it; a full channel makes the sink wait, which fills the queue, which
/// applies the overflow policy: a slow receiver slows the clients instead of losing items.
///
/// Each [`Record::item`] holds the client's object as the file and stdout sinks write it: one
/// line, the whitespace between its tokens removed, everything else as sent.
pub struct ChannelSink {
    tx: mpsc::Sender<Record>,
}

impl ChannelSink {
    /// A sink and the receiver for your code; `capacity` bounds the records in between.
    pub fn new(capacity: usize) -> (ChannelSink, mpsc::Receiver<Record>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (ChannelSink { tx }, rx)
    }
}

impl Sink for ChannelSink {
    fn write_batch<'a>(&'a mut self, batch: &'a [Record]) -> SinkFuture<'a> {
        Box::pin(async move {
            for record in batch {
                self.tx
                    .send(record.detached())
                    .await
                    .map_err(|_| SinkError::Closed {
                        sink: "channel".into(),
                    })?;
            }
            Ok(())
        })
    }

    fn name(&self) -> String {
        "channel".into()
    }
}
