//! The JetStream sink: each record is one message in a stream, and its ack goes to the client
//! only once JetStream has acknowledged the message.
//!
//! Publishes are pipelined: [`JetStreamSink::write_batch`] hands each record to NATS and passes
//! its pending ack to a confirmer task; at most `nats_window` wait at once, and when the window
//! is full the sink waits (so the queue fills and the connections feel backpressure). The
//! confirmer takes the acks in publish order and counts the records confirmed; a sync
//! ([`Sink::sync`]) resolves once every record written before it is confirmed, and only then
//! does the drain acknowledge them to their clients.
//!
//! A publish that fails (no ack in time, no stream leader, connection lost, an API error) is
//! published again, with the same message id, after a backoff: first the oldest failed one,
//! then in the same pass every later one already known to have failed, in order. Nothing is
//! ever acknowledged to a client before its own publish ack; a record is never given up.
//!
//! Order: once any publish in the window has failed, or the connection to NATS is down, no new
//! record is published until every earlier one is stored. The confirmer looks at every ack in
//! the window every [`SCAN`], not only the oldest, so a fast failure ("no responders" while the
//! stream elects a leader) stops new publishes before a new leader could store them ahead of
//! the records being retried. What this cannot see is a publish lost in silence while later
//! ones are stored and acknowledged; each record keeps its client's item id for that case. The
//! message id (`Nats-Msg-Id`, from the client's `client_id` and the item's `id`) makes JetStream
//! store a resend once within the stream's duplicate window, whichever gateway it came through.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{GetStreamErrorKind, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, Subject};
use bytes::Bytes;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::{Sink, SinkError, SinkFuture, SyncKind};
use crate::config::NatsConfig;
use crate::metrics::{Metrics, PublishFailure};
use crate::record::Record;

/// Bytes a record adds around its item (receive time, connection, peer, client id) and NATS
/// adds around a message (subject, reply inbox, message id header), at most.
const ENVELOPE: usize = 1024;

/// First and longest wait before a failed publish is sent again.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How often the confirmer looks at every ack in the window, to see failures early.
const SCAN: Duration = Duration::from_millis(20);

/// A publish's ack, as `async-nats` gives it.
type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// Records into a JetStream stream; see the module's documentation.
pub struct JetStreamSink {
    js: jetstream::Context,
    subject: Subject,
    window: Arc<Semaphore>,
    to_confirmer: mpsc::UnboundedSender<Entry>,
    /// Records handed to the confirmer so far.
    published: u64,
    /// Records confirmed so far, in publish order.
    confirmed: watch::Receiver<u64>,
    confirmer: JoinHandle<()>,
    /// Set while a publish in the window has failed: new records wait until it is stored.
    failing: watch::Receiver<bool>,
    client: Client,
    metrics: Arc<Metrics>,
    name: String,
}

/// One record between its publish and its ack.
struct Entry {
    payload: Bytes,
    msg_id: Option<String>,
    first_sent: Instant,
    state: State,
    /// Its place in the window, given back when it is confirmed.
    _permit: OwnedSemaphorePermit,
}

enum State {
    Waiting(AckFuture),
    /// Acknowledged, found so before it reached the head of the window.
    Stored(PublishAck),
    /// Failed, seen by a scan before it reached the head of the window, or refused by NATS in a
    /// retry pass: published again in the next retry pass.
    Failed(PublishError),
}

impl JetStreamSink {
    /// Makes sure the stream exists (creating it as `config` says, retrying for up to a minute
    /// while a new cluster elects its leaders), then starts the confirmer. Refuses a NATS server
    /// whose `max_payload` cannot hold a record of `max_frame` bytes.
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
        let max_payload = client.server_info().max_payload;
        if max_payload > 0 && max_frame + ENVELOPE > max_payload {
            return Err(setup(format!(
                "max_frame ({max_frame} bytes) plus a record's envelope ({ENVELOPE}) exceeds the NATS server's max_payload ({max_payload}); lower max_frame or raise max_payload"
            )));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            // Our own window bounds the acks awaited; the context's only needs to not be lower.
            .max_ack_inflight(config.window + 64)
            .backpressure_on_inflight(true)
            .build(client);
        let subject = config.subject_for(gateway);
        ensure_stream(&js, config, &subject).await.map_err(setup)?;
        let (to_confirmer, entries) = mpsc::unbounded_channel();
        let (confirmed_tx, confirmed) = watch::channel(0);
        let (failing_tx, failing) = watch::channel(false);
        let confirmer = tokio::spawn(confirm(
            entries,
            Progress {
                confirmed: confirmed_tx,
                failing: failing_tx,
            },
            js.clone(),
            Subject::from(subject.as_str()),
            Arc::clone(&metrics),
        ));
        tracing::info!(stream = %config.stream, subject = %subject, window = config.window, "JetStream sink ready");
        let client = js.client();
        Ok(JetStreamSink {
            js,
            subject: Subject::from(subject),
            window: Arc::new(Semaphore::new(config.window)),
            to_confirmer,
            published: 0,
            confirmed,
            confirmer,
            failing,
            client,
            metrics,
            name,
        })
    }
}

impl JetStreamSink {
    /// Waits while publishing now could store a record ahead of an earlier one: while a publish
    /// in the window has failed, and, after the connection to NATS was lost, until it is back
    /// and every record published before is stored.
    async fn wait_until_in_order(&mut self) -> Result<(), SinkError> {
        let closed = |_| SinkError::Closed {
            sink: self.name.clone(),
        };
        let connected =
            |client: &Client| client.connection_state() == async_nats::connection::State::Connected;
        if !connected(&self.client) {
            // Rare and short: looked at every few milliseconds rather than subscribed to.
            while !connected(&self.client) {
                tokio::time::sleep(SCAN).await;
            }
            let target = self.published;
            self.confirmed
                .wait_for(|count| *count >= target)
                .await
                .map_err(closed)?;
        }
        self.failing
            .wait_for(|failing| !failing)
            .await
            .map_err(closed)?;
        Ok(())
    }
}

impl Drop for JetStreamSink {
    fn drop(&mut self) {
        self.confirmer.abort();
    }
}

impl Sink for JetStreamSink {
    fn write_batch<'a>(&'a mut self, batch: &'a [Record]) -> SinkFuture<'a> {
        Box::pin(async move {
            for record in batch {
                self.wait_until_in_order().await?;
                let permit = Arc::clone(&self.window)
                    .acquire_owned()
                    .await
                    .expect("the window is never closed");
                let mut line = Vec::with_capacity(record.item.len() + 160);
                record.write_ndjson(&mut line);
                line.pop(); // the newline: a message is one record
                let (payload, msg_id) = (Bytes::from(line), record.message_id());
                let first_sent = Instant::now();
                let ack = publish(
                    &self.js,
                    &self.subject,
                    &payload,
                    msg_id.as_deref(),
                    &self.metrics,
                )
                .await?;
                let entry = Entry {
                    payload,
                    msg_id,
                    first_sent,
                    state: State::Waiting(ack),
                    _permit: permit,
                };
                self.metrics.jetstream_in_flight(1);
                self.to_confirmer
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

/// Hands a record to NATS: its pending ack, or why NATS would not take it.
async fn send_once(
    js: &jetstream::Context,
    subject: &Subject,
    payload: &Bytes,
    msg_id: Option<&str>,
) -> Result<AckFuture, PublishError> {
    let mut message = PublishMessage::build().payload(payload.clone());
    if let Some(id) = msg_id {
        message = message.message_id(id);
    }
    let ack = js.send_publish(subject.clone(), message).await?;
    Ok(std::future::IntoFuture::into_future(ack))
}

/// Hands a new record to NATS. A message NATS cannot take now (its connection's buffer stays
/// full for `nats_publish_timeout`) is offered again after a backoff; one over the server's
/// `max_payload` is refused.
async fn publish(
    js: &jetstream::Context,
    subject: &Subject,
    payload: &Bytes,
    msg_id: Option<&str>,
    metrics: &Metrics,
) -> Result<AckFuture, SinkError> {
    let mut delay = RETRY_FIRST;
    loop {
        match send_once(js, subject, payload, msg_id).await {
            Ok(ack) => return Ok(ack),
            Err(error) if error.kind() == PublishErrorKind::MaxPayloadExceeded => {
                metrics.jetstream_failure(PublishFailure::MaxPayload);
                return Err(SinkError::Setup {
                    sink: "jetstream".into(),
                    reason: error.to_string(),
                });
            }
            Err(error) => {
                metrics.jetstream_failure(PublishFailure::Send);
                tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "cannot hand a record to NATS; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// What the confirmer tells the sink.
struct Progress {
    /// Records confirmed so far, in publish order.
    confirmed: watch::Sender<u64>,
    /// Whether a publish in the window has failed and is not yet stored again.
    failing: watch::Sender<bool>,
}

/// The confirmer: takes the acks in publish order, retries failed publishes, and counts the
/// records confirmed.
async fn confirm(
    mut entries: mpsc::UnboundedReceiver<Entry>,
    progress: Progress,
    js: jetstream::Context,
    subject: Subject,
    metrics: Arc<Metrics>,
) {
    let mut pending: VecDeque<Entry> = VecDeque::new();
    let mut count = 0u64;
    let mut outage = Outage::default();
    let mut scan = tokio::time::interval(SCAN);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while let Ok(entry) = entries.try_recv() {
            pending.push_back(entry);
        }
        let Some(head) = pending.front_mut() else {
            progress.confirmed.send_replace(count);
            progress
                .failing
                .send_if_modified(|f| std::mem::replace(f, false));
            match entries.recv().await {
                Some(entry) => {
                    pending.push_back(entry);
                    continue;
                }
                None => return,
            }
        };
        // A failure found by a scan or a retry pass was counted there.
        let mut counted = false;
        let outcome = match &mut head.state {
            State::Stored(ack) => Ok(std::mem::take(ack)),
            State::Failed(_) => {
                counted = true;
                // The head is published again by the retry pass below, whatever it holds.
                match std::mem::replace(&mut head.state, State::Stored(PublishAck::default())) {
                    State::Failed(error) => Err(error),
                    _ => unreachable!("matched above"),
                }
            }
            State::Waiting(ack) => match poll_once(ack) {
                Some(outcome) => outcome,
                None => {
                    // About to wait: let the syncs see what is confirmed so far.
                    progress.confirmed.send_replace(count);
                    tokio::select! {
                        outcome = ack => outcome,
                        _ = scan.tick() => {
                            if scan_window(&mut pending, &metrics) {
                                progress.failing.send_replace(true);
                            }
                            continue;
                        }
                    }
                }
            },
        };
        match outcome {
            Ok(ack) => {
                let entry = pending.pop_front().expect("the head was just read");
                metrics.jetstream_acked(entry.first_sent.elapsed(), ack.duplicate);
                metrics.jetstream_in_flight(-1);
                count += 1;
                outage.recovered();
            }
            Err(error) => {
                progress.failing.send_replace(true);
                let failure = classify(&error);
                if !counted {
                    metrics.jetstream_failure(failure);
                }
                let delay = outage.failed(failure, &error);
                tokio::time::sleep(delay).await;
                while let Ok(entry) = entries.try_recv() {
                    pending.push_back(entry);
                }
                retry_pass(&mut pending, &js, &subject, &metrics).await;
            }
        }
    }
}

/// Looks at every ack in the window but the head's: those that came are kept as stored, those
/// that failed as failed. True if one failed.
fn scan_window(pending: &mut VecDeque<Entry>, metrics: &Metrics) -> bool {
    let mut failed = false;
    for entry in pending.iter_mut().skip(1) {
        if let State::Waiting(ack) = &mut entry.state {
            match poll_once(ack) {
                None => {}
                Some(Ok(ack)) => entry.state = State::Stored(ack),
                Some(Err(error)) => {
                    metrics.jetstream_failure(classify(&error));
                    entry.state = State::Failed(error);
                    failed = true;
                }
            }
        }
        failed |= matches!(entry.state, State::Failed(_));
    }
    failed
}

/// Publishes again the head, whose publish failed (however its failure was seen, and whatever
/// its state now holds), and every later record whose publish has failed, in order; records
/// found acknowledged meanwhile are kept as stored.
async fn retry_pass(
    pending: &mut VecDeque<Entry>,
    js: &jetstream::Context,
    subject: &Subject,
    metrics: &Metrics,
) {
    scan_window(pending, metrics);
    for (i, entry) in pending.iter_mut().enumerate() {
        if i > 0 && !matches!(entry.state, State::Failed(_)) {
            continue;
        }
        // A record NATS will not take now stays failed, for the next pass.
        entry.state = match send_once(js, subject, &entry.payload, entry.msg_id.as_deref()).await {
            Ok(ack) => State::Waiting(ack),
            Err(error) => {
                metrics.jetstream_failure(classify(&error));
                State::Failed(error)
            }
        };
    }
}

/// Polls `ack` once, without waiting.
fn poll_once(ack: &mut AckFuture) -> Option<Result<PublishAck, PublishError>> {
    let mut cx = TaskContext::from_waker(Waker::noop());
    match ack.as_mut().poll(&mut cx) {
        Poll::Ready(outcome) => Some(outcome),
        Poll::Pending => None,
    }
}

/// What kind of failure a publish error is, for the metrics and the retry.
fn classify(error: &PublishError) -> PublishFailure {
    match error.kind() {
        PublishErrorKind::TimedOut => PublishFailure::Timeout,
        PublishErrorKind::StreamNotFound => PublishFailure::NoResponders,
        PublishErrorKind::BrokenPipe => PublishFailure::BrokenPipe,
        PublishErrorKind::MaxPayloadExceeded => PublishFailure::MaxPayload,
        PublishErrorKind::MaxAckPending => PublishFailure::Send,
        _ => {
            let api = std::error::Error::source(error)
                .and_then(|source| source.downcast_ref::<jetstream::Error>());
            match api {
                Some(api)
                    if api.error_code()
                        == jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT =>
                {
                    PublishFailure::MessageIdInProcess
                }
                Some(_) => PublishFailure::Api,
                None => PublishFailure::Send,
            }
        }
    }
}

/// A run of failed publishes: logged once when it starts and once when it ends, with a backoff
/// that grows while it lasts.
#[derive(Default)]
struct Outage {
    started: Option<Instant>,
    retries: u64,
    delay: Duration,
}

impl Outage {
    fn failed(&mut self, failure: PublishFailure, error: &PublishError) -> Duration {
        self.retries += 1;
        if self.started.is_none() {
            self.started = Some(Instant::now());
            self.delay = RETRY_FIRST;
            if failure.is_error() {
                tracing::warn!(kind = failure.as_str(), error = %error, "JetStream publish failed; retrying until it is stored (no ack is sent before)");
            }
        } else {
            self.delay = (self.delay * 2).min(RETRY_MAX);
        }
        self.delay
    }

    fn recovered(&mut self) {
        if let Some(started) = self.started.take() {
            tracing::info!(
                retries = self.retries,
                after_ms = started.elapsed().as_millis() as u64,
                "JetStream publishes stored again"
            );
            self.retries = 0;
        }
    }
}

/// Finds the stream, or creates it as `config` says. A new cluster may answer "no suitable
/// peers" or time out until its meta leader is elected: retried for up to a minute.
async fn ensure_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
    subject: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut delay = Duration::from_millis(200);
    loop {
        let result = find_or_create(js, config, subject).await;
        match result {
            Ok(()) => return Ok(()),
            Err(Setup::Fatal(reason)) => return Err(reason),
            Err(Setup::Retry(reason)) if Instant::now() + delay < deadline => {
                tracing::warn!(stream = %config.stream, error = %reason, retry_in_ms = delay.as_millis() as u64, "JetStream stream not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(Setup::Retry(reason)) => return Err(reason),
        }
    }
}

enum Setup {
    Retry(String),
    Fatal(String),
}

async fn find_or_create(
    js: &jetstream::Context,
    config: &NatsConfig,
    subject: &str,
) -> Result<(), Setup> {
    match js.get_stream(&config.stream).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| Setup::Retry(e.to_string()))?;
            let covered = info
                .config
                .subjects
                .iter()
                .any(|pattern| subject_matches(pattern, subject));
            if !covered {
                return Err(Setup::Fatal(format!(
                    "stream {} exists but its subjects {:?} do not cover {subject}",
                    config.stream, info.config.subjects
                )));
            }
            if info.config.duplicate_window < config.duplicate_window {
                tracing::warn!(stream = %config.stream, duplicate_window_s = info.config.duplicate_window.as_secs(), "the existing stream's duplicate window is shorter than nats_duplicate_window; resends older than it may be stored twice");
            }
            tracing::info!(stream = %config.stream, replicas = info.config.num_replicas, messages = info.state.messages, "JetStream stream found");
            Ok(())
        }
        Err(error)
            if matches!(error.kind(), GetStreamErrorKind::JetStream(api)
                if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            create(js, config).await
        }
        Err(error) => Err(Setup::Retry(error.to_string())),
    }
}

async fn create(js: &jetstream::Context, config: &NatsConfig) -> Result<(), Setup> {
    let stream_config = stream::Config {
        name: config.stream.clone(),
        subjects: vec![config.stream_subjects()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window,
        max_age: config.max_age.unwrap_or_default(),
        max_bytes: config.max_bytes.map_or(-1, |b| b as i64),
        // A full stream refuses new messages (they are retried, and backpressure reaches the
        // clients) rather than evicting unread ones.
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    match js.create_stream(stream_config).await {
        Ok(_) => {
            tracing::info!(stream = %config.stream, subjects = %config.stream_subjects(), replicas = config.replicas, "JetStream stream created");
            Ok(())
        }
        Err(error) => Err(Setup::Retry(error.to_string())),
    }
}

/// Whether `subject` matches a stream's subject `pattern` (`*` one token, `>` the rest).
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for want in pattern.split('.') {
        match (want, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (want, Some(token)) if want == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_patterns_match_as_nats_does() {
        assert!(subject_matches("a.*", "a.b"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(!subject_matches("a.b", "a.c"));
    }
}
