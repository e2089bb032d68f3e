//! Keep-alive phases: connections accepted together do not probe together.
//!
//! The kernel sends a connection's first keep-alive probe `keepalive_idle` after the last
//! segment it received, and each next one `keepalive_idle` after the previous answer, so
//! connections accepted in one burst (after a restart, a network blip, a deploy of the clients)
//! probe in one burst for as long as they live. Thousands of probes and their answers in one
//! instant overflow the per-CPU backlog on loopback and veth (`net.core.netdev_max_backlog`,
//! 1000 by default): the probes are dropped, and healthy peers are closed as
//! `keepalive_timeout` (`bench/keepalive_burst.sh`).
//!
//! So each accepted socket gets a shorter first idle: `keepalive_idle` less a phase, spread
//! evenly over the idle period by a low-discrepancy sequence (the `k`-th connection's phase is
//! the fractional part of `k` times the golden ratio, so any burst, of any size, is spread
//! evenly). Once the first probe has had its answer, [`restore`] puts the idle in force back:
//! `TCP_KEEPIDLE` set on a live socket re-arms its timer from the last segment received, which
//! is that answer, so the connection keeps its phase from then on and probes once per idle
//! period like any other. Probes only ever come earlier than the configured idle, never later:
//! every bound still holds.
//!
//! The cost, per connection: no system call more at accept (the shortened idle is the one the
//! accept sets anyway), one `setsockopt` pair (`SO_KEEPALIVE`, `TCP_KEEPIDLE`) once, a little
//! after its first idle period, and two bytes of its registry entry (within its padding). The
//! restorer wakes once a second while some connection waits for its idle back, and reads every
//! live entry then; it sleeps while none does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Keepalive;
use crate::registry::Registry;

/// Below this idle, no phase: the kernel counts `TCP_KEEPIDLE` in whole seconds.
const MIN_SPREAD_IDLE: Duration = Duration::from_secs(2);

/// How often the restorer looks, while some connection waits for its idle back.
const RESTORE_EVERY: Duration = Duration::from_secs(1);

/// The phases of the connections a server accepts.
#[derive(Debug, Default)]
pub(crate) struct Phases {
    /// Connections given a phase so far: the index into the sequence.
    given: AtomicU64,
    /// Wakes [`restore`] when a connection waits for its idle back.
    pending: Notify,
}

impl Phases {
    /// The first keep-alive idle of the next accepted connection, for `idle` in force: from 1 s
    /// to `idle`, in whole seconds, spread evenly. `None` when the connection keeps `idle`
    /// (an idle too short to spread, or the phase that falls on it).
    pub fn next_first_idle(&self, idle: Duration) -> Option<Duration> {
        // Off Unix the registry keeps no descriptor to put the idle back through.
        if idle < MIN_SPREAD_IDLE || cfg!(not(unix)) {
            return None;
        }
        let k = self.given.fetch_add(1, Ordering::Relaxed);
        first_idle(k, idle)
    }

    /// Says that a connection was given a shortened first idle: [`restore`] looks for it.
    pub fn given(&self) {
        self.pending.notify_one();
    }
}

/// The `k`-th connection's first idle, for `idle`: `1 + ⌊frac(k·φ)·idle⌋` seconds, at most
/// `idle`. `None` when that is `idle` itself.
fn first_idle(k: u64, idle: Duration) -> Option<Duration> {
    // 2⁶⁴/φ: multiplying by it and keeping the low 64 bits is frac(k·φ) in fixed point.
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let fraction = k.wrapping_mul(GOLDEN);
    let secs = idle.as_secs();
    let first = 1 + ((u128::from(fraction) * u128::from(secs)) >> 64) as u64;
    (first < secs).then(|| Duration::from_secs(first))
}

/// Puts the idle in force (of `in_force()`, read at each look: a reload may change it) back on
/// every connection whose first probe has had the time to be answered: silent for its first
/// idle and half the probe interval more. Until `stop`.
pub(crate) async fn restore(
    phases: Arc<Phases>,
    registry: Registry,
    in_force: impl Fn() -> Keepalive + Send + Sync + 'static,
    stop: CancellationToken,
) {
    let in_force = Arc::new(in_force);
    loop {
        tokio::select! {
            _ = phases.pending.notified() => {}
            _ = stop.cancelled() => return,
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RESTORE_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            let (registry, in_force) = (registry.clone(), Arc::clone(&in_force));
            // Every entry read, and a system call per restore: off the runtime's workers.
            let waiting = tokio::task::spawn_blocking(move || {
                let keepalive = in_force();
                restore_due(&registry, keepalive.idle, keepalive.interval / 2)
            })
            .await
            .unwrap_or(0);
            if waiting == 0 {
                break;
            }
        }
    }
}

/// One look: restores what is due, and says how many connections still wait.
fn restore_due(registry: &Registry, idle: Duration, answer_time: Duration) -> usize {
    let now = Instant::now();
    let mut entries = registry.entries();
    entries.retain(|entry| entry.keepalive_first_idle().is_some());
    let mut waiting = 0;
    let params = socket2::TcpKeepalive::new().with_time(idle);
    registry.with_sockets(&entries, |entry, socket| {
        let Some(first) = entry.keepalive_first_idle() else {
            return;
        };
        if entry.idle_in_at(now) < first + answer_time {
            waiting += 1;
            return;
        }
        if let Err(error) = socket.set_tcp_keepalive(&params) {
            // The connection keeps its shorter idle: it probes more often, its bound holds.
            tracing::debug!(conn_id = entry.id, error = %error, "cannot put the keep-alive idle back");
        }
        entry.set_keepalive_first_idle(None);
    });
    waiting
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any burst is spread evenly: the first n connections' first idles fill every second of
    /// the idle period about equally, and none is later than the idle.
    #[test]
    fn a_burst_of_any_size_is_spread_evenly_over_the_idle_period() {
        let idle = Duration::from_secs(30);
        for n in [30u64, 100, 1000, 15_000] {
            let mut per_second = [0u64; 31];
            for k in 0..n {
                let first = first_idle(k, idle).unwrap_or(idle);
                assert!(first >= Duration::from_secs(1) && first <= idle);
                per_second[first.as_secs() as usize] += 1;
            }
            let expected = n as f64 / 30.0;
            let most = *per_second.iter().max().expect("seconds") as f64;
            assert!(
                most <= expected * 1.5 + 1.0,
                "{n} connections: {most} share one second, {expected:.1} expected: {per_second:?}"
            );
        }
    }

    #[test]
    fn an_idle_too_short_to_spread_is_kept() {
        let phases = Phases::default();
        assert_eq!(phases.next_first_idle(Duration::from_secs(1)), None);
        assert_eq!(
            first_idle(0, Duration::from_secs(30)),
            Some(Duration::from_secs(1))
        );
    }
}
