//! One live connection's entry: the atomics its task updates without a lock, and the copies
//! made of them. Apart from the map because an entry is what every idle connection pays for
//! (its size is held to an allocation class below) and is read and written on the hot path,
//! where the map's lock is never taken.

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering,
};
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime};

use atomic_waker::AtomicWaker;

use super::address::Addresses;
use super::ConnSnapshot;
#[cfg(doc)]
use super::Registry;
use crate::close_reason::{CloseReason, FirstReason};

/// An entry as the registry, its connection and its listings share it. `triomphe`'s `Arc`
/// keeps one count where the standard one keeps two (no weak reference to an entry is ever
/// taken): with the 8 bytes saved, an entry of 120 bytes is one allocation of 128.
pub(crate) type SharedInfo = triomphe::Arc<ConnInfo>;

/// One live connection. Counters are updated by the connection's task without a lock.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// Unique for the life of the server, starting at 1.
    pub(crate) id: u64,
    /// When the connection was accepted, in microseconds from [`EPOCH`] (before it, for a
    /// connection an upgrade handed over): 8 bytes where an `Instant` takes 16. The wall-clock
    /// time is derived from it, to keep the entry small: every byte here is paid once per idle
    /// connection.
    started_us: i64,
    last_in_ms: AtomicU64,
    last_out_ms: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    items: AtomicU64,
    /// Wakes the connection's task for a kick or a shutdown stage: a waker slot rather than a
    /// stored future, so an idle connection pays 24 bytes for it.
    pub(super) control: AtomicWaker,
    /// Refused items (saturates: a connection refused that often is closed by its error budget
    /// long before, unless the budget is off).
    errors: AtomicU32,
    /// Why the server asked this connection to close: the first request wins.
    closing: FirstReason,
    /// Bytes of the read buffer holding a partial object, as the connection last reported
    /// them: the memory-pressure relief closes the largest holders first.
    buffered: AtomicU32,
    /// True once the connection authenticated or gave a `client_id`: it has an entry in
    /// [`Registry`]'s identities (kept there rather than here, so that an anonymous entry pays
    /// one byte for them).
    pub(super) named: AtomicBool,
    /// True once the application heartbeat applies to this connection.
    heartbeat: AtomicBool,
    /// `ping`s sent since the peer was last heard (saturates at 255).
    pings_outstanding: AtomicU8,
    /// The shortened first `TCP_KEEPIDLE` this socket was given, in seconds, until the idle in
    /// force is put back (`crate::phase`); 0 when none is pending.
    keepalive_first_idle_s: AtomicU16,
    /// The socket's descriptor, for `TCP_INFO` (-1 when unknown, on other platforms, once
    /// the entry let go of it, or once the entry left the map).
    pub(super) fd: AtomicI32,
    /// The window of a `goaway` asked for and not yet sent, in tenths of a second (0: none;
    /// 16 bits, which the entry had spare, so the entry's size class stays: up to 109 minutes).
    goaway_ds: AtomicU16,
    /// The client's address and the server's address it connected to.
    addresses: Addresses,
}

/// The instant entries count their start from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `at` in microseconds from [`EPOCH`].
fn micros_from_epoch(at: Instant) -> i64 {
    let epoch = *EPOCH;
    match at.checked_duration_since(epoch) {
        Some(after) => after.as_micros() as i64,
        None => -(epoch.saturating_duration_since(at).as_micros() as i64),
    }
}

impl ConnInfo {
    /// When the connection was accepted.
    pub(crate) fn started(&self) -> Instant {
        let micros = Duration::from_micros(self.started_us.unsigned_abs());
        if self.started_us >= 0 {
            *EPOCH + micros
        } else {
            *EPOCH - micros
        }
    }

    /// The client's address (the one a PROXY protocol header named, behind a load balancer).
    pub(crate) fn peer(&self) -> SocketAddr {
        self.addresses.peer()
    }

    /// The server's address the client connected to.
    pub(crate) fn local(&self) -> SocketAddr {
        self.addresses.local()
    }

    /// What the entry keeps when the connection moves to another process, as of `now`.
    #[cfg(target_os = "linux")]
    pub(crate) fn carried(&self, now: Instant) -> super::Carried {
        super::Carried {
            id: self.id,
            peer: self.peer(),
            local: self.local(),
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
    pub(super) fn new(id: u64, peer: SocketAddr, local: SocketAddr, started: Instant) -> ConnInfo {
        ConnInfo {
            id,
            started_us: micros_from_epoch(started),
            last_in_ms: AtomicU64::new(0),
            last_out_ms: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            items: AtomicU64::new(0),
            control: AtomicWaker::new(),
            errors: AtomicU32::new(0),
            closing: FirstReason::default(),
            named: AtomicBool::new(false),
            buffered: AtomicU32::new(0),
            heartbeat: AtomicBool::new(false),
            pings_outstanding: AtomicU8::new(0),
            keepalive_first_idle_s: AtomicU16::new(0),
            fd: AtomicI32::new(-1),
            goaway_ds: AtomicU16::new(0),
            addresses: Addresses::new(peer, local),
        }
    }

    /// The entry of a connection another process handed over ([`Registry::adopt`]): its id,
    /// its age (counted back from now) and its counters as they were there.
    #[cfg(target_os = "linux")]
    pub(super) fn adopted(carried: &super::Carried) -> ConnInfo {
        let now = Instant::now();
        let started = now
            .checked_sub(Duration::from_millis(carried.age_ms))
            .unwrap_or(now);
        ConnInfo {
            last_in_ms: AtomicU64::new(carried.last_in_ms),
            last_out_ms: AtomicU64::new(carried.last_out_ms),
            bytes_in: AtomicU64::new(carried.bytes_in),
            bytes_out: AtomicU64::new(carried.bytes_out),
            items: AtomicU64::new(carried.items),
            errors: AtomicU32::new(carried.errors.min(u32::MAX.into()) as u32),
            keepalive_first_idle_s: AtomicU16::new(carried.keepalive_first_idle_s),
            ..ConnInfo::new(carried.id, carried.peer, carried.local, started)
        }
    }

    fn since_start(&self, at: Instant) -> u64 {
        self.micros_since_start(at) / 1000
    }

    /// Microseconds from accept to `at` (0 before it): one subtraction from the epoch's
    /// distance, which every read and write stamps.
    pub(crate) fn micros_since_start(&self, at: Instant) -> u64 {
        (micros_from_epoch(at) - self.started_us).max(0) as u64
    }

    /// Records `n` bytes received at `at`.
    pub(crate) fn received(&self, n: usize, at: Instant) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        self.last_in_ms
            .store(self.since_start(at), Ordering::Relaxed);
    }

    /// Records `n` bytes sent at `at`.
    pub(crate) fn sent(&self, n: usize, at: Instant) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        self.last_out_ms
            .store(self.since_start(at), Ordering::Relaxed);
    }

    /// Counts one accepted item.
    pub(crate) fn item(&self) {
        self.items.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refused item.
    pub(crate) fn error(&self) {
        // One writer (the connection's task): a load first keeps the count from wrapping.
        if self.errors.load(Ordering::Relaxed) != u32::MAX {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records the heartbeat's state: whether it applies, and the pings sent since the peer
    /// was last heard.
    pub(crate) fn heartbeat(&self, applies: bool, pings_outstanding: u32) {
        self.heartbeat.store(applies, Ordering::Relaxed);
        let pings = pings_outstanding.min(u8::MAX as u32) as u8;
        self.pings_outstanding.store(pings, Ordering::Relaxed);
    }

    /// Why the server asked this connection to close ([`Registry::kick`], memory pressure),
    /// if it did.
    pub(crate) fn closing_reason(&self) -> Option<CloseReason> {
        self.closing.get()
    }

    /// Asks the connection to close with `reason` and wakes its task. False when it was
    /// already asked (the first reason stands).
    pub(crate) fn ask_to_close(&self, reason: CloseReason) -> bool {
        let asked = self.closing.set(reason);
        if asked {
            self.control.wake();
        }
        asked
    }

    /// Asks the connection to tell its client `goaway` with this window and wakes its task.
    pub(crate) fn ask_goaway(&self, within: Duration) {
        let tenths = within.as_millis().div_ceil(100).clamp(1, u16::MAX.into()) as u16;
        self.goaway_ds.store(tenths, Ordering::Release);
        self.control.wake();
    }

    /// Whether a `goaway` was asked for and not yet sent.
    pub(crate) fn goaway_asked(&self) -> bool {
        self.goaway_ds.load(Ordering::Acquire) != 0
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
    pub(crate) fn buffered(&self) -> u32 {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Records the bytes of partial object the connection holds.
    pub(crate) fn set_buffered(&self, bytes: u32) {
        self.buffered.store(bytes, Ordering::Relaxed);
    }

    /// Registers the task to wake on a kick or [`Registry::wake_all`]. Register first, then
    /// check the flags, so that no wake-up is lost.
    pub(crate) fn register_control(&self, waker: &std::task::Waker) {
        self.control.register(waker);
    }

    /// A point-in-time copy.
    pub(crate) fn snapshot(&self) -> ConnSnapshot {
        self.snapshot_at(Instant::now(), SystemTime::now())
    }

    /// A copy as of `now` (`wall` being the same instant on the wall clock): one clock read
    /// serves a whole listing.
    pub(crate) fn snapshot_at(&self, now: Instant, wall: SystemTime) -> ConnSnapshot {
        let age = self.age_at(now);
        let ago = |stamp: &AtomicU64| since(age, stamp);
        ConnSnapshot {
            id: self.id,
            peer: self.peer(),
            local: self.local(),
            started_at: wall - age,
            age,
            last_in_ago: ago(&self.last_in_ms),
            last_out_ago: ago(&self.last_out_ms),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            items: self.items.load(Ordering::Relaxed),
            errors: self.errors(),
            heartbeat: self.heartbeat.load(Ordering::Relaxed),
            pings_outstanding: self.pings_outstanding.load(Ordering::Relaxed),
            buffered: self.buffered(),
            auth_name: None,
        }
    }

    /// Time since accept, as of `now`.
    pub(crate) fn age_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started())
    }

    /// Time since the last byte received (or since accept), as of `now`.
    pub(crate) fn idle_in_at(&self, now: Instant) -> Duration {
        since(self.age_at(now), &self.last_in_ms)
    }

    /// Bytes received.
    pub(crate) fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Bytes sent.
    pub(crate) fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Items accepted.
    pub(crate) fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    /// Items refused.
    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed).into()
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
}

/// Time from `stamp` (milliseconds after accept) to a moment `age` after accept.
fn since(age: Duration, stamp: &AtomicU64) -> Duration {
    age.saturating_sub(Duration::from_millis(stamp.load(Ordering::Relaxed)))
}

#[cfg(all(test, target_os = "linux", target_pointer_width = "64"))]
mod tests {
    use super::ConnInfo;

    /// Every connection holds one entry, in a `triomphe::Arc` (8 bytes more): 120 bytes make
    /// 128, a jemalloc size class; one byte more takes the next class, 160
    /// (`bench/idle_memory.sh`).
    #[test]
    fn a_connection_entry_stays_within_its_allocation_class() {
        let size = std::mem::size_of::<ConnInfo>();
        eprintln!("ConnInfo: {size} bytes");
        assert!(size <= 120, "ConnInfo is {size} bytes");
        let shared = super::SharedInfo::new(ConnInfo::new(
            1,
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
            std::time::Instant::now(),
        ));
        // The count sits in the same allocation, before the entry.
        let offset = (std::ptr::from_ref::<ConnInfo>(&shared) as usize)
            - (triomphe::Arc::heap_ptr(&shared) as usize);
        assert!(
            offset + size <= 128,
            "the shared entry takes {} bytes",
            offset + size
        );
    }

    /// A connection handed over by an upgrade started before this process did.
    #[test]
    fn a_start_before_the_process_reads_back() {
        let now = std::time::Instant::now();
        for ago in [0, 1, 3_600_000_000u64] {
            let Some(started) = now.checked_sub(std::time::Duration::from_micros(ago)) else {
                continue;
            };
            let info = ConnInfo::new(
                1,
                "10.0.0.1:1".parse().unwrap(),
                "10.0.0.2:2".parse().unwrap(),
                started,
            );
            let error = info.started().max(started) - info.started().min(started);
            assert!(
                error < std::time::Duration::from_micros(1),
                "{ago}: off by {error:?}"
            );
        }
    }
}
