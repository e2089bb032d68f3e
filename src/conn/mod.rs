//! One connection's task: reads, heartbeat, deadlines and writes, ending in one [`CloseReason`].
//!
//! The task holds no read buffer while the connection is idle: it waits for readiness, reads
//! into a buffer that lives only while bytes are pending, and frees it once every complete
//! object has been taken out. Replies written by the sink (acks, `queue_full`) arrive through a
//! per-connection channel that is created at the first item that needs one, one message per
//! read (`record::Replies`); the channel never makes the sink wait, and the connection stops
//! taking items while `max_pending_replies` of them are unanswered.
//!
//! Everything that can end the connection is checked in one loop: the server's shutdown, a
//! kick, socket errors (classified into reset, keep-alive or user timeout), the heartbeat, the
//! idle, write and age deadlines, the frame limit and the error budget.
//!
//! Memory per idle connection is the budget that matters most (a gateway holds hundreds of
//! thousands), so the loop waits in one hand-written `poll` that stores no futures: socket
//! readiness is polled on the stream itself, kicks and shutdown stages arrive through a waker
//! slot on the registry entry, and the timer, the reply channel and a backpressure wait are
//! boxed only while they exist. An idle connection's task is at most 256 bytes, and one silent
//! for `park_after` with nothing pending leaves its task altogether (`park.rs`).
//!
//! This file is the loop, its reads and writes, and the close reasons it ends with; beside it,
//! `deadlines.rs` (every limit checked at each turn, and the one timer), `hello.rs` (the
//! `hello` and authentication) and `shared.rs` (what connections share with the server and
//! its reloads). TLS records are the session's work ([`crate::tls`]): the loop reads and
//! writes plaintext through it.

mod deadlines;
#[cfg(target_os = "linux")]
mod handed;
mod hello;
#[cfg(target_os = "linux")]
mod park;
mod shared;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

#[cfg(target_os = "linux")]
pub(crate) use handed::{resume, Departed, HandedState};
#[cfg(target_os = "linux")]
pub(crate) use park::Parking;
pub(crate) use shared::{reloaded_options, ConnShared, Live, Slot, Stage};

use crate::buffer::{release_if_empty, READ_CHUNK};
use crate::close_reason::CloseReason;
use crate::config::{Config, HeartbeatMode, Overflow};
use crate::metrics::Metrics;
use crate::protocol::{self, Decoder, ErrorCode, Inbound, Item, ItemError, Outbound};
use crate::queue::{Producer, Pushed};
use crate::record::{Answered, Origin, Record, Replies};
use crate::registry::{ConnGuard, SharedInfo};
use crate::sockopt;
use crate::tls::{self, RecordsRead, TlsSession};
use hello::{unauthorized, AUTHENTICATE_FIRST};

/// Pending output above which the connection stops reading and stops taking replies: a client
/// that does not read cannot make the server buffer without bound.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// Longest time spent flushing a last message (an error or `shutting_down`) before closing.
const CLOSING_FLUSH: Duration = Duration::from_secs(1);

/// What woke the connection's loop.
enum Event {
    /// The server asked the connection to close: a kick, memory pressure, or the shutdown's
    /// last stage.
    Asked(CloseReason),
    /// The server asked the client to reconnect within this window (`goaway`).
    GoAway(Duration),
    /// The shutdown's first stage (or a hand-over): read what already arrived, then no more.
    Drain,
    Writable(io::Result<()>),
    Unblocked(Unblocked),
    Reply(Option<Answered>),
    Readable(io::Result<()>),
    Deadline,
}

/// Why the connection takes no new item for now, with the (boxed) wait.
enum Blocked {
    /// An item waits until fewer than `max_pending_replies` are unanswered: the client is not
    /// reading its acks. Nothing to poll of its own: the answers that free it come through the
    /// reply channel, which the loop polls in any case.
    Replies(Item),
    /// A record waits for room in the queue (`backpressure`).
    QueueRoom(Pin<Box<dyn Future<Output = Pushed<Record>> + Send>>),
}

/// The end of a [`Blocked`] wait.
enum Unblocked {
    QueueRoom(Pushed<Record>),
}

/// Serves one accepted connection until it ends, then records why in the registry.
pub(crate) fn run(
    stream: TcpStream,
    guard: ConnGuard,
    shared: Arc<ConnShared>,
    producer: Producer<Record>,
    tls: Option<TlsSession>,
    slot: Slot,
) -> ConnTask {
    let info = SharedInfo::clone(guard.info());
    let conn = Connection::new(stream, info, shared, producer, tls);
    ConnTask::new(conn, guard, slot)
}

/// The connection's task, written by hand rather than as an `async fn`: the compiler would
/// store the connection twice (as an argument and as a local), and every idle connection pays
/// for the task's size.
///
/// The registry entry goes before the socket, on every path (fields drop in declaration order):
/// the registry reads `TCP_INFO` by descriptor only while the entry is in the map, so the
/// descriptor must not be closed, and reused by the kernel, before the entry is gone. A
/// departing connection's entry stays listed until the hand-over has it, so it lets go of the
/// descriptor before the descriptor closes (`Connection::depart`).
pub(crate) struct ConnTask {
    guard: Option<ConnGuard>,
    conn: Option<Connection>,
    /// The last flush, once the connection decided to close; it gives the connection back, so
    /// that the socket outlives the registry entry.
    /// Boxed twice: a thin pointer keeps the task within its size class (a field less than the
    /// fat pointer's two words); only a closing connection pays the second allocation.
    flushing: Option<Box<LastFlush>>,
    /// Its place among `max_connections`, given back when the task ends (not when it parks:
    /// the place goes with it). Held for its `Drop` where connections do not park.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    slot: Option<Slot>,
}

/// The boxed last flush: it ends with the reason and gives the connection back.
type LastFlush = Pin<Box<dyn Future<Output = (CloseReason, Connection)> + Send>>;

impl ConnTask {
    fn new(conn: Connection, guard: ConnGuard, slot: Slot) -> ConnTask {
        ConnTask {
            guard: Some(guard),
            conn: Some(conn),
            flushing: None,
            slot: Some(slot),
        }
    }

    /// Removes the registry entry and records the close, then closes the socket: now rather
    /// than when the task is freed.
    fn close(&mut self, reason: CloseReason) -> Poll<()> {
        if let Some(guard) = self.guard.take() {
            guard.close(reason);
        }
        self.conn = None;
        Poll::Ready(())
    }
}

impl Future for ConnTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some(flushing) = &mut this.flushing {
            let (reason, conn) = std::task::ready!(flushing.as_mut().as_mut().poll(cx));
            this.flushing = None;
            this.conn = Some(conn);
            return this.close(reason);
        }
        let Some(conn) = &mut this.conn else {
            return Poll::Ready(());
        };
        match std::task::ready!(conn.poll_serve(cx)) {
            // An orderly end, nothing to tell: closed now.
            Err(Close {
                reason,
                notice: None,
            }) if !conn.is_tls() => this.close(reason),
            #[cfg(target_os = "linux")]
            Ok(Leaves::ToPark { wake_at }) => match this.park(wake_at) {
                true => Poll::Ready(()),
                // Not parked: the connection goes on in this task.
                false => Pin::new(this).poll(cx),
            },
            #[cfg(target_os = "linux")]
            Ok(Leaves::ForNewProcess) => {
                let conn = this.conn.take().expect("checked above");
                let guard = this.guard.take().expect("taken only at the end");
                let shared = Arc::clone(&conn.shared);
                // Given to the hand-over before the entry leaves the registry: the hand-over
                // ends once only connections that stay are listed, and must find this one in
                // its channel then.
                match conn
                    .depart(&guard)
                    .map(|departed| shared.live.hand_over(departed))
                {
                    Some(true) => guard.hand_over(),
                    // Too late (the hand-over ended): the connection closes here, under the
                    // shutdown that follows.
                    Some(false) => drop(guard),
                    // No copy of the socket.
                    None => guard.close(CloseReason::InternalError),
                }
                Poll::Ready(())
            }
            // Nothing moves off Linux (`Live::moving` stays false).
            #[cfg(not(target_os = "linux"))]
            Ok(Leaves::ForNewProcess) => this.close(CloseReason::Shutdown),
            #[cfg(not(target_os = "linux"))]
            Ok(Leaves::ToPark { .. }) => unreachable!("connections park on Linux only"),
            Err(close) => {
                let conn = this.conn.take().expect("checked above");
                // Boxed: the flush's timer and futures exist only while closing.
                this.flushing = Some(Box::new(Box::pin(conn.finish(close))));
                // Poll once now, so the flush starts and registers its wake-ups.
                Pin::new(this).poll(cx)
            }
        }
    }
}

/// The loop's ends that are not a close.
enum Leaves {
    /// The connection goes on in another process ([`handed`]), quiet, with every reply owed in
    /// its output.
    ForNewProcess,
    /// The connection has been silent for `park_after` with nothing pending: it leaves its task
    /// for a parking shard ([`park`]), which wakes it at `wake_at` (its next deadline) at the
    /// latest.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    ToPark { wake_at: Option<Instant> },
}

/// A close the connection decided: its one reason, and what the peer is told first (nothing
/// for an orderly end).
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

/// Tells the sender of a record the overflow policy dropped.
fn settle(pushed: Pushed<Record>, metrics: &Metrics) {
    match pushed {
        Pushed::Queued => {}
        Pushed::Rejected(record) | Pushed::Evicted(record) => {
            metrics.item_refused(ErrorCode::QueueFull);
            record.reject(
                ErrorCode::QueueFull,
                "the server queue is full; item dropped",
            );
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

bitflags::bitflags! {
    /// A connection's yes/no states, a bit each (the idle task's size).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Flags: u8 {
        /// Socket reads allowed: off after end of stream or the shutdown's first stage.
        const READING = 1;
        /// The peer ended its side.
        const EOF = 1 << 1;
        /// The application heartbeat applies (`required`, or a `hello` under `negotiated`).
        const HEARTBEAT = 1 << 2;
        /// The `max_age` notice was sent.
        const MAX_AGE_NOTICED = 1 << 3;
        /// The client authenticated (client certificate or token).
        const AUTHENTICATED = 1 << 4;
        /// The first heartbeat ping was sent: the pings follow the silence from then on, with
        /// no phase ([`crate::phase::first_ping_early`]).
        const PINGED = 1 << 5;
        /// The connection saw an upgrade's hand-over and cannot move: counted in
        /// [`Live::staying`] until it ends.
        const STAYS = 1 << 6;
        /// Parking failed once (no copy of the socket, or the shards have stopped): the
        /// connection stays a task.
        const UNPARKABLE = 1 << 7;
    }
}

/// The TLS session in `extras`, borrowed apart from the connection's other fields (its buffers
/// go to [`TlsSession::drive`] beside it).
fn session(extras: &mut Option<Box<Extras>>) -> Option<&mut TlsSession> {
    extras.as_mut()?.tls.as_mut()
}

/// The close the server asked for, with what the peer is told.
fn asked_to_close(reason: CloseReason) -> Close {
    let notice = match reason {
        CloseReason::Shutdown => notice(
            ErrorCode::ShuttingDown,
            "the server is shutting down; reconnect later",
        ),
        CloseReason::MemoryPressure => notice(
            ErrorCode::MemoryPressure,
            "the server holds too many partial objects and this connection held one of the largest; closing",
        ),
        CloseReason::Superseded => notice(
            ErrorCode::Superseded,
            "a newer connection with your client_id took this one's place; closing",
        ),
        _ => None,
    };
    Close { reason, notice }
}

struct Connection {
    stream: TcpStream,
    info: SharedInfo,
    shared: Arc<ConnShared>,
    /// `None` once the connection will queue no more items.
    producer: Option<Producer<Record>>,
    flags: Flags,
    read_buf: BytesMut,
    decoder: Decoder,
    out: BytesMut,
    /// The way back from the sink, made at the first item that needs a reply.
    replies: Option<Box<ReplyChannel>>,
    /// Set while an item waits for its replies to be taken or for room in the queue.
    blocked: Option<Box<Blocked>>,
    /// The next deadline's timer, while there is one.
    timer: Option<Pin<Box<Sleep>>>,
    /// Microseconds from accept ([`ConnInfo::started`]) to the last byte received: an offset
    /// rather than an `Instant`, to keep the idle task small.
    last_in: u64,
    /// Pings sent since the last byte in: fewer than `heartbeat_misses` (at most
    /// [`crate::config::MAX_HEARTBEAT_MISSES`]), so 16 bits (the idle task's size).
    pings_sent: u16,
    /// Microseconds from accept to when pending output last made progress (or became pending).
    out_since: u64,
    /// Milliseconds from accept, modulo 2³², to the read that brought the first byte of the
    /// object the decoder is in the middle of (meaningful only then): `frame_timeout` counts
    /// from it. 32 bits for the idle task's size; a frame never lasts 49 days.
    frame_started: u32,
    errors: u32,
    /// The count of socket option changes when the socket's options were last set
    /// ([`ConnShared::options_changes`]), its low 8 bits (the idle task's size): every reload
    /// wakes every connection, so none misses 256 in a row.
    options_seen: u8,
    /// What only some connections have (a `client_id`, a TLS session). Boxed: a thin pointer
    /// keeps a plain connection's idle task small (`bench/idle_memory.sh`).
    extras: Option<Box<Extras>>,
}

/// What the items of one read share, made once for the read: they arrived together.
#[derive(Default)]
struct ReadShare {
    origin: Option<Arc<Origin>>,
    received_at: Option<SystemTime>,
    /// Where the replies of the read's records gather.
    replies: Option<Arc<Replies>>,
}

/// A connection's reply channel: the sink sends each read's replies at once, when its last
/// record is settled ([`Replies`]).
struct ReplyChannel {
    /// `None` once no item will follow, so that the channel ends with the last group.
    tx: Option<mpsc::UnboundedSender<Answered>>,
    /// `None` once the channel has ended.
    rx: Option<mpsc::UnboundedReceiver<Answered>>,
    /// Records queued with a reply group whose answers have not arrived: at most
    /// `max_pending_replies`, which bounds what the channel holds.
    unanswered: usize,
}

/// The state only some connections have.
#[derive(Default)]
struct Extras {
    /// The `client_id` of the client's `hello`, carried by each of its records.
    client_id: Option<Arc<str>>,
    /// The name the client authenticated under, carried by each of its records.
    auth_name: Option<Arc<str>>,
    /// The TLS session, on a TLS listener. Its records are read from the socket and written to
    /// [`Connection::out`] here, so that the rest of the connection sees plaintext in and
    /// ciphertext out.
    tls: Option<TlsSession>,
}

impl Drop for Connection {
    /// The read buffer goes with the connection: its bytes leave the budget, on every path.
    fn drop(&mut self) {
        let shared = &self.shared;
        (shared.live.buffers).report(&self.info, 0, || None, &shared.registry);
        if self.flags.contains(Flags::STAYS) {
            shared.live.count_staying(false);
        }
    }
}

impl Connection {
    fn new(
        stream: TcpStream,
        info: SharedInfo,
        shared: Arc<ConnShared>,
        producer: Producer<Record>,
        tls: Option<TlsSession>,
    ) -> Connection {
        let params = &shared.params;
        let heartbeat = params.heartbeat == HeartbeatMode::Required;
        info.heartbeat(heartbeat, 0);
        let flags = match heartbeat {
            true => Flags::READING | Flags::HEARTBEAT,
            false => Flags::READING,
        };
        Connection {
            decoder: Decoder::new(params.max_frame),
            options_seen: shared.options_changes as u8,
            flags,
            stream,
            info,
            shared,
            producer: Some(producer),
            read_buf: BytesMut::new(),
            out: BytesMut::new(),
            replies: None,
            blocked: None,
            timer: None,
            last_in: 0,
            pings_sent: 0,
            out_since: 0,
            frame_started: 0,
            errors: 0,
            extras: tls.map(|tls| {
                Box::new(Extras {
                    tls: Some(tls),
                    ..Extras::default()
                })
            }),
        }
    }

    /// The loop. It ends with a close (an orderly one has no notice), or a departure.
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Result<Leaves, Close>> {
        loop {
            self.process_buffered()?;
            let replies_ended = self.replies.as_ref().is_none_or(|r| r.rx.is_none());
            if self.flags.contains(Flags::EOF) && replies_ended && self.out.is_empty() {
                return Poll::Ready(Err(self.orderly_reason().into()));
            }
            let quiet = !self.flags.intersects(Flags::READING | Flags::EOF)
                && self.blocked.is_none()
                && replies_ended;
            if quiet && self.moves() {
                return Poll::Ready(Ok(Leaves::ForNewProcess));
            }
            let now = Instant::now();
            // The count before the configuration: a reload in between is seen at the next turn.
            let options_changes = self.shared.live.options_changes() as u8;
            let live = self.shared.live.config();
            if self.options_seen != options_changes {
                self.options_seen = options_changes;
                self.reapply_socket_options(&live);
            }
            let clocks = self.check_timers(now, &live)?;
            let next = match self.next_wake(clocks.next(&live), &live, now) {
                Ok(next) => next,
                Err(leaves) => return Poll::Ready(Ok(leaves)),
            };
            self.arm_timer(next);
            match std::task::ready!(self.poll_event(cx)) {
                Event::Asked(reason) => {
                    if reason == CloseReason::MemoryPressure {
                        self.shared.metrics.item_refused(ErrorCode::MemoryPressure);
                    }
                    return Poll::Ready(Err(asked_to_close(reason)));
                }
                // A connection that moves to the new process is not told to go.
                Event::GoAway(_) if self.moves() => {}
                Event::GoAway(within) => self.send(&Outbound::GoAway {
                    reconnect_within_ms: within.as_millis() as u64,
                }),
                Event::Drain => {
                    self.read_what_arrived()?;
                    self.flags.remove(Flags::READING);
                }
                Event::Writable(ready) => {
                    ready.map_err(|e| self.io_close(&e))?;
                    self.write_some()?;
                }
                Event::Unblocked(Unblocked::QueueRoom(pushed)) => {
                    self.blocked = None;
                    // The server made the peer wait; that is not the peer's silence, nor its
                    // slowness in finishing an object.
                    let now = Instant::now();
                    self.last_in = self.stamp(now);
                    self.frame_started = self.millis_since_accept(now);
                    settle(pushed, &self.shared.metrics);
                }
                Event::Reply(Some(answered)) => {
                    self.take_answered(answered);
                    self.take_ready_replies();
                    self.unblock_replies();
                }
                Event::Reply(None) => {
                    if let Some(replies) = &mut self.replies {
                        replies.rx = None;
                    }
                }
                Event::Readable(ready) => {
                    ready.map_err(|e| self.io_close(&e))?;
                    self.read_some()?;
                }
                Event::Deadline => {}
            }
        }
    }

    /// Polls, in priority order, everything the loop waits for. Nothing here is stored between
    /// polls except the boxed timer and reply-slot wait.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        self.info.register_control(cx.waker());
        let stage = self.shared.live.stage();
        if stage == Stage::Closing {
            return Poll::Ready(Event::Asked(CloseReason::Shutdown));
        }
        if let Some(reason) = self.info.closing_reason() {
            return Poll::Ready(Event::Asked(reason));
        }
        if let Some(within) = self.info.take_goaway() {
            return Poll::Ready(Event::GoAway(within));
        }
        let handing_over = stage == Stage::HandOver && self.moves();
        if stage == Stage::HandOver && !handing_over && !self.flags.contains(Flags::STAYS) {
            self.flags.insert(Flags::STAYS);
            self.shared.live.count_staying(true);
        }
        let stops = stage == Stage::Draining || handing_over;
        if stops && self.flags.contains(Flags::READING) {
            return Poll::Ready(Event::Drain);
        }
        if !self.out.is_empty() {
            if let Poll::Ready(ready) = self.stream.poll_write_ready(cx) {
                return Poll::Ready(Event::Writable(ready));
            }
        }
        if let Some(blocked) = &mut self.blocked {
            if let Blocked::QueueRoom(wait) = blocked.as_mut() {
                if let Poll::Ready(pushed) = wait.as_mut().poll(cx) {
                    return Poll::Ready(Event::Unblocked(Unblocked::QueueRoom(pushed)));
                }
            }
        }
        // A connection about to move takes every reply owed, however much: its output goes
        // with it.
        let room = self.out.len() < OUT_HIGH_WATER || handing_over;
        let rx = self.replies.as_mut().and_then(|r| r.rx.as_mut());
        if let (Some(rx), true) = (rx, room) {
            if let Poll::Ready(reply) = rx.poll_recv(cx) {
                return Poll::Ready(Event::Reply(reply));
            }
        }
        if self.flags.contains(Flags::READING) && self.blocked.is_none() && room {
            if let Poll::Ready(ready) = self.stream.poll_read_ready(cx) {
                return Poll::Ready(Event::Readable(ready));
            }
        }
        if let Some(timer) = &mut self.timer {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Deadline);
            }
        }
        Poll::Pending
    }

    /// Sends the notice, if any, flushes briefly, and returns the reason with the connection,
    /// whose socket the caller closes after the registry entry is gone.
    async fn finish(mut self, close: Close) -> (CloseReason, Connection) {
        if let Some(message) = &close.notice {
            self.send(message);
        }
        if let Some(tls) = session(&mut self.extras) {
            tls.close(&mut self.read_buf, &mut self.out);
        }
        if close.notice.is_some() || self.is_tls() {
            let bound = CLOSING_FLUSH.min(self.shared.live.config().write_timeout);
            let flush = async {
                while !self.out.is_empty() {
                    if self.stream.writable().await.is_err() || self.write_some().is_err() {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(bound, flush).await;
        }
        (close.reason, self)
    }

    /// True while the server hands its connections to a new process and this one can go
    /// (a TLS session cannot: rustls keeps its keys in this process).
    fn moves(&self) -> bool {
        self.shared.live.stage() == Stage::HandOver && !self.is_tls() && self.shared.live.moving()
    }

    fn orderly_reason(&self) -> CloseReason {
        if self.flags.contains(Flags::MAX_AGE_NOTICED) {
            CloseReason::MaxAge
        } else {
            CloseReason::PeerClosed
        }
    }

    /// Reads what the socket holds, without waiting. Returns false when nothing was read.
    fn read_some(&mut self) -> Result<bool, Close> {
        if self.is_tls() {
            return self.read_tls();
        }
        self.read_buf.reserve(READ_CHUNK);
        match self.stream.try_read_buf(&mut self.read_buf) {
            Ok(0) => {
                self.end_of_stream();
                Ok(false)
            }
            Ok(n) => {
                self.heard(n);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(self.io_close(&e)),
        }
    }

    /// The peer ended its side. What is left in the buffer is answered by `process_buffered`.
    fn end_of_stream(&mut self) {
        self.flags.insert(Flags::EOF);
        self.flags.remove(Flags::READING);
    }

    /// Counts `n` bytes just received: the peer is alive.
    fn heard(&mut self, n: usize) {
        let now = Instant::now();
        self.info.received(n, now.into_std());
        self.shared.metrics.bytes_received(n);
        self.last_in = self.stamp(now);
        if self.pings_sent != 0 {
            self.pings_sent = 0;
            self.info
                .heartbeat(self.flags.contains(Flags::HEARTBEAT), 0);
        }
    }

    /// [`Connection::read_some`] on a TLS connection: the session reads the records, answers
    /// what rustls answers (handshake, alerts) into `out` and puts the plaintext in the read
    /// buffer.
    fn read_tls(&mut self) -> Result<bool, Close> {
        let out_was_empty = self.out.is_empty();
        let Some(tls) = session(&mut self.extras) else {
            return Ok(false);
        };
        let read = tls.read_from(&self.stream, &mut self.read_buf, &mut self.out);
        let RecordsRead::Records {
            bytes,
            record_begun,
            handshaken,
            client_subject,
            peer_closed,
            result,
        } = read
        else {
            return match read {
                RecordsRead::Eof => {
                    self.end_of_stream();
                    Ok(false)
                }
                RecordsRead::Failed(e) => Err(self.io_close(&e)),
                _ => Ok(false),
            };
        };
        // A record begun by this read starts the frame clock, as an object does.
        if record_begun && !self.decoder.is_mid_frame() {
            self.frame_started = self.millis_since_accept(Instant::now());
        }
        if out_was_empty && !self.out.is_empty() {
            self.out_since = self.stamp(Instant::now());
        }
        self.heard(bytes);
        if handshaken {
            let took = self.info.age_at(std::time::Instant::now());
            self.shared.metrics.observe_handshake(took);
        }
        if let Some(subject) = client_subject {
            self.authenticate(subject.into(), "client certificate");
        }
        match result {
            Ok(()) => {
                if peer_closed {
                    self.end_of_stream();
                }
                Ok(true)
            }
            Err(error) => {
                tracing::info!(conn_id = self.info.id, peer = %self.info.peer(), error = %error, "TLS failed");
                Err(tls::close_reason(&error).into())
            }
        }
    }

    /// At shutdown, takes the items that already arrived in the kernel's receive buffer, so that
    /// what a client sent before the shutdown began is queued and written, not dropped with the
    /// socket. Bounded by the receive buffer's size, so a client that keeps sending cannot hold
    /// the shutdown.
    fn read_what_arrived(&mut self) -> Result<(), Close> {
        // At most a receive buffer's worth: all that can have arrived, and a bound.
        let budget = SockRef::from(&self.stream)
            .recv_buffer_size()
            .unwrap_or(1 << 20);
        for _ in 0..=budget / READ_CHUNK {
            if self.flags.contains(Flags::EOF) || self.blocked.is_some() || !self.read_some()? {
                break;
            }
            self.process_buffered()?;
        }
        Ok(())
    }

    fn write_some(&mut self) -> Result<(), Close> {
        match self.stream.try_write(&self.out) {
            Ok(n) => {
                let now = Instant::now();
                self.out.advance(n);
                self.info.sent(n, now.into_std());
                self.shared.metrics.bytes_sent(n);
                self.out_since = self.stamp(now);
                // An idle connection keeps no output buffer.
                release_if_empty(&mut self.out);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(self.io_close(&e)),
        }
    }

    /// Appends every reply already waiting (up to the output high-water mark), so that the
    /// acks of a whole sink batch leave in one write instead of one write each.
    fn take_ready_replies(&mut self) {
        while self.out.len() < OUT_HIGH_WATER {
            let rx = self.replies.as_mut().and_then(|r| r.rx.as_mut());
            match rx.map(|rx| rx.try_recv()) {
                Some(Ok(answered)) => self.take_answered(answered),
                _ => break,
            }
        }
    }

    /// Appends one read's replies to the output.
    fn take_answered(&mut self, answered: Answered) {
        if let Some(replies) = &mut self.replies {
            replies.unanswered = replies.unanswered.saturating_sub(answered.records as usize);
        }
        if answered.lines.is_empty() {
            return;
        }
        if self.out.is_empty() {
            self.out_since = self.stamp(Instant::now());
        }
        let plain_from = self.out.len();
        self.out.extend_from_slice(&answered.lines);
        self.seal(plain_from);
    }

    /// Queues the item that waited for replies to be taken, once few enough are unanswered.
    fn unblock_replies(&mut self) {
        let room = self
            .replies
            .as_ref()
            .is_some_and(|r| r.unanswered < self.shared.params.max_pending_replies);
        if !room || !matches!(self.blocked.as_deref(), Some(Blocked::Replies(_))) {
            return;
        }
        let Some(Blocked::Replies(item)) = self.blocked.take().map(|b| *b) else {
            unreachable!("checked above");
        };
        self.accept(item, &mut ReadShare::default());
    }

    fn send(&mut self, message: &Outbound) {
        if self.out.is_empty() {
            self.out_since = self.stamp(Instant::now());
        }
        let plain_from = self.out.len();
        message.encode(&mut self.out);
        self.seal(plain_from);
    }

    /// On a TLS connection, encrypts the plaintext appended to `out` from `plain_from` on.
    fn seal(&mut self, plain_from: usize) {
        let Some(tls) = session(&mut self.extras) else {
            return;
        };
        if let Err(error) = tls.seal(&mut self.read_buf, &mut self.out, plain_from) {
            // The next read meets the same failure and closes the connection.
            tracing::debug!(conn_id = self.info.id, error = %error, "TLS output failed");
        }
    }

    /// True while an object, or a TLS record, has begun and not ended: `frame_timeout` runs.
    fn mid_object(&self) -> bool {
        let partial_record = self.tls().is_some_and(TlsSession::mid_record);
        self.decoder.is_mid_frame() || partial_record
    }

    /// Since when a TLS handshake is under way: its turn, when handshakes go in turns, else the
    /// accept. `None` when none is.
    fn handshaking_since(&self, started: Instant) -> Option<Instant> {
        let tls = self.tls().filter(|tls| tls.is_handshaking())?;
        Some(tls.turn_began().map_or(started, Instant::from_std))
    }

    fn is_tls(&self) -> bool {
        self.tls().is_some()
    }

    /// The TLS session, on a TLS connection.
    fn tls(&self) -> Option<&TlsSession> {
        self.extras.as_ref()?.tls.as_ref()
    }

    /// Names a socket error. `ETIMEDOUT` (or an unreachable host reported while retrying) comes
    /// from the user timeout when sent data was unacknowledged, from keep-alive otherwise.
    fn io_close(&self, error: &io::Error) -> Close {
        CloseReason::from_io_error(
            error,
            SockRef::from(&self.stream),
            self.flags.contains(Flags::EOF),
        )
        .unwrap_or_else(|| {
            tracing::warn!(conn_id = self.info.id, error = %error, "unexpected socket error");
            CloseReason::InternalError
        })
        .into()
    }

    /// Handles every complete object in the read buffer, until one blocks.
    fn process_buffered(&mut self) -> Result<(), Close> {
        let (mut items, mut frames) = (0, 0);
        let was_mid_frame = self.decoder.is_mid_frame();
        let result = self.process_frames(&mut items, &mut frames);
        // Counted once per read rather than once per item: one shared atomic add.
        self.shared.metrics.items_received(items);
        result?;
        // An object begun by this read: `frame_timeout` counts from now.
        if self.decoder.is_mid_frame() && (frames > 0 || !was_mid_frame) {
            self.frame_started = self.millis_since_accept(Instant::now());
        }
        release_if_empty(&mut self.read_buf);
        self.report_buffered();
        if !self.flags.contains(Flags::READING) && self.blocked.is_none() {
            // No item will follow: let the queue close, and let the reply channel end once
            // every queued item has been answered.
            self.producer = None;
            if let Some(replies) = &mut self.replies {
                replies.tx = None;
            }
        }
        Ok(())
    }

    /// Tells the server-wide budget (`max_buffered`) how much the read buffer holds, when that
    /// changed: its capacity, the memory it keeps, from the pending object's start.
    fn report_buffered(&self) {
        let records = self.tls().map_or(0, TlsSession::held);
        let held = self.read_buf.capacity() + records;
        let shared = &self.shared;
        let limit = || shared.live.config().max_buffered;
        (shared.live.buffers).report(&self.info, held, limit, &shared.registry);
    }

    /// Decodes and handles frames until the buffer holds no complete one or an item blocks;
    /// counts the items accepted in `items`.
    fn process_frames(&mut self, items: &mut u64, frames: &mut u32) -> Result<(), Close> {
        let mut share = ReadShare::default();
        while self.blocked.is_none() {
            let eof = self.flags.contains(Flags::EOF);
            let decoded = protocol::next_message(&mut self.decoder, &mut self.read_buf, eof);
            let message = match decoded {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(too_large) => {
                    self.shared.metrics.item_refused(ErrorCode::FrameTooLarge);
                    tracing::warn!(conn_id = self.info.id, peer = %self.info.peer(), limit = too_large.limit, "object larger than max_frame");
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
            *frames += 1;
            match message {
                Ok(Inbound::Item(item)) => {
                    if self.awaits_authentication() {
                        self.shared.metrics.item_refused(ErrorCode::Unauthorized);
                        return Err(unauthorized(AUTHENTICATE_FIRST));
                    }
                    *items += 1;
                    self.accept(item, &mut share);
                }
                Ok(Inbound::Hello(hello)) => {
                    self.hello(hello)?;
                    // The items after it carry what it said.
                    share.origin = None;
                }
                Ok(Inbound::Ping) => self.send(&Outbound::Pong),
                Ok(Inbound::Pong) => {}
                Err(error) => self.refuse(error)?,
            }
        }
        Ok(())
    }

    fn refuse(&mut self, error: ItemError) -> Result<(), Close> {
        self.errors += 1;
        self.info.error();
        self.shared.metrics.item_refused(error.code);
        // `?`: the detail may quote the client's bytes, which must not forge log lines.
        tracing::warn!(conn_id = self.info.id, peer = %self.info.peer(), code = error.code.as_str(), detail = ?error.message, "item refused");
        self.send(&error.into());
        if self.errors > self.shared.live.config().error_budget {
            return Err(Close {
                reason: CloseReason::ProtocolError,
                notice: notice(ErrorCode::TooManyErrors, "error budget exceeded; closing"),
            });
        }
        Ok(())
    }

    /// Queues a valid item, in its read's reply group when it will need a reply.
    fn accept(&mut self, item: Item, share: &mut ReadShare) {
        let needs_reply =
            item.id.is_some() || self.shared.params.overflow != Overflow::Backpressure;
        if !needs_reply {
            return self.enqueue(item, None, share);
        }
        let channel = self.replies.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            Box::new(ReplyChannel {
                tx: Some(tx),
                rx: Some(rx),
                unanswered: 0,
            })
        });
        if channel.unanswered >= self.shared.params.max_pending_replies {
            self.blocked = Some(Box::new(Blocked::Replies(item)));
            return;
        }
        let Some(tx) = &channel.tx else {
            unreachable!("the channel's sender is dropped only when no item can follow");
        };
        channel.unanswered += 1;
        let group = share
            .replies
            .get_or_insert_with(|| Replies::new(tx.clone()));
        let reply = group.join();
        self.enqueue(item, Some(reply), share);
    }

    /// Offers the item to the queue. Under `backpressure` with a full queue, the connection is
    /// blocked until there is room; the wait is boxed, so only a waiting connection pays for it.
    fn enqueue(&mut self, item: Item, reply: Option<Arc<Replies>>, share: &mut ReadShare) {
        let Some(producer) = &self.producer else {
            unreachable!("the producer is dropped only when no item can follow");
        };
        let origin = share.origin.get_or_insert_with(|| {
            let (client_id, auth_name) = match &self.extras {
                Some(extras) => (extras.client_id.clone(), extras.auth_name.clone()),
                None => (None, None),
            };
            Arc::new(Origin::new(
                self.info.id,
                self.info.peer(),
                client_id,
                auth_name,
            ))
        });
        let received_at = *share.received_at.get_or_insert_with(SystemTime::now);
        let mut record = Record::of(Arc::clone(origin), received_at, item.ip, item.raw, item.id);
        record.reply = reply;
        self.info.item();
        match producer.try_push(record) {
            Ok(pushed) => settle(pushed, &self.shared.metrics),
            Err(record) => {
                let producer = producer.clone();
                let wait = Box::pin(async move { producer.push(record).await });
                self.blocked = Some(Box::new(Blocked::QueueRoom(wait)));
            }
        }
    }

    /// When the loop's timer wakes it: at its next deadline (connections park on Linux only).
    #[cfg(not(target_os = "linux"))]
    fn next_wake(
        &self,
        deadline: Option<Instant>,
        _live: &Config,
        _now: Instant,
    ) -> Result<Option<Instant>, Leaves> {
        Ok(deadline)
    }

    /// When the connection was accepted.
    fn started(&self) -> Instant {
        Instant::from_std(self.info.started())
    }

    /// `at` as microseconds since accept.
    fn stamp(&self, at: Instant) -> u64 {
        self.info.micros_since_start(at.into_std())
    }

    /// `at` as milliseconds since accept, modulo 2³² ([`Connection::frame_started`]).
    fn millis_since_accept(&self, at: Instant) -> u32 {
        (self.stamp(at) / 1000) as u32
    }

    /// Time since the pending object began (meaningful while the decoder is mid-frame).
    fn frame_age(&self, now: Instant) -> Duration {
        let elapsed = self
            .millis_since_accept(now)
            .wrapping_sub(self.frame_started);
        Duration::from_millis(elapsed.into())
    }

    /// The instant `stamp` microseconds after accept.
    fn at(&self, stamp: u64) -> Instant {
        self.started() + Duration::from_micros(stamp)
    }

    /// Re-applies the keep-alive, user timeout and `TCP_NODELAY` of the configuration in force
    /// after a reload: Linux takes them on an established socket and re-arms its keep-alive
    /// timer. A failure leaves the options the socket had.
    fn reapply_socket_options(&self, live: &Config) {
        let options = reloaded_options(live, &self.info);
        if let Err(error) = sockopt::apply(SockRef::from(&self.stream), &options) {
            tracing::warn!(conn_id = self.info.id, peer = %self.info.peer(), option = error.option, error = %error.source, "cannot apply the reloaded socket options; the previous ones stay");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection accepted on loopback, with what its task is built from.
    struct Accepted {
        _client: TcpStream,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        registry: crate::registry::Registry,
        producer: Producer<Record>,
        _consumer: crate::queue::Consumer<Record>,
        shared: Arc<ConnShared>,
    }

    impl Accepted {
        async fn new() -> Accepted {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let _client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            let registry = crate::registry::Registry::new();
            let (producer, _consumer) = crate::queue::bounded::<Record>(4, Overflow::Backpressure);
            let config = Config::default();
            let metrics = Arc::new(Metrics::new(&config));
            let shared = Arc::new(ConnShared::first(config, metrics, registry.clone()));
            Accepted {
                _client,
                stream,
                peer,
                registry,
                producer,
                _consumer,
                shared,
            }
        }
    }

    /// Every idle connection holds one such future: a regression here multiplies by the
    /// number of connections (measured by `bench/idle_memory.sh`).
    #[tokio::test]
    async fn connection_task_stays_small() {
        const BUDGET: usize = 320;
        let Accepted {
            _client,
            stream,
            peer,
            registry,
            producer,
            _consumer,
            shared,
        } = Accepted::new().await;
        let slot = Slot::force(&Arc::new(std::sync::atomic::AtomicUsize::new(0)));
        let task = run(
            stream,
            registry.insert(peer, peer),
            shared,
            producer,
            None,
            slot,
        );
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task: {size} bytes");
        assert!(
            size <= BUDGET,
            "connection future is {size} bytes, budget {BUDGET}"
        );
    }

    /// A departing connection closes its descriptor while its entry is still listed (the
    /// hand-over must find it there until it has it): by then the entry must not name the
    /// descriptor, or a `TCP_INFO` read or the phase restorer would act on whatever file
    /// reuses the number.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_departing_connection_entry_lets_go_of_its_descriptor_before_it_closes() {
        let Accepted {
            _client,
            stream,
            peer,
            registry,
            producer,
            _consumer,
            shared,
        } = Accepted::new().await;
        let guard = registry.insert_socket(&stream, peer, peer);
        let entry = [SharedInfo::clone(guard.info())];
        // Entries the registry would act on through their descriptor (the count only: `f`
        // leaves the descriptor alone).
        let with_socket = || {
            let mut n = 0;
            registry.with_sockets(&entry, |_, _| n += 1);
            n
        };
        assert_eq!(with_socket(), 1);

        let conn = Connection::new(
            stream,
            SharedInfo::clone(guard.info()),
            shared,
            producer,
            None,
        );
        let departed = conn.depart(&guard).expect("a copy of the socket");
        assert_eq!(registry.len(), 1, "listed until the hand-over has it");
        assert_eq!(
            with_socket(),
            0,
            "the entry names the descriptor that depart closed"
        );
        drop((departed, guard));
        assert_eq!(registry.len(), 0);
    }
}
#[cfg(all(test, target_os = "linux", target_pointer_width = "64"))]
mod idle_size {
    /// Every idle connection holds one task: measured by `bench/idle_memory.sh`, a task past
    /// 256 bytes cost about 155 bytes more per idle connection (tokio's task cell is aligned to
    /// 128 bytes), so a field added here must be paid for by another.
    #[test]
    fn the_connection_task_stays_within_256_bytes() {
        let size = std::mem::size_of::<super::ConnTask>();
        assert!(size <= 256, "ConnTask is {size} bytes");
    }
}
