//! A histogram of fixed buckets held in atomic counters, for observations on the per-item path.
//!
//! The exporter's histograms queue every sample (a lock-free push through an epoch-based
//! allocator) until upkeep folds them into buckets: about 250 instructions per sample here,
//! measured with `bench/item_instructions.sh` and `FLOOD_ARGS=--ack`, over 4 % of an
//! acknowledged item's cost. An observation here is a bucket search and two atomic adds. The
//! histogram renders itself in the Prometheus text format, after the exporter's output.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A Prometheus histogram of durations, in seconds.
pub struct AtomicHistogram {
    name: String,
    help: &'static str,
    /// Upper bounds, seconds, ascending, as rendered in `le`.
    bounds: Box<[f64]>,
    /// The same bounds in nanoseconds, for the search.
    bounds_nanos: Box<[u64]>,
    /// Observations per bucket, not cumulative; the last bucket is above every bound.
    counts: Box<[AtomicU64]>,
    /// Sum of the observations, microseconds: a u64 of them lasts 500 years of latency summed
    /// at a million observations a second of a millisecond each.
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram named `name` (in full) with upper `bounds` in seconds (ascending).
    pub fn new(name: String, help: &'static str, bounds: &[f64]) -> AtomicHistogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        AtomicHistogram {
            name,
            help,
            bounds: bounds.into(),
            bounds_nanos: bounds.iter().map(|b| (b * 1e9).round() as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        self.observe_many(value, 1);
    }

    /// Records `n` observations of the same value (the items of one read, acknowledged
    /// together) for the price of one.
    pub fn observe_many(&self, value: Duration, n: u64) {
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        // The first bucket whose bound is at least the value (`le` is inclusive).
        let index = self.bounds_nanos.partition_point(|&bound| bound < nanos);
        self.counts[index].fetch_add(n, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros
            .fetch_add(micros.saturating_mul(n), Ordering::Relaxed);
    }

    /// Appends the histogram in the Prometheus text format (0.0.4) to `out`.
    pub fn render(&self, out: &mut String) {
        let name = &self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        let histogram = AtomicHistogram::new("t_seconds".into(), "Test.", &[0.001, 0.01, 1.0]);
        histogram.observe(Duration::from_micros(1000)); // on the bound: le is inclusive
        histogram.observe(Duration::from_micros(1001));
        histogram.observe(Duration::from_millis(500));
        histogram.observe(Duration::from_secs(5));
        // Three alike at once: counted three times, summed three times.
        histogram.observe_many(Duration::from_millis(2), 3);
        let mut out = String::new();
        histogram.render(&mut out);
        assert_eq!(
            out,
            "# HELP t_seconds Test.\n\
             # TYPE t_seconds histogram\n\
             t_seconds_bucket{le=\"0.001\"} 1\n\
             t_seconds_bucket{le=\"0.01\"} 5\n\
             t_seconds_bucket{le=\"1\"} 6\n\
             t_seconds_bucket{le=\"+Inf\"} 7\n\
             t_seconds_sum 5.508001\n\
             t_seconds_count 7\n"
        );
    }
}
