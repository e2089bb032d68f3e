//! A connection leaving for another process, and arriving from one (a binary upgrade): what of
//! its state goes with its socket, and how the loop goes on from it.
//!
//! A connection leaves only once it is quiet: it has stopped reading (every complete object it
//! had read is queued), nothing of it waits for the queue, and every reply the sink owed it is
//! in its output. So what it carries is its socket, the bytes it read and did not use (the
//! object it is in the middle of) with where the decoder stands in them, the output not yet
//! written, and a few fields of state: the registry's ([`Carried`]), the heartbeat's, the
//! `hello`'s. Nothing it carries is owed by the old process's queue: nothing is acknowledged
//! twice, nothing is lost. Times travel as "so long ago", which two processes agree on.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Connection, Flags};
use crate::protocol::{Decoder, DecoderState};
use crate::queue::Producer;
use crate::record::Record;
use crate::registry::{Arrival, Carried, ConnGuard, SharedInfo};

use super::{ConnShared, ConnTask, Extras, Slot};

/// The state a connection carries to another process, beside its socket and its bytes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct HandedState {
    /// The registry's part: id, addresses, age, counters, authenticated name.
    pub carried: Carried,
    /// The application heartbeat applies.
    pub heartbeat: bool,
    /// The first heartbeat ping was sent.
    pub pinged: bool,
    /// Pings sent since the peer was last heard.
    pub pings_sent: u16,
    /// The `max_age` notice was sent.
    pub max_age_noticed: bool,
    /// The client authenticated.
    pub authenticated: bool,
    /// Items refused so far, against the error budget.
    pub errors: u32,
    /// Microseconds since the last byte in (or since accept).
    pub last_in_ago_us: u64,
    /// Microseconds since pending output last made progress.
    pub out_since_ago_us: u64,
    /// Milliseconds since the pending object began.
    pub frame_age_ms: u64,
    /// The `client_id` of the client's `hello`.
    pub client_id: Option<String>,
    /// Where the decoder stands in the unread bytes.
    pub decoder: DecoderState,
    /// Unread bytes that follow in the payload.
    pub read_len: u32,
    /// Unwritten output that follows them.
    pub out_len: u32,
}

/// A connection that left its loop to go on in another process.
#[derive(Debug)]
pub struct Departed {
    /// A copy of the socket's descriptor (the connection's own is closed when it leaves).
    pub socket: OwnedFd,
    /// Its state.
    pub state: HandedState,
    /// The bytes read and not used, `state.read_len` of them.
    pub read: BytesMut,
    /// The output not written yet, `state.out_len` bytes.
    pub out: BytesMut,
}

impl Connection {
    /// Leaves the loop with a copy of the socket and the state, for the hand-over (the caller
    /// then removes the registry entry without a recorded close). The connection's own
    /// descriptor closes with it; the peer sees nothing, since the copy keeps the socket open.
    /// `None` when the socket cannot be copied (logged): the connection closes here instead.
    ///
    /// The entry lets go of the descriptor first: it stays listed until the hand-over has the
    /// connection, but the descriptor it named closes here, and the number may be reused
    /// before the entry goes. Before the state is read, too, so that this process's phase
    /// restorer does not put the keep-alive idle back after `carried` said it was pending.
    pub(super) fn depart(mut self, guard: &ConnGuard) -> Option<Departed> {
        guard.release_socket();
        let socket = match self.stream.as_fd().try_clone_to_owned() {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(conn_id = self.info.id, error = %error, "cannot copy the socket to hand it over; closing it here");
                return None;
            }
        };
        let now = Instant::now();
        let read = std::mem::take(&mut self.read_buf);
        let out = std::mem::take(&mut self.out);
        let extras = self.extras.take();
        let state = HandedState {
            carried: guard.carried(),
            heartbeat: self.flags.contains(Flags::HEARTBEAT),
            pinged: self.flags.contains(Flags::PINGED),
            pings_sent: self.pings_sent,
            max_age_noticed: self.flags.contains(Flags::MAX_AGE_NOTICED),
            authenticated: self.flags.contains(Flags::AUTHENTICATED),
            errors: self.errors,
            last_in_ago_us: self.stamp(now).saturating_sub(self.last_in),
            out_since_ago_us: self.stamp(now).saturating_sub(self.out_since),
            frame_age_ms: self.frame_age(now).as_millis() as u64,
            client_id: extras.and_then(|e| e.client_id).map(|id| id.to_string()),
            decoder: self.decoder.state(),
            read_len: read.len() as u32,
            out_len: out.len() as u32,
        };
        Some(Departed {
            socket,
            state,
            read,
            out,
        })
    }
}

/// Why a handed-over connection cannot go on here.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The registry has a live connection with its id.
    #[error("connection id {0} is live already")]
    IdTaken(u64),
    /// The decoder's state does not fit the bytes that came with it.
    #[error("connection {0}: the decoder's state does not fit its bytes")]
    Inconsistent(u64),
    /// The socket could not be registered with the runtime.
    #[error("connection {id}: {source}")]
    Socket {
        /// The connection's id.
        id: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Serves a connection another process handed over, from where it stood there.
pub(crate) fn resume(
    departed: Departed,
    shared: Arc<ConnShared>,
    producer: Producer<Record>,
    slot: Slot,
) -> Result<ConnTask, ResumeError> {
    let Departed {
        socket,
        state,
        mut read,
        out,
    } = departed;
    let id = state.carried.id;
    let decoder = Decoder::resume(state.decoder, &mut read).ok_or(ResumeError::Inconsistent(id))?;
    let std_stream = std::net::TcpStream::from(socket);
    std_stream
        .set_nonblocking(true)
        .map_err(|source| ResumeError::Socket { id, source })?;
    let stream =
        TcpStream::from_std(std_stream).map_err(|source| ResumeError::Socket { id, source })?;
    let guard = shared
        .registry
        .adopt(&state.carried)
        .ok_or(ResumeError::IdTaken(id))?;
    #[cfg(unix)]
    guard.set_socket(&stream);
    let info = SharedInfo::clone(guard.info());
    let mut conn = Connection::new(stream, info, shared, producer, None);
    let now = Instant::now();
    let since_accept = conn.stamp(now);
    conn.last_in = since_accept.saturating_sub(state.last_in_ago_us);
    conn.out_since = since_accept.saturating_sub(state.out_since_ago_us);
    let frame_started = conn.millis_since_accept(now);
    conn.frame_started = frame_started.wrapping_sub(state.frame_age_ms as u32);
    conn.decoder = decoder;
    conn.read_buf = read;
    conn.out = out;
    conn.errors = state.errors;
    conn.pings_sent = state.pings_sent;
    conn.flags = Flags::READING;
    conn.flags.set(Flags::HEARTBEAT, state.heartbeat);
    conn.flags.set(Flags::PINGED, state.pinged);
    conn.flags
        .set(Flags::MAX_AGE_NOTICED, state.max_age_noticed);
    conn.flags.set(Flags::AUTHENTICATED, state.authenticated);
    conn.info
        .heartbeat(state.heartbeat, u32::from(state.pings_sent));
    let auth_name = state.carried.auth_name.map(Arc::<str>::from);
    let client_id = state.client_id.map(Arc::<str>::from);
    if let Some(client_id) = &client_id {
        // The departing process held it; this one holds it now (a connection of the same
        // client accepted here meanwhile is the newer one: this one is superseded instead).
        conn.give_client_id(Arc::clone(client_id), Arrival::HandedOver);
    }
    if auth_name.is_some() || client_id.is_some() {
        conn.extras = Some(Box::new(Extras {
            client_id,
            auth_name,
            tls: None,
        }));
    }
    Ok(ConnTask::new(conn, guard, slot))
}
