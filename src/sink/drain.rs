//! The drain: records from the queue to the sink, each acknowledged only once the sink has it.
//!
//! A small state machine ([`Drain`]): records are taken from the queue and written as a batch
//! ([`Drain::batch_written`]); written records wait for a sync ([`Drain::start_sync_if_due`]),
//! which runs while writing goes on (group commit) unless `fsync = always`; a sync that
//! finishes acknowledges what it covered ([`Drain::sync_done`]); one that fails has its records
//! written again to a fresh file, once, or failed to their senders ([`Drain::sync_failed`]).
//! [`drain`] is the loop that waits for whichever comes first.

use std::time::Instant;

use super::{settle::Settled, Sink, SinkError, SinkFuture, SyncKind, MAX_BATCH};
use crate::config::FsyncMode;
use crate::metrics::Metrics;
use crate::queue::Consumer;
use crate::record::Record;

/// Records written but not yet covered by a finished `fsync`, at most; beyond it the drain stops
/// taking records from the queue (the queue then pushes back on the connections).
pub const MAX_UNSYNCED: usize = 16 * MAX_BATCH;

/// Moves records from the queue to the sink until every producer is gone and the queue is empty,
/// acknowledging each once the sink has it (see [`FsyncMode`]). A failed write or `fsync` is
/// logged, counted and reported to each sender (`sink_failed`); it is never acknowledged.
pub async fn drain(
    mut consumer: Consumer<Record>,
    sink: Box<dyn Sink>,
    fsync: FsyncMode,
    metrics: &Metrics,
) -> super::DrainReport {
    let mut drain = Drain::new(sink, fsync, metrics);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        drain.start_sync_if_due();
        let may_write = drain.may_write();
        if !may_write && drain.in_flight.is_none() {
            // Only once the queue is closed: otherwise nothing in flight means there is room.
            debug_assert!(!drain.open, "the drain neither writes nor syncs");
            break;
        }
        tokio::select! {
            biased;
            result = async { drain.in_flight.as_mut().expect("guarded by the condition").await },
                if drain.in_flight.is_some() =>
            {
                drain.in_flight = None;
                match result {
                    Ok(()) => drain.sync_done(),
                    Err(error) => drain.sync_failed(error).await,
                }
            }
            more = consumer.pop_batch(MAX_BATCH, &mut batch), if may_write => {
                if !more {
                    drain.open = false;
                    continue;
                }
                let result = drain.sink.write_batch(&batch).await;
                drain.batch_written(&mut batch, result);
            }
        }
    }
    drain.finish().await
}

/// The state of a drain between two events.
pub(super) struct Drain<'m> {
    sink: Box<dyn Sink>,
    /// `fsync` as it applies to this sink (a remote store's acks are always waited for).
    fsync: FsyncMode,
    kind: SyncKind,
    settled: Settled<'m>,
    /// Written, waiting for a sync to start.
    unsynced: Vec<Record>,
    /// Covered by the sync in flight.
    syncing: Vec<Record>,
    in_flight: Option<SinkFuture<'static>>,
    sync_started: Instant,
    /// Syncs failed in a row.
    failed_syncs: u32,
    /// Whether the queue may still hold records.
    open: bool,
}

impl<'m> Drain<'m> {
    pub(super) fn new(sink: Box<dyn Sink>, fsync: FsyncMode, metrics: &'m Metrics) -> Self {
        let kind = sink.sync_kind();
        let fsync = match (kind, fsync) {
            (SyncKind::RemoteAck, FsyncMode::Never) => FsyncMode::Batch,
            (_, mode) => mode,
        };
        Drain {
            sink,
            fsync,
            kind,
            settled: Settled::new(metrics),
            unsynced: Vec::new(),
            syncing: Vec::new(),
            in_flight: None,
            sync_started: Instant::now(),
            failed_syncs: 0,
            open: true,
        }
    }

    /// Starts a sync of what was written, if none runs; a sink with nothing to sync has its
    /// records acknowledged at once.
    pub(super) fn start_sync_if_due(&mut self) {
        if self.in_flight.is_some() || self.unsynced.is_empty() {
            return;
        }
        match self.sink.sync() {
            Some(sync) => {
                self.in_flight = Some(sync);
                self.sync_started = Instant::now();
                std::mem::swap(&mut self.syncing, &mut self.unsynced);
            }
            None => (self.settled).settle(&mut self.unsynced, Ok(()), &*self.sink),
        }
    }

    /// Whether a batch may be taken from the queue: it is open, not too much waits for a sync,
    /// and under `fsync = always` nothing is written while a sync runs or waits.
    pub(super) fn may_write(&self) -> bool {
        let always_waits = self.fsync == FsyncMode::Always
            && (self.in_flight.is_some() || !self.unsynced.is_empty());
        self.open && self.unsynced.len() < MAX_UNSYNCED && !always_waits
    }

    /// A batch was written (or failed): acknowledged now under `fsync = never`, else waiting
    /// for its sync; failed to its senders on an error.
    pub(super) fn batch_written(&mut self, batch: &mut Vec<Record>, result: Result<(), SinkError>) {
        if result.is_ok() {
            self.settled.metrics.sink_batch(batch.len());
        }
        match (result, self.fsync) {
            (Ok(()), FsyncMode::Never) => self.settled.settle(batch, Ok(()), &*self.sink),
            (Ok(()), _) => self.unsynced.append(batch),
            (Err(error), _) => self.settled.settle(batch, Err(error), &*self.sink),
        }
    }

    /// The sync in flight finished: what it covered is acknowledged.
    pub(super) fn sync_done(&mut self) {
        self.settled.report.syncs += 1;
        if self.kind == SyncKind::Fsync {
            self.settled.metrics.fsync(self.sync_started.elapsed());
        }
        self.failed_syncs = 0;
        self.settled.settle(&mut self.syncing, Ok(()), &*self.sink);
    }

    /// The sync in flight failed. The first failure in a row, on a sink that can start afresh,
    /// writes every record not covered by a good sync again, to a new file; otherwise the
    /// records it covered fail.
    pub(super) async fn sync_failed(&mut self, error: SinkError) {
        self.settled.report.syncs += 1;
        self.failed_syncs += 1;
        let metrics = self.settled.metrics;
        if self.kind == SyncKind::Fsync {
            metrics.fsync_failed();
        }
        if self.failed_syncs > 1 || !self.sink.start_afresh_after_failed_sync() {
            self.settled
                .settle(&mut self.syncing, Err(error), &*self.sink);
            return;
        }
        metrics.sink_error();
        metrics.sink_file_abandoned();
        let mut again = std::mem::take(&mut self.syncing);
        again.append(&mut self.unsynced);
        tracing::error!(sink = %self.sink.name(), error = %error, cause = ?std::error::Error::source(&error), records = again.len(), "sync failed: its file is given up and never synced again; the records it held unacknowledged are written again to a new one");
        match self.sink.write_batch(&again).await {
            Ok(()) => {
                metrics.sink_batch(again.len());
                self.unsynced = again;
            }
            Err(error) => self.settled.settle(&mut again, Err(error), &*self.sink),
        }
    }

    /// After the last record: under `fsync = never` the file is synced once (its records were
    /// acknowledged when written); the report of what was done.
    pub(super) async fn finish(mut self) -> super::DrainReport {
        if self.fsync != FsyncMode::Never {
            return self.settled.report;
        }
        if let Some(sync) = self.sink.sync() {
            self.settled.report.syncs += 1;
            let started = Instant::now();
            match sync.await {
                Ok(()) => self.settled.metrics.fsync(started.elapsed()),
                Err(error) => {
                    self.settled.metrics.sink_error();
                    super::settle::log_failure(&*self.sink, &error, 0);
                }
            }
        }
        self.settled.report
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;

    use super::*;

    /// A sink whose syncs succeed or fail as the test scripted, and that can start afresh.
    #[derive(Clone, Default)]
    struct ScriptedSink {
        syncs: Arc<Mutex<VecDeque<bool>>>,
        writes: Arc<Mutex<Vec<usize>>>,
    }

    impl Sink for ScriptedSink {
        fn write_batch<'a>(&'a mut self, batch: &'a [Record]) -> SinkFuture<'a> {
            self.writes.lock().unwrap().push(batch.len());
            Box::pin(async { Ok(()) })
        }

        fn sync(&mut self) -> Option<SinkFuture<'static>> {
            let ok = self
                .syncs
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted sync");
            Some(Box::pin(async move {
                match ok {
                    true => Ok(()),
                    false => Err(SinkError::Io {
                        sink: "scripted".into(),
                        source: std::io::Error::other("EIO"),
                    }),
                }
            }))
        }

        fn start_afresh_after_failed_sync(&mut self) -> bool {
            true
        }

        fn name(&self) -> String {
            "scripted".into()
        }
    }

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|_| {
                Record::new(
                    1,
                    "127.0.0.1:9".parse().unwrap(),
                    "192.0.2.1".parse().unwrap(),
                    Bytes::from_static(br#"{"ip":"192.0.2.1"}"#),
                    None,
                )
            })
            .collect()
    }

    /// Runs the sync in flight to its end, as the drain's loop does.
    async fn run_sync(drain: &mut Drain<'_>) {
        let result = drain.in_flight.take().expect("a sync in flight").await;
        match result {
            Ok(()) => drain.sync_done(),
            Err(error) => drain.sync_failed(error).await,
        }
    }

    #[tokio::test]
    async fn each_step_of_the_drain_can_be_driven_alone() {
        let metrics = Metrics::new(&crate::Config::default());
        let sink = ScriptedSink::default();
        sink.syncs
            .lock()
            .unwrap()
            .extend([false, true, false, false]);
        let mut drain = Drain::new(Box::new(sink.clone()), FsyncMode::Batch, &metrics);

        // Batch written: it waits for a sync, nothing acknowledged.
        let mut batch = records(2);
        drain.batch_written(&mut batch, Ok(()));
        assert!(batch.is_empty());
        assert_eq!((drain.unsynced.len(), drain.settled.report.written), (2, 0));
        assert!(drain.may_write(), "group commit writes on");

        // Sync started: it covers the batch.
        drain.start_sync_if_due();
        assert_eq!((drain.unsynced.len(), drain.syncing.len()), (0, 2));
        drain.batch_written(&mut records(1), Ok(()));

        // Sync failed, the first in a row: both batches written again to a new file.
        run_sync(&mut drain).await;
        // (The loop wrote the two batches; the step writes them again as one.)
        assert_eq!(*sink.writes.lock().unwrap(), [3]);
        assert_eq!((drain.unsynced.len(), drain.syncing.len()), (3, 0));
        assert_eq!(drain.settled.report.failed, 0);

        // Sync done: all three acknowledged.
        drain.start_sync_if_due();
        run_sync(&mut drain).await;
        assert_eq!(drain.settled.report.written, 3);

        // Two failures in a row: the second fails its records to their senders.
        drain.batch_written(&mut records(4), Ok(()));
        drain.start_sync_if_due();
        run_sync(&mut drain).await;
        assert_eq!(
            drain.unsynced.len(),
            4,
            "written again after the first failure"
        );
        drain.start_sync_if_due();
        run_sync(&mut drain).await;
        let report = drain.finish().await;
        assert_eq!((report.written, report.failed, report.syncs), (3, 4, 4));
    }

    #[tokio::test]
    async fn under_fsync_always_nothing_is_written_while_a_sync_waits_or_runs() {
        let metrics = Metrics::new(&crate::Config::default());
        let sink = ScriptedSink::default();
        sink.syncs.lock().unwrap().push_back(true);
        let mut drain = Drain::new(Box::new(sink), FsyncMode::Always, &metrics);
        drain.batch_written(&mut records(1), Ok(()));
        assert!(!drain.may_write(), "waits for its sync to start");
        drain.start_sync_if_due();
        assert!(!drain.may_write(), "waits for its sync to end");
        run_sync(&mut drain).await;
        assert!(drain.may_write());
        drain.open = false;
        assert!(!drain.may_write(), "a closed queue gives nothing more");
    }
}
