//! The connection's deadlines: the liveness schedule ([`crate::schedule`]) asked at every turn
//! of the loop with this connection's clocks, what it finds due answered in the JSON protocol's
//! words (an error line, a `ping`, the `max_age` notice), and the one timer pointed at the next
//! deadline.

use tokio::time::Instant;

use super::hello::unauthorized;
use super::{notice, Close, Connection, Flags};
use crate::close_reason::CloseReason;
use crate::config::Config;
use crate::protocol::{ErrorCode, Outbound};
use crate::schedule::{Clocks, Due};

impl Connection {
    /// Points the timer at `next` (the next deadline, or the moment to park), creating it on
    /// first need and dropping it when there is none.
    pub(super) fn arm_timer(&mut self, next: Option<Instant>) {
        match (next, &mut self.timer) {
            (None, timer) => *timer = None,
            (Some(at), Some(timer)) => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            (Some(at), timer) => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// This connection's timing state for the schedule, as of `now`.
    fn clocks(&self, now: Instant) -> Clocks {
        let heartbeat = self.flags.contains(Flags::HEARTBEAT).then(|| {
            let pinged = self.flags.contains(Flags::PINGED);
            let pings = self.pings_sent.into();
            crate::phase::heartbeat(&self.shared.params, self.info.id, pings, pinged)
        });
        Clocks {
            started: self.started(),
            last_in: self.at(self.last_in),
            out_since: (!self.out.is_empty()).then(|| self.at(self.out_since)),
            frame_since: self
                .mid_object()
                .then(|| now.checked_sub(self.frame_age(now)).unwrap_or(now)),
            handshaking: self.handshaking_since(self.started()),
            awaiting_auth: self.awaits_authentication(),
            heartbeat,
            max_age_noticed: self.flags.contains(Flags::MAX_AGE_NOTICED),
        }
    }

    /// Ends the connection when a deadline passed, and sends the pings and the `max_age`
    /// notice that are due. The heartbeat follows the configuration the connection was
    /// accepted under (its `hello` announced it); the other deadlines follow `live`. Returns
    /// the clocks as they are after what was sent, for the timer.
    pub(super) fn check_timers(&mut self, now: Instant, live: &Config) -> Result<Clocks, Close> {
        loop {
            let clocks = self.clocks(now);
            let Some(due) = clocks.due(now, live) else {
                return Ok(clocks);
            };
            match due {
                Due::Ping => {
                    self.flags.insert(Flags::PINGED);
                    self.pings_sent += 1;
                    self.info.heartbeat(true, self.pings_sent.into());
                    self.send(&Outbound::Ping);
                }
                Due::MaxAgeNotice => {
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
                Due::Close(reason) => return Err(self.deadline_passed(reason, live)),
            }
        }
    }

    /// The close of a deadline that passed, with what the peer is told.
    fn deadline_passed(&self, reason: CloseReason, live: &Config) -> Close {
        match reason {
            CloseReason::Unauthorized => {
                unauthorized("no hello with a valid token within auth_timeout")
            }
            CloseReason::FrameTimeout => {
                self.shared.metrics.item_refused(ErrorCode::FrameTimeout);
                let limit = live.frame_timeout.unwrap_or_default();
                tracing::warn!(conn_id = self.info.id, peer = %self.info.peer(), frame_timeout_ms = limit.as_millis() as u64, "object not finished within frame_timeout");
                Close {
                    reason,
                    notice: notice(
                        ErrorCode::FrameTimeout,
                        "an object did not end within frame_timeout; closing",
                    ),
                }
            }
            reason => reason.into(),
        }
    }
}
