//! A client that delivers items to a connwarden server with the same bounded liveness as the
//! server, and loses none of them.
//!
//! - The socket gets the same options as the server's, set by the same code
//!   ([`crate::sockopt`]): buffers before `connect`, keep-alive idle / interval / count,
//!   `TCP_USER_TIMEOUT` and `TCP_NODELAY`; they are read back after the first connect.
//! - It sends `hello`, answers the server's `ping`, and pings the server itself after
//!   `heartbeat_interval` of inbound silence; after `heartbeat_misses` silent intervals the
//!   connection is given up (`heartbeat_timeout`).
//! - It reconnects with exponential backoff and full jitter ([`BackoffPolicy`]), optionally
//!   giving up after a time without a working connection.
//! - With acks on, each item gets an `id` (its sequence number) and waits in a bounded window
//!   until the server acknowledges it; after a reconnect every unacknowledged item is sent again,
//!   in order. Delivery is at-least-once: duplicates can only be items that were in flight when a
//!   connection died.
//!
//! ```no_run
//! use connwarden::client::{Client, ClientConfig, OutItem};
//!
//! # async fn demo() -> Result<(), connwarden::client::ClientError> {
//! let client = Client::start(ClientConfig::new("127.0.0.1:7000"));
//! client.send(OutItem::from_ip("192.0.2.7".parse().unwrap())).await?;
//! let summary = client.finish().await?; // every item acknowledged
//! assert_eq!(summary.acknowledged, 1);
//! # Ok(()) }
//! ```
//!
//! See `examples/send_items.rs` for a runnable program.

mod backoff;
mod dial;
mod input;
mod item;
mod session;
mod window;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use backoff::{Backoff, BackoffPolicy};
pub use dial::DialError;
pub use input::{InputItem, ItemReader, RefusedInput, DEFAULT_MAX_OBJECT};
pub use item::OutItem;
pub use session::EndReason;

use crate::config::{Config, Keepalive, UserTimeout};
use crate::sockopt::SocketOptions;
use window::Window;

/// How a [`Client`] connects and delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The server, as `host:port` (resolved at every connect); or several, separated by commas,
    /// to fail over between: each connect tries them in turn, starting after the one whose
    /// connection ended last.
    pub addr: String,
    /// Longest wait for a connection to be established and greeted.
    pub connect_timeout: Duration,
    /// Kernel keep-alive of the client's socket.
    pub keepalive: Keepalive,
    /// `TCP_USER_TIMEOUT`: `Auto` is idle + interval × count.
    pub user_timeout: UserTimeout,
    /// `TCP_NODELAY`.
    pub nodelay: bool,
    /// `SO_RCVBUF`, set before `connect`; `None` keeps autotuning.
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF`, set before `connect`; `None` keeps autotuning.
    pub send_buffer: Option<usize>,
    /// Inbound silence after which the client pings the server.
    pub heartbeat_interval: Duration,
    /// Silent intervals after which the connection is given up.
    pub heartbeat_misses: u32,
    /// Waiting between connection attempts.
    pub backoff: BackoffPolicy,
    /// Items sent and not yet acknowledged, at most (with `ack`); the items taken but not yet
    /// written, at most (without).
    pub window: usize,
    /// Number items and wait for their acks; without it an item is done once written.
    pub ack: bool,
    /// The client's name in its `hello`.
    pub name: String,
    /// The client's identity in its `hello` (`client_id`): with each item's number it makes the
    /// message id a JetStream sink stores a resend once by, whichever gateway the resend goes
    /// through. Random for each client by default; one given here must not be used by two
    /// clients at once (their items would be taken for each other's resends).
    pub client_id: String,
    /// TLS to the server, or `None` for plain TCP.
    pub tls: Option<crate::tls::ClientTls>,
    /// The token sent in each `hello` (the server's `auth_tokens`), if any.
    pub token: Option<String>,
}

impl ClientConfig {
    /// Production defaults for a server at `addr`: keep-alive and heartbeat as the server's
    /// defaults, connect timeout 5 s, backoff 100 ms up to 10 s with no give-up, a window of
    /// 1,024 items, acks on.
    pub fn new(addr: impl Into<String>) -> ClientConfig {
        let server = Config::default();
        ClientConfig {
            addr: addr.into(),
            connect_timeout: Duration::from_secs(5),
            keepalive: server.keepalive,
            user_timeout: server.user_timeout,
            nodelay: server.nodelay,
            recv_buffer: None,
            send_buffer: None,
            heartbeat_interval: server.heartbeat_interval,
            heartbeat_misses: server.heartbeat_misses,
            backoff: BackoffPolicy::default(),
            window: 1024,
            ack: true,
            name: format!("connwarden/{}", env!("CARGO_PKG_VERSION")),
            client_id: random_client_id(),
            tls: None,
            token: None,
        }
    }

    /// The addresses of [`ClientConfig::addr`], in order.
    pub fn addrs(&self) -> Vec<&str> {
        self.addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// The socket options this configuration asks for.
    pub fn socket_options(&self) -> SocketOptions {
        SocketOptions {
            keepalive: self.keepalive,
            user_timeout: self.user_timeout.resolve(&self.keepalive),
            nodelay: self.nodelay,
            recv_buffer: self.recv_buffer,
            send_buffer: self.send_buffer,
        }
    }

    /// The longest a dead server can go unnoticed: the kernel's bound (keep-alive when idle,
    /// the user timeout with data in flight) or the heartbeat's, whichever is lower.
    pub fn liveness_bound(&self) -> Duration {
        // Without a user timeout, data in flight is retried for `tcp_retries2` (15 by default:
        // about 924.6 s).
        let in_flight = self
            .user_timeout
            .resolve(&self.keepalive)
            .unwrap_or(Duration::from_millis(924_600));
        let kernel = in_flight.max(self.keepalive.bound());
        let heartbeat = self.heartbeat_interval * self.heartbeat_misses.max(1);
        kernel.min(heartbeat)
    }
}

/// 128 random bits, as hex: unique enough that two clients never share one.
pub fn random_client_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Counters of a running client, for progress displays.
#[derive(Debug, Default)]
pub struct Progress {
    /// Items taken by [`Client::send`].
    pub taken: AtomicU64,
    /// Items written to a connection, resends included.
    pub sent: AtomicU64,
    /// Items written again after a reconnect.
    pub resent: AtomicU64,
    /// Items the server acknowledged.
    pub acknowledged: AtomicU64,
    /// Items done without acks: written to the kernel.
    pub written: AtomicU64,
    /// Items the server refused for good.
    pub rejected: AtomicU64,
    /// Connections established.
    pub connections: AtomicU64,
    /// Attempts that did not reach a greeted session (no connection, a failed TLS handshake,
    /// a refusal at accept): each one a retry after a wait.
    pub failed_attempts: AtomicU64,
    /// Whether a connection is up and greeted.
    pub connected: AtomicBool,
}

impl Progress {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now, with the refusals by code (which only the delivery task keeps).
    fn summary(&self, rejected: &BTreeMap<String, u64>) -> Summary {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Summary {
            taken: load(&self.taken),
            sent: load(&self.sent),
            resent: load(&self.resent),
            acknowledged: load(&self.acknowledged),
            written: load(&self.written),
            rejected: rejected.clone(),
            connections: load(&self.connections),
            failed_attempts: load(&self.failed_attempts),
        }
    }
}

/// What a client did, when it finished.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Items taken.
    pub taken: u64,
    /// Items written to a connection, resends included.
    pub sent: u64,
    /// Items written again after a reconnect.
    pub resent: u64,
    /// Items acknowledged by the server.
    pub acknowledged: u64,
    /// Items written, without acks.
    pub written: u64,
    /// Items the server refused for good, by error code.
    pub rejected: BTreeMap<String, u64>,
    /// Connections established.
    pub connections: u64,
    /// Attempts that did not reach a greeted session.
    pub failed_attempts: u64,
}

/// Why a client stopped delivering.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No working connection for the give-up time.
    #[error("gave up on {addr} after {}: {last}; {unsettled} items not delivered", humantime::format_duration(Duration::from_millis(.after.as_millis() as u64)))]
    GaveUp {
        /// The server.
        addr: String,
        /// Time spent failing.
        after: Duration,
        /// The last failure.
        last: String,
        /// Items taken and neither acknowledged nor refused.
        unsettled: usize,
        /// What was delivered before.
        summary: Box<Summary>,
    },
    /// The delivery task has stopped; [`Client::finish`] says why.
    #[error("the client has stopped")]
    Stopped,
}

/// A running client: a task that owns the connection, and a handle to feed it.
#[derive(Debug)]
pub struct Client {
    input: mpsc::Sender<Bytes>,
    progress: Arc<Progress>,
    task: JoinHandle<Result<Summary, ClientError>>,
}

impl Client {
    /// Starts delivering to `config.addr` (call it inside a Tokio runtime). The first connection
    /// is made at once.
    pub fn start(config: ClientConfig) -> Client {
        let (input, receiver) = mpsc::channel(config.window.clamp(1, 65_536));
        let progress = Arc::new(Progress::default());
        let task = tokio::spawn(deliver(config, receiver, Arc::clone(&progress)));
        Client {
            input,
            progress,
            task,
        }
    }

    /// Hands an item over, waiting while the window is full.
    pub async fn send(&self, item: OutItem) -> Result<(), ClientError> {
        self.input
            .send(item.into_bytes())
            .await
            .map_err(|_| ClientError::Stopped)
    }

    /// Live counters.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// Takes no more items and waits until every item is acknowledged (or written, without
    /// acks) or refused for good.
    pub async fn finish(self) -> Result<Summary, ClientError> {
        drop(self.input);
        match self.task.await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Err(ClientError::Stopped),
        }
    }
}

/// What the delivery task owns across connections.
struct Delivery {
    window: Window,
    input: mpsc::Receiver<Bytes>,
    input_open: bool,
    /// Items refused for good, by code; every other count is in `progress`.
    rejected: BTreeMap<String, u64>,
    progress: Arc<Progress>,
}

impl Delivery {
    /// Every item handed over is settled and no more will come.
    fn done(&self) -> bool {
        !self.input_open && self.window.is_empty()
    }

    fn refuse(&mut self, seq: u64, code: &str, message: &str) {
        if self.window.settle(seq) == window::Settled::Now {
            tracing::warn!(item = seq, code, detail = message, "item refused");
            *self.rejected.entry(code.to_owned()).or_default() += 1;
            Progress::add(&self.progress.rejected, 1);
        }
    }
}

async fn deliver(
    config: ClientConfig,
    input: mpsc::Receiver<Bytes>,
    progress: Arc<Progress>,
) -> Result<Summary, ClientError> {
    let mut delivery = Delivery {
        window: Window::new(config.window, config.ack),
        input,
        input_open: true,
        rejected: BTreeMap::new(),
        progress,
    };
    let mut backoff = Backoff::new(config.backoff);
    let mut checked_options = false;
    // The address the next connect tries first.
    let mut next_addr = 0;
    loop {
        let end = match dial::connect(&config, next_addr).await {
            Ok((stream, index)) => {
                // Whatever ends this connection, the next connect starts with the next address.
                next_addr = index + 1;
                if !checked_options {
                    dial::check_options(stream.tcp(), &config.socket_options());
                    checked_options = true;
                }
                Progress::add(&delivery.progress.connections, 1);
                let end = session::run(stream, &config, &mut delivery).await;
                delivery.progress.connected.store(false, Ordering::Relaxed);
                end
            }
            Err(error) => session::SessionEnd::failed(error),
        };
        if end.greeted {
            backoff.reset();
        } else {
            Progress::add(&delivery.progress.failed_attempts, 1);
        }
        if delivery.done() {
            if !matches!(end.reason, EndReason::Finished) {
                tracing::info!(reason = %end.reason, "connection ended after the last item was settled");
            }
            return Ok(delivery.progress.summary(&delivery.rejected));
        }
        if end.reconnect_at_once() {
            tracing::info!(addr = %config.addr, reason = %end.reason, unsettled = delivery.window.len(), "reconnecting");
            continue;
        }
        if let EndReason::GoAway(within) = end.reason {
            // Anywhere in the window the server gave, uniformly: a fleet told together comes
            // back spread over it, not in one wave.
            let delay = Duration::from_nanos(fastrand::u64(0..=within.as_nanos() as u64));
            tracing::info!(addr = %config.addr, reconnect_in_ms = delay.as_millis() as u64, within_ms = within.as_millis() as u64, unsettled = delivery.window.len(), "the server asked for a new connection");
            tokio::time::sleep(delay).await;
            continue;
        }
        let waiting = delivery.window.len() + delivery.input.len();
        // A refusal that said when to come back is honoured: the server drew the wait at
        // random so that a refused crowd returns spread out (the backoff still counts the
        // failure toward its give-up).
        match backoff
            .next_delay()
            .map(|own| end.retry_after.unwrap_or(own))
        {
            Some(delay) => {
                let retry_in_ms = delay.as_millis() as u64;
                if matches!(end.reason, EndReason::Dial(_)) {
                    tracing::warn!(addr = %config.addr, reason = %end.reason, waiting, retry_in_ms, "cannot connect");
                } else {
                    tracing::warn!(addr = %config.addr, reason = %end.reason, waiting, retry_in_ms, "connection lost");
                }
                tokio::time::sleep(delay).await;
            }
            None => {
                return Err(ClientError::GaveUp {
                    addr: config.addr.clone(),
                    after: backoff.failing_for(),
                    last: end.reason.to_string(),
                    unsettled: waiting,
                    summary: Box::new(delivery.progress.summary(&delivery.rejected)),
                });
            }
        }
    }
}
