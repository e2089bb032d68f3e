//! Where items end up. A [`Sink`] writes batches; [`drain`] feeds it from the queue and
//! acknowledges each record only once the sink has it: written and flushed, and, for a sink that
//! can be synced (`file:`), covered by an `fsync` as [`FsyncMode`](crate::config::FsyncMode) says.
//!
//! Group commit (`FsyncMode::Batch`): `fsync` runs on a blocking thread while the drain goes on
//! writing; the next `fsync` covers every batch written meanwhile. So one `fsync` serves
//! thousands of items, and neither the connections nor the writes wait for the disk: only the
//! acks do.

mod channel;
mod drain;
mod file;
#[cfg(feature = "nats")]
mod jetstream;
mod settle;
// Without the feature, `sink = "jetstream"` is refused before a sink is opened.
#[cfg(not(feature = "nats"))]
#[path = "jetstream/off.rs"]
mod jetstream;
mod stdout;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

pub use channel::ChannelSink;
pub use drain::{drain, MAX_UNSYNCED};
pub use file::{FileSink, ReopenHandle};
/// The NATS connection the JetStream sink publishes through (`async_nats::Client`).
pub(crate) use jetstream::Client as NatsClient;
#[cfg(feature = "nats")]
pub use jetstream::JetStreamSink;
pub use stdout::StdoutSink;

use crate::config::{Config, SinkSpec};
use crate::metrics::Metrics;
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

    /// What [`Sink::sync`] waits for. Acks of a sink whose sync is a [`SyncKind::RemoteAck`]
    /// always wait for it, whatever `fsync` says.
    fn sync_kind(&self) -> SyncKind {
        SyncKind::Fsync
    }

    /// Called after [`Sink::sync`] failed. A sink that can start afresh gives up what it was
    /// writing to, never syncs it again, and returns `true`: the drain then writes every record
    /// not yet covered by a good sync to it again with [`Sink::write_batch`]. The file sink does
    /// so: after a failed `fsync` the kernel may have dropped the unwritten pages and marked
    /// them clean, so a second `fsync` of the same file would "succeed" over lost data
    /// (PostgreSQL's fsyncgate); the file is renamed aside and a new one opened. `false` (the
    /// default) fails the records the sync covered (`sink_failed`).
    fn start_afresh_after_failed_sync(&mut self) -> bool {
        false
    }

    /// A short name for logs.
    fn name(&self) -> String;
}

/// What a sink's [`Sink::sync`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// `fsync`: counted in `sink_fsyncs_total`; `fsync = never` skips it.
    Fsync,
    /// The store's acknowledgement (JetStream's publish acks): a write alone is no promise, so
    /// it is never skipped.
    RemoteAck,
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
    #[error("{sink}: {reason}")]
    /// The sink cannot be set up, or refuses a record for good.
    Setup {
        /// The sink's name.
        sink: String,
        /// Why.
        reason: String,
    },
    #[error("the receiver of {sink} is gone")]
    /// The receiving side went away.
    Closed {
        /// The sink's name.
        sink: String,
    },
}

/// Opens the sink a configuration names; the JetStream sink publishes through `nats`, the
/// gateway's connection; a file sink reopens its path when `reopen` asks, and leaves an
/// unfinished last line alone when `beside_another_writer` (a binary upgrade's old process).
pub async fn open(
    config: &Config,
    nats: Option<&NatsClient>,
    metrics: &Arc<Metrics>,
    reopen: &ReopenHandle,
    beside_another_writer: bool,
) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match &config.sink {
        SinkSpec::Stdout => Box::new(StdoutSink::new()),
        SinkSpec::File(path) => {
            let (rotation, reopen) = (config.sink_rotation, reopen.clone());
            Box::new(match beside_another_writer {
                true => FileSink::open_beside_another_writer(path, rotation, reopen).await?,
                false => FileSink::open_rotating(path, rotation, reopen).await?,
            })
        }
        SinkSpec::JetStream => jetstream::open(config, nats, metrics).await?,
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

/// Serialises a batch as NDJSON.
pub(crate) fn encode_batch(batch: &[Record]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(batch.iter().map(|r| r.item.len() + 96).sum());
    let mut times = crate::record::TimeFormat::default();
    for record in batch {
        record.write_ndjson_with(&mut buf, &mut times);
    }
    buf
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::config::{FsyncMode, Overflow};
    use crate::queue::{self, Producer};
    use crate::record::{Answered, Replies};

    /// A sink that records what happens, and whose every `fsync` waits for the test to let it
    /// finish.
    #[derive(Clone, Default)]
    struct GatedSink {
        events: Arc<Mutex<Vec<String>>>,
        gates: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
    }

    impl Sink for GatedSink {
        fn write_batch<'a>(&'a mut self, batch: &'a [Record]) -> SinkFuture<'a> {
            let ids: Vec<String> = batch
                .iter()
                .map(|r| String::from_utf8_lossy(r.id.as_deref().unwrap_or(b"")).into_owned())
                .collect();
            self.events
                .lock()
                .unwrap()
                .push(format!("write {}", ids.join(",")));
            Box::pin(async { Ok(()) })
        }

        fn sync(&mut self) -> Option<SinkFuture<'static>> {
            let (release, released) = oneshot::channel();
            self.gates.lock().unwrap().push(release);
            self.events.lock().unwrap().push("sync".into());
            Some(Box::pin(async move {
                let _ = released.await;
                Ok(())
            }))
        }

        fn name(&self) -> String {
            "gated".into()
        }
    }

    impl GatedSink {
        fn events(&self) -> Vec<String> {
            self.events.lock().unwrap().clone()
        }

        fn release_sync(&self) {
            let gate = self.gates.lock().unwrap().remove(0);
            gate.send(()).unwrap();
        }
    }

    /// Queues the item `id`, whose ack (or error) arrives on `replies`.
    async fn push(producer: &Producer<Record>, replies: &mpsc::UnboundedSender<Answered>, id: u64) {
        let mut record = Record::new(
            1,
            "127.0.0.1:9".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            Bytes::from_static(br#"{"ip":"192.0.2.1"}"#),
            Some(Bytes::from(id.to_string())),
        );
        record.reply = Some(Replies::new(replies.clone()).join());
        producer.push(record).await;
    }

    /// The id a read's one record was acknowledged with.
    fn ack_of(answered: Option<Answered>) -> String {
        let answered = answered.expect("an answer");
        assert_eq!(answered.records, 1);
        let line = std::str::from_utf8(&answered.lines).unwrap();
        let id = line.strip_prefix("{\"type\":\"ack\",\"id\":");
        id.and_then(|id| id.strip_suffix("}\n"))
            .unwrap_or_else(|| panic!("not one ack: {line:?}"))
            .to_string()
    }

    /// Waits until `event` has happened `times` times.
    async fn wait_for(sink: &GatedSink, event: &str, times: usize) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while sink.events().iter().filter(|e| *e == event).count() < times {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {event:?} in {:?}",
                sink.events()
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn group_commit_writes_on_while_fsync_runs_and_acks_only_after_it() {
        let (producer, consumer) = queue::bounded(64, Overflow::Backpressure);
        let (replies, mut acks) = mpsc::unbounded_channel();
        let sink = GatedSink::default();
        let metrics = Arc::new(Metrics::new(&crate::Config::default()));
        let gated: Box<dyn Sink> = Box::new(sink.clone());
        let drain =
            tokio::spawn(async move { drain(consumer, gated, FsyncMode::Batch, &metrics).await });

        push(&producer, &replies, 1).await;
        wait_for(&sink, "sync", 1).await;
        // The first fsync is still running: the next item is written at once, not acked.
        push(&producer, &replies, 2).await;
        wait_for(&sink, "write 2", 1).await;
        assert!(acks.try_recv().is_err(), "no ack before its fsync");
        sink.release_sync();
        assert_eq!(ack_of(acks.recv().await), "1");
        // Item 2 waits for the second fsync, which covers it.
        wait_for(&sink, "sync", 2).await;
        assert!(acks.try_recv().is_err());
        sink.release_sync();
        assert_eq!(ack_of(acks.recv().await), "2");
        drop(producer);
        let report = drain.await.unwrap();
        assert_eq!((report.written, report.failed, report.syncs), (2, 0, 2));
        assert_eq!(sink.events(), ["write 1", "sync", "write 2", "sync"]);
    }

    #[tokio::test]
    async fn fsync_always_writes_nothing_while_a_sync_runs() {
        let (producer, consumer) = queue::bounded(64, Overflow::Backpressure);
        let (replies, mut acks) = mpsc::unbounded_channel();
        let sink = GatedSink::default();
        let metrics = Arc::new(Metrics::new(&crate::Config::default()));
        let gated: Box<dyn Sink> = Box::new(sink.clone());
        let drain =
            tokio::spawn(async move { drain(consumer, gated, FsyncMode::Always, &metrics).await });

        push(&producer, &replies, 1).await;
        wait_for(&sink, "sync", 1).await;
        push(&producer, &replies, 2).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sink.events(), ["write 1", "sync"], "item 2 waits");
        sink.release_sync();
        assert_eq!(ack_of(acks.recv().await), "1");
        wait_for(&sink, "sync", 2).await;
        sink.release_sync();
        assert_eq!(ack_of(acks.recv().await), "2");
        drop(producer);
        assert_eq!(drain.await.unwrap().syncs, 2);
    }
}
