//! What a close leaves behind: the per-reason counters, the closed history, the close events,
//! the metrics' observation and the probe-storm notice. Apart from the map because none of it
//! is a live connection: it is written once per close, by [`Registry::record_close`], and read
//! by the surfaces long after the entry is gone.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;

use super::flapping::{FlapKey, FlappingClient, Flaps};
use super::{lock, Registry};
use crate::close_reason::CloseReason;
use crate::metrics::Metrics;

/// Capacity of the close-event channel: a subscriber that lags this far behind loses events
/// (and is told so by `broadcast`), the server never waits for it.
const CLOSE_EVENTS: usize = 4096;

/// A closed connection, as logged, broadcast and kept in the closed history.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClosedConn {
    /// 0 for a connection refused before it was registered (`server_full`).
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's address the client connected to.
    pub local: SocketAddr,
    /// Why the connection ended.
    pub reason: CloseReason,
    /// When the connection was accepted.
    pub started_at: SystemTime,
    /// When it closed.
    pub closed_at: SystemTime,
    /// Time from accept to close.
    pub duration: Duration,
    /// Time from the last byte received (or from accept, if none came) to the close: for a
    /// dead peer, how long it took to find out.
    pub detection_delay: Duration,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Items accepted.
    pub items: u64,
    /// Items refused.
    pub errors: u64,
    /// The name the connection authenticated under, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_name: Option<Arc<str>>,
    /// The `client_id` its `hello` gave, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Arc<str>>,
}

/// One line for a person: `7 192.0.2.1:50512 heartbeat_timeout after 45002 ms of silence`
/// (the id, the peer, the reason, the detection delay).
///
/// ```no_run
/// # let registry = connwarden::Registry::new();
/// let mut closes = registry.subscribe();
/// tokio::spawn(async move {
///     while let Ok(closed) = closes.recv().await {
///         println!("closed {closed}");
///     }
/// });
/// ```
impl std::fmt::Display for ClosedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let delay = self.detection_delay.as_millis();
        write!(
            f,
            "{} {} {} after {delay} ms of silence",
            self.id, self.peer, self.reason
        )
    }
}

impl serde::Serialize for CloseReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The registry's record of closes.
#[derive(Debug)]
pub(super) struct Closes {
    closed: [AtomicU64; CloseReason::ALL.len()],
    refused: [AtomicU64; CloseReason::ALL.len()],
    /// The most recent closes, newest last, at most `history_limit`.
    history: Mutex<VecDeque<ClosedConn>>,
    history_limit: AtomicUsize,
    /// Where closes are observed as metrics, once a server attached them.
    metrics: OnceLock<Arc<Metrics>>,
    events: broadcast::Sender<ClosedConn>,
    /// Keep-alive closes in bursts, set beside the kernel's receive drops.
    storms: crate::storm::StormWatch,
    /// Each client's closes over the flap window.
    flaps: Mutex<Flaps>,
}

impl Closes {
    /// Nothing closed yet; the default history limit.
    pub(super) fn new() -> Closes {
        Closes {
            closed: std::array::from_fn(|_| AtomicU64::new(0)),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            history: Mutex::new(VecDeque::new()),
            history_limit: AtomicUsize::new(crate::config::DEFAULT_CLOSED_HISTORY),
            metrics: OnceLock::new(),
            events: broadcast::channel(CLOSE_EVENTS).0,
            storms: crate::storm::StormWatch::default(),
            flaps: Mutex::new(Flaps::default()),
        }
    }
}

impl Registry {
    fn closes(&self) -> &Closes {
        &self.shared.closes
    }

    /// Keeps the `limit` most recent closes for [`Registry::closed`] (0 keeps none).
    pub(crate) fn set_closed_history(&self, limit: usize) {
        self.closes().history_limit.store(limit, Ordering::Relaxed);
        let mut history = lock(&self.closes().history);
        while history.len() > limit {
            history.pop_front();
        }
        if limit == 0 {
            *history = VecDeque::new();
        }
    }

    /// Observes every close from now on in `metrics` (detection delay, lifetime). A registry
    /// reports to one set of metrics: later calls are ignored.
    pub(crate) fn attach_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.closes().metrics.set(metrics);
    }

    /// The most recent closes, oldest first.
    pub fn closed(&self) -> Vec<ClosedConn> {
        lock(&self.closes().history).iter().cloned().collect()
    }

    /// Connections closed with `reason` since start (refused ones included).
    pub fn closed_total(&self, reason: CloseReason) -> u64 {
        self.closes().closed[reason.index()].load(Ordering::Relaxed) + self.refused_total(reason)
    }

    /// Registered connections closed with `reason` since start (refused ones not included).
    pub fn closed_registered_total(&self, reason: CloseReason) -> u64 {
        self.closes().closed[reason.index()].load(Ordering::Relaxed)
    }

    /// Connections refused at accept with `reason` (`server_full`, `internal_error`), never
    /// registered.
    pub fn refused_total(&self, reason: CloseReason) -> u64 {
        self.closes().refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Close events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ClosedConn> {
        self.closes().events.subscribe()
    }

    /// Logs, counts and broadcasts one close, keeps it in the closed history and observes it in
    /// the metrics. The guard calls it; the server calls it for connections refused before
    /// registration (id 0), which are counted apart and not kept in the history.
    pub(crate) fn record_close(&self, closed: ClosedConn) {
        let refused = closed.id == 0;
        let counters = if refused {
            &self.closes().refused
        } else {
            &self.closes().closed
        };
        counters[closed.reason.index()].fetch_add(1, Ordering::Relaxed);
        if !refused {
            if let Some(metrics) = self.closes().metrics.get() {
                metrics.observe_close(closed.reason, closed.detection_delay, closed.duration);
            }
            self.remember(&closed);
            self.count_flap(&closed);
            if closed.reason == CloseReason::KeepaliveTimeout {
                self.notice_storm();
            }
        }
        tracing::info!(
            conn_id = closed.id,
            peer = %closed.peer,
            reason = closed.reason.as_str(),
            ended_by = closed.reason.ended_by().as_str(),
            duration_ms = closed.duration.as_millis() as u64,
            detection_delay_ms = closed.detection_delay.as_millis() as u64,
            bytes_in = closed.bytes_in,
            bytes_out = closed.bytes_out,
            items = closed.items,
            errors = closed.errors,
            auth_name = closed.auth_name.as_deref(),
            client_id = closed.client_id.as_deref(),
            "connection closed"
        );
        // No subscriber is the normal case: the error only says nobody listens.
        let _ = self.closes().events.send(closed);
    }

    fn remember(&self, closed: &ClosedConn) {
        let limit = self.closes().history_limit.load(Ordering::Relaxed);
        if limit == 0 {
            return;
        }
        let mut history = lock(&self.closes().history);
        if history.len() >= limit {
            history.pop_front();
        }
        history.push_back(closed.clone());
    }

    /// Counts the close against its client's flapping, and logs a client that begins to flap.
    fn count_flap(&self, closed: &ClosedConn) {
        let key = match &closed.client_id {
            Some(client_id) => FlapKey::ClientId(Arc::clone(client_id)),
            None => FlapKey::Address(closed.peer.ip().to_canonical()),
        };
        let began =
            lock(&self.closes().flaps).record(key, closed.peer, closed.reason, Instant::now());
        if let Some(began) = began {
            tracing::warn!(
                client_id = closed.client_id.as_deref(),
                peer = %closed.peer,
                closes = began.closes,
                within_s = began.within.as_secs_f64(),
                reason = closed.reason.as_str(),
                "client is flapping: its connections keep closing (GET /flapping lists it with its last close reasons)"
            );
        }
    }

    /// Counts clients as flapping past `threshold` from now on (`None`: not at all).
    pub(crate) fn set_flap_threshold(&self, threshold: Option<crate::config::FlapThreshold>) {
        lock(&self.closes().flaps).set_threshold(threshold);
    }

    /// The clients flapping now ([`super::flapping`]), the most closes first, with the
    /// threshold in force.
    pub fn flapping(&self) -> (Option<crate::config::FlapThreshold>, Vec<FlappingClient>) {
        let mut flaps = lock(&self.closes().flaps);
        (flaps.threshold(), flaps.flapping(Instant::now()))
    }

    /// Closes not counted against a client's flapping because too many clients were followed.
    pub fn flaps_untracked(&self) -> u64 {
        lock(&self.closes().flaps).untracked()
    }

    /// Logs a probe storm, if this keep-alive close made one (at most one line a minute).
    fn notice_storm(&self) {
        let Some(storm) = self.closes().storms.keepalive_closed(Instant::now()) else {
            return;
        };
        if storm.warn {
            tracing::warn!(
                keepalive_closes = crate::storm::BURST,
                window_s = crate::storm::WINDOW.as_secs(),
                softnet_dropped = storm.dropped,
                over_s = storm.over.as_secs(),
                cause = "keep-alive closes in a burst while the kernel dropped received packets (/proc/net/softnet_stat): healthy peers closed because their probes or the answers were dropped, not because they died",
                remedy = "raise net.core.netdev_max_backlog, or spend the bound on more probes (keepalive_bound; docs/OPERATIONS.md)",
                "probe storm: healthy peers closed by dropped keep-alive probes (counted in connwarden_keepalive_storms_total)"
            );
        }
    }

    /// The probe-storm watch: the server samples the kernel's drops into it and sets the
    /// keep-alive bound in force; closes are reported to it here.
    pub(crate) fn storm_watch(&self) -> &crate::storm::StormWatch {
        &self.closes().storms
    }
}
