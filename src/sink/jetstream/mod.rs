//! The JetStream sink: each record is one message in a stream, and its ack goes to the client
//! only once JetStream has stored the message.
//!
//! [`JetStreamSink::write_batch`] hands records to a [`publisher`] task, at most `nats_window` at
//! once (when the window is full the sink waits, so the queue fills and the connections feel
//! backpressure). The publisher sends them in fast-ingest batches ([`fast_ingest`]) and counts
//! the records JetStream has stored, in order; a sync ([`Sink::sync`]) resolves once every
//! record written before it is counted, and only then does the drain acknowledge them.
//!
//! Exactly once: each message carries a message id (`Nats-Msg-Id`, from the client's
//! `client_id` and the item's `id`), so JetStream stores a resend once within the stream's
//! duplicate window, whichever gateway it came through. In order: a batch is stored without
//! gaps, so no record of a gateway is stored after a later one, whatever fails.

mod fast_ingest;
mod publisher;
mod stream;

use std::sync::Arc;
use std::time::Instant;

pub use async_nats::Client;
use async_nats::Subject;
use bytes::Bytes;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use super::{Sink, SinkError, SinkFuture, SyncKind};
use crate::config::{Config, NatsConfig};
use crate::metrics::Metrics;
use crate::record::Record;
use publisher::{Entry, Publisher};

/// Bytes a record adds around its item (receive time, connection, peer, client id) and NATS
/// adds around a message (subject, reply subject, message id header), at most.
const ENVELOPE: usize = 1024;

/// The oldest nats-server with fast-ingest batches.
const MIN_SERVER: (u64, u64) = (2, 14);

/// Opens the sink `config` names on the gateway's NATS connection.
pub(super) async fn open(
    config: &Config,
    nats: Option<&Client>,
    metrics: &Arc<Metrics>,
) -> Result<Box<dyn Sink>, SinkError> {
    let client = nats.ok_or_else(|| SinkError::Setup {
        sink: "jetstream".into(),
        reason: "no NATS connection (nats_url)".into(),
    })?;
    let sink = JetStreamSink::open(
        &config.nats,
        &config.gateway_name(),
        config.max_frame,
        client.clone(),
        Arc::clone(metrics),
    )
    .await?;
    Ok(Box::new(sink))
}

/// Records into a JetStream stream; see the module's documentation.
pub struct JetStreamSink {
    window: Arc<Semaphore>,
    to_publisher: mpsc::UnboundedSender<Entry>,
    /// Records handed to the publisher so far.
    published: u64,
    /// Records stored so far, in the order they were written.
    confirmed: watch::Receiver<u64>,
    publisher: JoinHandle<()>,
    name: String,
}

impl JetStreamSink {
    /// Makes sure the stream exists (creating it as `config` says, retrying for up to a minute
    /// while a new cluster elects its leaders), then starts the publisher. Refuses a NATS server
    /// without fast ingest, or whose `max_payload` cannot hold a record of `max_frame` bytes.
    pub async fn open(
        config: &NatsConfig,
        gateway: &str,
        max_frame: usize,
        client: Client,
        metrics: Arc<Metrics>,
    ) -> Result<JetStreamSink, SinkError> {
        let name = format!("jetstream:{}", config.stream);
        let setup = |reason: String| SinkError::Setup {
            sink: name.clone(),
            reason,
        };
        let info = client.server_info();
        if !at_least(&info.version, MIN_SERVER) {
            return Err(setup(format!(
                "nats-server {} has no fast-ingest batches, which keep records in order; {}.{} or later is needed",
                info.version, MIN_SERVER.0, MIN_SERVER.1
            )));
        }
        if info.max_payload > 0 && max_frame + ENVELOPE > info.max_payload {
            return Err(setup(format!(
                "max_frame ({max_frame} bytes) plus a record's envelope ({ENVELOPE}) exceeds the NATS server's max_payload ({}); lower max_frame or raise max_payload",
                info.max_payload
            )));
        }
        if !fast_ingest::is_two_tokens(&client.new_inbox()) {
            return Err(setup(
                "the NATS client's inbox prefix has more than one token; fast-ingest replies need _INBOX.<id>".into(),
            ));
        }
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .build(client.clone());
        let subject = config.subject_for(gateway);
        stream::ensure_stream(&js, config, &subject)
            .await
            .map_err(setup)?;
        let (to_publisher, input) = mpsc::unbounded_channel();
        let (confirmed_tx, confirmed) = watch::channel(0);
        let publisher = Publisher {
            client,
            subject: Subject::from(subject.as_str()),
            input,
            confirmed: confirmed_tx,
            max_flow: u16::try_from(config.window / 2).unwrap_or(u16::MAX).max(1),
            ack_timeout: config.publish_timeout,
            metrics,
        };
        let publisher = tokio::spawn(publisher.run());
        tracing::info!(stream = %config.stream, subject = %subject, window = config.window, "JetStream sink ready");
        Ok(JetStreamSink {
            window: Arc::new(Semaphore::new(config.window)),
            to_publisher,
            published: 0,
            confirmed,
            publisher,
            name,
        })
    }
}

/// Whether a server version (`2.15.1`, `2.14.0-RC.2`) is at least `min` (major, minor).
fn at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

impl Drop for JetStreamSink {
    fn drop(&mut self) {
        self.publisher.abort();
    }
}

impl Sink for JetStreamSink {
    fn write_batch<'a>(&'a mut self, batch: &'a [Record]) -> SinkFuture<'a> {
        Box::pin(async move {
            let mut times = crate::record::TimeFormat::default();
            for record in batch {
                let permit = Arc::clone(&self.window)
                    .acquire_owned()
                    .await
                    .expect("the window is never closed");
                let mut line = Vec::with_capacity(record.item.len() + 160);
                record.write_ndjson_with(&mut line, &mut times);
                line.pop(); // the newline: a message is one record
                let entry = Entry {
                    payload: Bytes::from(line),
                    msg_id: record.message_id(),
                    queued: Instant::now(),
                    permit,
                };
                self.to_publisher
                    .send(entry)
                    .map_err(|_| SinkError::Closed {
                        sink: self.name.clone(),
                    })?;
                self.published += 1;
            }
            Ok(())
        })
    }

    fn sync(&mut self) -> Option<SinkFuture<'static>> {
        let target = self.published;
        let mut confirmed = self.confirmed.clone();
        let name = self.name.clone();
        Some(Box::pin(async move {
            confirmed
                .wait_for(|count| *count >= target)
                .await
                .map(|_| ())
                .map_err(|_| SinkError::Closed { sink: name })
        }))
    }

    fn sync_kind(&self) -> SyncKind {
        SyncKind::RemoteAck
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_compare_by_major_and_minor() {
        assert!(at_least("2.15.1", (2, 14)));
        assert!(at_least("2.14.0-RC.2", (2, 14)));
        assert!(at_least("3.0.0", (2, 14)));
        assert!(!at_least("2.12.3", (2, 14)));
        assert!(!at_least("2.9.10", (2, 14)));
        assert!(!at_least("", (2, 14)));
    }
}
