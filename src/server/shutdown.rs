//! The order and grace of shutdown, all within `shutdown_grace`: stop accepting; drain (the
//! connections take no new work, and the sink writes and acknowledges what is queued while
//! they are still open; without a queue, the connections finish on their own); then close what
//! is left, after a brief flush; and report.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ShutdownReport;
use crate::conn::{Live, Stage};
use crate::queue::Monitor;
use crate::record::Record;
use crate::registry::Registry;
use crate::sink::DrainReport;

/// What shutdown stops, in its order.
pub(super) struct Stopping {
    /// Ends the accept loops.
    pub stop_accepting: CancellationToken,
    pub accept_tasks: Vec<JoinHandle<()>>,
    /// Where the connections read the stage.
    pub live: Arc<Live>,
    pub registry: Registry,
    /// The sink's task, for the JSON item protocol.
    pub sink_task: Option<JoinHandle<DrainReport>>,
    /// Every connection's task.
    pub tracker: TaskTracker,
    /// The queue's depth: what is left in it was abandoned.
    pub monitor: Monitor<Record>,
}

/// What the sink's task ended with, if it ended within the grace.
type Drained = Option<Result<DrainReport, tokio::task::JoinError>>;

impl Stopping {
    /// Runs the stages and reports; `handed_over`: the connections a new process took, at an
    /// upgrade.
    pub async fn run(mut self, handed_over: Option<u64>) -> ShutdownReport {
        let grace = self.live.config().shutdown_grace;
        let deadline = Instant::now() + grace;
        tracing::info!(
            live = self.registry.len(),
            queued = self.monitor.stats().depth,
            grace_ms = grace.as_millis() as u64,
            "shutting down"
        );
        self.stop_accepting.cancel();
        for task in std::mem::take(&mut self.accept_tasks) {
            let _ = task.await;
        }
        // Keep a little of the grace for the connections' last flush.
        let reserve = (grace / 4).min(Duration::from_secs(1));
        let mut drained = self.drain(deadline - reserve).await;
        let closed = self.close(deadline).await;
        if let (None, Some(task)) = (&drained, &mut self.sink_task) {
            drained = tokio::time::timeout_at(deadline, task).await.ok();
        }
        let report = ShutdownReport {
            connections_left: if closed { 0 } else { self.registry.len() },
            handed_over: handed_over.unwrap_or(0),
            ..self.written(drained)
        };
        log(&report);
        report
    }

    /// The first stage, until `until`: connections take no new work; the sink writes and
    /// acknowledges the queue (without a queue, the connections finish on their own).
    async fn drain(&mut self, until: Instant) -> Drained {
        self.live.enter(Stage::Draining);
        self.registry.wake_all();
        match &mut self.sink_task {
            Some(task) => tokio::time::timeout_at(until, task).await.ok(),
            // Without a queue, the connections' drain is theirs: they had the same share of the
            // grace to finish what was in flight.
            None => {
                let _ = tokio::time::timeout_at(until, wait_empty(&self.registry)).await;
                Some(Ok(DrainReport::default()))
            }
        }
    }

    /// The last stage: every connection asked to close, after a brief flush. True when all
    /// ended by `deadline`.
    async fn close(&mut self, deadline: Instant) -> bool {
        self.live.enter(Stage::Closing);
        self.registry.wake_all();
        self.tracker.close();
        tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok()
    }

    /// What the sink wrote, from how its task ended (a sink that did not end is stopped), and
    /// what the queue still held.
    fn written(&mut self, drained: Drained) -> ShutdownReport {
        let drain = match drained {
            Some(Ok(report)) => report,
            Some(Err(join_error)) => {
                tracing::error!(error = %join_error, "sink task failed");
                DrainReport::default()
            }
            None => {
                if let Some(task) = self.sink_task.take() {
                    task.abort();
                }
                DrainReport::default()
            }
        };
        ShutdownReport {
            written: drain.written,
            failed: drain.failed,
            syncs: drain.syncs,
            abandoned: self.monitor.stats().depth,
            ..ShutdownReport::default()
        }
    }
}

/// One line for the end of shutdown: an error when the grace ran out.
fn log(report: &ShutdownReport) {
    if report.abandoned > 0 || report.connections_left > 0 {
        tracing::error!(
            abandoned = report.abandoned,
            connections_left = report.connections_left,
            "shutdown grace ran out"
        );
    } else {
        tracing::info!(
            written = report.written,
            failed = report.failed,
            syncs = report.syncs,
            "shutdown complete"
        );
    }
}

/// Returns once no connection is live: the connections of a protocol without a queue, told to
/// drain, finish on their own.
async fn wait_empty(registry: &Registry) {
    let mut closes = registry.subscribe();
    while !registry.is_empty() {
        // A lagging receiver or a close between the check and the wait: look again.
        let _ = tokio::time::timeout(Duration::from_millis(100), closes.recv()).await;
    }
}
