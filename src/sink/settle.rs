//! Settling records: acknowledging those the sink has, or failing them to their senders,
//! and counting both.

use std::time::SystemTime;

use super::{DrainReport, Sink, SinkError};
use crate::metrics::Metrics;
use crate::protocol::ErrorCode;
use crate::record::Record;

/// The drain's report, and the metrics each settled record is counted in.
pub(super) struct Settled<'m> {
    pub(super) report: DrainReport,
    pub(super) metrics: &'m Metrics,
}

impl<'m> Settled<'m> {
    pub(super) fn new(metrics: &'m Metrics) -> Self {
        Settled {
            report: DrainReport::default(),
            metrics,
        }
    }

    /// Acknowledges `records` if `result` is `Ok`, or reports the failure to each sender.
    pub(super) fn settle(
        &mut self,
        records: &mut Vec<Record>,
        result: Result<(), SinkError>,
        sink: &dyn Sink,
    ) {
        let count = records.len() as u64;
        let metrics = self.metrics;
        match result {
            Ok(()) => {
                self.report.written += count;
                // One clock read for the batch (its acks leave together), none for a batch that
                // asked for no ack, and one latency per run of records read together (they share
                // the receive time): this loop is on every item's path.
                let (mut now, mut acks) = (None, 0);
                let mut observe = |received_at: SystemTime, n: u64| {
                    let now = *now.get_or_insert_with(SystemTime::now);
                    metrics.ack_latency(now.duration_since(received_at).unwrap_or_default(), n);
                };
                let mut run: Option<(SystemTime, u64)> = None;
                for record in records.drain(..) {
                    let received_at = record.received_at;
                    if record.acknowledge() {
                        acks += 1;
                        match &mut run {
                            Some((at, n)) if *at == received_at => *n += 1,
                            _ => {
                                if let Some((at, n)) = run.replace((received_at, 1)) {
                                    observe(at, n);
                                }
                            }
                        }
                    }
                }
                if let Some((at, n)) = run {
                    observe(at, n);
                }
                if acks > 0 {
                    metrics.acknowledged(acks);
                }
            }
            Err(error) => {
                self.report.failed += count;
                metrics.sink_error();
                metrics.items_refused(ErrorCode::SinkFailed, count);
                log_failure(sink, &error, count);
                records.drain(..).for_each(|r| {
                    r.reject(ErrorCode::SinkFailed, "the sink could not store this item")
                });
            }
        }
    }
}

pub(super) fn log_failure(sink: &dyn Sink, error: &SinkError, records: u64) {
    tracing::error!(sink = %sink.name(), error = %error, cause = ?std::error::Error::source(error), records, "sink failed; records not acknowledged");
}
