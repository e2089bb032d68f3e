//! TLS handshakes in turn: at most `max_handshakes` run at once, in the order their clients'
//! first bytes came.
//!
//! Why: in a reconnect storm every accepted connection starts its handshake at once, and each
//! needs a second turn of the runtime (the client's `Finished`) that waits behind the first
//! turns of all the others, so every handshake ends late, together, and past `handshake_timeout`
//! the key exchanges done are thrown away while the clients retry (docs/BENCHMARKS.md, "A
//! reconnect storm"). In turns, the handshakes that began end at once and the rest wait without
//! costing anything: no key exchange is made for a client that is no longer there.
//!
//! A connection takes a turn only once its client's first bytes (the `ClientHello`) are there,
//! so a peer that connects and says nothing never holds one; a turn is given back when the
//! handshake ends, or after [`TURN_HELD_AT_MOST`] whatever it does, so a peer that sends its
//! `ClientHello` and stalls holds one only briefly. A peer that sends nothing is closed at
//! `handshake_timeout` from accept, as ever. Once its first bytes are there, `handshake_timeout`
//! runs from the turn: it bounds the handshake, not the wait, which ends when the turn comes or
//! the client gives up (a connection whose client closed while it waited closes as
//! `peer_closed` when its turn comes, without a key exchange made for it), at most
//! [`LONGEST_WAIT`] from accept (or `handshake_timeout`, if longer; then `handshake_timeout`). A
//! shorter server-side bound on the wait would only send clients back to retry sooner, into the
//! same queue.

use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;

use crate::tls::HandshakeTurn;

/// Longest a handshake keeps its turn: ample for a handshake that goes on (one round trip once
/// the server's flight is out), short for a peer that stalls to hold turns.
pub(super) const TURN_HELD_AT_MOST: Duration = Duration::from_secs(1);

/// Longest wait for a turn (unless `handshake_timeout` is longer).
pub(super) const LONGEST_WAIT: Duration = Duration::from_secs(30);

/// The turns of TLS handshakes.
#[derive(Debug)]
pub(super) struct Handshakes {
    turns: Arc<Semaphore>,
}

/// How waiting for a turn ended.
pub(super) enum Waited {
    /// The handshake may run; it holds the turn until it ends.
    Turn(HandshakeTurn),
    /// `handshake_timeout` passed first.
    Late,
    /// The client closed (or reset) while it waited.
    PeerGone,
    /// The server stopped accepting (a shutdown, an upgrade) while it waited.
    Stopping,
}

impl Handshakes {
    /// At most `at_once` handshakes at a time.
    pub(super) fn new(at_once: usize) -> Handshakes {
        Handshakes {
            turns: Arc::new(Semaphore::new(at_once)),
        }
    }

    /// Waits until `stream`'s client has sent its first bytes (by `accepted` +
    /// `handshake_timeout`, as a peer that says nothing always was) and then for a free turn
    /// (turns go in the order asked; by `accepted` + [`LONGEST_WAIT`] or `handshake_timeout`).
    pub(super) async fn wait_turn(
        &self,
        stream: &TcpStream,
        accepted: Instant,
        handshake_timeout: Duration,
    ) -> Waited {
        // A byte to peek at, not readiness alone: tokio may report a socket readable when it
        // is not (its documented false positives), and a silent peer taken for one that
        // spoke would hold a turn for `TURN_HELD_AT_MOST`. No byte but the end: gone.
        let mut first = [0u8; 1];
        let spoke =
            tokio::time::timeout_at(accepted + handshake_timeout, stream.peek(&mut first)).await;
        match spoke {
            Err(_) => return Waited::Late,
            Ok(Err(_) | Ok(0)) => return Waited::PeerGone,
            Ok(Ok(_)) => {}
        }
        let turns = Arc::clone(&self.turns);
        let by = accepted + handshake_timeout.max(LONGEST_WAIT);
        let Ok(permit) = tokio::time::timeout_at(by, turns.acquire_owned()).await else {
            return Waited::Late;
        };
        let permit = permit.expect("the semaphore is never closed");
        if peer_gone(stream) {
            return Waited::PeerGone;
        }
        let (ended, held) = oneshot::channel::<()>();
        tokio::spawn(async move {
            // Ends when the turn is dropped (the channel closes), or at the latest bound.
            let _ = tokio::time::timeout(TURN_HELD_AT_MOST, held).await;
            drop(permit);
        });
        Waited::Turn(HandshakeTurn::new(ended))
    }
}

/// Whether the client has closed its side already (its end of stream waits behind its bytes):
/// a handshake for it would be a key exchange for nobody.
fn peer_gone(stream: &TcpStream) -> bool {
    crate::sockopt::tcp_info(SockRef::from(stream))
        .is_some_and(|info| matches!(info.state, "close_wait" | "close"))
}
