//! One connection of a client: greet, send from the window, settle acks, keep the heartbeat,
//! and name the reason it ended.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use socket2::SockRef;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::Instant;

use super::dial::{DialError, Transport};
use super::{ClientConfig, Delivery, Progress};
use crate::close_reason::CloseReason;
use crate::protocol::{parse_reply, Decoder, ErrorCode, Frame, Reply};
use crate::sockopt;
use crate::tls::{self, ClientStream};

/// Output the client gathers before writing; also the most it holds unwritten.
const OUT_TARGET: usize = 64 * 1024;
/// Largest server message the client reads (the server's are a few hundred bytes).
const MAX_REPLY: usize = 64 * 1024;
/// Items taken from the input in one go, between two looks at the socket.
const INPUT_BATCH: usize = 256;

/// Why a connection (or an attempt) ended.
#[derive(Debug)]
pub enum EndReason {
    /// Every item is settled and no more will come.
    Finished,
    /// No connection could be made.
    Dial(DialError),
    /// The connection died or was closed, for this reason.
    Lost(CloseReason),
    /// The server refused to go on with this code: `server_full`, `shutting_down`, `max_age`,
    /// or an item refused for a passing reason (`queue_full`, `sink_failed`), which is resent.
    Refused(ErrorCode),
    /// The server said something the client cannot read.
    Protocol(String),
    /// The server asked for a new connection within this window (`goaway`: it is being
    /// upgraded, or it sheds connections gently): the client reconnects after a random delay
    /// inside it.
    GoAway(Duration),
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Finished => f.write_str("finished"),
            EndReason::Dial(error) => {
                write!(f, "{error}")?;
                if let Some(source) = std::error::Error::source(error) {
                    write!(f, ": {source}")?;
                }
                Ok(())
            }
            EndReason::Lost(reason) => f.write_str(reason.as_str()),
            EndReason::Refused(code) => write!(f, "server sent {code}"),
            EndReason::Protocol(what) => write!(f, "protocol error: {what}"),
            EndReason::GoAway(within) => {
                write!(
                    f,
                    "server sent goaway (reconnect within {} ms)",
                    within.as_millis()
                )
            }
        }
    }
}

/// How a session ended.
#[derive(Debug)]
pub struct SessionEnd {
    /// Why.
    pub reason: EndReason,
    /// The server answered `hello`: the connection worked, so the backoff starts over.
    pub greeted: bool,
    /// The server refused the connection and said when to try again (`retry_after_ms`): the
    /// client waits that long instead of its own backoff.
    pub retry_after: Option<Duration>,
}

impl SessionEnd {
    pub(super) fn failed(error: DialError) -> SessionEnd {
        SessionEnd {
            reason: EndReason::Dial(error),
            greeted: false,
            retry_after: None,
        }
    }

    /// A connection that ended in good order (its age reached, every in-flight item settled)
    /// is replaced without waiting.
    pub(super) fn reconnect_at_once(&self) -> bool {
        self.greeted && matches!(self.reason, EndReason::Refused(ErrorCode::MaxAge))
    }
}

/// The reading half of a connection, with the socket under it (to tell a keep-alive timeout
/// from a user timeout when it fails).
trait Reader: AsyncRead + Unpin {
    fn socket(&self) -> Option<SockRef<'_>>;
}

impl Reader for OwnedReadHalf {
    fn socket(&self) -> Option<SockRef<'_>> {
        Some(SockRef::from(self.as_ref()))
    }
}

/// The reading half of a TLS connection, and a duplicate of its socket's descriptor (the TLS
/// stream, once split, no longer lends its socket).
struct TlsReader {
    half: ReadHalf<ClientStream>,
    socket: Option<socket2::Socket>,
}

impl AsyncRead for TlsReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.half).poll_read(cx, buf)
    }
}

impl Reader for TlsReader {
    fn socket(&self) -> Option<SockRef<'_>> {
        self.socket.as_ref().map(SockRef::from)
    }
}

/// Runs one connection until it ends; see [`EndReason`].
pub(super) async fn run(
    transport: Transport,
    config: &ClientConfig,
    delivery: &mut Delivery,
) -> SessionEnd {
    match transport {
        Transport::Plain(stream) => {
            let (mut reader, mut writer) = stream.into_split();
            run_on(&mut reader, &mut writer, config, delivery).await
        }
        Transport::Tls(stream) => {
            let socket = SockRef::from(tls::tcp_of(&stream)).try_clone().ok();
            let (half, mut writer) = tokio::io::split(*stream);
            let mut reader = TlsReader { half, socket };
            run_on(&mut reader, &mut writer, config, delivery).await
        }
    }
}

async fn run_on(
    reader: &mut impl Reader,
    writer: &mut (impl AsyncWrite + Unpin),
    config: &ClientConfig,
    delivery: &mut Delivery,
) -> SessionEnd {
    let mut session = Session {
        config,
        out: BytesMut::with_capacity(OUT_TARGET),
        read_buf: BytesMut::with_capacity(8 * 1024),
        decoder: Decoder::new(MAX_REPLY),
        greeted: false,
        server_max_frame: usize::MAX,
        last_inbound: Instant::now(),
        silent_intervals: 0,
        ping_early: spread_within(config.heartbeat_interval.mul_f64(0.9)),
        draining: false,
        goaway: None,
        closing_code: None,
        retry_after: None,
    };
    delivery.window.rewind();
    let token = match &config.token {
        Some(token) => format!(",\"token\":{}", serde_json::Value::from(token.as_str())),
        None => String::new(),
    };
    let hello = format!(
        "{{\"type\":\"hello\",\"client\":{},\"client_id\":{}{token}}}\n",
        serde_json::Value::from(config.name.as_str()),
        serde_json::Value::from(config.client_id.as_str())
    );
    session.out.put_slice(hello.as_bytes());
    let reason = session.drive(reader, writer, delivery).await;
    if matches!(reason, EndReason::Finished) {
        close_in_good_order(reader, writer, config.connect_timeout).await;
    }
    SessionEnd {
        reason,
        greeted: session.greeted,
        retry_after: session.retry_after,
    }
}

struct Session<'c> {
    config: &'c ClientConfig,
    /// Bytes to write: hello, pings, pongs and items.
    out: BytesMut,
    read_buf: BytesMut,
    decoder: Decoder,
    greeted: bool,
    server_max_frame: usize,
    last_inbound: Instant,
    /// Heartbeat intervals gone by without an inbound byte.
    silent_intervals: u32,
    /// How much sooner than `heartbeat_interval` the first ping leaves (zero once one has):
    /// a fleet that reconnects together does not ping the server together.
    ping_early: Duration,
    /// The server asked for a new connection (`max_age`, `goaway`): send nothing new, wait for
    /// the acks of what is in flight, then reconnect.
    draining: bool,
    /// The window of the server's `goaway`, once it sent one.
    goaway: Option<Duration>,
    /// The last connection-level error the server sent, which names the close that follows.
    closing_code: Option<ErrorCode>,
    /// The wait before the next attempt the server asked for with its refusal.
    retry_after: Option<Duration>,
}

impl Session<'_> {
    async fn drive(
        &mut self,
        reader: &mut impl Reader,
        writer: &mut (impl AsyncWrite + Unpin),
        delivery: &mut Delivery,
    ) -> EndReason {
        let connected_at = Instant::now();
        let mut restore_keepalive_at = self.shorten_first_keepalive(reader, connected_at);
        loop {
            if self.greeted && !self.draining {
                self.fill(delivery);
            }
            if delivery.done() && self.out.is_empty() {
                return EndReason::Finished;
            }
            if self.draining && delivery.window.in_flight() == 0 && self.out.is_empty() {
                return match self.goaway {
                    Some(within) => EndReason::GoAway(within),
                    None => EndReason::Refused(ErrorCode::MaxAge),
                };
            }
            // Only a ping comes early: the interval that gives up is never shortened.
            let gives_up = self.silent_intervals + 1 >= self.config.heartbeat_misses.max(1);
            let early = if gives_up {
                Duration::ZERO
            } else {
                self.ping_early
            };
            let heartbeat_at = self.last_inbound
                + self.config.heartbeat_interval * (self.silent_intervals + 1)
                - early;
            let greet_by = connected_at + self.config.connect_timeout;
            let take_input = delivery.input_open && delivery.window.wants_more() && !self.draining;
            tokio::select! {
                biased;
                read = reader.read_buf(&mut self.read_buf) => match read {
                    Ok(0) => return self.closed_by_server(),
                    Ok(_) => {
                        self.last_inbound = Instant::now();
                        self.silent_intervals = 0;
                        if let Some(end) = self.handle_replies(delivery) {
                            return end;
                        }
                    }
                    Err(error) => return self.io_end(&error, reader.socket()),
                },
                written = writer.write_buf(&mut self.out), if !self.out.is_empty() => {
                    if let Err(error) = written {
                        return self.io_end(&error, reader.socket());
                    }
                    if self.out.is_empty() && !self.config.ack {
                        let settled = delivery.window.settle_sent() as u64;
                        Progress::add(&delivery.progress.written, settled);
                    }
                }
                item = delivery.input.recv(), if take_input => match item {
                    Some(object) => {
                        take(delivery, object);
                        for _ in 1..INPUT_BATCH {
                            if !delivery.window.has_room() {
                                break;
                            }
                            match delivery.input.try_recv() {
                                Ok(object) => take(delivery, object),
                                Err(_) => break,
                            }
                        }
                    }
                    None => delivery.input_open = false,
                },
                () = tokio::time::sleep_until(heartbeat_at) => {
                    self.silent_intervals += 1;
                    if self.silent_intervals >= self.config.heartbeat_misses.max(1) {
                        return EndReason::Lost(CloseReason::HeartbeatTimeout);
                    }
                    self.out.put_slice(b"{\"type\":\"ping\"}\n");
                    self.ping_early = Duration::ZERO;
                }
                () = sleep_until_some(restore_keepalive_at.map(|(at, _)| at)), if restore_keepalive_at.is_some() => {
                    restore_keepalive_at = restore_keepalive_at
                        .and_then(|(_, first)| self.restore_keepalive(reader, first));
                }
                () = tokio::time::sleep_until(greet_by), if !self.greeted => {
                    return EndReason::Protocol(format!(
                        "no hello from the server within {}",
                        humantime::format_duration(self.config.connect_timeout)
                    ));
                }
            }
        }
    }

    /// Gives the socket a first keep-alive idle shortened by a random phase (1 s to the idle),
    /// so that clients connected together do not probe the server together; says when to put
    /// the idle back. The kernel re-arms the timer from the last segment received, the answer
    /// to the first probe on an idle connection, so the phase stays. Probes come earlier, never
    /// later: the bound holds. Costs one `setsockopt` pair now and one at the restore.
    fn shorten_first_keepalive(
        &self,
        reader: &impl Reader,
        now: Instant,
    ) -> Option<(Instant, Duration)> {
        let keepalive = self.config.keepalive;
        let idle = keepalive.idle.as_secs();
        if idle < 2 || cfg!(not(unix)) {
            return None;
        }
        let first = Duration::from_secs(fastrand::u64(1..idle));
        let socket = reader.socket()?;
        socket
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(first))
            .ok()?;
        Some((now + first + keepalive.interval / 2, first))
    }

    /// Puts the idle back once the first probe (due `first` into the silence) was answered, so
    /// the timer re-arms from that answer; until then, says when to look again.
    fn restore_keepalive(
        &self,
        reader: &impl Reader,
        first: Duration,
    ) -> Option<(Instant, Duration)> {
        let socket = reader.socket()?;
        let silence = self.last_inbound.elapsed();
        // A timer fires up to a wheel bucket late, and a lost probe goes again an interval
        // later: put back before the answer, the phase would be lost.
        if silence >= first && sockopt::probe_answered(&socket, silence, first) == Some(false) {
            return Some((Instant::now() + Duration::from_secs(1), first));
        }
        let idle = socket2::TcpKeepalive::new().with_time(self.config.keepalive.idle);
        if let Err(error) = socket.set_tcp_keepalive(&idle) {
            // The shorter idle stays: more probes, the same bound.
            tracing::debug!(error = %error, "cannot put the keep-alive idle back");
        }
        None
    }

    /// Moves unsent items of the window into the output.
    fn fill(&mut self, delivery: &mut Delivery) {
        if self.out.len() >= OUT_TARGET || !delivery.window.has_unsent() {
            return;
        }
        let filled = delivery
            .window
            .fill(&mut self.out, OUT_TARGET, self.server_max_frame);
        Progress::add(&delivery.progress.sent, filled.items);
        Progress::add(&delivery.progress.resent, filled.resent);
        for seq in filled.too_large {
            delivery.refuse(
                seq,
                ErrorCode::FrameTooLarge.as_str(),
                "larger than the server's max_frame",
            );
        }
    }

    /// Handles every complete message read; `Some` ends the session.
    fn handle_replies(&mut self, delivery: &mut Delivery) -> Option<EndReason> {
        loop {
            let frame = match self.decoder.decode(&mut self.read_buf) {
                Ok(Some(Frame::Object(frame))) => frame,
                Ok(Some(Frame::Junk(junk))) => {
                    return Some(EndReason::Protocol(format!(
                        "not JSON: {:?}",
                        String::from_utf8_lossy(&junk[..junk.len().min(80)])
                    )))
                }
                Ok(Some(Frame::Broken(broken))) => {
                    return Some(EndReason::Protocol(format!("a reply that is {broken}")))
                }
                // Only `decode_eof` returns it; the session reads no further after end of stream.
                Ok(Some(Frame::Truncated(truncated))) => {
                    return Some(EndReason::Protocol(truncated.to_string()))
                }
                Ok(None) => return None,
                Err(too_large) => {
                    return Some(EndReason::Protocol(format!(
                        "a message over {} bytes",
                        too_large.limit
                    )))
                }
            };
            let reply = match parse_reply(&frame) {
                Ok(reply) => reply,
                Err(error) => return Some(EndReason::Protocol(error.to_string())),
            };
            if let Some(end) = self.handle_reply(reply, delivery) {
                return Some(end);
            }
        }
    }

    fn handle_reply(&mut self, reply: Reply, delivery: &mut Delivery) -> Option<EndReason> {
        match reply {
            Reply::Hello { max_frame, .. } => {
                self.greeted = true;
                self.server_max_frame = max_frame;
                delivery.progress.connected.store(true, Ordering::Relaxed);
            }
            Reply::Ping => self.out.put_slice(b"{\"type\":\"pong\"}\n"),
            Reply::Pong => {}
            Reply::GoAway {
                reconnect_within_ms,
            } => {
                self.draining = true;
                self.goaway = Some(Duration::from_millis(reconnect_within_ms));
            }
            Reply::Ack { id } => match sequence(&id) {
                Some(seq) => {
                    if delivery.window.settle(seq) == super::window::Settled::Now {
                        Progress::add(&delivery.progress.acknowledged, 1);
                    }
                }
                None => {
                    tracing::warn!(id = %String::from_utf8_lossy(&id), "ack for an id this client never sent")
                }
            },
            Reply::Error {
                code,
                code_text,
                message,
                id,
                retry_after_ms,
            } => {
                let seq = id.as_deref().and_then(sequence);
                match (code, seq) {
                    // Passing trouble on the server: the item was not stored; resend it (and
                    // what follows, in order) on a new connection, after the backoff.
                    (Some(code @ (ErrorCode::QueueFull | ErrorCode::SinkFailed)), Some(_)) => {
                        tracing::warn!(code = %code, detail = message, "the server could not store an item; it will be sent again");
                        return Some(EndReason::Refused(code));
                    }
                    (_, Some(seq)) => delivery.refuse(seq, &code_text, &message),
                    (Some(ErrorCode::MaxAge), None) => self.draining = true,
                    (
                        Some(
                            code @ (ErrorCode::ServerFull
                            | ErrorCode::TooManyConnections
                            | ErrorCode::ShuttingDown),
                        ),
                        None,
                    ) => {
                        self.retry_after = retry_after_ms.map(Duration::from_millis);
                        return Some(EndReason::Refused(code));
                    }
                    (code, None) => {
                        tracing::warn!(code = %code_text, detail = message, "error from the server");
                        self.closing_code = code;
                    }
                }
            }
        }
        None
    }

    /// The server closed its side; the reason is the last error it sent, if it said one.
    fn closed_by_server(&self) -> EndReason {
        // Closed after a `goaway` before every ack came: what is unacknowledged is sent again
        // on the next connection, which still waits for its spread delay.
        if let Some(within) = self.goaway {
            return EndReason::GoAway(within);
        }
        match self.closing_code {
            Some(ErrorCode::FrameTooLarge) => EndReason::Lost(CloseReason::FrameTooLarge),
            Some(ErrorCode::TooManyErrors) => EndReason::Lost(CloseReason::ProtocolError),
            Some(code) => EndReason::Refused(code),
            None => EndReason::Lost(CloseReason::PeerClosed),
        }
    }

    fn io_end(&self, error: &std::io::Error, socket: Option<SockRef<'_>>) -> EndReason {
        // An error after end of stream cannot reach here: end of stream ends the session.
        let reason = socket.and_then(|socket| CloseReason::from_io_error(error, socket, false));
        match reason {
            Some(reason) => EndReason::Lost(reason),
            None => {
                tracing::warn!(error = %error, "unexpected socket error");
                EndReason::Lost(CloseReason::InternalError)
            }
        }
    }
}

/// Ends our side (the server sees end of stream) and waits, within `bound`, for the server to
/// close its own: then it has read every byte we wrote. Without acks, that is the only sign
/// that items still in the kernels' buffers reached the server.
async fn close_in_good_order(
    reader: &mut impl Reader,
    writer: &mut (impl AsyncWrite + Unpin),
    bound: Duration,
) {
    if writer.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let until_eof = async {
        while let Ok(n) = reader.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    if tokio::time::timeout(bound, until_eof).await.is_err() {
        tracing::warn!(
            bound_ms = bound.as_millis() as u64,
            "the server did not close after our last item"
        );
    }
}

fn take(delivery: &mut Delivery, object: Bytes) {
    delivery.window.push(object);
    Progress::add(&delivery.progress.taken, 1);
}

/// The sequence number in an echoed `id`.
fn sequence(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id).ok()?.parse().ok()
}

/// A random duration from zero to `most`.
fn spread_within(most: Duration) -> Duration {
    most.mul_f64(fastrand::f64())
}

/// Sleeps until `at`; never, for `None` (the branch is disabled then anyway).
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
