//! Idle connections parked outside the runtime (Linux; `park_after`).
//!
//! A gateway spends its life holding connections that say nothing, and an idle connection's
//! task costs more than its state: tokio's task cell (the loop's future and its header, in the
//! 384-byte class) and its reactor registration (another 256 bytes) come before any byte of
//! ours. A connection silent for `park_after` with nothing pending (no partial object, no
//! output, no unanswered item, no TLS session) leaves both: its task ends, its socket leaves
//! tokio's reactor, and what it needs to go on ([`Parked`], 72 bytes) waits in a slab of one of
//! the shards, one per worker thread.
//!
//! Each shard is one task over an epoll set of its own, where each parked socket is registered
//! for readability (and errors and hang-ups, which epoll always reports). The shard turns a
//! parked connection back into a task when:
//! - its socket is readable, reports an error (keep-alive or `TCP_USER_TIMEOUT` gave up: the
//!   kernel's timers cost no user memory and keep their bounds) or the peer hung up;
//! - its next deadline comes (a heartbeat ping, `idle_timeout`, `max_age`, `auth_timeout`):
//!   one heap of deadlines per shard, not one timer per connection;
//! - the server asks something of it: a kick, memory pressure, `goaway` (a paced drain, an
//!   upgrade), a takeover, a shutdown stage or a reload. The registry wakes a connection through
//!   the waker slot of its entry; a parked connection's slot holds its shard's one waker, so
//!   the shard looks at its connections' entries then (a stage or a new configuration wakes
//!   them all, a kick or a `goaway` the one asked).
//!
//! Nothing is lost in the move: a connection parks only between objects, with its output
//! written and every reply received, and its bytes stay in the kernel's receive buffer until
//! the task that wakes reads them; the first read of a woken connection is the one it would
//! have made.
//!
//! Why a hand-written shard rather than a crate: tokio offers no way to keep a socket out of
//! its per-socket registration, and a timer wheel crate would add a per-connection entry; mio
//! (tokio's own epoll layer) and slab carry the system calls and the slots.
//!
//! TLS sessions stay tasks: rustls's connection state is about 1 KB of its own, much more than
//! the task, so parking them would save a small share of what they hold.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::{ConnShared, ConnTask, Connection, Extras, Flags, Leaves, Live, Slot, Stage};
use crate::close_reason::CloseReason;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::Producer;
use crate::record::Record;
use crate::registry::{ConnGuard, SharedInfo};

/// Readiness reported per turn of a shard: more wait for the next turn.
const EVENTS_PER_TURN: usize = 256;
/// [`Parked::wake_ms`] of a connection without a deadline.
const NO_DEADLINE: u64 = u64::MAX;

/// The shards where idle connections park, one per worker thread.
pub(crate) struct Parking {
    shards: Box<[ShardHandle]>,
    /// Deadlines are kept as milliseconds from here.
    epoch: Instant,
}

/// What a connection needs to reach its shard.
struct ShardHandle {
    inbox: mpsc::UnboundedSender<Parked>,
    /// The one waker every connection parked here registers in its registry entry.
    waker: Waker,
    signal: Arc<Signal>,
}

/// Wakes a shard to look at its connections' entries (a kick, a `goaway`, a stage, a reload).
#[derive(Default)]
struct Signal {
    notify: Notify,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.notify.notify_one();
    }
}

impl Parking {
    /// Starts one shard per worker thread of the current runtime, each a task of `tracker`,
    /// which ends once the server stops and no connection is parked in it.
    pub(crate) fn start(
        live: &Arc<Live>,
        metrics: &Arc<Metrics>,
        tracker: &TaskTracker,
    ) -> io::Result<Parking> {
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let epoch = Instant::now();
        let mut shards = Vec::with_capacity(workers.max(1));
        for _ in 0..workers.max(1) {
            let (inbox, arrivals) = mpsc::unbounded_channel();
            let signal = Arc::new(Signal::default());
            // SAFETY: the descriptor is the epoll set's own, open as long as the `Poll` that
            // the `AsyncFd` owns (tokio's condition for registering it).
            let epoll = unsafe { AsyncFd::register(mio::Poll::new()?) }?;
            let waker = Waker::from(Arc::clone(&signal));
            let shard = Shard {
                epoll,
                arrivals,
                signal: Arc::clone(&signal),
                waker: waker.clone(),
                resting: Slab::new(),
                deadlines: BinaryHeap::new(),
                epoch,
                live: Arc::clone(live),
                config_seen: config_id(&live.config()),
                metrics: Arc::clone(metrics),
                tracker: tracker.clone(),
            };
            tracker.spawn(shard.run());
            shards.push(ShardHandle {
                inbox,
                waker,
                signal,
            });
        }
        Ok(Parking {
            shards: shards.into_boxed_slice(),
            epoch,
        })
    }

    /// `at` as a deadline of a parked connection.
    fn wake_ms(&self, at: Option<Instant>) -> u64 {
        at.map_or(NO_DEADLINE, |at| {
            at.saturating_duration_since(self.epoch).as_millis() as u64
        })
    }

    /// Hands `parked` to its shard. Gives it back when the shard has stopped (the server is
    /// stopping).
    fn park(&self, parked: Parked) -> Result<(), Parked> {
        let id = parked.info().id;
        let shard = &self.shards[id as usize % self.shards.len()];
        // Before it is sent: a kick from now on wakes the shard, which looks at the entry once
        // the connection is in its slab (and once more on arrival, for a kick before this).
        parked.info().register_control(&shard.waker);
        shard.inbox.send(parked).map_err(|unsent| unsent.0)
    }

    /// Tells every shard to look at its connections again (a stage entered).
    pub(crate) fn look_again(&self) {
        for shard in &self.shards {
            shard.signal.wake_by_ref();
        }
    }
}

/// The configuration in force, by identity: a reload puts a new one in force, and every parked
/// connection wakes to re-arm its deadlines and set its socket options again.
fn config_id(config: &Arc<Config>) -> usize {
    Arc::as_ptr(config) as usize
}

/// A parked connection: what its loop needs to go on, and nothing it can rebuild (its buffers
/// are empty, its decoder at rest, its reply channel without a reply owed). Its entry is kept
/// without its guard ([`ConnGuard::set_aside`]): the registry is the one in `shared`.
pub(super) struct Parked {
    /// The socket, out of tokio's reactor (a copy of its descriptor: the task's copy was
    /// dropped with the task). `None` once woken, as the fields below.
    stream: Option<std::net::TcpStream>,
    flags: Flags,
    options_seen: u8,
    pings_sent: u16,
    errors: u32,
    /// Microseconds from accept to the last byte received.
    last_in: u64,
    /// The next deadline, as milliseconds from [`Parking`]'s epoch ([`NO_DEADLINE`]: none).
    wake_ms: u64,
    info: Option<SharedInfo>,
    slot: Option<Slot>,
    shared: Arc<ConnShared>,
    producer: Option<Producer<Record>>,
    extras: Option<Box<Extras>>,
}

impl Drop for Parked {
    /// A parked connection dropped without waking (its shard ended with the runtime): its
    /// entry leaves the registry with its close recorded, as its guard would have done.
    fn drop(&mut self) {
        if let Some(info) = self.info.take() {
            drop(ConnGuard::resumed(self.shared.registry.clone(), info));
        }
    }
}

impl Parked {
    /// The connection's entry.
    fn info(&self) -> &SharedInfo {
        match &self.info {
            Some(info) => info,
            None => unreachable!("a parked connection holds its entry until it wakes"),
        }
    }

    /// The socket's descriptor.
    fn fd(&self) -> std::os::fd::RawFd {
        self.stream.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// True when the server asked something of the connection since it parked.
    fn asked(&self) -> bool {
        let info = self.info();
        info.closing_reason().is_some() || info.goaway_asked()
    }

    /// The connection as a task again, with its socket back in tokio's reactor. `None` when the
    /// socket cannot be registered (it is closed, as `internal_error`).
    fn wake(mut self) -> Option<ConnTask> {
        let (Some(stream), Some(info), Some(slot), Some(producer)) = (
            self.stream.take(),
            self.info.take(),
            self.slot.take(),
            self.producer.take(),
        ) else {
            unreachable!("a parked connection is whole until it wakes")
        };
        let guard = ConnGuard::resumed(self.shared.registry.clone(), info);
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::error!(conn_id = guard.info().id, error = %error, "cannot wake a parked connection; closing it");
                guard.close(CloseReason::InternalError);
                return None;
            }
        };
        let info = SharedInfo::clone(guard.info());
        let shared = Arc::clone(&self.shared);
        let mut conn = Connection::new(stream, info, shared, producer, None);
        conn.flags = self.flags;
        conn.options_seen = self.options_seen;
        conn.pings_sent = self.pings_sent;
        conn.errors = self.errors;
        conn.last_in = self.last_in;
        conn.extras = self.extras.take();
        // `Connection::new` set the entry's heartbeat as for a new connection.
        (conn.info).heartbeat(
            self.flags.contains(Flags::HEARTBEAT),
            self.pings_sent.into(),
        );
        Some(ConnTask::new(conn, guard, slot))
    }
}

impl Connection {
    /// When the loop's timer wakes it: at `deadline` (its next one), or sooner at the moment
    /// to park; `Err(Leaves::ToPark)` once that moment has come, unless bytes (or an error)
    /// wait: the loop reads them first.
    pub(super) fn next_wake(
        &self,
        deadline: Option<Instant>,
        live: &Config,
        now: Instant,
    ) -> Result<Option<Instant>, Leaves> {
        match self.park_at(live) {
            Some(park_at) if park_at > now => {
                Ok(Some(deadline.map_or(park_at, |next| next.min(park_at))))
            }
            Some(_) if nothing_to_read(&self.stream) => Err(Leaves::ToPark { wake_at: deadline }),
            _ => Ok(deadline),
        }
    }

    /// When this connection parks if nothing happens before: `park_after` past its last byte
    /// in, if it may park at all (see [`park`](self)).
    fn park_at(&self, live: &Config) -> Option<Instant> {
        let after = live.park_after?;
        let idle = self.flags.contains(Flags::READING)
            && !self
                .flags
                .intersects(Flags::EOF | Flags::STAYS | Flags::UNPARKABLE)
            && !self.is_tls()
            && self.read_buf.is_empty()
            && self.out.is_empty()
            && self.blocked.is_none()
            && self.decoder.is_at_rest()
            && self.replies.as_ref().is_none_or(|r| r.unanswered == 0)
            && self.shared.live.stage() == Stage::Running
            && self.shared.live.parking().is_some()
            // Asked something: the loop answers first.
            && self.info.closing_reason().is_none()
            && !self.info.goaway_asked();
        idle.then(|| self.at(self.last_in) + after)
    }

    /// What the connection needs to go on, with `copy`, a copy of its socket's descriptor; the
    /// caller drops the connection, whose socket leaves tokio's reactor and closes its copy.
    fn parked(&mut self, copy: OwnedFd, guard: ConnGuard, slot: Slot, wake_ms: u64) -> Parked {
        let stream = std::net::TcpStream::from(copy);
        // The registry reads `TCP_INFO` by descriptor: it names the copy from now on, before
        // the task's copy closes.
        guard.replace_socket(&stream);
        let Some(producer) = self.producer.take() else {
            unreachable!("a connection that reads holds its producer")
        };
        Parked {
            stream: Some(stream),
            flags: self.flags,
            options_seen: self.options_seen,
            pings_sent: self.pings_sent,
            errors: self.errors,
            last_in: self.last_in,
            wake_ms,
            info: Some(guard.set_aside()),
            slot: Some(slot),
            shared: Arc::clone(&self.shared),
            producer: Some(producer),
            extras: self.extras.take(),
        }
    }
}

/// True when the socket has nothing to say now: no byte to read, no error, no hang-up. Asked
/// before parking, by a `poll(2)` that waits for nothing and takes nothing (a pending socket
/// error stays for the read that names the close): a connection just woken by its bytes must
/// not park again before its task reads them, and tokio tells the new task of them only at its
/// reactor's next turn.
fn nothing_to_read(stream: &TcpStream) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut socket = [PollFd::new(stream, PollFlags::IN | PollFlags::RDHUP)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut socket, Some(&now)), Ok(0))
}

impl ConnTask {
    /// Parks the connection. False when it could not (it stays a task, and will not try again).
    pub(super) fn park(&mut self, wake_at: Option<Instant>) -> bool {
        let Some(conn) = &mut self.conn else {
            unreachable!("a connection that parks is whole")
        };
        let Some(parking) = conn.shared.live.parking() else {
            unreachable!("checked by park_at")
        };
        let wake_ms = parking.wake_ms(wake_at);
        let copy = match conn.stream.as_fd().try_clone_to_owned() {
            Ok(copy) => copy,
            Err(error) => {
                tracing::warn!(conn_id = conn.info.id, error = %error, "cannot park an idle connection; it stays a task");
                conn.flags.insert(Flags::UNPARKABLE);
                return false;
            }
        };
        let (Some(mut conn), Some(guard), Some(slot)) =
            (self.conn.take(), self.guard.take(), self.slot.take())
        else {
            unreachable!("a connection that parks is whole")
        };
        let parked = conn.parked(copy, guard, slot, wake_ms);
        let shared = Arc::clone(&conn.shared);
        drop(conn);
        let Some(parking) = shared.live.parking() else {
            unreachable!("checked above")
        };
        let Err(refused) = parking.park(parked) else {
            return true;
        };
        match refused.wake() {
            Some(task) => {
                *self = task;
                if let Some(conn) = &mut self.conn {
                    conn.flags.insert(Flags::UNPARKABLE);
                }
                false
            }
            // Closed: the task ends.
            None => true,
        }
    }
}

/// One shard: its epoll set, its parked connections, their deadlines.
struct Shard {
    epoll: AsyncFd<mio::Poll>,
    arrivals: mpsc::UnboundedReceiver<Parked>,
    signal: Arc<Signal>,
    /// The waker its connections' entries hold.
    waker: Waker,
    /// Parked connections, by epoll token.
    resting: Slab<Parked>,
    /// (milliseconds from `epoch`, slab key) of each parked connection with a deadline. An
    /// entry whose connection woke earlier stays until it comes up (and is rebuilt when such
    /// entries outnumber the connections).
    deadlines: BinaryHeap<Reverse<(u64, usize)>>,
    epoch: Instant,
    live: Arc<Live>,
    config_seen: usize,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
}

/// What a shard's wait ended with.
enum Turn {
    Arrived(Option<Parked>),
    Asked,
    Ready(Vec<usize>),
    Due,
    Failed,
}

impl Shard {
    async fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_PER_TURN);
        loop {
            if self.live.stage() != Stage::Running {
                // Every connection wakes to see the stage; the shard ends once it holds none.
                self.wake_all();
                break;
            }
            let next = self.deadlines.peek().map(|Reverse((ms, _))| *ms);
            let due = next.map(|ms| self.epoch + Duration::from_millis(ms));
            let turn = tokio::select! {
                biased;
                arrived = self.arrivals.recv() => Turn::Arrived(arrived),
                () = self.signal.notify.notified() => Turn::Asked,
                ready = self.epoll.readable_mut() => match ready {
                    Ok(mut ready) => {
                        let mut keys = Vec::new();
                        if let Err(error) = ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                            tracing::warn!(error = %error, "epoll of parked connections failed");
                        }
                        keys.extend(events.iter().map(|event| event.token().0));
                        if keys.len() < EVENTS_PER_TURN {
                            ready.clear_ready();
                        }
                        Turn::Ready(keys)
                    }
                    Err(error) => {
                        tracing::error!(error = %error, "parked connections' epoll set failed; waking them");
                        Turn::Failed
                    }
                },
                () = sleep_until(due), if due.is_some() => Turn::Due,
            };
            match turn {
                Turn::Arrived(Some(parked)) => self.rest(parked),
                // Every handle is gone: the server is gone.
                Turn::Arrived(None) => break,
                Turn::Asked => self.look(),
                Turn::Ready(keys) => keys.into_iter().for_each(|key| self.wake(key)),
                Turn::Due => self.wake_due(),
                Turn::Failed => {
                    self.wake_all();
                    break;
                }
            }
        }
        // No connection parks from now on: those on their way are woken.
        self.arrivals.close();
        while let Ok(parked) = self.arrivals.try_recv() {
            self.start(parked);
        }
    }

    /// Takes a connection in: registers its socket and its deadline.
    fn rest(&mut self, parked: Parked) {
        if parked.asked() {
            return self.start(parked);
        }
        let entry = self.resting.vacant_entry();
        let key = entry.key();
        let fd = parked.fd();
        let registered = self.epoll.get_ref().registry().register(
            &mut SourceFd(&fd),
            Token(key),
            Interest::READABLE,
        );
        if let Err(error) = registered {
            tracing::warn!(conn_id = parked.info().id, error = %error, "cannot park a connection; it goes on as a task");
            return self.start(parked);
        }
        if parked.wake_ms != NO_DEADLINE {
            self.deadlines.push(Reverse((parked.wake_ms, key)));
        }
        entry.insert(parked);
        self.metrics.parked(true);
        if self.deadlines.len() > 2 * self.resting.len() + 1024 {
            self.rebuild_deadlines();
        }
    }

    /// The deadlines of the connections parked now, without those of connections gone.
    fn rebuild_deadlines(&mut self) {
        let live = (self.resting.iter()).filter(|(_, parked)| parked.wake_ms != NO_DEADLINE);
        self.deadlines = live.map(|(key, p)| Reverse((p.wake_ms, key))).collect();
    }

    /// Wakes the connections the server asked something of, or all of them after a new stage
    /// or configuration.
    fn look(&mut self) {
        let config = config_id(&self.live.config());
        if config != self.config_seen || self.live.stage() != Stage::Running {
            self.config_seen = config;
            return self.wake_all();
        }
        // A wake takes the waker out of the entry's slot: each entry is given it again before
        // it is read, so that no later request goes unheard, whatever woke the shard.
        let waker = &self.waker;
        let asked: Vec<usize> = (self.resting.iter())
            .filter(|(_, parked)| {
                parked.info().register_control(waker);
                parked.asked()
            })
            .map(|(key, _)| key)
            .collect();
        asked.into_iter().for_each(|key| self.wake(key));
    }

    /// Wakes the connections whose deadline came.
    fn wake_due(&mut self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        while let Some(&Reverse((ms, key))) = self.deadlines.peek() {
            if ms > now {
                break;
            }
            self.deadlines.pop();
            if self
                .resting
                .get(key)
                .is_some_and(|parked| parked.wake_ms == ms)
            {
                self.wake(key);
            }
        }
    }

    fn wake_all(&mut self) {
        let keys: Vec<usize> = self.resting.iter().map(|(key, _)| key).collect();
        keys.into_iter().for_each(|key| self.wake(key));
        self.deadlines.clear();
    }

    /// Turns a parked connection back into a task.
    fn wake(&mut self, key: usize) {
        let Some(parked) = self.resting.try_remove(key) else {
            return;
        };
        let fd = parked.fd();
        let _ = self
            .epoll
            .get_ref()
            .registry()
            .deregister(&mut SourceFd(&fd));
        self.metrics.parked(false);
        self.start(parked);
    }

    fn start(&self, parked: Parked) {
        if let Some(task) = parked.wake() {
            self.tracker.spawn(task);
        }
    }
}

/// Sleeps until `at` (never `None` where it is awaited).
async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    /// Every parked connection holds one slot of its shard's slab: a field added here is paid
    /// by every idle connection (`bench/idle_memory.sh`).
    #[test]
    fn a_parked_connection_stays_within_72_bytes() {
        let slot = std::mem::size_of::<slab::Slab<super::Parked>>();
        let parked = std::mem::size_of::<super::Parked>();
        let entry = std::mem::size_of::<Option<super::Parked>>();
        eprintln!("Parked: {parked} bytes, in the slab {entry}; slab {slot}");
        assert!(entry <= 72, "a parked connection takes {entry} bytes");
    }
}
