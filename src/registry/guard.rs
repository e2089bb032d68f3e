//! The guard that owns a connection's entry: its `Drop` removes the entry and records the
//! close, so that every exit (a return, an error, a panic, a cancelled task) leaves the map
//! clean. Apart from the map because it is the one writer of an entry's departure, whatever
//! the path: a close recorded, or a connection handed over to another process.

use std::sync::atomic::Ordering;

use super::{lock, ClosedConn, Registry, SharedInfo};
use crate::close_reason::CloseReason;

/// Owns a connection's registry entry; removes it and records the close when dropped.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    registry: Registry,
    info: SharedInfo,
    reason: Option<CloseReason>,
    /// The connection went on in another process: the entry leaves the map, no close is
    /// recorded.
    handed_over: bool,
    /// The connection parked ([`ConnGuard::set_aside`]): the entry stays, kept by the parked
    /// connection until [`ConnGuard::resumed`] makes its guard again.
    set_aside: bool,
}

impl ConnGuard {
    /// The guard of `info`, just put in `registry`'s map.
    pub(super) fn new(registry: Registry, info: SharedInfo) -> ConnGuard {
        ConnGuard {
            registry,
            info,
            reason: None,
            handed_over: false,
            set_aside: false,
        }
    }

    /// The entry alone, for a connection that parks: its registry is the connection's own, so
    /// a parked connection keeps 8 bytes where the guard takes 24 (every byte of a parked
    /// connection is paid per idle connection). The entry stays in the map; whoever holds it
    /// makes the guard again with [`ConnGuard::resumed`], which removes it in the end.
    #[cfg(target_os = "linux")]
    pub(crate) fn set_aside(mut self) -> SharedInfo {
        self.set_aside = true;
        SharedInfo::clone(&self.info)
    }

    /// The guard of an entry [set aside](ConnGuard::set_aside), in the registry it is in.
    #[cfg(target_os = "linux")]
    pub(crate) fn resumed(registry: Registry, info: SharedInfo) -> ConnGuard {
        ConnGuard::new(registry, info)
    }

    /// Lets the registry read the connection's `TCP_INFO` (keep-alive probes, RTT) through its
    /// descriptor.
    #[cfg(unix)]
    pub(crate) fn set_socket(&self, socket: &impl std::os::fd::AsRawFd) {
        self.info.fd.store(socket.as_raw_fd(), Ordering::Relaxed);
    }

    /// Stops the registry from using the socket's descriptor (`TCP_INFO`, the keep-alive phase's
    /// restorer) while the entry stays listed: for a socket that closes, or leaves the process,
    /// before its entry goes (a connection handed over to another process is listed until the
    /// hand-over has it). Under the write lock, so that a reader holding the read lock is done
    /// with the descriptor when this returns.
    #[cfg(target_os = "linux")]
    pub(crate) fn release_socket(&self) {
        self.registry.release_socket(&self.info);
    }

    /// Names another descriptor of the same socket (a parked connection's copy), under the
    /// write lock like [`ConnGuard::release_socket`]: the old one may close once this returns.
    #[cfg(target_os = "linux")]
    pub(crate) fn replace_socket(&self, socket: &impl std::os::fd::AsRawFd) {
        self.registry.replace_socket(&self.info, socket.as_raw_fd());
    }

    /// The entry, for the connection's own counters.
    pub(crate) fn info(&self) -> &SharedInfo {
        &self.info
    }

    /// Removes the entry and records the close with `reason`, now. A guard dropped without
    /// this records `internal_error` during a panic, and `shutdown` otherwise (the runtime
    /// dropped the connection's task: the server's runtime is going away).
    pub(crate) fn close(mut self, reason: CloseReason) {
        self.reason = Some(reason);
    }

    /// What the entry carries to another process ([`Registry::adopt`] there).
    #[cfg(target_os = "linux")]
    pub(crate) fn carried(&self) -> super::Carried {
        let mut carried = self.info.carried(std::time::Instant::now());
        carried.auth_name = self
            .registry
            .auth_name(&self.info)
            .map(|name| name.to_string());
        carried
    }

    /// Removes the entry without recording a close: the connection went on in another
    /// process, with what [`ConnGuard::carried`] gave.
    #[cfg(target_os = "linux")]
    pub(crate) fn hand_over(mut self) {
        self.handed_over = true;
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.set_aside {
            return;
        }
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
                lock(&self.registry.shared.identities).remove(self.info.id);
            }
            self.registry
                .shared
                .handed_over
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let snapshot = self.info.snapshot();
        let identity = match self.info.named.load(Ordering::Acquire) {
            true => lock(&self.registry.shared.identities).remove(self.info.id),
            false => Default::default(),
        };
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
            auth_name: identity.auth_name,
            client_id: identity.client_id,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::addr;

    #[test]
    fn guard_drop_removes_entry_and_counts_reason() {
        let registry = Registry::new();
        let mut events = registry.subscribe();
        let guard = registry.insert(addr(1), addr(2));
        let id = guard.info().id;
        assert_eq!(registry.len(), 1);
        assert!(registry.get(id).is_some());
        guard.close(CloseReason::IdleTimeout);
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
}
