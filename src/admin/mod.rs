//! The admin API: live and closed connections, kicks, Prometheus metrics, health and readiness.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs (never needs the token) |
//! | `GET /readyz` | 200 when listening with a working sink; 503 while starting, draining, with a failing sink or with the NATS connection down |
//! | `GET /connections` | live connections, filtered, sorted and paged ([`ConnQuery`]) |
//! | `GET /connections/{id}` | one live connection |
//! | `DELETE /connections/{id}` | closes it with reason `kicked`, answers what it was |
//! | `GET /closed` | the most recent closes, newest first ([`ClosedQuery`]) |
//! | `GET /flapping` | clients whose connections keep closing (`flap_threshold`), with their last close reasons |
//! | `POST /drain?fraction=0.25&over=2m` | starts a paced drain ([`crate::rebalance`]): that share of the live connections, oldest first, told `goaway` at an even pace over the window; answers what it chose (409 while another is telling) |
//! | `GET /drain` | the running or last drain's progress (404 before the first) |
//! | `DELETE /drain` | stops telling more; those told still close when their time is up |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /` | the live page (`page.rs`): served without the token, it reads the endpoints above with it |
//!
//! [`router`] gives the same routes to a program that embeds the server and mounts them on its
//! own axum application; `connwarden serve` runs them on `--admin`. Work that reads every
//! connection (`TCP_INFO` is one system call each) runs on the blocking pool, and the registry
//! is locked a bounded chunk at a time, so neither the runtime's workers nor the connections'
//! opens and closes wait behind a listing.
//!
//! The HTTP side (`router`, `serve`, the live page: `api.rs`, `page.rs`) is the `admin` feature
//! (axum). Without it this module keeps what the server tracks either way: its readiness, the
//! token file read at start, and the [`AdminHandle`] the routes would read.

#[cfg(feature = "admin")]
mod api;
#[cfg(feature = "admin")]
mod page;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

pub use crate::view::listing::{
    BadParameter, ClosedQuery, ConnQuery, PeerFilter, SortKey, DEFAULT_LIMIT, MAX_LIMIT,
};
#[cfg(feature = "admin")]
pub use api::{router, serve, ApiError};

use crate::metrics::Metrics;
use crate::queue::Monitor;
use crate::record::Record;
use crate::registry::Registry;

/// Whether the server takes traffic, for `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Readiness {
    /// Listening, with the sink open.
    pub fn set_ready(&self) {
        let _ = self
            .0
            .compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Shutting down: no new connections.
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    /// `starting`, `ready` or `draining`, as `/readyz` says it.
    pub fn state(&self) -> &'static str {
        match self.0.load(Ordering::Acquire) {
            STARTING => "starting",
            READY => "ready",
            _ => "draining",
        }
    }
}

/// A bearer token the admin API requires. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read admin token file {path}")]
    /// The file cannot be read.
    Read {
        /// The file.
        path: std::path::PathBuf,
        #[source]
        /// Why.
        source: std::io::Error,
    },
    #[error("admin token file {path} is empty, or not one line of printable ASCII")]
    /// The file holds no usable token.
    Invalid {
        /// The file.
        path: std::path::PathBuf,
    },
}

impl Token {
    /// Reads the token from `path`: its one line, without surrounding whitespace. A token goes
    /// in a file, never on a command line, where `ps` would show it.
    pub fn from_file(path: &Path) -> Result<Token, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Token::new(text.trim()).ok_or_else(|| TokenError::Invalid {
            path: path.to_owned(),
        })
    }

    /// A token from its text: one line of printable ASCII (what fits in a header), not empty.
    pub fn new(text: &str) -> Option<Token> {
        let usable = !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
        usable.then(|| Token(text.into()))
    }

    /// The text, for a client that sends it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the admin API reads and acts on.
#[derive(Clone, Debug)]
pub struct AdminHandle {
    /// Live and closed connections.
    pub registry: Registry,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// The queue's depth and drops.
    pub queue: Monitor<Record>,
    /// Whether the server takes traffic.
    pub readiness: Arc<Readiness>,
    /// The bearer token every endpoint but `/healthz` requires, if any.
    pub token: Option<Token>,
    /// The configuration in force, for `GET /config`.
    pub reloader: crate::Reloader,
    /// Paced drains (`POST /drain`).
    pub rebalancer: Arc<crate::rebalance::Rebalancer>,
}

/// Without the `admin` feature there is no HTTP server: `Config::validate` refuses `admin`, so
/// the server never calls this.
#[cfg(not(feature = "admin"))]
pub(crate) async fn serve(
    _listener: tokio::net::TcpListener,
    _handle: AdminHandle,
    _shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "admin needs connwarden built with the \"admin\" feature",
    ))
}

/// Where the admin API listens and the live page's address, for logs.
pub fn describe(addr: SocketAddr, token: &Option<Token>) {
    if token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(addr = %addr, "admin API listens beyond loopback without a token (admin_token_file): anyone who reaches it can list and kick connections");
    }
    tracing::info!(addr = %addr, token_required = token.is_some(), "admin listening");
    let url = page_url(addr);
    tracing::info!(url = %url, "live page at {url}");
}

/// The live page's address: on a wildcard listener, the loopback address of its family, which
/// reaches it from the machine itself.
pub fn page_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}/", SocketAddr::new(ip, addr.port()))
}
