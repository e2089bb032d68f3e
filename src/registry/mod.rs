//! The live connections and the recently closed ones: the one source that logs, metrics, the
//! admin API and `doctor` read.
//!
//! A connection enters through `Registry::insert_within`, which returns a `ConnGuard`. The
//! guard's `Drop` removes the entry and records the close (one log line, one counter, one event,
//! one entry in the closed history, one observation of the detection delay), so the entry goes
//! away on every exit path: a normal return, an error, a panic or a cancelled task. The map's
//! lock is taken at open and close, and briefly by readers; per-item counters are atomics on the
//! entry.
//!
//! `TCP_INFO` is read only while the entry is in the map, under the map's lock: the server
//! removes an entry before it closes the socket, so a descriptor read here is never one the
//! kernel already gave to another connection. Readers share the lock (a read lock) for a bounded
//! chunk of entries at a time ([`TCP_INFO_CHUNK`]), so opens and closes never wait long behind
//! them, and long reads run on several threads at once (a system call per socket, ~1.5 µs each
//! here, mostly cache misses on the socket's kernel structures).
//!
//! Here are the map, by id and by [`Source`], and what is asked of it. The rest is apart:
//! `entry` (one connection's counters), `address` (its two addresses, packed), `guard` (the entry's removal and close), `closes` (what
//! a close leaves: history, events, counters), `tcp_info` (descriptors read under the lock) and
//! `views` (the copies handed out).

mod address;
mod closes;
mod entry;
pub mod flapping;
mod guard;
mod identities;
mod tcp_info;
mod views;

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::close_reason::CloseReason;

pub use closes::ClosedConn;
use closes::Closes;
pub(crate) use entry::{ConnInfo, SharedInfo};
pub(crate) use guard::ConnGuard;
use identities::Identities;
pub(crate) use identities::{Arrival, Claim};
pub use tcp_info::TCP_INFO_CHUNK;
#[cfg(target_os = "linux")]
pub(crate) use views::Carried;
pub use views::ConnSnapshot;

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
    by_id: HashSet<ById>,
    /// Sources with at least one live connection, counted only while a per-source limit is in
    /// force (`max_connections_per_ip`): where every peer has its address of its own, the
    /// counts cost about 46 bytes a connection, which a server without the limit does not pay.
    by_source: HashMap<Source, u32>,
    /// True while `by_source` counts every live connection.
    counting: bool,
}

/// An entry in the set of live connections, found by its id: the set holds the entry alone, 8
/// bytes a slot where a map from id to entry takes 16 (the set is paid per connection, and
/// grows by doubling: about 20 bytes a connection rather than 37 at 15,000).
#[derive(Debug)]
struct ById(SharedInfo);

impl PartialEq for ById {
    fn eq(&self, other: &ById) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl Borrow<u64> for ById {
    fn borrow(&self) -> &u64 {
        &self.0.id
    }
}

impl Conns {
    /// Adds `info` unless its id is live already (an adopted entry keeps the id it had) or its
    /// source already has `per_source` live connections.
    fn add(&mut self, info: &SharedInfo, per_source: Option<usize>) -> bool {
        if self.by_id.contains(&info.id) {
            return false;
        }
        if per_source.is_none() {
            if self.counting {
                // The limit is off (a reload): the counts go, with their memory.
                self.by_source = HashMap::new();
                self.counting = false;
            }
            self.by_id.insert(ById(SharedInfo::clone(info)));
            return true;
        }
        if !self.counting {
            // The limit is on (at start, or a reload turned it on): count who is live now.
            for entry in &self.by_id {
                *self
                    .by_source
                    .entry(Source::of(entry.0.peer().ip()))
                    .or_default() += 1;
            }
            self.counting = true;
        }
        let count = self
            .by_source
            .entry(Source::of(info.peer().ip()))
            .or_default();
        // At the limit the count is at least 1, so no empty entry stays behind.
        if per_source.is_some_and(|limit| *count as usize >= limit) {
            return false;
        }
        *count += 1;
        self.by_id.insert(ById(SharedInfo::clone(info)));
        true
    }

    fn remove(&mut self, info: &ConnInfo) {
        if !self.by_id.remove(&info.id) || !self.counting {
            return;
        }
        if let Entry::Occupied(mut entry) = self.by_source.entry(Source::of(info.peer().ip())) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }

    /// The live connection `id`.
    fn get(&self, id: &u64) -> Option<&SharedInfo> {
        self.by_id.get(id).map(|entry| &entry.0)
    }

    fn contains_key(&self, id: &u64) -> bool {
        self.by_id.contains(id)
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every live connection, in no order.
    fn values(&self) -> impl Iterator<Item = &SharedInfo> {
        self.by_id.iter().map(|entry| &entry.0)
    }
}

#[derive(Debug)]
struct Shared {
    conns: RwLock<Conns>,
    next_id: AtomicU64,
    opened: AtomicU64,
    /// Connections handed over to another process (an upgrade).
    handed_over: AtomicU64,
    /// The authenticated names of live connections (client certificate subject or token name)
    /// and the `client_id`s they hold.
    identities: Mutex<Identities>,
    /// What closes leave behind: counters, history, events, metrics, probe storms.
    closes: Closes,
}

/// What [`Registry::close_largest_buffers`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Relief {
    /// Connections asked to close.
    pub(crate) closed: usize,
    /// The bytes of partial objects they held.
    pub(crate) bytes: usize,
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
                identities: Mutex::new(Identities::default()),
                closes: Closes::new(),
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

    /// Registers a new connection on `socket`, whose `TCP_INFO` the registry reads while the
    /// connection is live. The caller keeps the socket open for as long as the guard lives.
    /// Tests' shorthand: the server calls [`Registry::insert_within`], then
    /// [`ConnGuard::set_socket`].
    #[cfg(all(test, unix))]
    pub(crate) fn insert_socket(
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
    #[cfg(target_os = "linux")]
    pub(crate) fn adopt(&self, carried: &Carried) -> Option<ConnGuard> {
        self.shared
            .next_id
            .fetch_max(carried.id + 1, Ordering::Relaxed);
        let guard = self.register(ConnInfo::adopted(carried), None)?;
        if let Some(name) = &carried.auth_name {
            self.set_auth_name(guard.info(), name.as_str().into());
        }
        Some(guard)
    }

    /// Registers a new connection. Dropping the guard removes it. Tests' shorthand: the server
    /// registers with a limit per source ([`Registry::insert_within`]).
    #[cfg(test)]
    pub(crate) fn insert(&self, peer: SocketAddr, local: SocketAddr) -> ConnGuard {
        self.insert_within(peer, local, None)
            .expect("no limit per source")
    }

    /// Registers a new connection unless `per_source` connections from its [`Source`] are
    /// already live (then `None`). Dropping the guard removes it.
    pub(crate) fn insert_within(
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
        let info = SharedInfo::new(info);
        if !self.conns_mut().add(&info, per_source) {
            return None;
        }
        self.shared.opened.fetch_add(1, Ordering::Relaxed);
        Some(ConnGuard::new(self.clone(), info))
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
    pub(crate) fn snapshot_of(
        &self,
        info: &ConnInfo,
        now: Instant,
        wall: SystemTime,
    ) -> ConnSnapshot {
        ConnSnapshot {
            auth_name: self.auth_name(info),
            ..info.snapshot_at(now, wall)
        }
    }

    /// Records the name `info`'s connection authenticated under.
    pub(crate) fn set_auth_name(&self, info: &ConnInfo, name: Arc<str>) {
        lock(&self.shared.identities).set_auth_name(info.id, name);
        info.named.store(true, Ordering::Release);
    }

    /// The name `info`'s connection authenticated under, if it did.
    pub(crate) fn auth_name(&self, info: &ConnInfo) -> Option<Arc<str>> {
        if !info.named.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.shared.identities).auth_name(info.id)
    }

    /// `info`'s connection gave `client_id` (in its `hello`, after authenticating): it holds it
    /// unless a live connection authenticated under another name does, and a connection that
    /// held it under the same name is asked to close as `superseded` (takeover: the client came
    /// back while its old connection still looked alive). A connection handed over by a
    /// departing process is the older one if the client connected here meanwhile: it is the
    /// one asked to close then.
    pub(crate) fn claim_client_id(
        &self,
        info: &ConnInfo,
        client_id: Arc<str>,
        arrival: Arrival,
    ) -> Claim {
        info.named.store(true, Ordering::Release);
        let claim = lock(&self.shared.identities).claim(info.id, client_id, arrival);
        match claim {
            Claim::Superseding(old) => {
                if let Some(old) = self.conns().get(&old) {
                    old.ask_to_close(CloseReason::Superseded);
                }
            }
            Claim::Outdated(_) => {
                info.ask_to_close(CloseReason::Superseded);
            }
            Claim::Held | Claim::Refused { .. } => {}
        }
        claim
    }

    /// Every live entry, in no order. The lock is held only to clone the handles.
    pub(crate) fn entries(&self) -> Vec<SharedInfo> {
        self.conns().values().cloned().collect()
    }

    /// The live entries for which `keep` holds: only those are collected, so a look for a few
    /// among many costs no list of all of them.
    pub(crate) fn entries_where(&self, keep: impl Fn(&ConnInfo) -> bool) -> Vec<SharedInfo> {
        self.conns()
            .values()
            .filter(|entry| keep(entry))
            .cloned()
            .collect()
    }

    /// Bytes of partial objects held by live connections, as they last reported them.
    pub fn buffered_total(&self) -> u64 {
        self.conns()
            .values()
            .map(|info| u64::from(info.buffered()))
            .sum()
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

    /// Records the `client_id` `info`'s connection gave, without claiming it (takeover off):
    /// its close says it, and counts against the client's flapping.
    pub(crate) fn give_client_id(&self, info: &ConnInfo, client_id: Arc<str>) {
        info.named.store(true, Ordering::Release);
        lock(&self.shared.identities).give(info.id, client_id);
    }

    /// Whether connection `id` is live.
    pub(crate) fn is_live(&self, id: u64) -> bool {
        self.conns().contains_key(&id)
    }

    /// The live connections not already leaving (closing, or with a `goaway` asked for and not
    /// yet sent), and `fraction` of them (rounded to the nearest), oldest first: those a paced
    /// drain moves ([`crate::rebalance`]).
    pub(crate) fn oldest_staying(&self, fraction: f64) -> (usize, Vec<SharedInfo>) {
        let mut staying: Vec<SharedInfo> = self
            .conns()
            .values()
            .filter(|info| info.closing_reason().is_none() && !info.goaway_asked())
            .cloned()
            .collect();
        staying.sort_unstable_by_key(|info| (info.started(), info.id));
        let live = staying.len();
        staying.truncate((live as f64 * fraction).round() as usize);
        (live, staying)
    }

    /// Asks the connections holding the largest partial objects to close (reason
    /// `memory_pressure`) until they hold `excess` bytes in all. Buffers of connections
    /// already asked to close count as freed: they are on their way out.
    pub(crate) fn close_largest_buffers(&self, excess: usize) -> Relief {
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
        let mut holders: Vec<(u32, &SharedInfo)> = conns
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
                tracing::debug!(conn_id = info.id, peer = %info.peer(), buffered = held, "closing under memory pressure");
            }
        }
        relief
    }

    /// Wakes every live connection's task, so that each looks at a flag just changed (the
    /// server's shutdown stage).
    pub(crate) fn wake_all(&self) {
        let infos: Vec<SharedInfo> = self.conns().values().cloned().collect();
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
}

/// Locks `mutex`, using it even if a panic poisoned it: no critical section here can leave
/// its data half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

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

    pub(super) fn addr(port: u16) -> SocketAddr {
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

    /// Sources are counted only under a limit: one turned on by a reload counts the connections
    /// live then, and one turned off lets the counts go.
    #[test]
    fn a_limit_turned_on_counts_the_connections_already_live() {
        let registry = Registry::new();
        let from = |host: u8, port: u16| SocketAddr::from(([192, 0, 2, host], port));
        let unlimited: Vec<_> = (1..=3)
            .map(|port| registry.insert_within(from(1, port), addr(7000), None))
            .collect();
        assert!(unlimited.iter().all(Option::is_some));
        assert!(registry.conns().by_source.is_empty());
        assert!(registry
            .insert_within(from(1, 4), addr(7000), Some(3))
            .is_none());
        let other = registry.insert_within(from(2, 1), addr(7000), Some(3));
        assert!(other.is_some());
        drop(unlimited);
        let again = registry.insert_within(from(1, 5), addr(7000), Some(3));
        assert!(again.is_some());
        assert_eq!(registry.conns().by_source.len(), 2);
        let off = registry.insert_within(from(1, 6), addr(7000), None);
        assert!(off.is_some());
        assert!(registry.conns().by_source.is_empty());
        drop((other, again, off));
        assert!(registry.is_empty());
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
            (info.id, info.peer(), info.local()),
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
}
