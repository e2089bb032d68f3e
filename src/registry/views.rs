//! The copies of an entry that leave the registry: [`ConnSnapshot`] for its readers (`view`,
//! the admin API, NATS, a library user), [`Carried`] for the process that takes the connection
//! over at an upgrade. Apart from the entry because they are plain values, serialized, with no
//! atomics and no lock: what a reader may keep.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What a connection's registry entry keeps when the connection moves to another process (a
/// binary upgrade, issue 29): its id, its age and its counters, so that the new process lists it
/// as it was. Times are offsets, so that they mean the same to a process with another clock
/// origin.
#[cfg(target_os = "linux")]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Carried {
    /// The registry id, kept.
    pub(crate) id: u64,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The local address it reached.
    pub(crate) local: SocketAddr,
    /// Milliseconds since the connection was accepted.
    pub(crate) age_ms: u64,
    /// Milliseconds from accept to the last byte in (0: none yet).
    pub(crate) last_in_ms: u64,
    /// Milliseconds from accept to the last byte out (0: none yet).
    pub(crate) last_out_ms: u64,
    /// Bytes received so far.
    pub(crate) bytes_in: u64,
    /// Bytes sent so far.
    pub(crate) bytes_out: u64,
    /// Items taken so far.
    pub(crate) items: u64,
    /// Items refused so far.
    pub(crate) errors: u64,
    /// The shortened first keep-alive idle, in seconds, not yet put back (0: none): the new
    /// process puts it back in its time ([`crate::phase`]).
    #[serde(default)]
    pub(crate) keepalive_first_idle_s: u16,
    /// The name the client authenticated under.
    #[serde(default)]
    pub(crate) auth_name: Option<String>,
}

/// A copy of one connection's state.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConnSnapshot {
    /// The connection's registry id.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's address the client connected to.
    pub local: SocketAddr,
    /// When the connection was accepted.
    pub started_at: SystemTime,
    /// Time since accept.
    pub age: Duration,
    /// Time since the last byte received (or since accept).
    pub last_in_ago: Duration,
    /// Time since the last byte sent (or since accept).
    pub last_out_ago: Duration,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Items accepted.
    pub items: u64,
    /// Items refused (each answered with an error).
    pub errors: u64,
    /// True once the application heartbeat applies (required, or negotiated by `hello`).
    pub heartbeat: bool,
    /// `ping`s sent since the peer was last heard.
    pub pings_outstanding: u8,
    /// Bytes of the read buffer holding a partial object (counted against `max_buffered`).
    pub buffered: u32,
    /// The name the connection authenticated under, if it did.
    pub auth_name: Option<Arc<str>>,
}
