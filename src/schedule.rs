//! The liveness schedule of one connection, whatever its protocol: which deadline has passed,
//! whether a heartbeat ping is due, and when to look again.
//!
//! Every connection's loop asks the same two questions at each turn: what is due now
//! ([`Clocks::due`]), and when is the next thing due ([`Clocks::next`], where its one timer
//! points). The JSON connection (`crate::conn`) and the connections of any other protocol
//! (`crate::liveness`) both ask them here, so a deadline, the heartbeat's schedule and the
//! order in which they are judged exist once. What the peer is told when one passes (an error
//! line, a `ping`, a frame of the protocol's own) is the protocol's.
//!
//! Pure: no clock is read and nothing is sent here, so every rule is tested without a socket.

use std::time::Duration;

use tokio::time::Instant;

use crate::close_reason::CloseReason;
use crate::config::Config;

/// A connection's timing state at one turn of its loop, as its owner keeps it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clocks {
    /// When the connection was accepted.
    pub started: Instant,
    /// The last sign of life: the last byte received, or the last frame the protocol counts as
    /// life (or the accept, before any).
    pub last_in: Instant,
    /// Since when pending output has made no progress; `None` while nothing waits to be sent.
    pub out_since: Option<Instant>,
    /// When the frame (object, record) now in progress began; `None` between frames.
    pub frame_since: Option<Instant>,
    /// A TLS handshake is under way since this moment (`handshake_timeout` runs from it: the
    /// accept, or the handshake's turn when handshakes go in turns).
    pub handshaking: Option<Instant>,
    /// The client must still authenticate (`auth_timeout` runs from accept).
    pub awaiting_auth: bool,
    /// The application heartbeat, where it applies.
    pub heartbeat: Option<Heartbeat>,
    /// The `max_age` notice was given: from now on the grace runs out.
    pub max_age_noticed: bool,
}

/// The heartbeat's part of [`Clocks`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heartbeat {
    /// Silence after which a ping is sent (and between pings).
    pub interval: Duration,
    /// Silent intervals after which the peer is dead.
    pub misses: u32,
    /// Pings sent since the last sign of life.
    pub pings_sent: u32,
    /// How much sooner than `interval` the first ping leaves (`crate::phase::first_ping_early`),
    /// so that connections accepted together do not ping together; zero once one was sent.
    pub early: Duration,
}

/// What is due now, in the order it is judged: a close first, then what is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// A deadline passed: the connection ends with this reason.
    Close(CloseReason),
    /// A heartbeat ping is due: send one, then count it in [`Heartbeat::pings_sent`].
    Ping,
    /// The connection reached `max_age`: ask the client to reconnect within `max_age_grace`,
    /// then set [`Clocks::max_age_noticed`].
    MaxAgeNotice,
}

impl Heartbeat {
    /// When the next ping is due.
    fn ping_at(&self, last_in: Instant) -> Instant {
        last_in + self.interval * (self.pings_sent + 1) - self.early
    }

    /// When the peer has been silent for `misses` intervals.
    fn dead_at(&self, last_in: Instant) -> Instant {
        last_in + self.interval * self.misses
    }
}

impl Clocks {
    /// What is due at `now` under `live` (the deadlines in force), the first of: handshake,
    /// authentication, write, heartbeat (close, then ping), idle, frame, age (close, then the
    /// notice). `None` when nothing is. The caller acts on it and asks again, until `None`.
    pub fn due(&self, now: Instant, live: &Config) -> Option<Due> {
        if self
            .handshaking
            .is_some_and(|since| now >= since + live.handshake_timeout)
        {
            return Some(Due::Close(CloseReason::HandshakeTimeout));
        }
        if self.awaiting_auth && now >= self.started + live.auth_timeout {
            return Some(Due::Close(CloseReason::Unauthorized));
        }
        if self
            .out_since
            .is_some_and(|since| now >= since + live.write_timeout)
        {
            return Some(Due::Close(CloseReason::WriteTimeout));
        }
        if let Some(heartbeat) = &self.heartbeat {
            if now >= heartbeat.dead_at(self.last_in) {
                return Some(Due::Close(CloseReason::HeartbeatTimeout));
            }
            if now >= heartbeat.ping_at(self.last_in) {
                return Some(Due::Ping);
            }
        }
        if live
            .idle_timeout
            .is_some_and(|idle| now >= self.last_in + idle)
        {
            return Some(Due::Close(CloseReason::IdleTimeout));
        }
        if let (Some(limit), Some(since)) = (live.frame_timeout, self.frame_since) {
            if now >= since + limit {
                return Some(Due::Close(CloseReason::FrameTimeout));
            }
        }
        if let Some(max_age) = live.max_age {
            if now >= self.started + max_age + live.max_age_grace {
                return Some(Due::Close(CloseReason::MaxAge));
            }
            if now >= self.started + max_age && !self.max_age_noticed {
                return Some(Due::MaxAgeNotice);
            }
        }
        None
    }

    /// When the next of the deadlines above falls: where the connection's one timer points.
    /// `None` when none applies.
    pub fn next(&self, live: &Config) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut earliest = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if let Some(since) = self.handshaking {
            earliest(since + live.handshake_timeout);
        }
        if self.awaiting_auth {
            earliest(self.started + live.auth_timeout);
        }
        if let Some(since) = self.out_since {
            earliest(since + live.write_timeout);
        }
        if let Some(heartbeat) = &self.heartbeat {
            earliest(heartbeat.ping_at(self.last_in));
            earliest(heartbeat.dead_at(self.last_in));
        }
        if let Some(idle) = live.idle_timeout {
            earliest(self.last_in + idle);
        }
        if let (Some(limit), Some(since)) = (live.frame_timeout, self.frame_since) {
            earliest(since + limit);
        }
        if let Some(max_age) = live.max_age {
            let at = match self.max_age_noticed {
                true => max_age + live.max_age_grace,
                false => max_age,
            };
            earliest(self.started + at);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(started: Instant) -> Clocks {
        Clocks {
            started,
            last_in: started,
            out_since: None,
            frame_since: None,
            handshaking: None,
            awaiting_auth: false,
            heartbeat: None,
            max_age_noticed: false,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// The defaults set no deadline of their own but the write timeout: an idle connection
    /// without heartbeat has no timer at all.
    #[test]
    fn an_idle_connection_without_heartbeat_waits_on_no_timer() {
        let start = Instant::now();
        let clocks = quiet(start);
        let config = Config::default();
        assert_eq!(clocks.due(start + secs(3600), &config), None);
        assert_eq!(clocks.next(&config), None);
    }

    /// Pings follow the silence, one an interval (the first sooner by its phase), and the
    /// peer is dead after `misses` intervals whatever was sent meanwhile.
    #[test]
    fn the_heartbeat_pings_each_interval_then_closes_after_its_misses() {
        let start = Instant::now();
        let mut clocks = quiet(start);
        let config = Config::default();
        clocks.heartbeat = Some(Heartbeat {
            interval: secs(10),
            misses: 3,
            pings_sent: 0,
            early: secs(4),
        });
        assert_eq!(clocks.next(&config), Some(start + secs(6)));
        assert_eq!(clocks.due(start + secs(5), &config), None);
        assert_eq!(clocks.due(start + secs(6), &config), Some(Due::Ping));
        let heartbeat = clocks.heartbeat.as_mut().unwrap();
        heartbeat.pings_sent = 1;
        heartbeat.early = Duration::ZERO;
        assert_eq!(clocks.next(&config), Some(start + secs(20)));
        assert_eq!(clocks.due(start + secs(19), &config), None);
        assert_eq!(
            clocks.due(start + secs(30), &config),
            Some(Due::Close(CloseReason::HeartbeatTimeout)),
            "a close is judged before a ping due at the same time"
        );
    }

    /// A deadline that passed is judged before a later one in the order, and the timer points
    /// at the earliest.
    #[test]
    fn deadlines_are_judged_in_order_and_the_timer_points_at_the_earliest() {
        let start = Instant::now();
        let config = Config {
            idle_timeout: Some(secs(50)),
            frame_timeout: Some(secs(5)),
            max_age: Some(secs(100)),
            max_age_grace: secs(10),
            write_timeout: secs(30),
            ..Config::default()
        };
        let mut clocks = quiet(start);
        clocks.frame_since = Some(start + secs(2));
        clocks.out_since = Some(start + secs(1));
        assert_eq!(clocks.next(&config), Some(start + secs(7)));
        assert_eq!(
            clocks.due(start + secs(60), &config),
            Some(Due::Close(CloseReason::WriteTimeout))
        );
        clocks.out_since = None;
        assert_eq!(
            clocks.due(start + secs(60), &config),
            Some(Due::Close(CloseReason::IdleTimeout))
        );
        clocks.frame_since = None;
        clocks.last_in = start + secs(90);
        assert_eq!(
            clocks.due(start + secs(100), &config),
            Some(Due::MaxAgeNotice)
        );
        clocks.max_age_noticed = true;
        assert_eq!(clocks.next(&config), Some(start + secs(110)));
        assert_eq!(
            clocks.due(start + secs(110), &config),
            Some(Due::Close(CloseReason::MaxAge))
        );
    }

    /// A handshake or an authentication not done in time ends the connection first.
    #[test]
    fn handshake_and_authentication_run_from_accept() {
        let start = Instant::now();
        let config = Config::default();
        let mut clocks = quiet(start);
        clocks.handshaking = Some(start);
        clocks.awaiting_auth = true;
        let first = config.handshake_timeout.min(config.auth_timeout);
        assert_eq!(clocks.next(&config), Some(start + first));
        assert_eq!(
            clocks.due(start + config.handshake_timeout, &config),
            Some(Due::Close(CloseReason::HandshakeTimeout))
        );
        clocks.handshaking = None;
        assert_eq!(
            clocks.due(start + config.auth_timeout, &config),
            Some(Due::Close(CloseReason::Unauthorized))
        );
    }
}
