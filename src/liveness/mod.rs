//! Liveness for any protocol: your own connection handler, with every guarantee of
//! connwarden's own gateway.
//!
//! A Go server written the way the articles do it sets `SetKeepAlive(true)` and
//! `SetKeepAlivePeriod` (which leaves the probe count at 9), keeps its connections in a
//! `sync.Map`, `defer`s the delete and the close, guesses why `Read` failed, and adds read
//! deadlines and a heartbeat by hand. Here the handler is plain async code over a
//! [`Connection`] (an `AsyncRead + AsyncWrite`, under a tokio-util codec if you like), and the
//! layer around it does the rest:
//!
//! | what | where it comes from |
//! |---|---|
//! | keep-alive idle / interval / count and `TCP_USER_TIMEOUT`, set before the first read and read back; keep-alive phases so that probes never storm | the configuration ([`Config`](crate::Config)), applied at accept |
//! | a registry entry: peer, age, bytes and last activity each way, `TCP_INFO` | [`Registry`](crate::Registry), the admin API's `/connections`, the live page |
//! | one close reason per close, with its detection delay in the histogram | the entry's guard, whatever the handler returns or however it ends |
//! | the idle, write, frame and age deadlines; `max_connections` and `max_connections_per_ip` | the configuration, enforced by the layer |
//! | a heartbeat in the protocol's own words: the layer says when a ping is due ([`Signal::Ping`]) and counts the misses; which inbound bytes are life is the protocol's to say ([`Life`]) | `heartbeat`, `heartbeat_interval`, `heartbeat_misses` |
//! | kick, memory pressure, shutdown: a close with its reason ([`Signal::Close`]), a brief grace to say goodbye, then the layer closes | the admin API, `max_buffered`, the shutdown future |
//! | drain ([`Signal::Drain`]) and `goaway` ([`Signal::GoAway`]) in the protocol's own words | shutdown's first stage; an upgrade, `max_age` |
//! | the admin API, `/metrics`, the live page, reload, binary upgrade | [`Server`](crate::Server), as for the JSON gateway |
//!
//! The JSON item gateway (`connwarden serve`) is one protocol on this layer: its connection
//! keeps a loop of its own for its memory and instruction budgets, and asks the same schedule,
//! registry entry, guard, close classification, phases and drain.
//!
//! # Example
//!
//! A line protocol: each line echoed back, `PING` from the server when the client is silent,
//! `BYE` with the reason when the layer closes the connection (`examples/line_echo.rs` is the
//! whole program, with flags).
//!
//! ```no_run
//! use connwarden::liveness::{Connection, Signal};
//! use connwarden::{Config, Server};
//! use futures_util::{SinkExt, StreamExt};
//! use tokio_util::codec::{Framed, LinesCodec};
//!
//! async fn lines(conn: Connection) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let control = conn.control();
//!     let mut lines = Framed::new(conn, control.timed(LinesCodec::new_with_max_length(4096)));
//!     loop {
//!         tokio::select! {
//!             line = lines.next() => match line.transpose()? {
//!                 Some(line) if line == "PING" => lines.send("PONG").await?,
//!                 Some(line) => lines.send(line).await?,
//!                 None => return Ok(()),
//!             },
//!             signal = control.signal() => match signal {
//!                 Signal::Ping => lines.send("PING").await?,
//!                 Signal::GoAway { within } => lines.send(format!("GOAWAY {}", within.as_millis())).await?,
//!                 Signal::Close(reason) => {
//!                     lines.send(format!("BYE {reason}")).await?;
//!                     return Ok(());
//!                 }
//!                 _ => {} // Signal::Drain, and signals of later versions
//!             },
//!         }
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder(Config::default()).handler(lines).build()?;
//! let listeners = server.bind()?;
//! server.run(listeners, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod connection;
mod supervise;
mod timed;
mod watch;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use connection::{Connection, Control};
pub(crate) use supervise::supervise;
pub use timed::Timed;

use crate::close_reason::CloseReason;

/// The error a handler may end with: any error (an I/O error, a codec's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the layer asks of a handler, to answer in its protocol's own words. Taken from
/// [`Control::signal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// The peer has been silent for `heartbeat_interval` (a ping each interval after): send a
    /// ping. Past `heartbeat_misses` intervals of silence the layer closes the connection as
    /// `heartbeat_timeout`.
    Ping,
    /// Ask the client to reconnect within `within`, spread over the window (an upgrade hands
    /// the listeners to a new process; the connection reached `max_age`; an operator's
    /// goaway). The connection stays open until the client leaves, or the layer closes it.
    GoAway {
        /// The window the client should reconnect within.
        within: Duration,
    },
    /// The server is shutting down: finish what is in flight and take no new request. A
    /// [`Signal::Close`] with `shutdown` follows once the queue drained or the grace ran low.
    Drain,
    /// The layer closes the connection with this reason (a deadline passed, a kick, memory
    /// pressure, the end of the shutdown): say goodbye if the protocol has words for it and
    /// return. The handler has until the shorter of one second and `write_timeout`; then the
    /// layer drops it, which closes the socket. The close is recorded with this reason
    /// whatever the handler returns. Every later [`Control::signal`] returns it again.
    Close(CloseReason),
}

/// Which inbound bytes are a sign of life, for the heartbeat and `idle_timeout`.
///
/// ```no_run
/// # async fn frames(conn: connwarden::liveness::Connection) -> std::io::Result<()> { Ok(()) }
/// use connwarden::liveness::Life;
/// use connwarden::{Config, Server};
///
/// // Only the frames the handler marks with `Control::alive` prove the peer alive.
/// let server = Server::builder(Config::default()).handler(frames).life(Life::Marked).build();
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Life {
    /// Every byte read: any traffic from the peer proves it alive. Right for most protocols.
    #[default]
    AnyByte,
    /// Only what the handler marks with [`Control::alive`] (a pong, a complete request): for a
    /// protocol whose peer may send bytes while its application is stuck (a client library
    /// that answers pings from its own thread would not need this; one that streams a frozen
    /// buffer would).
    Marked,
}

/// A connection handler: called once per accepted connection, its future runs until the
/// connection ends. Implemented for every `Fn(Connection) -> impl Future<Output = Result<(),
/// E>>`, so an `async fn` is one; implement it by hand for a handler with state of its own
/// (or clone an `Arc` into a closure).
///
/// ```
/// use std::future::Future;
/// use std::pin::Pin;
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// use connwarden::liveness::{BoxError, Connection, Handler};
/// use tokio::io::AsyncWriteExt;
///
/// /// Greets each client with its number.
/// struct Greeter {
///     served: Arc<AtomicU64>,
/// }
///
/// impl Handler for Greeter {
///     fn call(&self, mut conn: Connection) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> {
///         let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
///         Box::pin(async move {
///             conn.write_all(format!("hello, client {n}\n").as_bytes()).await?;
///             Ok(()) // recorded as `completed`
///         })
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The connection's future.
    fn call(&self, conn: Connection) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
}

impl<F, Fut, E> Handler for F
where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn call(&self, conn: Connection) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> {
        let future = self(conn);
        Box::pin(async move { future.await.map_err(Into::into) })
    }
}

/// A handler with the layer's settings for it, as a [`Server`](crate::Server) keeps it.
#[derive(Clone)]
pub(crate) struct Protocol {
    pub handler: Arc<dyn Handler>,
    pub life: Life,
}

impl std::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protocol")
            .field("life", &self.life)
            .finish_non_exhaustive()
    }
}
