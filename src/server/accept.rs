//! The accept machinery: the loops that accept on each listener (with backoff while the
//! process is out of descriptors or memory), and what each accepted socket goes through before
//! its task starts: a `max_connections` slot, the socket options with its keep-alive phase, the
//! PROXY protocol header (read in a task of its own: it names the peer that the limits count),
//! the registry entry under `max_connections_per_ip`, TLS, then the JSON connection or the
//! embedder's handler. Refusals are told (in JSON, where the peer speaks it) and recorded.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::close_reason::CloseReason;
use crate::config::ProxyProtocol;
use crate::conn::{self, ConnShared, Slot};
use crate::liveness::{self, Protocol};
use crate::metrics::Metrics;
use crate::phase::Phases;
use crate::protocol::{ErrorCode, Outbound};
use crate::proxy_protocol;
use crate::queue::Producer;
use crate::record::Record;
use crate::registry::{ClosedConn, ConnGuard, Registry};
use crate::reload::Reloader;
use crate::sockopt::{self, SocketOptions};
use crate::tls::TlsSession;

use super::handshakes::{Handshakes, Waited};

/// First wait before retrying `accept` after it ran out of a resource (`EMFILE`, `ENFILE`,
/// `ENOBUFS`, `ENOMEM`): retrying at once would spin a core while descriptors are exhausted.
/// The wait doubles at each failure in a row, up to [`ACCEPT_BACKOFF_MAX`] (as Go's `net/http`).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest wait between two `accept` attempts while resources stay exhausted.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// What the accept loops share.
pub(super) struct Acceptor {
    pub(super) registry: Registry,
    /// Connections holding a slot, against `max_connections` in force (a reload may lower it
    /// below this count: the live ones stay, new ones are refused until enough have closed).
    pub(super) live_connections: Arc<AtomicUsize>,
    pub(super) producer: Producer<Record>,
    /// A protocol of the embedder's own, served instead of the JSON items.
    pub(super) protocol: Option<Protocol>,
    pub(super) metrics: Arc<Metrics>,
    /// The configuration and shared state of the connections accepted now.
    pub(super) reloader: Reloader,
    pub(super) tracker: TaskTracker,
    /// The first accepted socket's options are read back once, to catch a platform that does
    /// not inherit or accept them.
    pub(super) checked_first: AtomicBool,
    /// Each accepted socket's keep-alive phase (its shortened first idle).
    pub(super) phases: Arc<Phases>,
    /// Cancelled when accepting stops: connections whose PROXY protocol header has not come
    /// yet are closed then (nothing of theirs was read).
    pub(super) stop_accepting: CancellationToken,
    /// The turns of TLS handshakes (`max_handshakes`), when bounded.
    pub(super) handshakes: Option<Arc<Handshakes>>,
}

/// An accept loop on each of `listeners`, until `stop`.
pub(super) fn start(
    listeners: Vec<TcpListener>,
    acceptor: Arc<Acceptor>,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    listeners
        .into_iter()
        .map(|listener| tokio::spawn(accept_loop(listener, Arc::clone(&acceptor), stop.clone())))
        .collect()
}

async fn accept_loop(listener: TcpListener, acceptor: Arc<Acceptor>, stop: CancellationToken) {
    let mut trouble: Option<AcceptTrouble> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        let error = match accepted {
            Ok((stream, peer)) => {
                if let Some(over) = trouble.take() {
                    over.log_recovery();
                }
                acceptor.admit(stream, peer);
                continue;
            }
            Err(error) => error,
        };
        let kind = AcceptError::of(&error);
        acceptor.metrics.accept_error(kind.as_str());
        if !kind.exhausted() {
            // One connection's trouble (reset before it was accepted): the next may be fine.
            tracing::debug!(error = %error, kind = kind.as_str(), "accept failed");
            continue;
        }
        let wait = trouble
            .get_or_insert_with(|| AcceptTrouble::begin(&error, kind))
            .next_wait();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Why `accept` failed, as counted in `connwarden_accept_errors_total{error}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptError {
    /// `EMFILE`: the process's open-file limit.
    Emfile,
    /// `ENFILE`: the system's open-file limit.
    #[cfg_attr(not(unix), allow(dead_code))]
    Enfile,
    /// `ENOBUFS` or `ENOMEM`: kernel memory.
    Memory,
    /// Anything else, such as a peer that reset before it was accepted.
    Other,
}

impl AcceptError {
    fn of(error: &std::io::Error) -> AcceptError {
        #[cfg(unix)]
        match error.raw_os_error() {
            Some(libc::EMFILE) => return AcceptError::Emfile,
            Some(libc::ENFILE) => return AcceptError::Enfile,
            Some(libc::ENOBUFS | libc::ENOMEM) => return AcceptError::Memory,
            _ => {}
        }
        // Winsock's WSAEMFILE and WSAENOBUFS (it has no system-wide ENFILE).
        #[cfg(windows)]
        match error.raw_os_error() {
            Some(10024) => return AcceptError::Emfile,
            Some(10055) => return AcceptError::Memory,
            _ => {}
        }
        if error.kind() == std::io::ErrorKind::OutOfMemory {
            return AcceptError::Memory;
        }
        AcceptError::Other
    }

    fn as_str(self) -> &'static str {
        match self {
            AcceptError::Emfile => "emfile",
            AcceptError::Enfile => "enfile",
            AcceptError::Memory => "nomem",
            AcceptError::Other => "other",
        }
    }

    /// A resource ran out: retrying at once would fail again.
    fn exhausted(self) -> bool {
        self != AcceptError::Other
    }
}

/// A burst of `accept` failures from exhaustion: logged once when it begins and once when
/// `accept` works again, not once per attempt, with the wait growing between attempts.
struct AcceptTrouble {
    since: Instant,
    failures: u64,
    wait: Duration,
}

impl AcceptTrouble {
    fn begin(error: &std::io::Error, kind: AcceptError) -> AcceptTrouble {
        tracing::error!(error = %error, kind = kind.as_str(), "accept is failing: new connections wait in the listen backlog; retrying with backoff (logged again when it works)");
        AcceptTrouble {
            since: Instant::now(),
            failures: 0,
            wait: ACCEPT_BACKOFF_MIN,
        }
    }

    /// Counts one more failure; how long to wait before the next attempt.
    fn next_wait(&mut self) -> Duration {
        self.failures += 1;
        let wait = self.wait;
        self.wait = (self.wait * 2).min(ACCEPT_BACKOFF_MAX);
        wait
    }

    fn log_recovery(self) {
        tracing::warn!(
            failures = self.failures,
            failing_ms = self.since.elapsed().as_millis() as u64,
            "accept works again"
        );
    }
}

impl Acceptor {
    pub(super) fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let local = stream.local_addr().unwrap_or(peer);
        let shared = self.reloader.connections();
        let proxy = shared.params.proxy_protocol;
        if proxy != ProxyProtocol::Off
            && !proxy_protocol::is_trusted(peer.ip(), &shared.params.proxy_trusted)
        {
            // Its header, if it sent one, would be a claim anyone could make.
            self.registry
                .record_close(refused(peer, local, CloseReason::ProxyUntrusted));
            return;
        }
        let Some(slot) = Slot::take(&self.live_connections, shared.params.max_connections) else {
            let message = "the server is at max_connections; retry later";
            self.refuse(stream, peer, local, ErrorCode::ServerFull, message);
            return;
        };
        let mut options = SocketOptions::from_config(&shared.params);
        let first_idle = match shared.params.keepalive_spread {
            true => self.phases.next_first_idle(options.keepalive.idle),
            false => None,
        };
        if let Some(first) = first_idle {
            options.keepalive.idle = first;
        }
        if let Err(error) = sockopt::apply(SockRef::from(&stream), &options) {
            // Without its options the connection's liveness would not be bounded.
            tracing::error!(peer = %peer, option = error.option, error = %error.source, "cannot set socket option; closing");
            self.registry
                .record_close(refused(peer, local, CloseReason::InternalError));
            return;
        }
        if !self.checked_first.swap(true, Ordering::Relaxed) {
            sockopt::warn_mismatches(
                &sockopt::read_back(SockRef::from(&stream)),
                &options,
                "accepted",
            );
        }
        let accepted = Accepted {
            stream,
            peer,
            local,
            slot,
            first_idle,
            shared,
        };
        if proxy == ProxyProtocol::Off {
            self.enter(accepted);
            return;
        }
        let acceptor = Arc::clone(self);
        self.tracker
            .spawn(async move { acceptor.read_proxy_header(accepted, proxy).await });
    }

    /// Reads the connection's PROXY protocol header within `handshake_timeout`, then lets it
    /// in under the client's address the header carries.
    async fn read_proxy_header(self: &Arc<Self>, mut accepted: Accepted, version: ProxyProtocol) {
        let within = accepted.shared.params.handshake_timeout;
        let (peer, local) = (accepted.peer, accepted.local);
        let read = proxy_protocol::read_header(&mut accepted.stream, version);
        let reason = tokio::select! {
            read = tokio::time::timeout(within, read) => match read {
                Ok(Ok(addresses)) => {
                    if let Some(addresses) = addresses {
                        accepted.peer = addresses.source;
                        accepted.local = addresses.destination;
                    }
                    self.enter(accepted);
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(peer = %peer, error = %error, "refused a connection's PROXY protocol header; closing");
                    let message = "this listener reads a PROXY protocol header first: connect through the load balancer";
                    self.tell(&accepted.stream, ErrorCode::ProxyHeaderInvalid, message);
                    CloseReason::ProxyHeaderInvalid
                }
                Err(_) => CloseReason::ProxyHeaderTimeout,
            },
            _ = self.stop_accepting.cancelled() => CloseReason::Shutdown,
        };
        self.registry.record_close(refused(peer, local, reason));
    }

    /// Lets an accepted connection in: its registry entry under `max_connections_per_ip`, then
    /// its task (TLS, after its turn among the handshakes, and the JSON items; or the
    /// embedder's handler).
    fn enter(self: &Arc<Self>, accepted: Accepted) {
        let Accepted {
            stream,
            peer,
            local,
            slot,
            first_idle,
            shared,
        } = accepted;
        let per_source = shared.params.max_connections_per_ip;
        let Some(guard) = self.registry.insert_within(peer, local, per_source) else {
            let message = "max_connections_per_ip are live from your address; retry later";
            self.refuse(stream, peer, local, ErrorCode::TooManyConnections, message);
            return;
        };
        #[cfg(unix)]
        guard.set_socket(&stream);
        if first_idle.is_some() {
            guard.info().set_keepalive_first_idle(first_idle);
            self.phases.given();
        }
        if let Some(protocol) = &self.protocol {
            let task = liveness::supervise(stream, guard, shared, protocol);
            self.tracker.spawn(WithSlot { task, _slot: slot });
            return;
        }
        let tls = match self.reloader.tls().accept() {
            None => None,
            Some(Ok(session)) => Some(session),
            Some(Err(error)) => {
                tracing::error!(peer = %peer, error = %error, "cannot start a TLS session; closing");
                guard.close(CloseReason::InternalError);
                return;
            }
        };
        match (tls, &self.handshakes) {
            (Some(session), Some(handshakes)) => {
                let handshakes = Arc::clone(handshakes);
                self.handshake_in_turn(handshakes, stream, guard, shared, session, slot);
            }
            (tls, _) => {
                let producer = self.producer.clone();
                self.tracker
                    .spawn(conn::run(stream, guard, shared, producer, tls, slot));
            }
        }
    }

    /// Starts a TLS connection's task once its handshake's turn has come ([`Handshakes`]), in a
    /// task of its own meanwhile; a connection whose turn does not come closes with the reason
    /// of why.
    fn handshake_in_turn(
        self: &Arc<Self>,
        handshakes: Arc<Handshakes>,
        stream: TcpStream,
        guard: ConnGuard,
        shared: Arc<ConnShared>,
        mut session: TlsSession,
        slot: Slot,
    ) {
        let acceptor = Arc::clone(self);
        let accepted = Instant::from_std(guard.info().started());
        let handshake_timeout = shared.params.handshake_timeout;
        self.tracker.spawn(async move {
            let waited = tokio::select! {
                waited = handshakes.wait_turn(&stream, accepted, handshake_timeout) => waited,
                // Stopping: a handshake not begun is not begun now.
                _ = acceptor.stop_accepting.cancelled() => Waited::Stopping,
            };
            match waited {
                Waited::Turn(turn) => {
                    session.hold_turn(turn);
                    let producer = acceptor.producer.clone();
                    let task = conn::run(stream, guard, shared, producer, Some(session), slot);
                    acceptor.tracker.spawn(task);
                }
                Waited::Late => guard.close(CloseReason::HandshakeTimeout),
                Waited::PeerGone => guard.close(CloseReason::PeerClosed),
                Waited::Stopping => guard.close(CloseReason::Shutdown),
            }
        });
    }

    /// Serves a connection another process handed over. It takes a `max_connections` slot
    /// even past the limit: refusing it would close a live connection. False when it could
    /// not go on (logged; its socket closes).
    #[cfg(target_os = "linux")]
    pub(super) fn adopt(&self, departed: conn::Departed) -> bool {
        let slot = Slot::force(&self.live_connections);
        let shared = self.reloader.connections();
        // A keep-alive phase not yet put back: this process's restorer puts it back.
        let phased = departed.state.carried.keepalive_first_idle_s != 0;
        match conn::resume(departed, shared, self.producer.clone(), slot) {
            Ok(task) => {
                self.tracker.spawn(task);
                if phased {
                    self.phases.given();
                }
                true
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot go on with a handed-over connection; it closes");
                false
            }
        }
    }

    /// Tells a peer refused at accept why, in JSON where it speaks it, without waiting (a fresh
    /// socket's send buffer always has room for one line), then reads what it already sent, so
    /// that the close that follows does not reset the line away. A peer turned away by a limit
    /// is told when to try again: a moment drawn at random within `goaway_window`, so that a
    /// refused crowd (a reconnect storm past `max_connections`) comes back spread out.
    fn tell(&self, stream: &TcpStream, code: ErrorCode, message: &'static str) {
        let line = match code {
            ErrorCode::ServerFull | ErrorCode::TooManyConnections => {
                let window = self.reloader.config().goaway_window.as_millis() as u64;
                Outbound::Refused {
                    code,
                    message,
                    retry_after_ms: fastrand::u64(window / 10..=window.max(1)),
                }
            }
            _ => Outbound::Error {
                code,
                message: message.into(),
                id: None,
            },
        }
        .to_line();
        // On a TLS listener the peer expects a handshake, not a line, and a protocol of the
        // embedder's own has words of its own: they see the close.
        if !self.reloader.tls().enabled() && self.protocol.is_none() {
            let _ = stream.try_write(&line);
        }
        discard_unread(stream);
    }

    /// Tells a peer over a limit why, and records the refusal under the reason of the same
    /// name.
    fn refuse(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        code: ErrorCode,
        message: &'static str,
    ) {
        self.tell(&stream, code, message);
        let reason = match code {
            ErrorCode::TooManyConnections => CloseReason::TooManyConnections,
            _ => CloseReason::ServerFull,
        };
        self.registry.record_close(refused(peer, local, reason));
    }
}

/// An accepted socket with its options set and its slot taken, on its way in.
struct Accepted {
    stream: TcpStream,
    /// The client: the socket's peer, or the address its PROXY protocol header carries.
    peer: SocketAddr,
    /// The address the client connected to.
    local: SocketAddr,
    slot: Slot,
    /// The shortened first keep-alive idle given to the socket, if any.
    first_idle: Option<Duration>,
    shared: Arc<ConnShared>,
}

/// A connection's task holding its `max_connections` slot until it ends.
struct WithSlot<T> {
    task: T,
    _slot: Slot,
}

impl<T: Future<Output = ()> + Unpin> Future for WithSlot<T> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.task).poll(cx)
    }
}

/// Reads and drops what a refused peer already sent (a bounded amount, without waiting): a
/// socket closed with unread bytes sends a reset, which may destroy the error line before the
/// peer reads it.
fn discard_unread(stream: &TcpStream) {
    let mut unread = [0u8; 4096];
    for _ in 0..16 {
        match stream.try_read(&mut unread) {
            Ok(n) if n > 0 => continue,
            _ => return,
        }
    }
}

fn refused(peer: SocketAddr, local: SocketAddr, reason: CloseReason) -> ClosedConn {
    let now = std::time::SystemTime::now();
    ClosedConn {
        id: 0,
        peer,
        local,
        reason,
        started_at: now,
        closed_at: now,
        duration: Duration::ZERO,
        detection_delay: Duration::ZERO,
        bytes_in: 0,
        bytes_out: 0,
        items: 0,
        errors: 0,
        auth_name: None,
        client_id: None,
    }
}
