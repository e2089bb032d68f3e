//! What the connections share with the server and its reloads: the shutdown stage, the
//! configuration in force, the partial-object budget and the client tokens ([`Live`], for every
//! connection), and what those accepted under one configuration keep ([`ConnShared`]).

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::ClientTokens;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pressure::{Budgeted, BufferBudget};
use crate::registry::Registry;
use crate::sockopt::SocketOptions;

/// The server's lifecycle as connections see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Stage {
    Running = 0,
    /// First stage of shutdown: take no more items (what already arrived is still queued).
    StopReading = 1,
    /// Second stage: close now, after a brief flush.
    Close = 2,
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
}

impl Live {
    pub fn new(config: Config) -> Live {
        Live {
            stage: AtomicU8::new(Stage::Running as u8),
            config: ArcSwap::from_pointee(config),
            options_changes: AtomicU32::new(0),
            buffers: BufferBudget::default(),
            tokens: ClientTokens::default(),
        }
    }

    /// Moves to `stage`; the caller then wakes every connection (`Registry::wake_all`).
    pub fn enter(&self, stage: Stage) {
        self.stage.fetch_max(stage as u8, Ordering::AcqRel);
    }

    pub(super) fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Acquire) {
            0 => Stage::Running,
            1 => Stage::StopReading,
            _ => Stage::Close,
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

    pub(super) fn options_changes(&self) -> u32 {
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
