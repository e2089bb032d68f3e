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
//! accept sets anyway), after its first idle period a `getsockopt(TCP_INFO)` a second until its
//! probe was answered (one or two) and then one `setsockopt` pair (`SO_KEEPALIVE`,
//! `TCP_KEEPIDLE`), and two bytes of its registry entry (within its padding). The restorer
//! wakes once a second while some connection waits for its idle back, and looks at those
//! entries only; it sleeps while none does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Keepalive};
use crate::registry::Registry;
use crate::schedule::Heartbeat;

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

/// The heartbeat's part of a connection's schedule ([`crate::schedule`]), under `params` (the
/// configuration it was accepted under): its interval and misses, the pings sent since the
/// peer was last heard, and, until the first was sent (`pinged`), the connection's phase.
pub(crate) fn heartbeat(params: &Config, id: u64, pings_sent: u32, pinged: bool) -> Heartbeat {
    let interval = params.heartbeat_interval;
    Heartbeat {
        interval,
        misses: params.heartbeat_misses,
        pings_sent,
        early: match pinged {
            true => Duration::ZERO,
            false => first_ping_early(id, interval),
        },
    }
}

/// How much sooner than `interval` of silence connection `id` sends its first heartbeat ping:
/// from none to 90 % of the interval, spread evenly over connection numbers (the same sequence
/// as the keep-alive phases), so that connections accepted together do not ping together.
/// Only the first ping moves; the close (`heartbeat_misses` silent intervals) does not.
pub fn first_ping_early(id: u64, interval: Duration) -> Duration {
    let fraction = golden_fraction(id) as f64 / 2f64.powi(64);
    interval.mul_f64(0.9 * fraction)
}

/// `frac(k·φ)` in 64-bit fixed point: a low-discrepancy sequence, any run of it spread evenly.
fn golden_fraction(k: u64) -> u64 {
    // 2⁶⁴/φ: multiplying by it and keeping the low 64 bits is frac(k·φ) in fixed point.
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    k.wrapping_mul(GOLDEN)
}

/// The `k`-th connection's first idle, for `idle`: `1 + ⌊frac(k·φ)·idle⌋` seconds, at most
/// `idle`. `None` when that is `idle` itself.
fn first_idle(k: u64, idle: Duration) -> Option<Duration> {
    let fraction = golden_fraction(k);
    let secs = idle.as_secs();
    let first = 1 + ((u128::from(fraction) * u128::from(secs)) >> 64) as u64;
    (first < secs).then(|| Duration::from_secs(first))
}

/// Puts the idle in force (of `in_force()`, read at each look: a reload may change it) back on
/// every connection whose first probe was answered ([`first_probe_answered`]). Until `stop`.
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
            // The registry read and system calls per waiting entry: off the runtime's workers.
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

/// Whether the first probe of a connection silent for `silence`, with first idle `first`, has
/// had its answer, so that putting the idle back re-arms the timer from that answer and keeps
/// the phase. Put back too early, the timer re-arms from the last segment before the probe, and
/// the connection falls back into the burst it was accepted in: a timer fires up to one wheel
/// bucket late (2 s for 30 s at HZ 250), and a probe may be lost and sent again an interval
/// later. So: an ACK arrived at or after the probe was due ([`crate::sockopt::probe_answered`]);
/// where `TCP_INFO` is not read, the wheel's lateness and `answer_time` more.
fn first_probe_answered(
    silence: Duration,
    first: Duration,
    answer_time: Duration,
    socket: &socket2::SockRef<'_>,
) -> bool {
    if silence < first {
        return false;
    }
    crate::sockopt::probe_answered(socket, silence, first)
        .unwrap_or_else(|| silence >= first + wheel_bucket(first) + answer_time)
}

/// One look: restores what is due, and says how many connections still wait.
fn restore_due(registry: &Registry, idle: Duration, answer_time: Duration) -> usize {
    let now = Instant::now();
    let entries = registry.entries_where(|entry| entry.keepalive_first_idle().is_some());
    let mut waiting = 0;
    let params = socket2::TcpKeepalive::new().with_time(idle);
    registry.with_sockets(&entries, |entry, socket| {
        let Some(first) = entry.keepalive_first_idle() else {
            return;
        };
        if !first_probe_answered(entry.idle_in_at(now), first, answer_time, &socket) {
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

/// The kernel tick rates in common use: what [`wheel_bucket`] assumes when it cannot know.
const COMMON_HZ: [u64; 4] = [100, 250, 300, 1000];

/// The widest timer-wheel bucket a timer `delay` ahead falls in, over the common tick rates.
/// Every timer of a bucket fires in one softirq run: Linux's wheel has levels of 64 buckets,
/// each level 8 times coarser than the one below, and a timer is put in the first level whose
/// range holds its delay, rounded up to that level's bucket (`kernel/time/timer.c`). A 30 s
/// timer sits in 2.048 s buckets at HZ 250.
pub fn wheel_bucket(delay: Duration) -> Duration {
    COMMON_HZ
        .iter()
        .map(|&hz| {
            let ticks = (delay.as_secs_f64() * hz as f64).ceil() as u64;
            // Level n starts at 63 · 8ⁿ⁻¹ ticks and has buckets of 8ⁿ ticks.
            let mut level = 0;
            while level < 8 && ticks >= 63 << (3 * level) {
                level += 1;
            }
            Duration::from_secs_f64((1u64 << (3 * level)) as f64 / hz as f64)
        })
        .max()
        .unwrap_or(Duration::ZERO)
}

/// Healthy idle connections whose keep-alive probes one CPU's receive backlog
/// (`net.core.netdev_max_backlog` packets, on loopback and veth) takes without a drop: with
/// `spread`, a bucket of the wheel holds `bucket / idle` of the connections; without, the
/// connections accepted within one bucket all probe in it, so at most the backlog itself.
pub fn backlog_carries(netdev_max_backlog: u64, idle: Duration, spread: bool) -> u64 {
    (netdev_max_backlog as f64 / share_per_bucket(idle, spread)) as u64
}

/// The `net.core.netdev_max_backlog` that carries `connections` ([`backlog_carries`]).
pub fn backlog_needed(connections: u64, idle: Duration, spread: bool) -> u64 {
    (connections as f64 * share_per_bucket(idle, spread)).ceil() as u64
}

/// The share of the connections whose probes one wheel bucket fires together: `bucket / idle`
/// when phases spread them, all of them when not.
fn share_per_bucket(idle: Duration, spread: bool) -> f64 {
    if !spread || idle < MIN_SPREAD_IDLE {
        return 1.0;
    }
    (wheel_bucket(idle).as_secs_f64() / idle.as_secs_f64()).min(1.0)
}

/// The warning `serve` logs at start and `doctor` shows when `max_connections` is more than
/// the backlog carries ([`backlog_carries`]); `None` when it is not.
pub fn backlog_warning(
    netdev_max_backlog: u64,
    max_connections: u64,
    idle: Duration,
    spread: bool,
) -> Option<String> {
    let carries = backlog_carries(netdev_max_backlog, idle, spread);
    (max_connections > carries).then(|| {
        let why = if spread && idle >= MIN_SPREAD_IDLE {
            format!(
                "keepalive_idle {}s spread: the kernel fires the timers of one {} ms wheel bucket at once",
                idle.as_secs(),
                wheel_bucket(idle).as_millis()
            )
        } else {
            "keepalive_spread off: connections accepted together probe together".to_owned()
        };
        format!(
            "max_connections {max_connections} is above the {carries} idle connections whose keep-alive probes net.core.netdev_max_backlog = {netdev_max_backlog} carries ({why}): with peers on loopback or veth (containers, sidecars), probes beyond it are dropped and retried keepalive_interval later, and a split with few probes closes healthy peers (docs/OPERATIONS.md); net.core.netdev_max_backlog = {} carries {max_connections}",
            backlog_needed(max_connections, idle, spread),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fall_in_the_buckets_of_the_kernel_wheel() {
        // HZ 250: 30 s is 7,500 ticks, level 3 (4,032 to 32,255 ticks), 512-tick buckets.
        assert_eq!(
            wheel_bucket(Duration::from_secs(30)),
            Duration::from_millis(2048)
        );
        // 1 s: at HZ 100, 100 ticks, level 1 (63 to 503), 8-tick buckets = 80 ms; at HZ 250,
        // 250 ticks, level 1, 32 ms; the widest is 80 ms.
        assert_eq!(
            wheel_bucket(Duration::from_secs(1)),
            Duration::from_millis(80)
        );
        let idle = Duration::from_secs(30);
        assert_eq!(backlog_carries(1000, idle, true), 14_648);
        assert_eq!(backlog_carries(1000, idle, false), 1000);
        assert_eq!(backlog_needed(15_000, idle, true), 1024);
        assert!(backlog_carries(backlog_needed(15_000, idle, true), idle, true) >= 15_000);
    }

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
