//! Why a connection ended: a closed set with one spelling, shared by logs, counters and tests.
//!
//! The words of closing, one meaning each, across the crate:
//! - a **reason** ([`CloseReason`]) is why; every close has exactly one;
//! - the server **asks** a connection to close (a kick, memory pressure, the shutdown's
//!   `Closing` stage): the JSON connection hears it as `Event::Asked(reason)`, a handler of the
//!   liveness layer as `Signal::Close(reason)`;
//! - a connection **decides** a close (`conn`'s `Close`: the reason, and the notice the peer is
//!   told first; none for an orderly end), sends its **last flush**, then
//! - its registry guard **records** it (`ConnGuard::close(reason)`: the entry leaves, one log
//!   line, one count, one event, one observation of the detection delay).
//!
//! The server's stages are `Running`, `HandOver` (an upgrade), `Draining` (take no new work)
//! and `Closing` (every connection asked to close, reason `shutdown`).

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use socket2::SockRef;

use crate::sockopt;

/// The one reason a connection closed. Never parsed out of an error string: the code that
/// decides to close names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed its side (read returned end of stream).
    PeerClosed,
    /// The peer reset the connection (`ECONNRESET`, `EPIPE`).
    Reset,
    /// The kernel's keep-alive probes went unanswered (`ETIMEDOUT` with nothing in flight).
    KeepaliveTimeout,
    /// Sent data stayed unacknowledged past `TCP_USER_TIMEOUT` (`ETIMEDOUT` with data in flight).
    UserTimeout,
    /// The peer missed the configured number of application heartbeats.
    HeartbeatTimeout,
    /// No inbound byte within `idle_timeout`.
    IdleTimeout,
    /// Pending output made no progress within `write_timeout`: a slow consumer.
    WriteTimeout,
    /// The peer exceeded its error budget.
    ProtocolError,
    /// One object was larger than `max_frame`.
    FrameTooLarge,
    /// An object that had begun did not end within `frame_timeout` (a peer sending an object a
    /// byte at a time, to hold the connection: a slow-loris).
    FrameTimeout,
    /// The partial objects held across all connections exceeded `max_buffered`, and this
    /// connection held one of the largest.
    MemoryPressure,
    /// A TLS handshake did not finish within `handshake_timeout`.
    HandshakeTimeout,
    /// TLS failed: a protocol error, an unsupported version, a bad record.
    TlsError,
    /// The client did not authenticate: no valid client certificate, or no valid token.
    Unauthorized,
    /// The connection reached `max_age` and its grace period.
    MaxAge,
    /// Refused at accept time: `max_connections` were already live.
    ServerFull,
    /// Refused at accept time: `max_connections_per_ip` were already live from the peer's
    /// address (its /64 network for IPv6).
    TooManyConnections,
    /// Closed on request, through the registry.
    Kicked,
    /// The server's protocol ended the connection in order (a handler of the liveness layer
    /// returned while the peer was still connected: a `QUIT` answered, a session done).
    Completed,
    /// The server is shutting down.
    Shutdown,
    /// Any other socket error, or a panic in the connection's task.
    InternalError,
    /// `proxy_protocol` is on and the connection came from outside `proxy_trusted`: only the
    /// load balancers may say who the client is.
    ProxyUntrusted,
    /// `proxy_protocol` is on and the connection's first bytes were not a PROXY protocol header
    /// of the version in force, or a malformed one.
    ProxyHeaderInvalid,
    /// `proxy_protocol` is on and no whole header came within `handshake_timeout`.
    ProxyHeaderTimeout,
    /// A newer connection of the same client (its `hello` named this connection's `client_id`)
    /// took its place: the client came back while this one still looked alive.
    Superseded,
    /// A paced drain told the connection `goaway` and it was still open past the time given to
    /// reconnect and `shutdown_grace`: its client ignores `goaway`.
    Drained,
}

impl CloseReason {
    /// The reason a socket error on `socket` means, or `None` for an error no reason names.
    /// `after_eof`: the peer had already closed its side, so a reset is its normal end.
    ///
    /// `ETIMEDOUT` is told apart by the socket's `TCP_INFO`: unanswered keep-alive probes, or
    /// data left unacknowledged past `TCP_USER_TIMEOUT`.
    pub fn from_io_error(
        error: &io::Error,
        socket: SockRef<'_>,
        after_eof: bool,
    ) -> Option<CloseReason> {
        use io::ErrorKind::*;
        Some(match error.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe if after_eof => {
                CloseReason::PeerClosed
            }
            ConnectionReset | ConnectionAborted | BrokenPipe => CloseReason::Reset,
            TimedOut | HostUnreachable | NetworkUnreachable => match sockopt::timeout_cause(socket)
            {
                Some(sockopt::TimeoutCause::Retransmission) => CloseReason::UserTimeout,
                Some(sockopt::TimeoutCause::Keepalive) | None => CloseReason::KeepaliveTimeout,
            },
            _ => return None,
        })
    }

    /// Every reason, for counters and reports.
    pub const ALL: [CloseReason; 26] = [
        CloseReason::PeerClosed,
        CloseReason::Reset,
        CloseReason::KeepaliveTimeout,
        CloseReason::UserTimeout,
        CloseReason::HeartbeatTimeout,
        CloseReason::IdleTimeout,
        CloseReason::WriteTimeout,
        CloseReason::ProtocolError,
        CloseReason::FrameTooLarge,
        CloseReason::FrameTimeout,
        CloseReason::MemoryPressure,
        CloseReason::HandshakeTimeout,
        CloseReason::TlsError,
        CloseReason::Unauthorized,
        CloseReason::MaxAge,
        CloseReason::ServerFull,
        CloseReason::TooManyConnections,
        CloseReason::Kicked,
        CloseReason::Completed,
        CloseReason::Shutdown,
        CloseReason::InternalError,
        CloseReason::ProxyUntrusted,
        CloseReason::ProxyHeaderInvalid,
        CloseReason::ProxyHeaderTimeout,
        CloseReason::Superseded,
        CloseReason::Drained,
    ];

    /// The spelling used in logs, counters and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Reset => "reset",
            CloseReason::KeepaliveTimeout => "keepalive_timeout",
            CloseReason::UserTimeout => "user_timeout",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::FrameTimeout => "frame_timeout",
            CloseReason::MemoryPressure => "memory_pressure",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::TlsError => "tls_error",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::MaxAge => "max_age",
            CloseReason::ServerFull => "server_full",
            CloseReason::TooManyConnections => "too_many_connections",
            CloseReason::Kicked => "kicked",
            CloseReason::Completed => "completed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::InternalError => "internal_error",
            CloseReason::ProxyUntrusted => "proxy_untrusted",
            CloseReason::ProxyHeaderInvalid => "proxy_header_invalid",
            CloseReason::ProxyHeaderTimeout => "proxy_header_timeout",
            CloseReason::Superseded => "superseded",
            CloseReason::Drained => "drained",
        }
    }

    /// Position in [`CloseReason::ALL`], for per-reason counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Who ended the connection: the party whose act, or silence, the reason names.
    ///
    /// ```
    /// use connwarden::close_reason::{CloseReason, EndedBy};
    ///
    /// assert_eq!(CloseReason::KeepaliveTimeout.ended_by(), EndedBy::Kernel);
    /// assert_eq!(CloseReason::Kicked.ended_by(), EndedBy::Operator);
    /// ```
    pub fn ended_by(self) -> EndedBy {
        use CloseReason::*;
        match self {
            PeerClosed => EndedBy::Peer,
            Reset | KeepaliveTimeout | UserTimeout => EndedBy::Kernel,
            Kicked | Shutdown | Drained => EndedBy::Operator,
            HeartbeatTimeout | IdleTimeout | WriteTimeout | ProtocolError | FrameTooLarge
            | FrameTimeout | MemoryPressure | HandshakeTimeout | TlsError | Unauthorized
            | MaxAge | ServerFull | TooManyConnections | Completed | InternalError
            | ProxyUntrusted | ProxyHeaderInvalid | ProxyHeaderTimeout | Superseded => {
                EndedBy::Server
            }
        }
    }
}

/// Who ended a connection ([`CloseReason::ended_by`]), in `/closed` and the close's log line:
/// an operator reading a wave of closes asks first whether the clients went, the network
/// failed, the server's own rules acted, or someone asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndedBy {
    /// The peer closed its side in order.
    Peer,
    /// The kernel gave up on the peer: a reset, unanswered keep-alive probes, data
    /// unacknowledged past `TCP_USER_TIMEOUT`.
    Kernel,
    /// The server's own rules: a deadline, a limit, a protocol or authentication failure, a
    /// handler that finished, an internal error.
    Server,
    /// Someone asked: a kick, a shutdown, a drain.
    Operator,
}

impl EndedBy {
    /// The spelling in `/closed` and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Peer => "peer",
            EndedBy::Kernel => "kernel",
            EndedBy::Server => "server",
            EndedBy::Operator => "operator",
        }
    }
}

/// A reason decided once, read from any thread: the first [`FirstReason::set`] wins. One byte
/// (a reason's index + 1, 0 for none), so that a connection's entry pays one byte for it.
#[derive(Debug, Default)]
pub(crate) struct FirstReason(AtomicU8);

impl FirstReason {
    /// Decides `reason`, unless one was decided already (then false: the first stands).
    pub fn set(&self, reason: CloseReason) -> bool {
        let code = reason.index() as u8 + 1;
        self.0
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The reason decided, if any.
    pub fn get(&self) -> Option<CloseReason> {
        let code = self.0.load(Ordering::Acquire);
        let index = usize::from(code.checked_sub(1)?);
        CloseReason::ALL.get(index).copied()
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_is_ended_by_the_party_it_names() {
        let by = |who: EndedBy| -> Vec<&str> {
            CloseReason::ALL
                .iter()
                .filter(|r| r.ended_by() == who)
                .map(|r| r.as_str())
                .collect()
        };
        assert_eq!(by(EndedBy::Peer), ["peer_closed"]);
        assert_eq!(
            by(EndedBy::Kernel),
            ["reset", "keepalive_timeout", "user_timeout"]
        );
        assert_eq!(by(EndedBy::Operator), ["kicked", "shutdown", "drained"]);
        assert_eq!(by(EndedBy::Server).len(), CloseReason::ALL.len() - 7);
    }

    #[test]
    fn the_first_reason_decided_stands() {
        let decided = FirstReason::default();
        assert_eq!(decided.get(), None);
        assert!(decided.set(CloseReason::Kicked));
        assert!(!decided.set(CloseReason::MemoryPressure));
        assert_eq!(decided.get(), Some(CloseReason::Kicked));
        for reason in CloseReason::ALL {
            let one = FirstReason::default();
            one.set(reason);
            assert_eq!(one.get(), Some(reason));
        }
    }

    #[test]
    fn all_is_in_index_order_with_unique_names() {
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        let mut names: Vec<_> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CloseReason::ALL.len());
    }
}
