//! Probe storms, noticed when they happen: keep-alive closes in a burst while the kernel
//! drops received packets.
//!
//! A dead peer is closed as `keepalive_timeout`; so is a healthy one whose probes (or their
//! answers) were dropped. On loopback and veth each probe crosses a CPU's receive backlog
//! (`net.core.netdev_max_backlog` packets), and what does not fit is dropped and counted in
//! `/proc/net/softnet_stat`. A burst of keep-alive closes alone is what a switch failure
//! looks like; the same burst while that counter rose is the server's own probes killing live
//! connections. [`StormWatch`] tells the two apart: the server samples the drop counter every
//! few seconds ([`StormWatch::sample`]), and the registry reports each keep-alive close
//! ([`StormWatch::keepalive_closed`]); the close that makes a burst compares the counter now
//! with its value one keep-alive bound ago.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keep-alive closes within one [`WINDOW`] that make a burst.
pub const BURST: u32 = 10;
/// The window a burst is counted in.
pub const WINDOW: Duration = Duration::from_secs(2);
/// How often the server samples the drop counter.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: enough to look back one keep-alive bound of up to 10 minutes.
const SAMPLES_KEPT: usize = 120;
/// At most one warning in this long; every storm is counted.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A burst of keep-alive closes while the kernel dropped received packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storm {
    /// Packets the kernel dropped on receive over the look-back.
    pub dropped: u64,
    /// How far back `dropped` counts.
    pub over: Duration,
    /// Whether to log it (at most once per minute).
    pub warn: bool,
}

/// Drop-counter samples, oldest first, and when the last warning was logged.
#[derive(Debug, Default)]
struct Samples {
    taken: VecDeque<(Instant, u64)>,
    last_warned: Option<Instant>,
}

/// Watches for probe storms; see the module.
#[derive(Debug)]
pub struct StormWatch {
    started: Instant,
    /// The window the closes below were counted in (`WINDOW`s since `started`).
    window: AtomicU64,
    closes: AtomicU32,
    storms: AtomicU64,
    /// The keep-alive bound in force, milliseconds: how far back drops count.
    bound_ms: AtomicU64,
    samples: Mutex<Samples>,
}

impl Default for StormWatch {
    fn default() -> Self {
        StormWatch {
            started: Instant::now(),
            window: AtomicU64::new(0),
            closes: AtomicU32::new(0),
            storms: AtomicU64::new(0),
            bound_ms: AtomicU64::new(60_000),
            samples: Mutex::new(Samples::default()),
        }
    }
}

impl StormWatch {
    /// Probe storms seen since start.
    pub fn storms(&self) -> u64 {
        self.storms.load(Ordering::Relaxed)
    }

    /// Follows the keep-alive bound in force (at start and at each reload).
    pub fn set_bound(&self, bound: Duration) {
        self.bound_ms
            .store(bound.as_millis() as u64, Ordering::Relaxed);
    }

    /// Takes a sample of the kernel's receive drops (nothing where they cannot be read).
    pub fn sample(&self) {
        if let Some(dropped) = softnet_dropped() {
            self.record_sample(Instant::now(), dropped);
        }
    }

    fn record_sample(&self, at: Instant, dropped: u64) {
        let mut guard = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let taken = &mut guard.taken;
        taken.push_back((at, dropped));
        while taken.len() > SAMPLES_KEPT {
            taken.pop_front();
        }
    }

    /// Counts one keep-alive close at `now`; the close that makes a burst, if the kernel
    /// dropped packets within the keep-alive bound before (the drops that closed a peer
    /// happened within it), is a storm.
    pub fn keepalive_closed(&self, now: Instant) -> Option<Storm> {
        let bound = Duration::from_millis(self.bound_ms.load(Ordering::Relaxed));
        self.keepalive_closed_with(now, bound, softnet_dropped)
    }

    fn keepalive_closed_with(
        &self,
        now: Instant,
        bound: Duration,
        dropped_now: impl FnOnce() -> Option<u64>,
    ) -> Option<Storm> {
        let window =
            (now.saturating_duration_since(self.started).as_millis() / WINDOW.as_millis()) as u64;
        if self.window.swap(window, Ordering::Relaxed) != window {
            self.closes.store(0, Ordering::Relaxed);
        }
        // Exactly one close per window makes the burst.
        if self.closes.fetch_add(1, Ordering::Relaxed) + 1 != BURST {
            return None;
        }
        let dropped = dropped_now()?;
        let mut guard = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let Samples { taken, last_warned } = &mut *guard;
        // The oldest sample within twice the bound: the drops that closed these peers came
        // at most one bound before their closes.
        let since = now.checked_sub(bound * 2).unwrap_or(self.started);
        let &(at, before) = taken.iter().find(|(at, _)| *at >= since)?;
        if dropped <= before {
            return None;
        }
        self.storms.fetch_add(1, Ordering::Relaxed);
        let warn = last_warned.is_none_or(|last| now.duration_since(last) >= WARN_EVERY);
        if warn {
            *last_warned = Some(now);
        }
        Some(Storm {
            dropped: dropped - before,
            over: now.saturating_duration_since(at),
            warn,
        })
    }
}

/// Packets the kernel dropped on receive, summed over CPUs: the second column of
/// `/proc/net/softnet_stat` (hexadecimal), one line per CPU.
pub fn softnet_dropped() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").ok()?;
    parse_softnet_dropped(&text)
}

fn parse_softnet_dropped(text: &str) -> Option<u64> {
    text.lines()
        .map(|line| {
            let column = line.split_whitespace().nth(1)?;
            u64::from_str_radix(column, 16).ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_column_is_summed_over_cpus() {
        let text = "0012a3f1 00000010 00000002 00000000\n00003bc2 0000000a 00000000 00000000\n";
        assert_eq!(parse_softnet_dropped(text), Some(0x10 + 0x0a));
        assert_eq!(parse_softnet_dropped("garbage\n"), None);
    }

    #[test]
    fn a_burst_is_a_storm_only_while_drops_rose() {
        let watch = StormWatch::default();
        let t0 = watch.started;
        let bound = Duration::from_secs(60);
        watch.record_sample(t0, 100);
        let at = t0 + Duration::from_secs(30);
        // Drops unchanged: a burst of real dead peers is no storm.
        for _ in 0..BURST + 5 {
            assert_eq!(watch.keepalive_closed_with(at, bound, || Some(100)), None);
        }
        // The next window's burst, with drops risen: one storm, warned.
        let at = at + WINDOW;
        let mut storms = Vec::new();
        for _ in 0..BURST + 5 {
            storms.extend(watch.keepalive_closed_with(at, bound, || Some(150)));
        }
        assert_eq!(storms.len(), 1, "{storms:?}");
        assert_eq!(storms[0].dropped, 50);
        assert!(storms[0].warn);
        // Another soon after is counted, not warned again.
        let at = at + WINDOW;
        let again: Vec<_> = (0..BURST)
            .filter_map(|_| watch.keepalive_closed_with(at, bound, || Some(200)))
            .collect();
        assert_eq!(again.len(), 1);
        assert!(!again[0].warn);
        assert_eq!(watch.storms(), 2);
        // Fewer than a burst: nothing.
        let at = at + WINDOW;
        for _ in 0..BURST - 1 {
            assert_eq!(watch.keepalive_closed_with(at, bound, || Some(999)), None);
        }
    }
}
