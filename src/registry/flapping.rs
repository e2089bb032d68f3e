//! Clients that keep reconnecting: the closes of each client's connections counted over a
//! window (`flap_threshold`, `10/5m` by default), by `client_id`, or by address for a client
//! that gave none. A client with as many closes as the threshold within its window is
//! flapping: listed (admin API `/flapping`, the live page) with its last close reasons, and
//! counted in one gauge (`connwarden_flapping_clients`: a count, never one series per client).
//!
//! Bounded: each client keeps at most the threshold's count of close times, clients whose last
//! close left the window are forgotten, and at most [`MAX_TRACKED`] clients are followed at once
//! (past it, new ones are not followed until old ones leave the window, and that is counted).
//! Clients behind one address without a `client_id` count as one: give clients ids.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::close_reason::CloseReason;
use crate::config::FlapThreshold;

/// Most clients followed at once.
pub const MAX_TRACKED: usize = 100_000;
/// Close reasons kept per client, newest last.
const REASONS_KEPT: usize = 5;

/// Who a close counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FlapKey {
    /// The `client_id` its `hello` gave.
    ClientId(Arc<str>),
    /// The peer's address, for a client without a `client_id`.
    Address(IpAddr),
}

/// A client counted as flapping, as the surfaces show it.
#[derive(Clone, Debug, PartialEq)]
pub struct FlappingClient {
    /// Who.
    pub key: FlapKey,
    /// Its closes within the window (at least the threshold's count).
    pub closes: usize,
    /// Its last close.
    pub last_close_at: SystemTime,
    /// The address of its last connection.
    pub last_peer: SocketAddr,
    /// Its last close reasons, oldest first (up to five).
    pub last_reasons: Vec<CloseReason>,
}

#[derive(Debug)]
struct History {
    /// Close times, oldest first, at most the threshold's count, none older than the window.
    closes: VecDeque<Instant>,
    reasons: VecDeque<CloseReason>,
    last_close_at: SystemTime,
    last_peer: SocketAddr,
    /// Counted as flapping (logged once when it began).
    flapping: bool,
}

/// The closes of the clients followed.
#[derive(Debug, Default)]
pub(super) struct Flaps {
    threshold: Option<FlapThreshold>,
    clients: HashMap<FlapKey, History>,
    /// Closes not followed because [`MAX_TRACKED`] clients were.
    untracked: u64,
}

/// A client that has just begun to flap, to log.
#[derive(Debug, PartialEq)]
pub(super) struct BeganFlapping {
    pub(super) closes: usize,
    pub(super) within: Duration,
}

impl Flaps {
    /// Counts with `threshold` from now on (`None` stops counting and forgets everyone).
    pub(super) fn set_threshold(&mut self, threshold: Option<FlapThreshold>) {
        if threshold != self.threshold {
            self.clients.clear();
        }
        self.threshold = threshold;
    }

    /// Counts a close of `key`'s connection; `Some` when it makes the client flapping.
    pub(super) fn record(
        &mut self,
        key: FlapKey,
        peer: SocketAddr,
        reason: CloseReason,
        now: Instant,
    ) -> Option<BeganFlapping> {
        let threshold = self.threshold?;
        if self.clients.len() >= MAX_TRACKED && !self.clients.contains_key(&key) {
            self.forget_quiet(now);
            if self.clients.len() >= MAX_TRACKED {
                self.untracked += 1;
                return None;
            }
        }
        let history = self.clients.entry(key).or_insert_with(|| History {
            closes: VecDeque::new(),
            reasons: VecDeque::new(),
            last_close_at: SystemTime::now(),
            last_peer: peer,
            flapping: false,
        });
        let limit = threshold.closes as usize;
        while history.closes.len() >= limit
            || history
                .closes
                .front()
                .is_some_and(|&at| now.duration_since(at) > threshold.within)
        {
            history.closes.pop_front();
        }
        history.closes.push_back(now);
        if history.reasons.len() == REASONS_KEPT {
            history.reasons.pop_front();
        }
        history.reasons.push_back(reason);
        history.last_close_at = SystemTime::now();
        history.last_peer = peer;
        let flapping = history.closes.len() >= limit;
        let began = flapping && !history.flapping;
        history.flapping = flapping;
        began.then_some(BeganFlapping {
            closes: history.closes.len(),
            within: threshold.within,
        })
    }

    /// Forgets the clients whose last close left the window.
    fn forget_quiet(&mut self, now: Instant) {
        let Some(threshold) = self.threshold else {
            return;
        };
        self.clients.retain(|_, history| {
            history
                .closes
                .back()
                .is_some_and(|&last| now.duration_since(last) <= threshold.within)
        });
    }

    /// The clients flapping now, the most closes first (then the latest).
    pub(super) fn flapping(&mut self, now: Instant) -> Vec<FlappingClient> {
        self.forget_quiet(now);
        let Some(threshold) = self.threshold else {
            return Vec::new();
        };
        let mut flapping: Vec<FlappingClient> = self
            .clients
            .iter_mut()
            .filter_map(|(key, history)| {
                let within = |&at: &Instant| now.duration_since(at) <= threshold.within;
                let closes = history.closes.iter().filter(|at| within(at)).count();
                history.flapping = closes >= threshold.closes as usize;
                history.flapping.then(|| FlappingClient {
                    key: key.clone(),
                    closes,
                    last_close_at: history.last_close_at,
                    last_peer: history.last_peer,
                    last_reasons: history.reasons.iter().copied().collect(),
                })
            })
            .collect();
        flapping.sort_by_key(|f| std::cmp::Reverse((f.closes, f.last_close_at)));
        flapping
    }

    /// Closes not followed because the table was full.
    pub(super) fn untracked(&self) -> u64 {
        self.untracked
    }

    pub(super) fn threshold(&self) -> Option<FlapThreshold> {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(closes: u32, secs: u64) -> Option<FlapThreshold> {
        Some(FlapThreshold {
            closes,
            within: Duration::from_secs(secs),
        })
    }

    fn peer() -> SocketAddr {
        "192.0.2.7:4000".parse().unwrap()
    }

    #[test]
    fn a_client_over_the_threshold_within_the_window_flaps_until_it_calms_down() {
        let mut flaps = Flaps::default();
        flaps.set_threshold(threshold(3, 60));
        let t0 = Instant::now();
        let key = FlapKey::ClientId("dev-7".into());
        let reasons = [
            CloseReason::Reset,
            CloseReason::PeerClosed,
            CloseReason::Reset,
        ];
        // Spread wider than the window: never three within a minute.
        for (k, reason) in reasons.into_iter().enumerate() {
            let at = t0 + Duration::from_secs(40 * k as u64);
            assert_eq!(flaps.record(key.clone(), peer(), reason, at), None);
        }
        assert!(flaps.flapping(t0 + Duration::from_secs(80)).is_empty());
        // Three within a minute: flapping, said once.
        let at = t0 + Duration::from_secs(81);
        let began = flaps.record(key.clone(), peer(), CloseReason::KeepaliveTimeout, at);
        assert_eq!(began.map(|b| b.closes), Some(3));
        let again = at + Duration::from_secs(1);
        assert_eq!(
            flaps.record(key.clone(), peer(), CloseReason::Reset, again),
            None
        );
        let listed = flaps.flapping(again);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].closes, 3);
        assert_eq!(
            listed[0].last_reasons,
            [
                CloseReason::Reset,
                CloseReason::PeerClosed,
                CloseReason::Reset,
                CloseReason::KeepaliveTimeout,
                CloseReason::Reset
            ]
        );
        // A minute of calm: no longer flapping, and forgotten.
        assert!(flaps.flapping(again + Duration::from_secs(61)).is_empty());
        assert!(flaps.clients.is_empty());
    }

    #[test]
    fn clients_are_counted_apart_and_the_table_is_bounded() {
        let mut flaps = Flaps::default();
        flaps.set_threshold(threshold(2, 60));
        let now = Instant::now();
        let a = FlapKey::Address("192.0.2.1".parse().unwrap());
        let b = FlapKey::ClientId("b".into());
        flaps.record(a.clone(), peer(), CloseReason::Reset, now);
        flaps.record(b.clone(), peer(), CloseReason::Reset, now);
        assert!(flaps.flapping(now).is_empty());
        flaps.record(b.clone(), peer(), CloseReason::Reset, now);
        let listed = flaps.flapping(now);
        assert_eq!(listed.iter().map(|f| &f.key).collect::<Vec<_>>(), [&b]);
        for n in 0..MAX_TRACKED as u32 {
            let key = FlapKey::ClientId(n.to_string().into());
            flaps.record(key, peer(), CloseReason::Reset, now);
        }
        assert_eq!(flaps.clients.len(), MAX_TRACKED);
        assert_eq!(flaps.untracked(), 2);
        // Once the others left the window, new clients are followed again.
        let later = now + Duration::from_secs(61);
        flaps.record(
            FlapKey::ClientId("new".into()),
            peer(),
            CloseReason::Reset,
            later,
        );
        assert_eq!(flaps.clients.len(), 1);
        flaps.set_threshold(None);
        assert_eq!(flaps.record(a, peer(), CloseReason::Reset, later), None);
        assert!(flaps.flapping(later).is_empty());
    }
}
