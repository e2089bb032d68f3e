//! The connection's deadlines: the handshake, authentication, write, heartbeat, idle, frame and
//! age limits checked at every turn of the loop, the pings and the `max_age` notice sent when
//! due, and the one timer pointed at the next deadline.

use tokio::time::Instant;

use super::hello::unauthorized;
use super::{notice, Close, Connection, Flags};
use crate::close_reason::CloseReason;
use crate::config::Config;
use crate::protocol::{ErrorCode, Outbound};

impl Connection {
    /// Points the timer at the next deadline, creating it on first need and dropping it when
    /// no deadline is left.
    pub(super) fn arm_timer(&mut self, now: Instant, live: &Config) {
        match (self.next_deadline(now, live), &mut self.timer) {
            (None, timer) => *timer = None,
            (Some(at), Some(timer)) => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            (Some(at), timer) => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// How much sooner than `interval` of silence the first ping leaves: connections accepted
    /// together do not ping together. Zero once a ping was sent (the phase stays: the next
    /// silence starts at the answer).
    fn ping_early(&self, interval: std::time::Duration) -> std::time::Duration {
        if self.flags.contains(Flags::PINGED) {
            return std::time::Duration::ZERO;
        }
        crate::phase::first_ping_early(self.info.id, interval)
    }

    /// Ends the connection when a deadline passed, and sends the pings and the `max_age`
    /// notice that are due. The heartbeat follows the configuration the connection was
    /// accepted under (its `hello` announced it); the other deadlines follow `live`.
    pub(super) fn check_timers(&mut self, now: Instant, live: &Config) -> Result<(), Close> {
        if self.handshaking() && now >= self.started() + live.handshake_timeout {
            return Err(CloseReason::HandshakeTimeout.into());
        }
        if self.awaits_authentication() && now >= self.started() + live.auth_timeout {
            return Err(unauthorized(
                "no hello with a valid token within auth_timeout",
            ));
        }
        if !self.out.is_empty() && now >= self.at(self.out_since) + live.write_timeout {
            return Err(CloseReason::WriteTimeout.into());
        }
        let silence = now.saturating_duration_since(self.at(self.last_in));
        if self.flags.contains(Flags::HEARTBEAT) {
            let interval = self.shared.params.heartbeat_interval;
            if silence >= interval * self.shared.params.heartbeat_misses {
                return Err(CloseReason::HeartbeatTimeout.into());
            }
            if silence + self.ping_early(interval) >= interval * (u32::from(self.pings_sent) + 1) {
                self.flags.insert(Flags::PINGED);
                self.pings_sent += 1;
                self.info.heartbeat(true, self.pings_sent.into());
                self.send(&Outbound::Ping);
            }
        }
        if live.idle_timeout.is_some_and(|idle| silence >= idle) {
            return Err(CloseReason::IdleTimeout.into());
        }
        if let Some(limit) = live.frame_timeout {
            if self.mid_object() && self.frame_age(now) >= limit {
                self.shared.metrics.item_refused(ErrorCode::FrameTimeout);
                tracing::warn!(conn_id = self.info.id, peer = %self.info.peer, frame_timeout_ms = limit.as_millis() as u64, "object not finished within frame_timeout");
                return Err(Close {
                    reason: CloseReason::FrameTimeout,
                    notice: notice(
                        ErrorCode::FrameTimeout,
                        "an object did not end within frame_timeout; closing",
                    ),
                });
            }
        }
        if let Some(max_age) = live.max_age {
            let age = now.saturating_duration_since(self.started());
            if age >= max_age + live.max_age_grace {
                return Err(CloseReason::MaxAge.into());
            }
            if age >= max_age && !self.flags.contains(Flags::MAX_AGE_NOTICED) {
                self.flags.insert(Flags::MAX_AGE_NOTICED);
                let message = format!(
                    "connection reached its maximum age; it closes in {}: reconnect",
                    humantime::format_duration(live.max_age_grace)
                );
                self.send(&Outbound::Error {
                    code: ErrorCode::MaxAge,
                    message: message.into(),
                    id: None,
                });
            }
        }
        Ok(())
    }

    fn next_deadline(&self, now: Instant, live: &Config) -> Option<Instant> {
        let params = &self.shared.params;
        let mut next: Option<Instant> = None;
        let mut earliest = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if self.handshaking() {
            earliest(self.started() + live.handshake_timeout);
        }
        if self.awaits_authentication() {
            earliest(self.started() + live.auth_timeout);
        }
        if !self.out.is_empty() {
            earliest(self.at(self.out_since) + live.write_timeout);
        }
        if self.flags.contains(Flags::HEARTBEAT) {
            let interval = params.heartbeat_interval;
            let last_in = self.at(self.last_in);
            earliest(
                last_in + interval * (u32::from(self.pings_sent) + 1) - self.ping_early(interval),
            );
            earliest(last_in + interval * params.heartbeat_misses);
        }
        if let Some(idle) = live.idle_timeout {
            earliest(self.at(self.last_in) + idle);
        }
        if let (Some(limit), true) = (live.frame_timeout, self.mid_object()) {
            earliest(now + limit.saturating_sub(self.frame_age(now)));
        }
        if let Some(max_age) = live.max_age {
            let at = if self.flags.contains(Flags::MAX_AGE_NOTICED) {
                max_age + live.max_age_grace
            } else {
                max_age
            };
            earliest(self.started() + at);
        }
        next
    }
}
