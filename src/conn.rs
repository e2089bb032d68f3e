//! One connection's task: reads, heartbeat, deadlines and writes, ending in one [`CloseReason`].
//!
//! The task holds no read buffer while the connection is idle: it waits for readiness, reads
//! into a buffer that lives only while bytes are pending, and frees it once every complete
//! object has been taken out. Replies written by the sink (acks, `queue_full`) arrive through a
//! per-connection channel that is created at the first item that needs one; each such item
//! reserves its reply slot before it is queued, so the sink never waits for a client.
//!
//! Everything that can end the connection is checked in one loop: the server's shutdown, a
//! kick, socket errors (classified into reset, keep-alive or user timeout), the heartbeat, the
//! idle, write and age deadlines, the frame limit and the error budget.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, error::TrySendError, OwnedPermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::close_reason::CloseReason;
use crate::config::{Config, HeartbeatMode, Overflow};
use crate::protocol::{self, Decoder, ErrorCode, Frame, Inbound, Item, ItemError, Outbound};
use crate::queue::{Producer, Pushed};
use crate::record::Record;
use crate::registry::{ConnGuard, ConnInfo};
use crate::sockopt;

/// Bytes asked of the kernel per read. Objects larger than this take several reads.
const READ_CHUNK: usize = 4096;
/// Pending output above which the connection stops reading and stops taking replies: a client
/// that does not read cannot make the server buffer without bound.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// Longest time spent flushing a last message (an error or `shutting_down`) before closing.
const CLOSING_FLUSH: Duration = Duration::from_secs(1);
/// A queue wait longer than this does not count as the peer's silence.
const STALL_FORGIVEN: Duration = Duration::from_millis(10);

/// Limits and timers that apply to every connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnParams {
    pub max_frame: usize,
    pub error_budget: u32,
    pub heartbeat: HeartbeatMode,
    pub heartbeat_interval: Duration,
    pub heartbeat_misses: u32,
    pub idle_timeout: Option<Duration>,
    pub write_timeout: Duration,
    pub max_age: Option<Duration>,
    pub max_age_grace: Duration,
    pub max_pending_replies: usize,
    pub overflow: Overflow,
}

impl ConnParams {
    pub fn from_config(config: &Config) -> ConnParams {
        ConnParams {
            max_frame: config.max_frame,
            error_budget: config.error_budget,
            heartbeat: config.heartbeat,
            heartbeat_interval: config.heartbeat_interval,
            heartbeat_misses: config.heartbeat_misses,
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
            max_age: config.max_age,
            max_age_grace: config.max_age_grace,
            max_pending_replies: config.max_pending_replies,
            overflow: config.overflow,
        }
    }
}

/// What every connection shares with the server.
pub(crate) struct ConnShared {
    pub params: ConnParams,
    /// First stage of shutdown: take no more items (already buffered objects are still queued).
    pub stop_reading: CancellationToken,
    /// Second stage: close now, after a brief flush.
    pub close: CancellationToken,
}

/// Serves one accepted connection until it ends, then records why in the registry.
pub(crate) async fn run(
    stream: TcpStream,
    mut guard: ConnGuard,
    shared: Arc<ConnShared>,
    producer: Producer<Record>,
) {
    let mut conn = Connection::new(stream, Arc::clone(guard.info()), shared, producer);
    let reason = conn.serve().await;
    drop(conn);
    guard.close(reason);
}

/// Why the loop stops, and what to tell the peer first.
struct Close {
    reason: CloseReason,
    notice: Option<Outbound>,
}

impl From<CloseReason> for Close {
    fn from(reason: CloseReason) -> Close {
        Close {
            reason,
            notice: None,
        }
    }
}

fn notice(code: ErrorCode, message: &'static str) -> Option<Outbound> {
    Some(Outbound::Error {
        code,
        message: message.into(),
        id: None,
    })
}

struct Connection {
    stream: TcpStream,
    info: Arc<ConnInfo>,
    shared: Arc<ConnShared>,
    /// `None` once the connection will queue no more items.
    producer: Option<Producer<Record>>,
    /// Socket reads allowed: false after end of stream or the shutdown's first stage.
    reading: bool,
    eof: bool,
    read_buf: BytesMut,
    decoder: Decoder,
    out: BytesMut,
    reply_tx: Option<mpsc::Sender<Outbound>>,
    reply_rx: Option<mpsc::Receiver<Outbound>>,
    /// An item waiting for a reply slot.
    stalled: Option<Item>,
    heartbeat: bool,
    last_in: Instant,
    pings_sent: u32,
    /// When pending output last made progress (or became pending).
    out_since: Instant,
    started: Instant,
    max_age_noticed: bool,
    errors: u32,
}

impl Connection {
    fn new(
        stream: TcpStream,
        info: Arc<ConnInfo>,
        shared: Arc<ConnShared>,
        producer: Producer<Record>,
    ) -> Connection {
        let now = Instant::now();
        let params = &shared.params;
        Connection {
            decoder: Decoder::new(params.max_frame),
            heartbeat: params.heartbeat == HeartbeatMode::Required,
            stream,
            info,
            shared,
            producer: Some(producer),
            reading: true,
            eof: false,
            read_buf: BytesMut::new(),
            out: BytesMut::new(),
            reply_tx: None,
            reply_rx: None,
            stalled: None,
            last_in: now,
            pings_sent: 0,
            out_since: now,
            started: now,
            max_age_noticed: false,
            errors: 0,
        }
    }

    async fn serve(&mut self) -> CloseReason {
        match self.serve_until_close().await {
            Ok(reason) => reason,
            Err(close) => self.finish(close).await,
        }
    }

    /// The loop. `Ok` is an orderly end with nothing left to send; `Err` closes after a notice.
    async fn serve_until_close(&mut self) -> Result<CloseReason, Close> {
        loop {
            self.process_buffered().await?;
            if self.eof && self.reply_rx.is_none() && self.out.is_empty() {
                return Ok(self.orderly_reason());
            }
            let now = Instant::now();
            self.check_timers(now)?;
            let deadline = self.next_deadline(now);
            let room = self.out.len() < OUT_HIGH_WATER;
            let want_read = self.reading && self.stalled.is_none() && room;
            tokio::select! {
                biased;
                _ = self.shared.close.cancelled() => {
                    return Err(Close {
                        reason: CloseReason::Shutdown,
                        notice: notice(ErrorCode::ShuttingDown, "the server is shutting down; reconnect later"),
                    });
                }
                _ = self.info.kicked() => return Err(CloseReason::Kicked.into()),
                _ = self.shared.stop_reading.cancelled(), if self.reading => {
                    self.read_what_arrived().await?;
                    self.reading = false;
                }
                ready = self.stream.writable(), if !self.out.is_empty() => {
                    ready.map_err(|e| self.io_close(&e))?;
                    self.write_some()?;
                }
                permit = reserve(self.reply_tx.as_ref()), if self.stalled.is_some() => {
                    let item = self.stalled.take().expect("branch runs only when stalled");
                    self.enqueue(item, permit).await?;
                }
                reply = recv(self.reply_rx.as_mut()), if self.reply_rx.is_some() && room => match reply {
                    Some(message) => self.send(&message),
                    None => self.reply_rx = None,
                },
                ready = self.stream.readable(), if want_read => {
                    ready.map_err(|e| self.io_close(&e))?;
                    self.read_some()?;
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Sends the notice, if any, flushes briefly, and returns the reason.
    async fn finish(&mut self, close: Close) -> CloseReason {
        if let Some(message) = &close.notice {
            self.send(message);
            let bound = CLOSING_FLUSH.min(self.shared.params.write_timeout);
            let flush = async {
                while !self.out.is_empty() {
                    if self.stream.writable().await.is_err() || self.write_some().is_err() {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(bound, flush).await;
        }
        close.reason
    }

    fn orderly_reason(&self) -> CloseReason {
        if self.max_age_noticed {
            CloseReason::MaxAge
        } else {
            CloseReason::PeerClosed
        }
    }

    /// Reads what the socket holds, without waiting. Returns false when nothing was read.
    fn read_some(&mut self) -> Result<bool, Close> {
        self.read_buf.reserve(READ_CHUNK);
        match self.stream.try_read_buf(&mut self.read_buf) {
            Ok(0) => {
                if self.decoder.is_mid_frame() {
                    tracing::debug!(
                        conn_id = self.info.id,
                        pending = self.read_buf.len(),
                        "peer closed in the middle of an object"
                    );
                }
                self.eof = true;
                self.reading = false;
                Ok(false)
            }
            Ok(n) => {
                let now = Instant::now();
                self.info.received(n, now.into_std());
                self.last_in = now;
                self.pings_sent = 0;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(self.io_close(&e)),
        }
    }

    /// At shutdown, takes the items that already arrived in the kernel's receive buffer, so that
    /// what a client sent before the shutdown began is queued and written, not dropped with the
    /// socket. Bounded, so a client that keeps sending cannot hold the shutdown.
    async fn read_what_arrived(&mut self) -> Result<(), Close> {
        const MAX_READS: usize = 256;
        for _ in 0..MAX_READS {
            if self.eof || self.stalled.is_some() || !self.read_some()? {
                break;
            }
            self.process_buffered().await?;
        }
        Ok(())
    }

    fn write_some(&mut self) -> Result<(), Close> {
        match self.stream.try_write(&self.out) {
            Ok(n) => {
                let now = Instant::now();
                self.out.advance(n);
                self.info.sent(n, now.into_std());
                self.out_since = now;
                if self.out.is_empty() {
                    // An idle connection keeps no output buffer.
                    self.out = BytesMut::new();
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(self.io_close(&e)),
        }
    }

    fn send(&mut self, message: &Outbound) {
        if self.out.is_empty() {
            self.out_since = Instant::now();
        }
        message.encode(&mut self.out);
    }

    /// Names a socket error. `ETIMEDOUT` (or an unreachable host reported while retrying) comes
    /// from the user timeout when sent data was unacknowledged, from keep-alive otherwise.
    fn io_close(&self, error: &io::Error) -> Close {
        use io::ErrorKind::*;
        let reason = match error.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe if self.eof => CloseReason::PeerClosed,
            ConnectionReset | ConnectionAborted | BrokenPipe => CloseReason::Reset,
            TimedOut | HostUnreachable | NetworkUnreachable => {
                match sockopt::timeout_cause(SockRef::from(&self.stream)) {
                    Some(sockopt::TimeoutCause::Retransmission) => CloseReason::UserTimeout,
                    Some(sockopt::TimeoutCause::Keepalive) | None => CloseReason::KeepaliveTimeout,
                }
            }
            _ => {
                tracing::warn!(conn_id = self.info.id, error = %error, "unexpected socket error");
                CloseReason::InternalError
            }
        };
        reason.into()
    }

    /// Handles every complete object in the read buffer, unless an item waits for a reply slot.
    async fn process_buffered(&mut self) -> Result<(), Close> {
        while self.stalled.is_none() {
            let frame = match self.decoder.decode(&mut self.read_buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(too_large) => {
                    tracing::warn!(conn_id = self.info.id, peer = %self.info.peer, limit = too_large.limit, "object larger than max_frame");
                    return Err(Close {
                        reason: CloseReason::FrameTooLarge,
                        notice: Some(Outbound::Error {
                            code: ErrorCode::FrameTooLarge,
                            message: format!(
                                "object larger than {} bytes; closing",
                                too_large.limit
                            )
                            .into(),
                            id: None,
                        }),
                    });
                }
            };
            match frame {
                Frame::Junk(bytes) => self.refuse(ItemError {
                    code: ErrorCode::InvalidJson,
                    message: format!(
                        "expected a JSON object, got {} bytes that cannot start one",
                        bytes.len()
                    ),
                    id: None,
                })?,
                Frame::Object(bytes) => match protocol::parse(bytes) {
                    Ok(Inbound::Item(item)) => self.accept(item).await?,
                    Ok(Inbound::Hello) => self.hello(),
                    Ok(Inbound::Ping) => self.send(&Outbound::Pong),
                    Ok(Inbound::Pong) => {}
                    Err(error) => self.refuse(error)?,
                },
            }
        }
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            self.read_buf = BytesMut::new();
        }
        if !self.reading && self.stalled.is_none() {
            // No item will follow: let the queue close, and let the reply channel end once
            // every queued item has been answered.
            self.producer = None;
            self.reply_tx = None;
        }
        Ok(())
    }

    fn hello(&mut self) {
        let params = &self.shared.params;
        if params.heartbeat != HeartbeatMode::Off {
            self.heartbeat = true;
        }
        let heartbeat_ms = if self.heartbeat {
            params.heartbeat_interval.as_millis() as u64
        } else {
            0
        };
        let max_frame = params.max_frame;
        self.send(&Outbound::Hello {
            heartbeat_ms,
            max_frame,
        });
    }

    fn refuse(&mut self, error: ItemError) -> Result<(), Close> {
        self.errors += 1;
        self.info.error();
        tracing::warn!(conn_id = self.info.id, peer = %self.info.peer, code = error.code.as_str(), detail = %error.message, "item refused");
        self.send(&error.into());
        if self.errors > self.shared.params.error_budget {
            return Err(Close {
                reason: CloseReason::ProtocolError,
                notice: notice(ErrorCode::TooManyErrors, "error budget exceeded; closing"),
            });
        }
        Ok(())
    }

    /// Queues a valid item, first reserving its reply slot when it will need one.
    async fn accept(&mut self, item: Item) -> Result<(), Close> {
        let needs_reply =
            item.id.is_some() || self.shared.params.overflow != Overflow::Backpressure;
        if !needs_reply {
            return self.enqueue(item, None).await;
        }
        let capacity = self.shared.params.max_pending_replies;
        let tx = match &self.reply_tx {
            Some(tx) => tx.clone(),
            None => {
                let (tx, rx) = mpsc::channel(capacity);
                self.reply_rx = Some(rx);
                self.reply_tx.insert(tx).clone()
            }
        };
        match tx.try_reserve_owned() {
            Ok(permit) => self.enqueue(item, Some(permit)).await,
            Err(TrySendError::Full(_)) => {
                self.stalled = Some(item);
                Ok(())
            }
            Err(TrySendError::Closed(_)) => unreachable!("the connection holds the receiver"),
        }
    }

    async fn enqueue(
        &mut self,
        item: Item,
        reply: Option<OwnedPermit<Outbound>>,
    ) -> Result<(), Close> {
        let Some(producer) = &self.producer else {
            unreachable!("the producer is dropped only when no item can follow");
        };
        let record = Record {
            conn_id: self.info.id,
            peer: self.info.peer,
            received_at: SystemTime::now(),
            ip: item.ip,
            item: item.raw,
            id: item.id,
            reply,
        };
        self.info.item();
        let waited_from = Instant::now();
        let pushed = tokio::select! {
            pushed = producer.push(record) => pushed,
            _ = self.shared.close.cancelled() => return Err(CloseReason::Shutdown.into()),
            _ = self.info.kicked() => return Err(CloseReason::Kicked.into()),
        };
        match pushed {
            Pushed::Queued => {}
            Pushed::Rejected(record) | Pushed::Evicted(record) => {
                record.reject(
                    ErrorCode::QueueFull,
                    "the server queue is full; item dropped",
                );
            }
        }
        if waited_from.elapsed() > STALL_FORGIVEN {
            // The server made the peer wait; that is not the peer's silence.
            self.last_in = Instant::now();
        }
        Ok(())
    }

    fn check_timers(&mut self, now: Instant) -> Result<(), Close> {
        let shared = Arc::clone(&self.shared);
        let params = &shared.params;
        if !self.out.is_empty() && now >= self.out_since + params.write_timeout {
            return Err(CloseReason::WriteTimeout.into());
        }
        let silence = now - self.last_in;
        if self.heartbeat {
            if silence >= params.heartbeat_interval * params.heartbeat_misses {
                return Err(CloseReason::HeartbeatTimeout.into());
            }
            if silence >= params.heartbeat_interval * (self.pings_sent + 1) {
                self.pings_sent += 1;
                self.send(&Outbound::Ping);
            }
        }
        if params.idle_timeout.is_some_and(|idle| silence >= idle) {
            return Err(CloseReason::IdleTimeout.into());
        }
        if let Some(max_age) = params.max_age {
            let age = now - self.started;
            if age >= max_age + params.max_age_grace {
                return Err(CloseReason::MaxAge.into());
            }
            if age >= max_age && !self.max_age_noticed {
                self.max_age_noticed = true;
                let message = format!(
                    "connection reached its maximum age; it closes in {}: reconnect",
                    humantime::format_duration(params.max_age_grace)
                );
                self.send(&Outbound::Error {
                    code: ErrorCode::MaxAge,
                    message: message.into(),
                    id: None,
                });
            }
        }
        Ok(())
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let params = &self.shared.params;
        let mut next = now + Duration::from_secs(3600);
        if !self.out.is_empty() {
            next = next.min(self.out_since + params.write_timeout);
        }
        if self.heartbeat {
            let interval = params.heartbeat_interval;
            next = next.min(self.last_in + interval * (self.pings_sent + 1));
            next = next.min(self.last_in + interval * params.heartbeat_misses);
        }
        if let Some(idle) = params.idle_timeout {
            next = next.min(self.last_in + idle);
        }
        if let Some(max_age) = params.max_age {
            let at = if self.max_age_noticed {
                max_age + params.max_age_grace
            } else {
                max_age
            };
            next = next.min(self.started + at);
        }
        next
    }
}

async fn reserve(tx: Option<&mpsc::Sender<Outbound>>) -> Option<OwnedPermit<Outbound>> {
    match tx {
        Some(tx) => tx.clone().reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

async fn recv(rx: Option<&mut mpsc::Receiver<Outbound>>) -> Option<Outbound> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
