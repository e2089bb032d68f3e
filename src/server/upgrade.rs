//! The server's side of an upgrade ([`crate::upgrade`] is the protocol between the processes):
//! in the old process, waiting for a request beside the shutdown, then handing the connections
//! over; in the new one, adopting them.
//!
//! The old process's order loses nothing and acknowledges nothing twice: the connections that
//! can move stop reading (what they had read is queued, the object they are in the middle of
//! stays in their buffer), the sink goes on writing the queue and sending its acks, and each
//! connection leaves once every reply it was owed is in its output, which goes with it. A
//! connection that cannot move (TLS, or every one when the upgrade does not move them) is told
//! `goaway` and served here until its client closes it, within `goaway_window` and
//! `shutdown_grace`.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Acceptor, ServerError};
use crate::conn::{Departed, Live, Stage};
use crate::handover::MAX_FDS;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::sockopt::ListenError;
use crate::upgrade::{Arrival, Inherited, Successor, Upgrade, UpgradeError};

/// How often the old process looks whether the connections that stay have gone.
const STAYING_CHECK: Duration = Duration::from_millis(50);

/// An upgrade asked for, with where to say how it went.
pub(crate) struct Request {
    upgrade: Upgrade,
    reply: oneshot::Sender<Result<u32, UpgradeError>>,
}

/// Asks a running server to hand itself over to a new process.
#[derive(Clone, Debug)]
pub struct Upgrader {
    requests: mpsc::UnboundedSender<Request>,
}

impl Upgrader {
    pub(super) fn new(requests: mpsc::UnboundedSender<Request>) -> Upgrader {
        Upgrader { requests }
    }

    /// Starts the new process `upgrade` describes and hands it the listeners. `Ok` with its
    /// pid once it is ready: the server then hands over its connections, and its `run` returns
    /// once its queue is in the sink. On `Err` nothing changed, and the server goes on serving.
    pub async fn upgrade(&self, upgrade: Upgrade) -> Result<u32, UpgradeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { upgrade, reply })
            .map_err(|_| UpgradeError::NotRunning)?;
        answer.await.map_err(|_| UpgradeError::NotRunning)?
    }
}

/// The listeners an old process hands over: the data listeners, and the admin listener.
pub(super) type HandedListeners = (Vec<std::net::TcpListener>, Option<std::net::TcpListener>);

/// The server's part of upgrades: where [`Upgrader`]s send their requests, and the process
/// this one takes over from. `upgrade_off.rs` is the same interface where there are no upgrades.
pub(super) struct Upgrades {
    /// Kept so that the requests stay open while the server runs, and cloned for each
    /// [`Upgrader`].
    sender: mpsc::UnboundedSender<Request>,
    requests: mpsc::UnboundedReceiver<Request>,
    /// The process this one takes over from.
    inherited: Option<Inherited>,
}

impl Upgrades {
    pub(super) fn new(inherited: Option<Inherited>) -> Upgrades {
        let (sender, requests) = mpsc::unbounded_channel();
        Upgrades {
            sender,
            requests,
            inherited,
        }
    }

    pub(super) fn upgrader(&self) -> Upgrader {
        Upgrader::new(self.sender.clone())
    }

    /// Whether this process takes over from another (which goes on appending to a file sink
    /// for a while).
    pub(super) fn inherits(&self) -> bool {
        self.inherited.is_some()
    }

    /// The listeners the old process hands over (data, then admin), if this one takes over.
    pub(super) fn take_listeners(&self) -> Result<Option<HandedListeners>, ServerError> {
        let Some(inherited) = &self.inherited else {
            return Ok(None);
        };
        let handed = inherited.take_listeners()?;
        Ok(Some((handed.data, handed.admin)))
    }

    /// Copies of the listeners, to hand them over at an upgrade.
    pub(super) fn copy_listeners(
        &self,
        listeners: &[TcpListener],
        admin: Option<&socket2::Socket>,
    ) -> Result<ListenerCopies, ServerError> {
        ListenerCopies::of(listeners, admin)
    }

    /// In a process that takes over: adopts the old one's connections, until `stop`.
    pub(super) fn adopt(
        &mut self,
        acceptor: Arc<Acceptor>,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let inherited = self.inherited.take()?;
        Some(tokio::spawn(adopt_all(inherited, acceptor, stop)))
    }

    /// Waits for `shutdown` (then `None`) or for an upgrade that succeeds.
    pub(super) async fn serve_until_upgraded(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
        copies: &ListenerCopies,
        live: &Live,
        metrics: &Metrics,
    ) -> Option<Upgraded> {
        serve_until_upgraded(shutdown, &mut self.requests, copies, live, metrics).await
    }
}

/// Copies of the listening sockets' descriptors, kept to hand them over (the listeners
/// themselves belong to the accept loops).
pub(super) struct ListenerCopies {
    data: Vec<OwnedFd>,
    admin: Option<OwnedFd>,
}

impl ListenerCopies {
    fn of(
        listeners: &[TcpListener],
        admin: Option<&socket2::Socket>,
    ) -> Result<ListenerCopies, ServerError> {
        let copy = |fd: std::os::fd::BorrowedFd<'_>, addr| {
            fd.try_clone_to_owned().map_err(|source| {
                ServerError::Listen(ListenError {
                    addr,
                    stage: "copy the listener for an upgrade",
                    source,
                })
            })
        };
        let unknown = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        let data = listeners
            .iter()
            .map(|l| copy(l.as_fd(), l.local_addr().unwrap_or(unknown)))
            .collect::<Result<_, _>>()?;
        let admin = admin.map(|a| copy(a.as_fd(), unknown)).transpose()?;
        Ok(ListenerCopies { data, admin })
    }
}

/// The new process that took over, and whether the connections move to it.
pub(super) struct Upgraded {
    successor: Successor,
    moves: bool,
}

impl Upgraded {
    pub(super) fn pid(&self) -> u32 {
        self.successor.pid
    }
}

/// Waits for `shutdown` (then `None`) or for an upgrade that succeeds. A failed one is logged,
/// counted and answered, and the server goes on as before.
async fn serve_until_upgraded(
    shutdown: impl std::future::Future<Output = ()>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    copies: &ListenerCopies,
    live: &Live,
    metrics: &Metrics,
) -> Option<Upgraded> {
    tokio::pin!(shutdown);
    loop {
        let request = tokio::select! {
            _ = &mut shutdown => return None,
            request = requests.recv() => request?,
        };
        let moves = request.upgrade.moves_connections();
        let timeout = live.config().upgrade_timeout;
        tracing::info!(
            timeout_ms = timeout.as_millis() as u64,
            "upgrade: starting the new process"
        );
        let cancel = CancellationToken::new();
        let start = crate::upgrade::start(
            request.upgrade,
            &copies.data,
            copies.admin.as_ref(),
            timeout,
            cancel.clone(),
        );
        tokio::pin!(start);
        let started = tokio::select! {
            started = &mut start => started,
            _ = &mut shutdown => {
                // A shutdown asked for meanwhile wins: the new process is killed first.
                cancel.cancel();
                let _ = start.await;
                let _ = request.reply.send(Err(UpgradeError::NotRunning));
                tracing::info!("upgrade: given up for the shutdown; the new process was stopped");
                return None;
            }
        };
        match started {
            Ok(successor) => {
                metrics.upgrade("handed_over");
                tracing::info!(
                    pid = successor.pid,
                    "upgrade: the new process is ready and accepts; handing over"
                );
                let _ = request.reply.send(Ok(successor.pid));
                return Some(Upgraded { successor, moves });
            }
            Err(error) => {
                metrics.upgrade(error.result());
                tracing::error!(error = %error, "upgrade failed; this process goes on serving every connection");
                let _ = request.reply.send(Err(error));
            }
        }
        // A request that came while this attempt ran is the next attempt: it may have come
        // for a binary fixed meanwhile.
    }
}

/// Hands every connection that can move to the new process, tells the others `goaway` and
/// waits for them to go (within `goaway_window` and `shutdown_grace`). The accept loops have
/// ended. Returns how many connections were handed over.
pub(super) async fn hand_over(upgraded: Upgraded, live: &Live, registry: &Registry) -> u64 {
    let Upgraded { successor, moves } = upgraded;
    let config = live.config();
    let (grace, goaway_window) = (config.shutdown_grace, config.goaway_window);
    drop(config);
    let started = Instant::now();
    let (departures, mut departed) = mpsc::unbounded_channel();
    if moves {
        live.move_connections_to(departures);
        live.enter(Stage::HandOver);
    }
    // The connections that move ignore it.
    registry.goaway_all(goaway_window);
    registry.wake_all();
    let mut handed = 0;
    if moves {
        let deadline = started + grace;
        let (mut moving, mut failed) = (true, false);
        loop {
            // Done once only connections that stay are listed (or the grace ran out, or the new
            // process failed): from then on no connection leaves, and the channel ends with
            // those that left meanwhile.
            let settled = registry.len() <= live.staying();
            if moving && (settled || failed || Instant::now() >= deadline) {
                live.stop_moving();
                moving = false;
            }
            let next = match moving {
                true => match tokio::time::timeout(STAYING_CHECK, departed.recv()).await {
                    Ok(next) => next,
                    Err(_) => continue,
                },
                false => departed.recv().await,
            };
            let Some(first) = next else { break };
            if failed {
                // Their sockets close as they drop: the shutdown that follows would close them.
                continue;
            }
            match send_batch(&successor, first, &mut departed).await {
                Some(sent) => handed += sent,
                None => failed = true,
            }
        }
    }
    let done = successor.clone_handle();
    match tokio::task::spawn_blocking(move || done.done(handed)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(error = %error, "upgrade: cannot tell the new process the hand-over is done")
        }
        Err(error) => {
            tracing::error!(error = %error, "upgrade: the hand-over's last message failed")
        }
    }
    let staying = registry.len();
    tracing::info!(
        handed_over = handed,
        staying,
        hand_over_ms = started.elapsed().as_millis() as u64,
        "upgrade: connections handed over; the ones left were told goaway"
    );
    // The connections told `goaway` close from their side, spread over the window.
    let until = Instant::now() + goaway_window + grace;
    while !registry.is_empty() && Instant::now() < until {
        tokio::time::sleep(STAYING_CHECK).await;
    }
    handed
}

/// Sends `first` and whatever else has left meanwhile, up to a message's worth. The count
/// sent, or `None` when the new process could not take them (logged; their sockets close).
async fn send_batch(
    successor: &Successor,
    first: Departed,
    departed: &mut mpsc::UnboundedReceiver<Departed>,
) -> Option<u64> {
    let mut batch = vec![first];
    while batch.len() < MAX_FDS {
        match departed.try_recv() {
            Ok(more) => batch.push(more),
            Err(_) => break,
        }
    }
    let count = batch.len() as u64;
    let sender = successor.clone_handle();
    match tokio::task::spawn_blocking(move || sender.send_conns(batch)).await {
        Ok(Ok(())) => Some(count),
        Ok(Err(error)) => {
            tracing::error!(error = %error, connections = count, "upgrade: the new process did not take connections; they close");
            None
        }
        Err(error) => {
            tracing::error!(error = %error, "upgrade: sending connections failed");
            None
        }
    }
}

/// In the new process: tells the old one this one is ready, then serves every connection it
/// hands over, until it says it is done (or `stop`).
async fn adopt_all(inherited: Inherited, acceptor: Arc<Acceptor>, stop: CancellationToken) {
    if let Err(error) = inherited.ready() {
        tracing::error!(error = %error, "upgrade: cannot tell the old process this one is ready");
        return;
    }
    if let Err(error) = inherited.wait_without_bound() {
        tracing::warn!(error = %error, "upgrade: the hand-over channel keeps its timeout");
    }
    let inherited = Arc::new(inherited);
    let started = Instant::now();
    let (mut adopted, mut failed) = (0u64, 0u64);
    loop {
        let channel = Arc::clone(&inherited);
        let next = tokio::select! {
            next = tokio::task::spawn_blocking(move || channel.next()) => next,
            _ = stop.cancelled() => break,
        };
        match next {
            Ok(Ok(Arrival::Conns(batch))) => {
                for departed in batch {
                    match acceptor.adopt(departed) {
                        true => adopted += 1,
                        false => failed += 1,
                    }
                }
            }
            Ok(Ok(Arrival::Done)) => break,
            Ok(Err(error)) => {
                tracing::error!(error = %error, "upgrade: the hand-over stopped");
                break;
            }
            Err(error) => {
                tracing::error!(error = %error, "upgrade: the hand-over failed");
                break;
            }
        }
    }
    tracing::info!(
        adopted,
        failed,
        taking_ms = started.elapsed().as_millis() as u64,
        "upgrade: connections taken over from the old process"
    );
}
