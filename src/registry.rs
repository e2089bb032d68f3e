//! The live connections and the recently closed ones: the one source that logs, metrics, the
//! admin API and `doctor` read.
//!
//! A connection enters through [`Registry::insert`], which returns a [`ConnGuard`]. The guard's
//! `Drop` removes the entry and records the close (one log line, one counter, one event, one
//! entry in the closed history, one observation of the detection delay), so the entry goes away
//! on every exit path: a normal return, an error, a panic or a cancelled task. The map's lock is
//! taken at open and close, and briefly by readers; per-item counters are atomics on the entry.
//!
//! `TCP_INFO` is read only while the entry is in the map, under the map's lock: the server
//! removes an entry before it closes the socket, so a descriptor read here is never one the
//! kernel already gave to another connection. Readers share the lock (a read lock) for a bounded
//! chunk of entries at a time ([`TCP_INFO_CHUNK`]), so opens and closes never wait long behind
//! them, and long reads run on several threads at once (a system call per socket, ~1.5 µs each
//! here, mostly cache misses on the socket's kernel structures).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Deref;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use atomic_waker::AtomicWaker;
use tokio::sync::broadcast;

use crate::close_reason::CloseReason;
use crate::metrics::{Metrics, Scrape};
use crate::sockopt::TcpInfo;

/// Entries whose `TCP_INFO` is read per hold of the map's lock: under a millisecond of work.
pub const TCP_INFO_CHUNK: usize = 512;

/// Most threads that read `TCP_INFO` for one request (fewer on a machine with fewer cores).
const TCP_INFO_THREADS: usize = 4;

/// Capacity of the close-event channel: a subscriber that lags this far behind loses events
/// (and is told so by `broadcast`), the server never waits for it.
const CLOSE_EVENTS: usize = 4096;

/// A handle to the registry; clones share it.
#[derive(Clone, Debug)]
pub struct Registry {
    shared: Arc<Shared>,
}

/// Where a connection comes from, as `max_connections_per_ip` counts it: an IPv4 address, or
/// the /64 network of an IPv6 address (the least a site or a host is given, so one host cannot
/// take a limit per address of its /64). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Net(u64),
}

impl Source {
    /// The source of a peer at `ip`.
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => Source::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

/// The live connections by id, and how many come from each [`Source`], under one lock so that
/// a source's limit is checked and taken at once.
#[derive(Debug, Default)]
struct Conns {
    by_id: HashMap<u64, Arc<ConnInfo>>,
    /// Sources with at least one live connection.
    by_source: HashMap<Source, u32>,
}

impl Deref for Conns {
    type Target = HashMap<u64, Arc<ConnInfo>>;

    fn deref(&self) -> &Self::Target {
        &self.by_id
    }
}

impl Conns {
    /// Adds `info` unless its id is live already (an adopted entry keeps the id it had) or its
    /// source already has `per_source` live connections.
    fn add(&mut self, info: &Arc<ConnInfo>, per_source: Option<usize>) -> bool {
        let Entry::Vacant(slot) = self.by_id.entry(info.id) else {
            return false;
        };
        let count = self
            .by_source
            .entry(Source::of(info.peer.ip()))
            .or_default();
        // At the limit the count is at least 1, so no empty entry stays behind.
        if per_source.is_some_and(|limit| *count as usize >= limit) {
            return false;
        }
        *count += 1;
        slot.insert(Arc::clone(info));
        true
    }

    fn remove(&mut self, info: &ConnInfo) {
        if self.by_id.remove(&info.id).is_none() {
            return;
        }
        if let Entry::Occupied(mut entry) = self.by_source.entry(Source::of(info.peer.ip())) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    conns: RwLock<Conns>,
    next_id: AtomicU64,
    opened: AtomicU64,
    /// Connections handed over to another process (an upgrade).
    handed_over: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
    refused: [AtomicU64; CloseReason::ALL.len()],
    /// The most recent closes, newest last, at most `history_limit`.
    history: Mutex<VecDeque<ClosedConn>>,
    /// The authenticated names of live connections (client certificate subject or token name).
    names: Mutex<HashMap<u64, Arc<str>>>,
    history_limit: AtomicUsize,
    /// Where closes are observed as metrics, once a server attached them.
    metrics: OnceLock<Arc<Metrics>>,
    events: broadcast::Sender<ClosedConn>,
    /// Keep-alive closes in bursts, set beside the kernel's receive drops.
    storms: crate::storm::StormWatch,
}

/// What [`Registry::close_largest_buffers`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Relief {
    /// Connections asked to close.
    pub closed: usize,
    /// The bytes of partial objects they held.
    pub bytes: usize,
}

/// One live connection. Counters are updated by the connection's task without a lock.
#[derive(Debug)]
pub struct ConnInfo {
    /// Unique for the life of the server, starting at 1.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's address the client connected to.
    pub local: SocketAddr,
    /// When the connection was accepted (the wall-clock time is derived from it, to keep the
    /// entry small: every byte here is paid once per idle connection).
    started: Instant,
    last_in_ms: AtomicU64,
    last_out_ms: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    items: AtomicU64,
    errors: AtomicU64,
    /// Why the server asked this connection to close (a [`CloseReason`]'s index + 1), or 0:
    /// the first request wins.
    closing: AtomicU8,
    /// Bytes of the read buffer holding a partial object, as the connection last reported
    /// them: the memory-pressure relief closes the largest holders first.
    buffered: AtomicU32,
    /// True once the connection authenticated: its name is in [`Registry`]'s name map (kept
    /// there rather than here, so that an unauthenticated entry pays one byte for it).
    named: AtomicBool,
    /// True once the application heartbeat applies to this connection.
    heartbeat: AtomicBool,
    /// `ping`s sent since the peer was last heard (saturates at 255).
    pings_outstanding: AtomicU8,
    /// The shortened first `TCP_KEEPIDLE` this socket was given, in seconds, until the idle in
    /// force is put back (`crate::phase`); 0 when none is pending.
    keepalive_first_idle_s: AtomicU16,
    /// The socket's descriptor, for `TCP_INFO` (-1 when unknown, on other platforms, once
    /// the entry let go of it, or once the entry left the map).
    fd: AtomicI32,
    /// The window of a `goaway` asked for and not yet sent, in tenths of a second (0: none;
    /// 16 bits, which the entry had spare, so the entry's size class stays: up to 109 minutes).
    goaway_ds: AtomicU16,
    /// Wakes the connection's task for a kick or a shutdown stage: a waker slot rather than a
    /// stored future, so an idle connection pays 16 bytes for it.
    control: AtomicWaker,
}

impl ConnInfo {
    /// When the connection was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// What the entry keeps when the connection moves to another process, as of `now`.
    pub fn carried(&self, now: Instant) -> Carried {
        Carried {
            id: self.id,
            peer: self.peer,
            local: self.local,
            age_ms: self.since_start(now),
            last_in_ms: self.last_in_ms.load(Ordering::Relaxed),
            last_out_ms: self.last_out_ms.load(Ordering::Relaxed),
            bytes_in: self.bytes_in(),
            bytes_out: self.bytes_out(),
            items: self.items(),
            errors: self.errors(),
            keepalive_first_idle_s: self.keepalive_first_idle_s.load(Ordering::Relaxed),
            auth_name: None,
        }
    }

    /// A fresh entry: nothing counted yet.
    fn new(id: u64, peer: SocketAddr, local: SocketAddr, started: Instant) -> ConnInfo {
        ConnInfo {
            id,
            peer,
            local,
            started,
            last_in_ms: AtomicU64::new(0),
            last_out_ms: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            items: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            closing: AtomicU8::new(0),
            named: AtomicBool::new(false),
            buffered: AtomicU32::new(0),
            heartbeat: AtomicBool::new(false),
            pings_outstanding: AtomicU8::new(0),
            keepalive_first_idle_s: AtomicU16::new(0),
            fd: AtomicI32::new(-1),
            goaway_ds: AtomicU16::new(0),
            control: AtomicWaker::new(),
        }
    }

    fn since_start(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Records `n` bytes received at `at`.
    pub fn received(&self, n: usize, at: Instant) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        self.last_in_ms
            .store(self.since_start(at), Ordering::Relaxed);
    }

    /// Records `n` bytes sent at `at`.
    pub fn sent(&self, n: usize, at: Instant) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        self.last_out_ms
            .store(self.since_start(at), Ordering::Relaxed);
    }

    /// Counts one accepted item.
    pub fn item(&self) {
        self.items.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refused item.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the heartbeat's state: whether it applies, and the pings sent since the peer
    /// was last heard.
    pub fn heartbeat(&self, applies: bool, pings_outstanding: u32) {
        self.heartbeat.store(applies, Ordering::Relaxed);
        let pings = pings_outstanding.min(u8::MAX as u32) as u8;
        self.pings_outstanding.store(pings, Ordering::Relaxed);
    }

    /// Why the server asked this connection to close ([`Registry::kick`], memory pressure),
    /// if it did.
    pub fn closing_reason(&self) -> Option<CloseReason> {
        match self.closing.load(Ordering::Acquire) {
            0 => None,
            n => CloseReason::ALL.get(usize::from(n) - 1).copied(),
        }
    }

    /// Asks the connection to close with `reason` and wakes its task. False when it was
    /// already asked (the first reason stands).
    fn ask_to_close(&self, reason: CloseReason) -> bool {
        let asked = self
            .closing
            .compare_exchange(
                0,
                reason.index() as u8 + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if asked {
            self.control.wake();
        }
        asked
    }

    /// Asks the connection to tell its client `goaway` with this window and wakes its task.
    fn ask_goaway(&self, within: Duration) {
        let tenths = within.as_millis().div_ceil(100).clamp(1, u16::MAX.into()) as u16;
        self.goaway_ds.store(tenths, Ordering::Release);
        self.control.wake();
    }

    /// A `goaway` asked for and not yet sent: its window. Taken once (the connection sends it).
    pub(crate) fn take_goaway(&self) -> Option<Duration> {
        // Read first: the loop asks at every turn, and a write each time would dirty the line.
        if self.goaway_ds.load(Ordering::Acquire) == 0 {
            return None;
        }
        match self.goaway_ds.swap(0, Ordering::AcqRel) {
            0 => None,
            tenths => Some(Duration::from_millis(u64::from(tenths) * 100)),
        }
    }

    /// The bytes of partial object the connection holds, as it last reported them.
    pub fn buffered(&self) -> u32 {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Records the bytes of partial object the connection holds.
    pub fn set_buffered(&self, bytes: u32) {
        self.buffered.store(bytes, Ordering::Relaxed);
    }

    /// Registers the task to wake on a kick or [`Registry::wake_all`]. Register first, then
    /// check the flags, so that no wake-up is lost.
    pub fn register_control(&self, waker: &std::task::Waker) {
        self.control.register(waker);
    }

    /// A point-in-time copy.
    pub fn snapshot(&self) -> ConnSnapshot {
        self.snapshot_at(Instant::now(), SystemTime::now())
    }

    /// A copy as of `now` (`wall` being the same instant on the wall clock): one clock read
    /// serves a whole listing.
    pub fn snapshot_at(&self, now: Instant, wall: SystemTime) -> ConnSnapshot {
        let age = self.age_at(now);
        let ago = |stamp: &AtomicU64| since(age, stamp);
        ConnSnapshot {
            id: self.id,
            peer: self.peer,
            local: self.local,
            started_at: wall - age,
            age,
            last_in_ago: ago(&self.last_in_ms),
            last_out_ago: ago(&self.last_out_ms),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            items: self.items.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            heartbeat: self.heartbeat.load(Ordering::Relaxed),
            pings_outstanding: self.pings_outstanding.load(Ordering::Relaxed),
            buffered: self.buffered(),
            auth_name: None,
        }
    }

    /// Time since accept, as of `now`.
    pub fn age_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Time since the last byte received (or since accept), as of `now`.
    pub fn idle_in_at(&self, now: Instant) -> Duration {
        since(self.age_at(now), &self.last_in_ms)
    }

    /// Bytes received.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Bytes sent.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Items accepted.
    pub fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    /// Items refused.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The shortened first keep-alive idle the socket was given, until it is put back.
    pub(crate) fn keepalive_first_idle(&self) -> Option<Duration> {
        match self.keepalive_first_idle_s.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(Duration::from_secs(secs.into())),
        }
    }

    /// Records the first keep-alive idle the socket was given (`None`: the idle in force is
    /// back).
    pub(crate) fn set_keepalive_first_idle(&self, first: Option<Duration>) {
        let secs = first.map_or(0, |d| d.as_secs().clamp(1, u16::MAX.into()) as u16);
        self.keepalive_first_idle_s.store(secs, Ordering::Relaxed);
    }

    /// Reads the socket's `TCP_INFO`. The caller holds the map's lock (read or write): the
    /// descriptor becomes -1 under the write lock as the entry leaves the map or lets go of it
    /// ([`ConnGuard::release_socket`]), before the socket closes, so a descriptor seen here is
    /// still this connection's.
    fn tcp_info(&self) -> Option<TcpInfo> {
        read_tcp_info(self.fd.load(Ordering::Relaxed))
    }
}

/// Time from `stamp` (milliseconds after accept) to a moment `age` after accept.
fn since(age: Duration, stamp: &AtomicU64) -> Duration {
    age.saturating_sub(Duration::from_millis(stamp.load(Ordering::Relaxed)))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn read_tcp_info(fd: i32) -> Option<TcpInfo> {
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor is open for the duration of the call (see `ConnInfo::tcp_info`);
    // `getsockopt` on it neither closes nor takes it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    crate::sockopt::tcp_info(socket2::SockRef::from(&borrowed))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn read_tcp_info(_fd: i32) -> Option<TcpInfo> {
    None
}

/// What a connection's registry entry keeps when the connection moves to another process (a
/// binary upgrade, issue 29): its id, its age and its counters, so that the new process lists it
/// as it was. Times are offsets, so that they mean the same to a process with another clock
/// origin.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    /// The registry id, kept.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address it reached.
    pub local: SocketAddr,
    /// Milliseconds since the connection was accepted.
    pub age_ms: u64,
    /// Milliseconds from accept to the last byte in (0: none yet).
    pub last_in_ms: u64,
    /// Milliseconds from accept to the last byte out (0: none yet).
    pub last_out_ms: u64,
    /// Bytes received so far.
    pub bytes_in: u64,
    /// Bytes sent so far.
    pub bytes_out: u64,
    /// Items taken so far.
    pub items: u64,
    /// Items refused so far.
    pub errors: u64,
    /// The shortened first keep-alive idle, in seconds, not yet put back (0: none): the new
    /// process puts it back in its time ([`crate::phase`]).
    #[serde(default)]
    pub keepalive_first_idle_s: u16,
    /// The name the client authenticated under.
    #[serde(default)]
    pub auth_name: Option<String>,
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
}

impl serde::Serialize for CloseReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry {
            shared: Arc::new(Shared {
                conns: RwLock::new(Conns::default()),
                next_id: AtomicU64::new(1),
                opened: AtomicU64::new(0),
                handed_over: AtomicU64::new(0),
                closed: std::array::from_fn(|_| AtomicU64::new(0)),
                refused: std::array::from_fn(|_| AtomicU64::new(0)),
                history: Mutex::new(VecDeque::new()),
                names: Mutex::new(HashMap::new()),
                history_limit: AtomicUsize::new(crate::config::DEFAULT_CLOSED_HISTORY),
                metrics: OnceLock::new(),
                events: broadcast::channel(CLOSE_EVENTS).0,
                storms: crate::storm::StormWatch::default(),
            }),
        }
    }

    // A panic while the lock is held cannot leave the map half-updated (each critical section
    // is a single insert or remove, or reads), so a poisoned lock is still usable.
    fn conns(&self) -> RwLockReadGuard<'_, Conns> {
        self.shared
            .conns
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn conns_mut(&self) -> RwLockWriteGuard<'_, Conns> {
        self.shared
            .conns
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The probe-storm watch: the server samples the kernel's drops into it and sets the
    /// keep-alive bound in force; closes are reported to it here.
    pub(crate) fn storm_watch(&self) -> &crate::storm::StormWatch {
        &self.shared.storms
    }

    /// Keeps the `limit` most recent closes for [`Registry::closed`] (0 keeps none).
    pub fn set_closed_history(&self, limit: usize) {
        self.shared.history_limit.store(limit, Ordering::Relaxed);
        let mut history = lock(&self.shared.history);
        while history.len() > limit {
            history.pop_front();
        }
        if limit == 0 {
            *history = VecDeque::new();
        }
    }

    /// Observes every close from now on in `metrics` (detection delay, lifetime). A registry
    /// reports to one set of metrics: later calls are ignored.
    pub fn attach_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.shared.metrics.set(metrics);
    }

    /// Registers a new connection on `socket`, whose `TCP_INFO` the registry reads while the
    /// connection is live. The caller keeps the socket open for as long as the guard lives.
    #[cfg(unix)]
    pub fn insert_socket(
        &self,
        socket: &impl std::os::fd::AsRawFd,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> ConnGuard {
        let guard = self.insert(peer, local);
        guard.set_socket(socket);
        guard
    }

    /// Registers a connection another process handed over, under its id and with its age and
    /// counters; the ids given to new connections from then on are above it. `None` when a live
    /// connection has that id already.
    pub fn adopt(&self, carried: &Carried) -> Option<ConnGuard> {
        self.shared
            .next_id
            .fetch_max(carried.id + 1, Ordering::Relaxed);
        let now = Instant::now();
        let started = now
            .checked_sub(Duration::from_millis(carried.age_ms))
            .unwrap_or(now);
        let info = ConnInfo {
            last_in_ms: AtomicU64::new(carried.last_in_ms),
            last_out_ms: AtomicU64::new(carried.last_out_ms),
            bytes_in: AtomicU64::new(carried.bytes_in),
            bytes_out: AtomicU64::new(carried.bytes_out),
            items: AtomicU64::new(carried.items),
            errors: AtomicU64::new(carried.errors),
            keepalive_first_idle_s: AtomicU16::new(carried.keepalive_first_idle_s),
            ..ConnInfo::new(carried.id, carried.peer, carried.local, started)
        };
        let guard = self.register(info, None)?;
        if let Some(name) = &carried.auth_name {
            self.set_auth_name(guard.info(), name.as_str().into());
        }
        Some(guard)
    }

    /// Registers a new connection. Dropping the guard removes it.
    pub fn insert(&self, peer: SocketAddr, local: SocketAddr) -> ConnGuard {
        self.insert_within(peer, local, None)
            .expect("no limit per source")
    }

    /// Registers a new connection unless `per_source` connections from its [`Source`] are
    /// already live (then `None`). Dropping the guard removes it.
    pub fn insert_within(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        per_source: Option<usize>,
    ) -> Option<ConnGuard> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.register(ConnInfo::new(id, peer, local, Instant::now()), per_source)
    }

    /// Puts `info` in the map (see [`Conns::add`]) and counts it opened.
    fn register(&self, info: ConnInfo, per_source: Option<usize>) -> Option<ConnGuard> {
        let info = Arc::new(info);
        if !self.conns_mut().add(&info, per_source) {
            return None;
        }
        self.shared.opened.fetch_add(1, Ordering::Relaxed);
        Some(ConnGuard {
            registry: self.clone(),
            info,
            reason: None,
            handed_over: false,
        })
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.conns().len()
    }

    /// True when no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies of every live connection, by id.
    pub fn snapshot(&self) -> Vec<ConnSnapshot> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut entries = self.entries();
        entries.sort_unstable_by_key(|entry| entry.id);
        entries
            .iter()
            .map(|i| self.snapshot_of(i, now, wall))
            .collect()
    }

    /// One connection.
    pub fn get(&self, id: u64) -> Option<ConnSnapshot> {
        let info = self.conns().get(&id).cloned();
        info.map(|i| self.snapshot_of(&i, Instant::now(), SystemTime::now()))
    }

    /// `info`'s snapshot with its authenticated name.
    pub fn snapshot_of(&self, info: &ConnInfo, now: Instant, wall: SystemTime) -> ConnSnapshot {
        ConnSnapshot {
            auth_name: self.auth_name(info),
            ..info.snapshot_at(now, wall)
        }
    }

    /// Records the name `info`'s connection authenticated under.
    pub fn set_auth_name(&self, info: &ConnInfo, name: Arc<str>) {
        lock(&self.shared.names).insert(info.id, name);
        info.named.store(true, Ordering::Release);
    }

    /// The name `info`'s connection authenticated under, if it did.
    pub fn auth_name(&self, info: &ConnInfo) -> Option<Arc<str>> {
        if !info.named.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.shared.names).get(&info.id).cloned()
    }

    /// Every live entry, in no order. The lock is held only to clone the handles.
    pub fn entries(&self) -> Vec<Arc<ConnInfo>> {
        self.conns().values().cloned().collect()
    }

    /// The live entries for which `keep` holds: only those are collected, so a look for a few
    /// among many costs no list of all of them.
    pub fn entries_where(&self, keep: impl Fn(&ConnInfo) -> bool) -> Vec<Arc<ConnInfo>> {
        self.conns()
            .values()
            .filter(|entry| keep(entry))
            .cloned()
            .collect()
    }

    /// `TCP_INFO` of each of `entries` still live, in the same order; a connection that closed
    /// meanwhile has `None`. A system call per connection, spread over up to
    /// [`TCP_INFO_THREADS`] threads for long lists: call it off the runtime's worker threads
    /// (`spawn_blocking`).
    pub fn tcp_info_of(&self, entries: &[Arc<ConnInfo>]) -> Vec<Option<TcpInfo>> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(TCP_INFO_THREADS)
            .min(entries.len().div_ceil(TCP_INFO_CHUNK))
            .max(1);
        if threads == 1 {
            return self.tcp_info_serial(entries);
        }
        let share = entries.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let parts: Vec<_> = entries
                .chunks(share)
                .map(|part| scope.spawn(|| self.tcp_info_serial(part)))
                .collect();
            parts
                .into_iter()
                .flat_map(|part| {
                    part.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    }

    /// [`Registry::tcp_info_of`] on the calling thread, a read lock per chunk of entries.
    fn tcp_info_serial(&self, entries: &[Arc<ConnInfo>]) -> Vec<Option<TcpInfo>> {
        let mut out = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(TCP_INFO_CHUNK) {
            let _held = self.conns();
            out.extend(chunk.iter().map(|entry| entry.tcp_info()));
        }
        out
    }

    /// Calls `f` with each of `entries` still live and its socket, holding the map's read lock
    /// a chunk of entries at a time (so the descriptor is this connection's for the call).
    /// Linux only (elsewhere the registry keeps no descriptor).
    pub(crate) fn with_sockets(
        &self,
        entries: &[Arc<ConnInfo>],
        mut f: impl FnMut(&ConnInfo, socket2::SockRef<'_>),
    ) {
        for chunk in entries.chunks(TCP_INFO_CHUNK) {
            let _held = self.conns();
            for entry in chunk {
                let fd = entry.fd.load(Ordering::Relaxed);
                if fd < 0 {
                    continue;
                }
                #[cfg(unix)]
                {
                    // SAFETY: the descriptor stays open while the read lock is held (see
                    // `ConnInfo::tcp_info`); `f` borrows it and neither closes nor keeps it.
                    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                    f(entry, socket2::SockRef::from(&borrowed));
                }
            }
        }
        #[cfg(not(unix))]
        let _ = &mut f;
    }

    /// `TCP_INFO` of one live connection.
    pub fn tcp_info(&self, id: u64) -> Option<TcpInfo> {
        self.conns().get(&id).and_then(|entry| entry.tcp_info())
    }

    /// Keep-alive probes sent and unanswered, summed over the live connections, and how many
    /// connections have at least one: the kernel's own view of peers that went quiet.
    ///
    /// Only connections silent for at least `keepalive_idle` are read (a system call each): the
    /// kernel sends its first probe after `keepalive_idle` without any segment from the peer, and
    /// a byte received is a segment, so a connection heard from more recently has none out.
    pub fn keepalive_probes(&self, keepalive_idle: Duration) -> (u64, u64) {
        let now = Instant::now();
        let mut quiet = self.entries();
        quiet.retain(|entry| entry.idle_in_at(now) >= keepalive_idle);
        let (mut probes, mut probing) = (0u64, 0u64);
        for info in self.tcp_info_of(&quiet).into_iter().flatten() {
            probes += u64::from(info.probes);
            probing += u64::from(info.probes > 0);
        }
        (probes, probing)
    }

    /// Logs a probe storm, if this keep-alive close made one (at most one line a minute).
    fn notice_storm(&self) {
        let Some(storm) = self.shared.storms.keepalive_closed(Instant::now()) else {
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

    /// What a scrape of `/metrics` reads now ([`Metrics::render`]), with `queue`'s figures.
    /// Reads `TCP_INFO` of every connection quiet past `keepalive_idle`: call it off the
    /// runtime's worker threads.
    pub fn scrape(&self, keepalive_idle: Duration, queue: crate::queue::QueueStats) -> Scrape {
        let (keepalive_probes, connections_probing) = self.keepalive_probes(keepalive_idle);
        Scrape {
            connections_live: self.len(),
            opened_total: self.opened_total(),
            closed_total: CloseReason::ALL.map(|reason| self.closed_registered_total(reason)),
            refused_total: CloseReason::ALL.map(|reason| self.refused_total(reason)),
            keepalive_probes,
            connections_probing,
            keepalive_storms: self.shared.storms.storms(),
            buffered: self.buffered_total(),
            queue,
        }
    }

    /// Bytes of partial objects held by live connections, as they last reported them.
    pub fn buffered_total(&self) -> u64 {
        self.conns()
            .values()
            .map(|info| u64::from(info.buffered()))
            .sum()
    }

    /// The most recent closes, oldest first.
    pub fn closed(&self) -> Vec<ClosedConn> {
        lock(&self.shared.history).iter().cloned().collect()
    }

    /// Asks a connection to close with reason `kicked`. False when no such connection is live.
    pub fn kick(&self, id: u64) -> bool {
        let Some(info) = self.conns().get(&id).cloned() else {
            return false;
        };
        info.ask_to_close(CloseReason::Kicked);
        true
    }

    /// Asks every live connection to tell its client `goaway`: reconnect after a random delay
    /// within `within` (rounded up to a tenth of a second, at most 109 minutes), once the acks
    /// of its items in flight came. The connections stay open
    /// (a client that does not know the message keeps its own); the caller closes what is left
    /// when it must (`kick`). Returns how many were asked.
    pub fn goaway_all(&self, within: Duration) -> usize {
        let conns = self.conns();
        for info in conns.values() {
            info.ask_goaway(within);
        }
        conns.len()
    }

    /// Asks the connections holding the largest partial objects to close (reason
    /// `memory_pressure`) until they hold `excess` bytes in all. Buffers of connections
    /// already asked to close count as freed: they are on their way out.
    pub fn close_largest_buffers(&self, excess: usize) -> Relief {
        let mut relief = Relief::default();
        let conns = self.conns();
        // First pass, without a clone: what is already on its way out.
        let releasing: usize = conns
            .values()
            .filter(|info| info.closing_reason().is_some())
            .map(|info| info.buffered() as usize)
            .sum();
        let mut excess = excess.saturating_sub(releasing);
        if excess == 0 {
            return relief;
        }
        let mut holders: Vec<(u32, &Arc<ConnInfo>)> = conns
            .values()
            .filter(|info| info.buffered() > 0 && info.closing_reason().is_none())
            .map(|info| (info.buffered(), info))
            .collect();
        holders.sort_unstable_by_key(|&(held, _)| std::cmp::Reverse(held));
        for (held, info) in holders {
            if excess == 0 {
                break;
            }
            if info.ask_to_close(CloseReason::MemoryPressure) {
                excess = excess.saturating_sub(held as usize);
                relief.closed += 1;
                relief.bytes += held as usize;
                tracing::debug!(conn_id = info.id, peer = %info.peer, buffered = held, "closing under memory pressure");
            }
        }
        relief
    }

    /// Wakes every live connection's task, so that each looks at a flag just changed (the
    /// server's shutdown stage).
    pub fn wake_all(&self) {
        let infos: Vec<Arc<ConnInfo>> = self.conns().values().cloned().collect();
        for info in infos {
            info.control.wake();
        }
    }

    /// Connections registered since start.
    pub fn opened_total(&self) -> u64 {
        self.shared.opened.load(Ordering::Relaxed)
    }

    /// Connections handed over to another process (at an upgrade), which recorded no close.
    pub fn handed_over_total(&self) -> u64 {
        self.shared.handed_over.load(Ordering::Relaxed)
    }

    /// Connections closed with `reason` since start (refused ones included).
    pub fn closed_total(&self, reason: CloseReason) -> u64 {
        self.shared.closed[reason.index()].load(Ordering::Relaxed) + self.refused_total(reason)
    }

    /// Registered connections closed with `reason` since start (refused ones not included).
    pub fn closed_registered_total(&self, reason: CloseReason) -> u64 {
        self.shared.closed[reason.index()].load(Ordering::Relaxed)
    }

    /// Connections refused at accept with `reason` (`server_full`, `internal_error`), never
    /// registered.
    pub fn refused_total(&self, reason: CloseReason) -> u64 {
        self.shared.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Close events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ClosedConn> {
        self.shared.events.subscribe()
    }

    /// Logs, counts and broadcasts one close, keeps it in the closed history and observes it in
    /// the metrics. The guard calls it; the server calls it for connections refused before
    /// registration (id 0), which are counted apart and not kept in the history.
    pub fn record_close(&self, closed: ClosedConn) {
        let refused = closed.id == 0;
        let counters = if refused {
            &self.shared.refused
        } else {
            &self.shared.closed
        };
        counters[closed.reason.index()].fetch_add(1, Ordering::Relaxed);
        if !refused {
            if let Some(metrics) = self.shared.metrics.get() {
                metrics.observe_close(closed.reason, closed.detection_delay, closed.duration);
            }
            self.remember(&closed);
            if closed.reason == CloseReason::KeepaliveTimeout {
                self.notice_storm();
            }
        }
        tracing::info!(
            conn_id = closed.id,
            peer = %closed.peer,
            reason = closed.reason.as_str(),
            duration_ms = closed.duration.as_millis() as u64,
            detection_delay_ms = closed.detection_delay.as_millis() as u64,
            bytes_in = closed.bytes_in,
            bytes_out = closed.bytes_out,
            items = closed.items,
            errors = closed.errors,
            auth_name = closed.auth_name.as_deref(),
            "connection closed"
        );
        // No subscriber is the normal case: the error only says nobody listens.
        let _ = self.shared.events.send(closed);
    }

    fn remember(&self, closed: &ClosedConn) {
        let limit = self.shared.history_limit.load(Ordering::Relaxed);
        if limit == 0 {
            return;
        }
        let mut history = lock(&self.shared.history);
        if history.len() >= limit {
            history.pop_front();
        }
        history.push_back(closed.clone());
    }
}

/// Locks `mutex`, using it even if a panic poisoned it: no critical section here can leave
/// its data half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Owns a connection's registry entry; removes it and records the close when dropped.
#[derive(Debug)]
pub struct ConnGuard {
    registry: Registry,
    info: Arc<ConnInfo>,
    reason: Option<CloseReason>,
    /// The connection went on in another process: the entry leaves the map, no close is
    /// recorded.
    handed_over: bool,
}

impl ConnGuard {
    /// Lets the registry read the connection's `TCP_INFO` (keep-alive probes, RTT) through its
    /// descriptor.
    #[cfg(unix)]
    pub fn set_socket(&self, socket: &impl std::os::fd::AsRawFd) {
        self.info.fd.store(socket.as_raw_fd(), Ordering::Relaxed);
    }

    /// Stops the registry from using the socket's descriptor (`TCP_INFO`, the keep-alive phase's
    /// restorer) while the entry stays listed: for a socket that closes, or leaves the process,
    /// before its entry goes (a connection handed over to another process is listed until the
    /// hand-over has it). Under the write lock, so that a reader holding the read lock is done
    /// with the descriptor when this returns.
    #[cfg(unix)]
    pub fn release_socket(&self) {
        let _held = self.registry.conns_mut();
        self.info.fd.store(-1, Ordering::Relaxed);
    }

    /// The entry, for the connection's own counters.
    pub fn info(&self) -> &Arc<ConnInfo> {
        &self.info
    }

    /// Sets the reason recorded at drop. Without one, a drop during a panic records
    /// `internal_error` and any other drop (a cancelled task) records `shutdown`.
    pub fn close(&mut self, reason: CloseReason) {
        self.reason = Some(reason);
    }

    /// What the entry carries to another process ([`Registry::adopt`] there).
    pub fn carried(&self) -> Carried {
        let mut carried = self.info.carried(Instant::now());
        carried.auth_name = self
            .registry
            .auth_name(&self.info)
            .map(|name| name.to_string());
        carried
    }

    /// Removes the entry without recording a close: the connection went on in another
    /// process, with what [`ConnGuard::carried`] gave.
    pub fn hand_over(mut self) {
        self.handed_over = true;
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let reason = self.reason.unwrap_or(if std::thread::panicking() {
            CloseReason::InternalError
        } else {
            CloseReason::Shutdown
        });
        {
            let mut conns = self.registry.conns_mut();
            // Under the write lock, so that a reader of `TCP_INFO` (under the read lock) sees
            // either the open socket's descriptor or none.
            self.info.fd.store(-1, Ordering::Relaxed);
            conns.remove(&self.info);
        }
        if self.handed_over {
            if self.info.named.load(Ordering::Acquire) {
                lock(&self.registry.shared.names).remove(&self.info.id);
            }
            self.registry
                .shared
                .handed_over
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let snapshot = self.info.snapshot();
        self.registry.record_close(ClosedConn {
            id: snapshot.id,
            peer: snapshot.peer,
            local: snapshot.local,
            reason,
            started_at: snapshot.started_at,
            closed_at: snapshot.started_at + snapshot.age,
            duration: snapshot.age,
            detection_delay: snapshot.last_in_ago,
            bytes_in: snapshot.bytes_in,
            bytes_out: snapshot.bytes_out,
            items: snapshot.items,
            errors: snapshot.errors,
            auth_name: match self.info.named.load(Ordering::Acquire) {
                true => lock(&self.registry.shared.names).remove(&self.info.id),
                false => None,
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_pressure_closes_the_largest_holders_and_counts_those_on_their_way_out() {
        let registry = Registry::new();
        let guards: Vec<ConnGuard> = (0..5)
            .map(|i| registry.insert(addr(40 + i), addr(1)))
            .collect();
        for (guard, held) in guards.iter().zip([100, 50, 10, 30, 0]) {
            guard.info().set_buffered(held);
        }
        // The fourth is already closing: its 30 bytes count as freed.
        registry.kick(guards[3].info().id);
        let relief = registry.close_largest_buffers(120);
        assert_eq!(
            relief,
            Relief {
                closed: 1,
                bytes: 100
            }
        );
        let reasons: Vec<_> = guards.iter().map(|g| g.info().closing_reason()).collect();
        use CloseReason::{Kicked, MemoryPressure};
        assert_eq!(
            reasons,
            [Some(MemoryPressure), None, None, Some(Kicked), None]
        );
        // Again: what was asked to close is on its way out, and the next largest goes.
        let relief = registry.close_largest_buffers(150);
        assert_eq!(
            relief,
            Relief {
                closed: 1,
                bytes: 50
            }
        );
        assert_eq!(guards[1].info().closing_reason(), Some(MemoryPressure));
        // Nothing held by the others beyond that: nothing more to do.
        assert_eq!(
            registry.close_largest_buffers(180),
            Relief {
                closed: 0,
                bytes: 0
            }
        );
        assert_eq!(registry.buffered_total(), 190);
    }

    /// Every idle connection holds one entry (in an `Arc`): jemalloc rounds 16 + its size up
    /// to the next size class (192 bytes), so the entry stays within 176 bytes.
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    #[test]
    fn an_entry_stays_within_its_allocation_class() {
        let size = std::mem::size_of::<ConnInfo>();
        eprintln!("ConnInfo: {size} bytes");
        assert!(size <= 176, "ConnInfo is {size} bytes");
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_slash_64() {
        let ip = |text: &str| -> IpAddr { text.parse().unwrap() };
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.7")),
            Source::of(ip("192.0.2.7"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn a_source_at_its_limit_is_refused_until_one_of_its_connections_closes() {
        let registry = Registry::new();
        let from = |host: u8, port: u16| SocketAddr::from(([192, 0, 2, host], port));
        let first = registry.insert_within(from(1, 1), addr(7000), Some(2));
        let second = registry.insert_within(from(1, 2), addr(7000), Some(2));
        assert!(first.is_some() && second.is_some());
        assert!(registry
            .insert_within(from(1, 3), addr(7000), Some(2))
            .is_none());
        assert!(registry
            .insert_within(from(2, 1), addr(7000), Some(2))
            .is_some());
        drop(first);
        assert!(registry
            .insert_within(from(1, 4), addr(7000), Some(2))
            .is_some());
        assert_eq!(registry.opened_total(), 4);
    }

    #[test]
    fn guard_drop_removes_entry_and_counts_reason() {
        let registry = Registry::new();
        let mut events = registry.subscribe();
        let mut guard = registry.insert(addr(1), addr(2));
        let id = guard.info().id;
        assert_eq!(registry.len(), 1);
        assert!(registry.get(id).is_some());
        guard.close(CloseReason::IdleTimeout);
        drop(guard);
        assert!(registry.is_empty());
        assert_eq!(registry.closed_total(CloseReason::IdleTimeout), 1);
        assert_eq!(events.try_recv().unwrap().reason, CloseReason::IdleTimeout);
    }

    #[test]
    fn panic_while_holding_guard_records_internal_error() {
        let registry = Registry::new();
        let r = registry.clone();
        let result = std::thread::spawn(move || {
            let _guard = r.insert(addr(1), addr(2));
            panic!("boom");
        })
        .join();
        assert!(result.is_err());
        assert!(registry.is_empty());
        assert_eq!(registry.closed_total(CloseReason::InternalError), 1);
    }

    #[test]
    fn dropped_without_reason_is_shutdown() {
        let registry = Registry::new();
        drop(registry.insert(addr(1), addr(2)));
        assert_eq!(registry.closed_total(CloseReason::Shutdown), 1);
    }

    #[test]
    fn a_carried_entry_is_adopted_with_its_id_age_and_counters_and_ids_go_on_above_it() {
        let old = Registry::new();
        let guards: Vec<_> = (0..3).map(|i| old.insert(addr(10 + i), addr(2))).collect();
        let moving = guards[2].info();
        moving.received(120, moving.started() + Duration::from_millis(5));
        moving.sent(40, moving.started() + Duration::from_millis(7));
        moving.item();
        moving.error();
        moving.set_keepalive_first_idle(Some(Duration::from_secs(7)));
        old.set_auth_name(moving, "fleet-7".into());
        let mut carried = moving.carried(moving.started() + Duration::from_secs(90));
        carried.auth_name = guards[2].carried().auth_name;
        assert_eq!(carried.auth_name.as_deref(), Some("fleet-7"));
        assert_eq!(
            (carried.id, carried.age_ms, carried.last_in_ms),
            (3, 90_000, 5)
        );

        // The new process: its own first connection took id 1 before the hand-over.
        let new = Registry::new();
        let first = new.insert(addr(20), addr(2));
        let adopted = new.adopt(&carried).expect("a free id");
        let info = adopted.info();
        assert_eq!(
            (info.id, info.peer, info.local),
            (3, carried.peer, carried.local)
        );
        assert_eq!(
            (
                info.bytes_in(),
                info.bytes_out(),
                info.items(),
                info.errors()
            ),
            (120, 40, 1, 1)
        );
        assert!(info.age_at(Instant::now()) >= Duration::from_secs(90));
        assert_eq!(info.keepalive_first_idle(), Some(Duration::from_secs(7)));
        assert_eq!(new.auth_name(info).as_deref(), Some("fleet-7"));
        assert_eq!(
            adopted.carried().auth_name.as_deref(),
            Some("fleet-7"),
            "and it would move on with it"
        );
        // The old process's entry leaves without a close recorded.
        let mut guards = guards;
        guards.pop().expect("the moving one").hand_over();
        assert_eq!(
            (old.len(), old.closed().len(), old.handed_over_total()),
            (2, 0, 1)
        );
        assert!(new.adopt(&carried).is_none(), "an id is live once");
        assert_eq!(
            new.insert(addr(21), addr(2)).info().id,
            4,
            "ids go on above it"
        );
        assert_eq!((first.info().id, new.len()), (1, 2));
    }

    #[test]
    fn kick_sets_the_flag_and_wakes_the_registered_task() {
        struct Flag(AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let registry = Registry::new();
        let guard = registry.insert(addr(1), addr(2));
        let woken = Arc::new(Flag(AtomicBool::new(false)));
        guard
            .info()
            .register_control(&std::task::Waker::from(Arc::clone(&woken)));
        assert_eq!(guard.info().closing_reason(), None);
        assert!(registry.kick(guard.info().id));
        assert_eq!(guard.info().closing_reason(), Some(CloseReason::Kicked));
        assert!(woken.0.load(Ordering::SeqCst));
        assert!(!registry.kick(9999));
    }

    /// More sockets than one chunk, so that the read is split over threads where the machine
    /// has several cores: every answer is the socket's own, in order, and an entry that left
    /// the map (its socket closed after) reads as `None`, never as whatever reused its number.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn tcp_info_of_reads_each_live_socket_in_order_and_none_after_close() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let registry = Registry::new();
        let count = TCP_INFO_CHUNK * 2 + 7;
        let mut held = Vec::new();
        for _ in 0..count {
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, peer) = listener.accept().unwrap();
            let guard = registry.insert_socket(&server, peer, server.local_addr().unwrap());
            held.push((guard, server, client));
        }
        let mut entries_by_id = registry.entries();
        entries_by_id.sort_by_key(|entry| entry.id);
        // Close every third connection the way the server does: entry first, then the socket.
        let mut open = Vec::new();
        for (index, (guard, server, client)) in held.into_iter().enumerate() {
            if index % 3 == 0 {
                drop(guard);
                drop(server);
                drop(client);
            } else {
                open.push((guard, server, client));
            }
        }
        let infos = registry.tcp_info_of(&entries_by_id);
        assert_eq!(infos.len(), count);
        for (entry, info) in entries_by_id.iter().zip(&infos) {
            let is_open = open.iter().any(|(guard, _, _)| guard.info().id == entry.id);
            match info {
                Some(info) => {
                    assert!(is_open, "connection {} closed but read", entry.id);
                    assert_eq!(info.state, "established");
                }
                None => assert!(!is_open, "connection {} open but not read", entry.id),
            }
        }
        assert_eq!(infos.iter().flatten().count(), open.len());
    }
}
#[cfg(test)]
mod size_probe {
    #[test]
    fn probe() {
        eprintln!("ConnInfo {} bytes", std::mem::size_of::<super::ConnInfo>());
    }
}
#[cfg(all(test, target_os = "linux", target_pointer_width = "64"))]
mod entry_size {
    /// Every connection holds one entry, in an `Arc` (16 bytes more): 176 bytes make 192, a
    /// jemalloc size class; one byte more takes the next class, 224 (`bench/idle_memory.sh`).
    #[test]
    fn a_connection_entry_stays_within_its_allocation_class() {
        let size = std::mem::size_of::<super::ConnInfo>();
        assert!(size <= 176, "ConnInfo is {size} bytes");
    }
}
