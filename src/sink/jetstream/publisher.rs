//! The publisher task: moves the sink's records into the stream in fast-ingest batches (see
//! [`super::fast_ingest`]) and counts those JetStream has stored, in order.
//!
//! One batch is open at a time. Its messages go out as far as the server's flow control allows
//! (`flow` messages per ack, two acks' worth in flight); each flow ack confirms every record up
//! to it. When there is nothing more to send, the batch is committed, and the commit's publish
//! ack confirms the rest. So a quiet gateway pays one round trip more per burst than a plain
//! publish, and a busy one far fewer acks than messages.
//!
//! When anything goes wrong (a gap, a refused message, no stream leader, no answer within
//! `nats_publish_timeout`), the batch is given up: the stream stored an unbroken prefix of it and
//! nothing after the first message it missed. After a backoff, a new batch publishes every record
//! not yet confirmed, from the oldest, with the same message ids: those the stream stored
//! without our hearing of it are dropped as duplicates. Nothing is confirmed before JetStream
//! said so, and no record is ever stored after a later one of the same gateway.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::{Client, HeaderMap, Subject, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use super::fast_ingest::{reply_prefix, reply_subject, Op, Reply};
use crate::metrics::{Metrics, PublishFailure};

/// Acks' worth of messages in flight at once (ADR-50: two keep the server busy while the client
/// waits for the first).
const OUTSTANDING_FLOWS: u64 = 2;

/// First and longest wait before a failed batch is published again.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// One record on its way to the stream.
pub(super) struct Entry {
    pub payload: Bytes,
    pub msg_id: Option<String>,
    pub queued: Instant,
    /// Its place in the sink's window, given back when it is confirmed.
    pub permit: OwnedSemaphorePermit,
}

/// See the module's documentation.
pub(super) struct Publisher {
    pub client: Client,
    pub subject: Subject,
    pub input: mpsc::UnboundedReceiver<Entry>,
    /// Records confirmed so far, in the order the sink wrote them.
    pub confirmed: watch::Sender<u64>,
    /// The largest flow asked of the server (it may allow less).
    pub max_flow: u16,
    /// Longest wait for any answer while one is due.
    pub ack_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// How a batch ended.
enum End {
    /// Committed: every record it carried is stored.
    Committed,
    /// Given up: the records after those stored go out again in a new batch, after a backoff.
    Failed(PublishFailure, String),
    /// The sink is gone and every record it wrote is confirmed.
    Closed,
}

/// The open batch.
struct Batch {
    /// `<inbox>.<flow>.fail.`, the start of every reply subject.
    prefix: String,
    replies: Subscriber,
    /// Whether the server answered the first message (and said what flow it allows).
    started: bool,
    /// Messages published, and messages known stored (both counted from 1).
    sent: u64,
    acked: u64,
    /// Messages per flow ack, as the server last said.
    flow: u64,
    committing: bool,
    /// Why the server is ending the batch, once it said so (a gap, a refused message).
    ending: Option<(PublishFailure, String)>,
    last_heard: Instant,
}

/// The publisher's state between batches.
struct State {
    /// Records not yet confirmed, oldest first: the open batch's message `acked + 1 + i` is
    /// `pending[i]`.
    pending: VecDeque<Entry>,
    input_closed: bool,
    count: u64,
    outage: Outage,
}

impl Publisher {
    /// Runs until the sink is dropped and every record it wrote is confirmed.
    pub(super) async fn run(mut self) {
        let mut state = State {
            pending: VecDeque::new(),
            input_closed: false,
            count: 0,
            outage: Outage::default(),
        };
        loop {
            if state.pending.is_empty() {
                match self.input.recv().await {
                    Some(entry) => state.pending.push_back(entry),
                    None => return,
                }
            }
            match self.batch(&mut state).await {
                End::Committed => {}
                End::Failed(failure, detail) => {
                    self.metrics.jetstream_failure(failure);
                    let delay = state.outage.failed(failure, &detail);
                    tokio::time::sleep(delay).await;
                }
                End::Closed => return,
            }
        }
    }

    /// Opens a batch and publishes through it until it is committed or given up.
    async fn batch(&mut self, state: &mut State) -> End {
        let inbox = self.client.new_inbox();
        let replies = match self.client.subscribe(format!("{inbox}.>")).await {
            Ok(replies) => replies,
            Err(error) => return End::Failed(PublishFailure::Send, error.to_string()),
        };
        let mut batch = Batch {
            prefix: reply_prefix(&inbox, self.max_flow),
            replies,
            started: false,
            sent: 0,
            acked: 0,
            flow: 1,
            committing: false,
            ending: None,
            last_heard: Instant::now(),
        };
        let end = self.drive(state, &mut batch).await;
        // Records published but not confirmed are no longer in flight: they wait for the next
        // batch.
        self.metrics
            .jetstream_in_flight(-((batch.sent - batch.acked) as i64));
        end
    }

    async fn drive(&mut self, state: &mut State, batch: &mut Batch) -> End {
        // The first message opens the batch; nothing more goes out before the server answers.
        if let Err(end) = self.publish(state, batch, Op::Start).await {
            return end;
        }
        let check_every = (self.ack_timeout / 3).max(Duration::from_millis(100));
        let mut clock = tokio::time::interval(check_every);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.take_available(state);
            if batch.started && !batch.committing {
                if let Err(end) = self.publish_allowed(state, batch).await {
                    return end;
                }
                let all_sent = (batch.sent - batch.acked) as usize == state.pending.len();
                if all_sent {
                    // Nothing more to send now: the commit confirms the tail no flow ack covers.
                    if let Err(end) = self.publish(state, batch, Op::CommitEob).await {
                        return end;
                    }
                    batch.committing = true;
                }
            }
            tokio::select! {
                biased;
                message = batch.replies.next() => {
                    let Some(message) = message else {
                        return End::Failed(PublishFailure::Send, "the batch's inbox was closed".into());
                    };
                    batch.last_heard = Instant::now();
                    let reply = Reply::parse(message.status, &message.payload);
                    if let Some(end) = self.on_reply(state, batch, reply) {
                        return end;
                    }
                }
                entry = self.input.recv(), if !state.input_closed && !batch.committing => {
                    match entry {
                        Some(entry) => state.pending.push_back(entry),
                        None => state.input_closed = true,
                    }
                }
                _ = clock.tick() => {
                    let silent = batch.last_heard.elapsed();
                    if silent >= self.ack_timeout {
                        return End::Failed(
                            PublishFailure::Timeout,
                            format!("no answer from JetStream for {} ms", silent.as_millis()),
                        );
                    }
                    // Lost acks are asked for again; a server that misses messages says so.
                    if batch.started && silent >= check_every {
                        if let Err(end) = self.publish(state, batch, Op::Ping).await {
                            return end;
                        }
                    }
                }
            }
        }
    }

    /// Takes the records the sink wrote meanwhile, without waiting.
    fn take_available(&mut self, state: &mut State) {
        loop {
            match self.input.try_recv() {
                Ok(entry) => state.pending.push_back(entry),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    state.input_closed = true;
                    return;
                }
            }
        }
    }

    /// Publishes pending records while the flow control allows.
    async fn publish_allowed(&mut self, state: &mut State, batch: &mut Batch) -> Result<(), End> {
        while batch.sent - batch.acked < batch.flow * OUTSTANDING_FLOWS
            && ((batch.sent - batch.acked) as usize) < state.pending.len()
        {
            self.publish(state, batch, Op::Append).await?;
        }
        Ok(())
    }

    /// Publishes the batch's next message: the next pending record (`Start`, `Append`), or an
    /// empty control message (`CommitEob`, `Ping`).
    async fn publish(&mut self, state: &State, batch: &mut Batch, op: Op) -> Result<(), End> {
        let result = match op {
            Op::Start | Op::Append => {
                let entry = &state.pending[(batch.sent - batch.acked) as usize];
                batch.sent += 1;
                self.metrics.jetstream_in_flight(1);
                let reply = reply_subject(&batch.prefix, batch.sent, op);
                let mut headers = HeaderMap::new();
                if let Some(id) = &entry.msg_id {
                    headers.insert("Nats-Msg-Id", id.as_str());
                }
                self.client
                    .publish_with_reply_and_headers(
                        self.subject.clone(),
                        reply,
                        headers,
                        entry.payload.clone(),
                    )
                    .await
            }
            Op::CommitEob | Op::Ping => {
                let seq = if op == Op::Ping {
                    batch.sent
                } else {
                    batch.sent + 1
                };
                let reply = reply_subject(&batch.prefix, seq, op);
                self.client
                    .publish_with_reply(self.subject.clone(), reply, Bytes::new())
                    .await
            }
        };
        result.map_err(|error| {
            let failure = match error.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    PublishFailure::MaxPayload
                }
                _ => PublishFailure::Send,
            };
            End::Failed(failure, error.to_string())
        })
    }

    /// Applies the server's answer; `Some` when the batch is over.
    fn on_reply(&mut self, state: &mut State, batch: &mut Batch, reply: Reply) -> Option<End> {
        match reply {
            Reply::Flow { seq, flow } => {
                batch.started = true;
                batch.flow = u64::from(flow);
                self.confirm(state, batch, seq, false);
                None
            }
            Reply::Gap { expected } => {
                batch.ending = Some((
                    PublishFailure::Gap,
                    format!("message {expected} of the batch never reached the stream leader"),
                ));
                None
            }
            Reply::Refused { seq, code } => {
                batch.ending = Some((
                    classify(code),
                    format!(
                        "JetStream refused message {seq} of the batch (error {})",
                        code.0
                    ),
                ));
                None
            }
            Reply::Ended { count, duplicate } => {
                self.confirm(state, batch, count, duplicate);
                Some(if batch.acked < batch.sent {
                    let (failure, detail) = batch.ending.take().unwrap_or((
                        PublishFailure::Gap,
                        format!(
                            "JetStream ended the batch after {} of {} messages",
                            batch.acked, batch.sent
                        ),
                    ));
                    End::Failed(failure, detail)
                } else if state.input_closed && state.pending.is_empty() {
                    End::Closed
                } else {
                    End::Committed
                })
            }
            Reply::Failed { code } => Some(End::Failed(
                classify(code),
                format!("JetStream refused the batch (error {})", code.0),
            )),
            Reply::NoResponders => Some(End::Failed(
                PublishFailure::NoResponders,
                "no stream leader answers on the subject".into(),
            )),
            Reply::Unknown => None,
        }
    }

    /// Confirms the batch's messages up to `seq`: they are stored.
    fn confirm(&mut self, state: &mut State, batch: &mut Batch, seq: u64, duplicate: bool) {
        let seq = seq.min(batch.sent);
        if seq <= batch.acked {
            return;
        }
        let n = seq - batch.acked;
        for entry in state.pending.drain(..n as usize) {
            self.metrics
                .jetstream_acked(entry.queued.elapsed(), duplicate);
            drop(entry.permit);
        }
        batch.acked = seq;
        state.count += n;
        self.metrics.jetstream_in_flight(-(n as i64));
        self.confirmed.send_replace(state.count);
        state.outage.recovered();
    }
}

/// What kind of failure a JetStream error code is, for the metrics and the retry.
fn classify(code: jetstream::ErrorCode) -> PublishFailure {
    match code {
        jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT => {
            PublishFailure::MessageIdInProcess
        }
        // The stream leader forgot the batch (it changed, or saw a gap): as good as a gap.
        jetstream::ErrorCode::BATCH_PUBLISH_UNKNOWN_BATCH_ID => PublishFailure::Gap,
        _ => PublishFailure::Api,
    }
}

/// A run of failed batches: logged once when it starts and once when it ends, with a backoff
/// that grows while it lasts.
#[derive(Default)]
struct Outage {
    started: Option<Instant>,
    retries: u64,
    delay: Duration,
}

impl Outage {
    fn failed(&mut self, failure: PublishFailure, detail: &str) -> Duration {
        self.retries += 1;
        if self.started.is_none() {
            self.started = Some(Instant::now());
            self.delay = RETRY_FIRST;
            if failure.is_error() {
                tracing::warn!(kind = failure.as_str(), error = %detail, "JetStream publish failed; publishing again every record not yet stored (no ack is sent before)");
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
