//! What the connections share with the server and its reloads: the shutdown stage, the
//! configuration in force, the partial-object budget and the client tokens ([`Live`], for every
//! connection), and what those accepted under one configuration keep ([`ConnShared`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
#[cfg(target_os = "linux")]
use std::sync::Mutex;
#[cfg(target_os = "linux")]
use std::sync::OnceLock;

use arc_swap::ArcSwap;
#[cfg(target_os = "linux")]
use tokio::sync::mpsc;

#[cfg(target_os = "linux")]
use super::Departed;

use crate::auth::ClientTokens;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pressure::{Budgeted, BufferBudget};
use crate::registry::{ConnInfo, Registry};
use crate::sockopt::SocketOptions;

/// The socket options a live connection is given again after a reload changed them: those of
/// `live`, but a keep-alive phase not yet put back stays, so that the reload does not line the
/// probes up again.
pub(crate) fn reloaded_options(live: &Config, info: &ConnInfo) -> SocketOptions {
    let mut options = SocketOptions::from_config(live);
    if let Some(first) = info.keepalive_first_idle() {
        options.keepalive.idle = first.min(options.keepalive.idle);
    }
    options
}

/// One of the `max_connections` places, held by a connection until it ends
/// (by its task, or while it is parked).
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A place when fewer than `limit` are taken.
    pub(crate) fn take(taken: &Arc<AtomicUsize>, limit: usize) -> Option<Slot> {
        taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(taken)))
    }
}

impl Slot {
    /// A place whatever the limit (a connection already live, handed over by an upgrade).
    #[cfg(any(target_os = "linux", test))]
    pub(crate) fn force(taken: &Arc<AtomicUsize>) -> Slot {
        taken.fetch_add(1, Ordering::AcqRel);
        Slot(Arc::clone(taken))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The server's lifecycle as connections see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Stage {
    Running = 0,
    /// An upgrade: the connections that can move stop reading (what already arrived is still
    /// queued), take their replies and leave for the new process ([`Live::hand_over`]).
    HandOver = 1,
    /// First stage of shutdown: take no new work (what already arrived is still queued); a
    /// handler of the liveness layer is told [`crate::liveness::Signal::Drain`].
    Draining = 2,
    /// Second stage: every connection is asked to close (reason `shutdown`), after a brief
    /// flush.
    Closing = 3,
}

/// What every connection reads live, whichever configuration it was accepted under: the
/// shutdown stage, and the configuration in force, which a reload replaces
/// ([`crate::reload::Reloader`]).
pub(crate) struct Live {
    stage: AtomicU8,
    config: ArcSwap<Config>,
    /// Reloads that changed the socket options: a connection that sees the count change sets
    /// them again on its socket (a reload that changed none costs no system call).
    options_changes: AtomicU32,
    /// The partial objects held across every connection, against `max_buffered`.
    pub buffers: BufferBudget,
    /// The client tokens in force (`auth_tokens`), read again at every reload.
    pub tokens: ClientTokens,
    /// Where connections leaving for a new process go, during an upgrade that moves them.
    #[cfg(target_os = "linux")]
    departures: Mutex<Option<mpsc::UnboundedSender<Departed>>>,
    /// True while `departures` is set: read at every turn of a connection's loop during the
    /// hand-over, without the lock.
    moving: AtomicBool,
    /// Connections that saw the hand-over and cannot move (TLS), still live: the hand-over is
    /// over when only they are left.
    staying: AtomicUsize,
    /// Where idle connections park ([`super::park`]), once the server started it.
    #[cfg(target_os = "linux")]
    parking: OnceLock<super::park::Parking>,
}

impl Live {
    pub fn new(config: Config) -> Live {
        Live {
            stage: AtomicU8::new(Stage::Running as u8),
            config: ArcSwap::from_pointee(config),
            options_changes: AtomicU32::new(0),
            buffers: BufferBudget::default(),
            tokens: ClientTokens::default(),
            #[cfg(target_os = "linux")]
            departures: Mutex::new(None),
            moving: AtomicBool::new(false),
            staying: AtomicUsize::new(0),
            #[cfg(target_os = "linux")]
            parking: OnceLock::new(),
        }
    }

    /// No connection leaves from now on; the channel of departures ends with the ones that left.
    #[cfg(target_os = "linux")]
    pub fn stop_moving(&self) {
        self.moving.store(false, Ordering::Release);
        self.departures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Connections live that cannot move to the new process.
    #[cfg(target_os = "linux")]
    pub fn staying(&self) -> usize {
        self.staying.load(Ordering::Acquire)
    }

    /// Counts a connection that cannot move in, or (`false`) out as it ends.
    pub(crate) fn count_staying(&self, stays: bool) {
        match stays {
            true => self.staying.fetch_add(1, Ordering::AcqRel),
            false => self.staying.fetch_sub(1, Ordering::AcqRel),
        };
    }

    #[cfg(target_os = "linux")]
    /// Connections that leave from now on go to `departures`; the caller then enters
    /// [`Stage::HandOver`] and wakes every connection.
    pub fn move_connections_to(&self, departures: mpsc::UnboundedSender<Departed>) {
        *self.departures.lock().unwrap_or_else(|e| e.into_inner()) = Some(departures);
        self.moving.store(true, Ordering::Release);
    }

    /// True while connections that can move leave for a new process.
    pub(super) fn moving(&self) -> bool {
        self.moving.load(Ordering::Acquire)
    }

    #[cfg(target_os = "linux")]
    /// Gives a departed connection to the hand-over. False when the hand-over is over
    /// already: the connection's copy of its socket is closed, and the caller closes it.
    pub(super) fn hand_over(&self, departed: Departed) -> bool {
        let departures = self.departures.lock().unwrap_or_else(|e| e.into_inner());
        departures
            .as_ref()
            .is_some_and(|departures| departures.send(departed).is_ok())
    }

    /// Moves to `stage`; the caller then wakes every connection (`Registry::wake_all`). The
    /// parked connections' shards are told here: they wake every connection they hold, and end
    /// once none is left (a shard with none would not hear of the stage otherwise).
    pub fn enter(&self, stage: Stage) {
        self.stage.fetch_max(stage as u8, Ordering::AcqRel);
        #[cfg(target_os = "linux")]
        if let Some(parking) = self.parking.get() {
            parking.look_again();
        }
    }

    /// Lets idle connections park from now on (`park_after`), watched by `parking`.
    #[cfg(target_os = "linux")]
    pub(crate) fn start_parking(&self, parking: super::park::Parking) {
        let _ = self.parking.set(parking);
    }

    /// Where idle connections park, once the server started it.
    #[cfg(target_os = "linux")]
    pub(super) fn parking(&self) -> Option<&super::park::Parking> {
        self.parking.get()
    }

    pub(crate) fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Acquire) {
            0 => Stage::Running,
            1 => Stage::HandOver,
            2 => Stage::Draining,
            _ => Stage::Closing,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Puts `config` in force; the caller then wakes every connection, so that each re-arms
    /// its deadlines and, if they changed, sets the socket options again. The count of socket
    /// option changes, this one included.
    pub fn replace(&self, config: Config) -> u32 {
        let options = SocketOptions::from_config(&config);
        let old = self.config.swap(Arc::new(config));
        if SocketOptions::from_config(&old) == options {
            self.options_changes()
        } else {
            self.options_changes.fetch_add(1, Ordering::AcqRel) + 1
        }
    }

    pub(crate) fn options_changes(&self) -> u32 {
        self.options_changes.load(Ordering::Acquire)
    }
}

/// What the connections accepted under one configuration share. A reload makes a new one for
/// the connections accepted after it, and the older ones keep theirs: their `hello` announced
/// its heartbeat and frame limit, and a client relies on what it was told. What applies to
/// every connection at once is read from [`Live`]: the deadlines (write, idle, age), the error
/// budget and the socket options.
pub(crate) struct ConnShared {
    /// The configuration in force when these connections were accepted.
    pub params: Config,
    /// The count of socket option changes when `params` was put in force: a connection whose
    /// socket got its options from `params` sets them again when [`Live`] has counted more.
    pub options_changes: u32,
    pub metrics: Arc<Metrics>,
    pub live: Arc<Live>,
    /// Every live connection: the memory-pressure relief picks the largest holders in it.
    pub registry: Registry,
}

impl ConnShared {
    /// The first generation, for a server that has not reloaded yet.
    pub fn first(params: Config, metrics: Arc<Metrics>, registry: Registry) -> ConnShared {
        ConnShared {
            registry,
            live: Arc::new(Live::new(params.clone())),
            params,
            options_changes: 0,
            metrics,
        }
    }
}

impl Budgeted for Live {
    fn budget(&self) -> &BufferBudget {
        &self.buffers
    }

    fn limit(&self) -> Option<u64> {
        self.config().max_buffered
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Connections set their socket options again only after a reload that changed them.
    #[test]
    fn only_a_change_of_socket_options_is_counted() {
        let live = Live::new(Config::default());
        let heartbeat_only = Config {
            heartbeat_interval: Duration::from_secs(5),
            ..Config::default()
        };
        assert_eq!(live.replace(heartbeat_only.clone()), 0);
        assert_eq!(live.config().heartbeat_interval, Duration::from_secs(5));
        let keepalive = Config {
            keepalive: crate::config::Keepalive {
                idle: Duration::from_secs(7),
                ..heartbeat_only.keepalive
            },
            ..heartbeat_only
        };
        assert_eq!(live.replace(keepalive.clone()), 1);
        assert_eq!(live.replace(keepalive), 1);
    }
}
