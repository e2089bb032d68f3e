//! The layer's task around a handler: it runs the handler's future, and at every wake-up judges
//! what the handler cannot see (the deadlines, the heartbeat, a kick, memory pressure, the
//! server's stage), signals it, and ends the connection with one reason.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::watch::{State, Watch};
use super::{BoxError, Connection, Protocol};
use crate::close_reason::CloseReason;
use crate::config::Config;
use crate::conn::{ConnShared, Stage};
use crate::registry::{ConnGuard, SharedInfo};
use crate::schedule::{Clocks, Due};

/// Longest time a handler told [`super::Signal::Close`] has to say goodbye, as the JSON
/// connection's last flush (and never more than `write_timeout`).
const CLOSING_GRACE: Duration = Duration::from_secs(1);

/// The handler's future, boxed: its type is the embedder's.
type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// Starts serving an accepted connection with `protocol`'s handler.
pub(crate) fn supervise(
    stream: TcpStream,
    guard: ConnGuard,
    shared: Arc<ConnShared>,
    protocol: &Protocol,
) -> Supervised {
    let options_seen = shared.options_changes as u8;
    let info = SharedInfo::clone(guard.info());
    let watch = Arc::new(Watch::new(info, shared, protocol.life));
    let handler = protocol
        .handler
        .call(Connection::new(stream, Arc::clone(&watch)));
    Supervised {
        guard: Some(guard),
        handler: Some(handler),
        watch,
        timer: None,
        closing_until: None,
        options_seen,
    }
}

/// A connection's task: its handler, and the layer's watch over it.
///
/// The registry entry goes before the socket on every path: the handler's [`Connection`] lets
/// go of the descriptor as it drops, before the socket closes.
pub(crate) struct Supervised {
    guard: Option<ConnGuard>,
    /// `None` once it ended or was dropped.
    handler: Option<HandlerFuture>,
    watch: Arc<Watch>,
    /// The next deadline's timer, while there is one.
    timer: Option<Pin<Box<Sleep>>>,
    /// Once the layer decided to close: when the handler's grace runs out.
    closing_until: Option<Instant>,
    /// The count of socket option changes when the socket's options were last set, its low 8
    /// bits (as the JSON connection keeps it).
    options_seen: u8,
}

impl Future for Supervised {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if this.handler.is_none() {
                return Poll::Ready(());
            }
            this.watch.info.register_control(cx.waker());
            let now = Instant::now();
            let live = this.watch.shared.live.config();
            this.reapply_socket_options(&live);
            if this.closing_until.is_none() {
                this.judge(now, &live);
            }
            if this.closing_until.is_some_and(|until| now >= until) {
                // Past its grace: dropping the handler closes the socket.
                this.handler = None;
                return this.finish(Ok(()));
            }
            let handler = this.handler.as_mut().expect("checked above");
            if let Poll::Ready(result) = handler.as_mut().poll(cx) {
                this.handler = None;
                return this.finish(result);
            }
            // After the handler ran: it may have begun a frame or met a full send buffer.
            let next = match this.closing_until {
                Some(until) => Some(until),
                None => this.clocks().next(&live),
            };
            if this.arm_timer(next, cx) {
                continue;
            }
            return Poll::Pending;
        }
    }
}

impl Supervised {
    /// Judges what is due: the server's stage, a kick or memory pressure, a `goaway`, then the
    /// schedule (deadlines and pings).
    fn judge(&mut self, now: Instant, live: &Config) {
        let watch = &self.watch;
        let stage = watch.shared.live.stage();
        if stage == Stage::Closing {
            return self.begin_close(CloseReason::Shutdown, now, live);
        }
        if let Some(reason) = watch.info.closing_reason() {
            return self.begin_close(reason, now, live);
        }
        if let Some(within) = watch.info.take_goaway() {
            watch.goaway(within);
        }
        let state = watch.state();
        // An upgrade moves only the JSON gateway's connections: this one stays, and is told
        // `goaway` with the others.
        if stage == Stage::HandOver && !state.contains(State::STAYS) {
            watch.set(State::STAYS);
            watch.shared.live.count_staying(true);
        }
        if stage >= Stage::Draining && !state.contains(State::DRAIN_TOLD) {
            watch.drain();
        }
        while let Some(due) = self.clocks().due(now, live) {
            match due {
                Due::Ping => self.watch.ping(),
                Due::MaxAgeNotice => {
                    self.watch.set(State::MAX_AGE_NOTICED);
                    self.watch.goaway(live.max_age_grace);
                }
                Due::Close(reason) => return self.begin_close(reason, now, live),
            }
        }
    }

    /// Decides the close: the handler is told, and has its grace to say goodbye.
    fn begin_close(&mut self, reason: CloseReason, now: Instant, live: &Config) {
        if self.watch.close(reason) {
            tracing::debug!(
                conn_id = self.watch.info.id,
                reason = reason.as_str(),
                "closing"
            );
        }
        self.closing_until = Some(now + CLOSING_GRACE.min(live.write_timeout));
    }

    /// The connection's timing state for the schedule.
    fn clocks(&self) -> Clocks {
        let watch = &self.watch;
        let state = watch.state();
        let params = &watch.shared.params;
        let heartbeat = state.contains(State::HEARTBEAT).then(|| {
            let pinged = state.contains(State::PINGED);
            crate::phase::heartbeat(params, watch.info.id, watch.pings_sent(), pinged)
        });
        Clocks {
            started: watch.started(),
            last_in: watch.last_life(),
            out_since: watch.out_since(),
            frame_since: watch.frame_since(),
            handshaking: None,
            awaiting_auth: false,
            heartbeat,
            max_age_noticed: state.contains(State::MAX_AGE_NOTICED),
        }
    }

    /// Points the timer at `next`. True when it has already passed (judge again now).
    fn arm_timer(&mut self, next: Option<Instant>, cx: &mut Context<'_>) -> bool {
        let Some(at) = next else {
            self.timer = None;
            return false;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// Sets the socket options of the configuration in force again after a reload changed
    /// them, through the registry's hold of the descriptor.
    fn reapply_socket_options(&mut self, live: &Config) {
        let changes = self.watch.shared.live.options_changes() as u8;
        if self.options_seen == changes {
            return;
        }
        self.options_seen = changes;
        let info = &self.watch.info;
        let options = crate::conn::reloaded_options(live, info);
        let registry = &self.watch.shared.registry;
        registry.with_sockets(std::slice::from_ref(info), |info, socket| {
            if let Err(error) = crate::sockopt::apply(socket, &options) {
                tracing::warn!(conn_id = info.id, peer = %info.peer(), option = error.option, error = %error.source, "cannot apply the reloaded socket options; the previous ones stay");
            }
        });
    }

    /// Records the close with its one reason: the layer's, else the socket error's, else what
    /// the handler's end says.
    fn finish(&mut self, ended: Result<(), BoxError>) -> Poll<()> {
        let watch = &self.watch;
        let eof = watch.state().contains(State::EOF);
        let ended_as = match &ended {
            Ok(()) if eof => CloseReason::PeerClosed,
            Ok(()) => CloseReason::Completed,
            // What the handler makes of a peer that left mid-frame: logged below.
            Err(_) if eof => CloseReason::PeerClosed,
            Err(_) => CloseReason::ProtocolError,
        };
        let reason = watch.closing().or(watch.failure()).unwrap_or(ended_as);
        if let Err(error) = &ended {
            tracing::info!(conn_id = watch.info.id, peer = %watch.info.peer(), reason = reason.as_str(), error = %error, "connection handler ended with an error");
        }
        watch.hold(0);
        if let Some(guard) = self.guard.take() {
            guard.close(reason);
        }
        Poll::Ready(())
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.watch.state().contains(State::STAYS) {
            self.watch.shared.live.count_staying(false);
        }
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    /// Every idle connection of a handler holds one task and one watch: a field added here is
    /// paid once per connection (`CW_EXAMPLES=line_echo bash bench/idle_memory.sh`).
    #[test]
    fn the_task_and_the_watch_stay_small() {
        let task = std::mem::size_of::<super::Supervised>();
        let watch = std::mem::size_of::<super::Watch>();
        eprintln!("supervised task {task} bytes, watch {watch} bytes");
        assert!(task <= 80, "Supervised is {task} bytes");
        assert!(watch <= 80, "Watch is {watch} bytes");
    }
}
