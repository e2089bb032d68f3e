//! Connections as the surfaces show them: the JSON the admin API and the cluster-wide registry
//! (over NATS) answer with, one shape per resource, the queries they both take ([`listing`]),
//! and the kick they both do ([`kick`]). The same types read the answers back in `connwarden
//! conns`, `kick` and `closed`, so the sides cannot drift apart. Below both surfaces: neither
//! imports the other.
//!
//! Durations are seconds as decimals (`age_s: 12.345`), times RFC 3339 in UTC, counters whole
//! numbers.

pub mod listing;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::registry::{ClosedConn, ConnSnapshot, Registry};
use crate::sockopt::TcpInfo;

/// One live connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// Registry id, unique for the server's life.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's address the client connected to.
    pub local: SocketAddr,
    /// When the connection was accepted.
    pub started_at: String,
    /// Seconds since accept.
    pub age_s: f64,
    /// Seconds since the last byte received (or since accept).
    pub idle_in_s: f64,
    /// Seconds since the last byte sent (or since accept).
    pub idle_out_s: f64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Items accepted.
    pub items: u64,
    /// Items refused.
    pub errors: u64,
    /// Bytes of the read buffer holding a partial object, counted against `max_buffered`
    /// (absent from gateways older than it: 0).
    #[serde(default)]
    pub buffered_bytes: u64,
    /// The name it authenticated under (client certificate subject or token name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_name: Option<String>,
    /// The application heartbeat.
    pub heartbeat: Heartbeat,
    /// The kernel's view, read when the request was served; `null` where `TCP_INFO` is not
    /// available (other platforms) or the connection closed meanwhile.
    pub tcp: Option<Tcp>,
}

/// The application heartbeat of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Whether it applies (`heartbeat = required`, or negotiated by the client's `hello`).
    pub negotiated: bool,
    /// `ping`s sent since the peer was last heard.
    pub pings_outstanding: u8,
}

/// What `TCP_INFO` says of one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tcp {
    /// `established`, `close_wait`, …
    pub state: String,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u32,
    /// Round-trip time variation, microseconds.
    pub rttvar_us: u32,
    /// Consecutive retransmission timeouts of the oldest unacknowledged segment.
    pub retransmits: u8,
    /// Segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Bytes sent and not yet acknowledged.
    pub unacked_bytes: u64,
    /// Keep-alive probes sent and unanswered.
    pub probes: u8,
    /// Backoff of the retransmission timer.
    pub backoff: u8,
    /// Bytes queued in the kernel, not yet sent.
    pub notsent_bytes: u32,
    /// Milliseconds since the peer last acknowledged anything: on an idle connection, since it
    /// answered the last keep-alive probe. (Absent from servers before it: read as 0.)
    #[serde(default)]
    pub since_ack_ms: u32,
}

/// One closed connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Closed {
    /// Registry id.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's address the client connected to.
    pub local: SocketAddr,
    /// Why it closed (`keepalive_timeout`, `kicked`, …; see `docs/OPERATIONS.md`).
    pub reason: String,
    /// Who ended it: `peer`, `kernel`, `server` or `operator` ([`crate::close_reason::EndedBy`];
    /// empty from a gateway of an earlier version).
    #[serde(default)]
    pub ended_by: String,
    /// When it was accepted.
    pub started_at: String,
    /// When it closed.
    pub closed_at: String,
    /// Seconds from accept to close.
    pub lifetime_s: f64,
    /// Seconds from the last byte received (or accept) to the close.
    pub detection_delay_s: f64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Items accepted.
    pub items: u64,
    /// Items refused.
    pub errors: u64,
    /// The name it authenticated under (client certificate subject or token name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_name: Option<String>,
    /// The `client_id` its `hello` gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// The clients flapping now (`GET /flapping`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flapping {
    /// The threshold in force (`10/5m`), or `off`.
    pub threshold: String,
    /// Clients flapping now.
    pub total: usize,
    /// Them, the most closes first.
    pub items: Vec<FlappingClient>,
}

/// One client flapping now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlappingClient {
    /// Its `client_id`, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Its address, for a client without a `client_id` (all such clients behind one address
    /// count as one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Closes of its connections within the window.
    pub closes: usize,
    /// When the last one closed.
    pub last_close_at: String,
    /// The address of its last connection.
    pub last_peer: SocketAddr,
    /// Its last close reasons, oldest first (up to five).
    pub last_reasons: Vec<String>,
}

/// The clients flapping now, as `GET /flapping` answers.
pub fn flapping(registry: &Registry) -> Flapping {
    use crate::registry::flapping::FlapKey;
    let (threshold, clients) = registry.flapping();
    let threshold = threshold.map_or_else(|| "off".to_owned(), |t| t.to_string());
    let items: Vec<FlappingClient> = clients
        .into_iter()
        .map(|client| {
            let (client_id, address) = match client.key {
                FlapKey::ClientId(id) => (Some(id.to_string()), None),
                FlapKey::Address(ip) => (None, Some(ip.to_string())),
            };
            FlappingClient {
                client_id,
                address,
                closes: client.closes,
                last_close_at: timestamp(client.last_close_at),
                last_peer: client.last_peer,
                last_reasons: client
                    .last_reasons
                    .iter()
                    .map(|r| r.as_str().to_owned())
                    .collect(),
            }
        })
        .collect();
    Flapping {
        threshold,
        total: items.len(),
        items,
    }
}

/// A page of a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// Entries that matched the filters, on every page.
    pub total: usize,
    /// Entries skipped before this page.
    pub offset: usize,
    /// This page's entries.
    pub items: Vec<T>,
}

/// The one shape of every error the admin API answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A stable code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `not_found`, `method_not_allowed`, `internal`.
    pub code: String,
    /// What went wrong, and what would be right.
    pub message: String,
}

fn seconds(d: Duration) -> f64 {
    // Millisecond precision: what the registry keeps, and what a person reads.
    (d.as_millis() as f64) / 1000.0
}

/// RFC 3339 in UTC, to the millisecond.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

impl Connection {
    /// The view of a snapshot, with its `TCP_INFO` if read.
    pub fn new(snapshot: &ConnSnapshot, tcp: Option<TcpInfo>) -> Connection {
        Connection {
            id: snapshot.id,
            peer: snapshot.peer,
            local: snapshot.local,
            started_at: timestamp(snapshot.started_at),
            age_s: seconds(snapshot.age),
            idle_in_s: seconds(snapshot.last_in_ago),
            idle_out_s: seconds(snapshot.last_out_ago),
            bytes_in: snapshot.bytes_in,
            bytes_out: snapshot.bytes_out,
            items: snapshot.items,
            errors: snapshot.errors,
            buffered_bytes: snapshot.buffered.into(),
            auth_name: snapshot.auth_name.as_deref().map(str::to_owned),
            heartbeat: Heartbeat {
                negotiated: snapshot.heartbeat,
                pings_outstanding: snapshot.pings_outstanding,
            },
            tcp: tcp.map(Tcp::from),
        }
    }
}

impl From<TcpInfo> for Tcp {
    fn from(info: TcpInfo) -> Tcp {
        Tcp {
            state: info.state.to_owned(),
            rtt_us: info.rtt_us,
            rttvar_us: info.rttvar_us,
            retransmits: info.retransmits,
            total_retrans: info.total_retrans,
            unacked: info.unacked,
            unacked_bytes: info.unacked_bytes,
            probes: info.probes,
            backoff: info.backoff,
            notsent_bytes: info.notsent_bytes,
            since_ack_ms: info.last_ack_recv_ms,
        }
    }
}

impl From<&ClosedConn> for Closed {
    fn from(closed: &ClosedConn) -> Closed {
        Closed {
            id: closed.id,
            peer: closed.peer,
            local: closed.local,
            reason: closed.reason.as_str().to_owned(),
            ended_by: closed.reason.ended_by().as_str().to_owned(),
            started_at: timestamp(closed.started_at),
            closed_at: timestamp(closed.closed_at),
            lifetime_s: seconds(closed.duration),
            detection_delay_s: seconds(closed.detection_delay),
            bytes_in: closed.bytes_in,
            bytes_out: closed.bytes_out,
            items: closed.items,
            errors: closed.errors,
            auth_name: closed.auth_name.as_deref().map(str::to_owned),
            client_id: closed.client_id.as_deref().map(str::to_owned),
        }
    }
}

/// Longest wait of a kick for the kicked connection's close to be recorded.
const KICK_WAIT: Duration = Duration::from_secs(5);

/// One live connection's view, with its `TCP_INFO`.
pub fn connection(registry: &Registry, id: u64) -> Option<Connection> {
    let snapshot = registry.get(id)?;
    Some(Connection::new(&snapshot, registry.tcp_info(id)))
}

/// A connection closed by [`kick`]: what it was, and whether its close was recorded within
/// the wait.
#[derive(Clone, Debug)]
pub struct Kicked {
    /// The connection as it was when kicked.
    pub view: Connection,
    /// True once its close is recorded (a listing no longer shows it); false if it had not
    /// closed within the wait.
    pub closed: bool,
}

/// Kicks the live connection `id` (reason `kicked`) and waits, up to `KICK_WAIT`, until its
/// close is recorded, so that a listing right after no longer shows it. `None` when no such
/// connection is live. Serves `DELETE /connections/{id}` and the cluster-wide registry's kick.
pub async fn kick(registry: &Registry, id: u64, via: &'static str) -> Option<Kicked> {
    let mut closes = registry.subscribe();
    let view = connection(registry, id)?;
    if !registry.kick(id) {
        return None;
    }
    tracing::info!(conn_id = id, peer = %view.peer, via, "connection kicked");
    let closed = tokio::time::timeout(KICK_WAIT, async {
        loop {
            match closes.recv().await {
                Ok(closed) if closed.id == id => return true,
                Ok(_) => {}
                // Lagged: look at the registry instead of the events missed.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if registry.get(id).is_none() {
                        return true;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    Some(Kicked { view, closed })
}
