//! The odds that keep-alive closes a healthy peer on a lossy path.
//!
//! A keep-alive probe that is lost is not retransmitted: the kernel sends the next one
//! `keepalive_interval` later, and gives up after `n` probes in a row had no answer. With random
//! loss `p` each way, one probe's round trip fails with `q = 1 − (1 − p)²` (the probe or its
//! answer lost), so a healthy idle connection is closed at the end of one idle period with
//! `qⁿ`. It goes through one idle period every `idle + interval · q / (1 − q)` seconds (the
//! failed probes before an answer re-arm the next period later), so the expected false closes
//! over `T` connection-seconds are `T / cycle · qⁿ`.
//!
//! `n`, the probes that must all fail: without `TCP_USER_TIMEOUT`, `keepalive_count`. With it,
//! the kernel ignores the count and aborts at the first probe timer that finds the user
//! timeout passed since the last segment received with a probe outstanding
//! (`tcp_keepalive_timer`): the probes sent before that are `⌈(user_timeout − idle) /
//! interval⌉`, and at least one.
//!
//! The model assumes independent loss; loss in bursts longer than the probes' span closes
//! healthy peers whatever the split (docs/DOCTOR.md).

use std::time::Duration;

use crate::config::{Config, Keepalive};

/// The random loss rates (each way) `doctor` shows the odds at.
pub const LOSS_RATES: [f64; 3] = [0.001, 0.01, 0.05];

/// Above this many expected false closes per 1,000 connection-days at 1 % loss, a split is
/// fragile (one in 100,000 connection-days: a 100,000-connection fleet would lose one healthy
/// connection a day). The old default 30 s + 10 s × 3 expects 23.
pub const FRAGILE_PER_1000_DAYS: f64 = 0.01;

/// Probes that must all go unanswered before the kernel closes an idle connection.
pub fn probes_before_close(keepalive: &Keepalive, user_timeout: Option<Duration>) -> u32 {
    match user_timeout {
        None => keepalive.count,
        Some(timeout) => {
            let after_idle = timeout.saturating_sub(keepalive.idle).as_secs_f64();
            let probes = (after_idle / keepalive.interval.as_secs_f64()).ceil();
            (probes as u32).max(1)
        }
    }
}

/// Expected false closes of healthy idle connections over `connection_seconds`, with random
/// loss `loss` (0 to 1) each way.
pub fn expected_false_closes(
    keepalive: &Keepalive,
    user_timeout: Option<Duration>,
    loss: f64,
    connection_seconds: f64,
) -> f64 {
    let round_trip_fails = 1.0 - (1.0 - loss).powi(2);
    if round_trip_fails >= 1.0 {
        return f64::INFINITY;
    }
    let n = probes_before_close(keepalive, user_timeout);
    let cycle = keepalive.idle.as_secs_f64()
        + keepalive.interval.as_secs_f64() * round_trip_fails / (1.0 - round_trip_fails);
    connection_seconds / cycle * round_trip_fails.powi(n as i32)
}

/// The odds at one loss rate.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Odds {
    /// Random loss each way, in per cent.
    pub loss_percent: f64,
    /// Healthy idle connections closed, expected, per 1,000 connection-days.
    pub per_1000_connection_days: f64,
}

/// What `doctor` reports of the keep-alive split in force.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FalseCloses {
    /// Probes that must all fail for a healthy peer to be closed.
    pub probes_before_close: u32,
    /// The odds at each of [`LOSS_RATES`].
    pub odds: Vec<Odds>,
}

impl FalseCloses {
    /// The odds of `config`'s keep-alive and user timeout.
    pub fn of(config: &Config) -> FalseCloses {
        let user_timeout = config.effective_user_timeout();
        let days = 1000.0 * 86_400.0;
        FalseCloses {
            probes_before_close: probes_before_close(&config.keepalive, user_timeout),
            odds: LOSS_RATES
                .iter()
                .map(|&loss| Odds {
                    loss_percent: loss * 100.0,
                    per_1000_connection_days: expected_false_closes(
                        &config.keepalive,
                        user_timeout,
                        loss,
                        days,
                    ),
                })
                .collect(),
        }
    }

    /// The expected false closes per 1,000 connection-days at 1 % loss.
    pub fn at_one_percent(&self) -> f64 {
        self.odds
            .iter()
            .find(|o| (o.loss_percent - 1.0).abs() < 1e-9)
            .map_or(0.0, |o| o.per_1000_connection_days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(idle: u64, interval: u64, count: u32) -> Keepalive {
        Keepalive {
            idle: Duration::from_secs(idle),
            interval: Duration::from_secs(interval),
            count,
        }
    }

    /// The figures of issue 26, worked by hand: 30 s + 10 s × 3 at 1 % loss closes about
    /// 0.023 healthy connections per connection-day; 500 peers at 2 s + 1 s × 3 and 5 % loss,
    /// 28 in 120 s.
    #[test]
    fn the_model_gives_the_figures_worked_by_hand() {
        let old = split(30, 10, 3);
        let per_day = expected_false_closes(&old, Some(old.bound()), 0.01, 86_400.0);
        assert!((per_day - 0.0227).abs() < 0.001, "{per_day}");
        let short = split(2, 1, 3);
        let in_120s = expected_false_closes(&short, Some(short.bound()), 0.05, 500.0 * 120.0);
        assert!((in_120s - 26.6).abs() < 1.5, "{in_120s}");
    }

    #[test]
    fn the_user_timeout_decides_the_probes_when_set() {
        let ka = split(30, 1, 30);
        assert_eq!(probes_before_close(&ka, None), 30);
        assert_eq!(probes_before_close(&ka, Some(ka.bound())), 30);
        assert_eq!(probes_before_close(&ka, Some(Duration::from_secs(40))), 10);
        assert_eq!(probes_before_close(&ka, Some(Duration::from_secs(10))), 1);
        assert_eq!(
            probes_before_close(&ka, Some(Duration::from_secs(600))),
            570
        );
    }

    #[test]
    fn the_default_split_is_robust_and_the_old_one_fragile() {
        let default = FalseCloses::of(&Config::default());
        assert_eq!(default.probes_before_close, 30);
        assert!(default
            .odds
            .iter()
            .all(|o| o.per_1000_connection_days < 1e-20));
        let old = FalseCloses::of(&Config {
            keepalive: split(30, 10, 3),
            ..Config::default()
        });
        assert!(old.at_one_percent() > FRAGILE_PER_1000_DAYS);
        assert!((old.at_one_percent() - 22.7).abs() < 1.0, "{old:?}");
    }
}
