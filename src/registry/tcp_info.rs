//! The live connections' descriptors: `TCP_INFO` read under the map's read lock a chunk of
//! entries at a time, on up to [`TCP_INFO_THREADS`] threads (and the scrape that sums it), and
//! sockets lent under the same lock (the keep-alive phase's restorer). Apart from the map
//! because it holds the one contract that makes a borrowed descriptor safe: an entry's
//! descriptor is set to -1 under the write lock before its socket closes, and used only under
//! the read lock.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[cfg(doc)]
use super::ConnGuard;
use super::{ConnInfo, Registry, SharedInfo};
use crate::close_reason::CloseReason;
#[cfg(doc)]
use crate::metrics::Metrics;
use crate::metrics::Scrape;
use crate::sockopt::TcpInfo;

/// Entries whose `TCP_INFO` is read per hold of the map's lock: under a millisecond of work.
pub const TCP_INFO_CHUNK: usize = 512;

/// Most threads that read `TCP_INFO` for one request (fewer on a machine with fewer cores).
const TCP_INFO_THREADS: usize = 4;

impl Registry {
    /// `TCP_INFO` of each of `entries` still live, in the same order; a connection that closed
    /// meanwhile has `None`. A system call per connection, spread over up to
    /// [`TCP_INFO_THREADS`] threads for long lists: call it off the runtime's worker threads
    /// (`spawn_blocking`).
    pub(crate) fn tcp_info_of(&self, entries: &[SharedInfo]) -> Vec<Option<TcpInfo>> {
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
    fn tcp_info_serial(&self, entries: &[SharedInfo]) -> Vec<Option<TcpInfo>> {
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
        entries: &[SharedInfo],
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

    /// Stops the registry from using `info`'s descriptor (see [`ConnGuard::release_socket`]).
    pub(crate) fn release_socket(&self, info: &ConnInfo) {
        self.replace_socket(info, -1);
    }

    /// Makes the entry name `fd` once no reader uses the descriptor it named.
    pub(crate) fn replace_socket(&self, info: &ConnInfo, fd: i32) {
        let _held = self.conns_mut();
        info.fd.store(fd, Ordering::Relaxed);
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
            keepalive_storms: self.storm_watch().storms(),
            buffered: self.buffered_total(),
            flapping_clients: self.flapping().1.len(),
            queue,
        }
    }
}

impl ConnInfo {
    /// Reads the socket's `TCP_INFO`. The caller holds the map's lock (read or write): the
    /// descriptor becomes -1 under the write lock as the entry leaves the map or lets go of it
    /// ([`ConnGuard::release_socket`]), before the socket closes, so a descriptor seen here is
    /// still this connection's.
    fn tcp_info(&self) -> Option<TcpInfo> {
        read_tcp_info(self.fd.load(Ordering::Relaxed))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
