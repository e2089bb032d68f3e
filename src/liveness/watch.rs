//! What a connection's stream, its [`Control`](super::Control) and the layer's task share: the
//! clocks the schedule reads, the signals waiting for the handler, and the reason decided for
//! the close. Atomics, so that a handler may move its stream or its control to another task.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::time::Instant;

use crate::close_reason::{CloseReason, FirstReason};
use crate::config::HeartbeatMode;
use crate::conn::ConnShared;
use crate::registry::SharedInfo;

use super::{Life, Signal};

bitflags::bitflags! {
    /// A connection's yes/no states.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) struct State: u8 {
        /// The peer ended its side: a read returned end of stream.
        const EOF = 1;
        /// The application heartbeat applies.
        const HEARTBEAT = 1 << 1;
        /// The first ping was sent: the pings follow the silence from then on, with no phase.
        const PINGED = 1 << 2;
        /// The handler was told the connection reached `max_age`.
        const MAX_AGE_NOTICED = 1 << 3;
        /// The handler was told to drain (the shutdown's first stage).
        const DRAIN_TOLD = 1 << 4;
        /// The connection saw an upgrade's hand-over, which it cannot join: counted among the
        /// connections that stay until it ends.
        const STAYS = 1 << 5;
    }
}

bitflags::bitflags! {
    /// Signals set by the layer and not yet taken by the handler.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Pending: u8 {
        const CLOSE = 1;
        const DRAIN = 1 << 1;
        const GOAWAY = 1 << 2;
        const PING = 1 << 3;
    }
}

/// A connection's shared state. Times are microseconds after accept (0: none), as the JSON
/// connection keeps them, so that an entry needs no `Instant` (16 bytes) per clock.
pub(crate) struct Watch {
    pub(super) info: SharedInfo,
    /// What the connections accepted under one configuration share (registry, metrics, the
    /// configuration in force, the buffer budget).
    pub(super) shared: Arc<ConnShared>,
    life: Life,
    /// The last sign of life.
    life_us: AtomicU64,
    /// Since when a write has been refused by a full send buffer, plus one; 0 while writes go.
    out_since_us: AtomicU64,
    /// When the frame in progress began, plus one; 0 between frames.
    frame_since_us: AtomicU64,
    state: AtomicU8,
    pending: AtomicU8,
    /// The window of the `goaway` pending, in milliseconds.
    goaway_ms: AtomicU32,
    /// The reason the layer closes the connection with.
    closing: FirstReason,
    /// The reason a socket error names: the first error wins.
    failed: FirstReason,
    pings_sent: AtomicU32,
    /// The handler's wait for a signal.
    signal_waker: AtomicWaker,
}

impl Watch {
    pub fn new(info: SharedInfo, shared: Arc<ConnShared>, life: Life) -> Watch {
        let heartbeat = shared.params.heartbeat == HeartbeatMode::Required;
        info.heartbeat(heartbeat, 0);
        let state = match heartbeat {
            true => State::HEARTBEAT,
            false => State::empty(),
        };
        Watch {
            info,
            shared,
            life,
            life_us: AtomicU64::new(0),
            out_since_us: AtomicU64::new(0),
            frame_since_us: AtomicU64::new(0),
            state: AtomicU8::new(state.bits()),
            pending: AtomicU8::new(0),
            goaway_ms: AtomicU32::new(0),
            closing: FirstReason::default(),
            failed: FirstReason::default(),
            pings_sent: AtomicU32::new(0),
            signal_waker: AtomicWaker::new(),
        }
    }

    pub(super) fn started(&self) -> Instant {
        Instant::from_std(self.info.started())
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started()).as_micros() as u64
    }

    fn at(&self, stamp: u64) -> Instant {
        self.started() + Duration::from_micros(stamp)
    }

    /// The instant a `+1` stamp names, or `None` for 0.
    fn at_marked(&self, marked: &AtomicU64) -> Option<Instant> {
        match marked.load(Ordering::Relaxed) {
            0 => None,
            stamp => Some(self.at(stamp - 1)),
        }
    }

    pub(super) fn state(&self) -> State {
        State::from_bits_retain(self.state.load(Ordering::Acquire))
    }

    pub(super) fn set(&self, state: State) {
        self.state.fetch_or(state.bits(), Ordering::AcqRel);
    }

    pub(super) fn last_life(&self) -> Instant {
        self.at(self.life_us.load(Ordering::Relaxed))
    }

    pub(super) fn out_since(&self) -> Option<Instant> {
        self.at_marked(&self.out_since_us)
    }

    pub(super) fn frame_since(&self) -> Option<Instant> {
        self.at_marked(&self.frame_since_us)
    }

    pub(super) fn pings_sent(&self) -> u32 {
        self.pings_sent.load(Ordering::Relaxed)
    }

    /// `n` bytes read: counted in the entry and the metrics, and a sign of life unless the
    /// protocol says which frames are.
    pub(super) fn received(&self, n: usize) {
        let now = Instant::now();
        self.info.received(n, now.into_std());
        self.shared.metrics.bytes_received(n);
        if self.life == Life::AnyByte {
            self.alive_at(now);
        }
    }

    /// The peer is alive as of `now`: the heartbeat's silence starts again.
    pub(super) fn alive_at(&self, now: Instant) {
        self.life_us.store(self.stamp(now), Ordering::Relaxed);
        // Read first: every read comes here, and a write each time would dirty the line.
        if self.pings_sent.load(Ordering::Relaxed) != 0
            && self.pings_sent.swap(0, Ordering::Relaxed) != 0
        {
            let heartbeat = self.state().contains(State::HEARTBEAT);
            self.info.heartbeat(heartbeat, 0);
        }
    }

    /// `n` bytes written: the output moves.
    pub(super) fn sent(&self, n: usize) {
        self.info.sent(n, std::time::Instant::now());
        self.shared.metrics.bytes_sent(n);
        self.out_since_us.store(0, Ordering::Relaxed);
    }

    /// A write found the send buffer full: `write_timeout` runs from the first such refusal.
    pub(super) fn write_blocked(&self) {
        if self.out_since_us.load(Ordering::Relaxed) == 0 {
            let stamp = self.stamp(Instant::now()) + 1;
            self.out_since_us.store(stamp, Ordering::Relaxed);
        }
    }

    /// A frame began (`true`, at its first byte: a later call keeps the first) or ended.
    pub(super) fn frame(&self, begun: bool) {
        let stamp = match begun {
            true if self.frame_since_us.load(Ordering::Relaxed) != 0 => return,
            true => self.stamp(Instant::now()) + 1,
            false => 0,
        };
        self.frame_since_us.store(stamp, Ordering::Relaxed);
    }

    /// The peer ended its side.
    pub(super) fn end_of_stream(&self) {
        self.set(State::EOF);
    }

    /// A socket error, named once (the first one is the cause).
    pub(super) fn failed(&self, reason: CloseReason) {
        self.failed.set(reason);
    }

    /// The reason a socket error named.
    pub(super) fn failure(&self) -> Option<CloseReason> {
        self.failed.get()
    }

    /// The reason the layer decided to close with.
    pub(super) fn closing(&self) -> Option<CloseReason> {
        self.closing.get()
    }

    /// Decides the close, tells the handler. False when one was decided already.
    pub(super) fn close(&self, reason: CloseReason) -> bool {
        let decided = self.closing.set(reason);
        if decided {
            self.signal(Pending::CLOSE);
        }
        decided
    }

    pub(super) fn ping(&self) {
        let sent = self.pings_sent.fetch_add(1, Ordering::Relaxed) + 1;
        self.set(State::PINGED);
        self.info.heartbeat(true, sent);
        self.signal(Pending::PING);
    }

    pub(super) fn goaway(&self, within: Duration) {
        let ms = within.as_millis().min(u32::MAX.into()) as u32;
        self.goaway_ms.store(ms, Ordering::Release);
        self.signal(Pending::GOAWAY);
    }

    pub(super) fn drain(&self) {
        self.set(State::DRAIN_TOLD);
        self.signal(Pending::DRAIN);
    }

    fn signal(&self, pending: Pending) {
        self.pending.fetch_or(pending.bits(), Ordering::AcqRel);
        self.signal_waker.wake();
    }

    /// Takes the most urgent pending signal, or registers the handler's wait.
    pub(super) fn poll_signal(&self, cx: &mut Context<'_>) -> Poll<Signal> {
        if let Some(signal) = self.take_signal() {
            return Poll::Ready(signal);
        }
        self.signal_waker.register(cx.waker());
        match self.take_signal() {
            Some(signal) => Poll::Ready(signal),
            None => Poll::Pending,
        }
    }

    fn take_signal(&self) -> Option<Signal> {
        let pending = Pending::from_bits_retain(self.pending.load(Ordering::Acquire));
        // The close is never taken: once decided, every later wait sees it too.
        if pending.contains(Pending::CLOSE) {
            return self.closing().map(Signal::Close);
        }
        let first = [Pending::DRAIN, Pending::GOAWAY, Pending::PING]
            .into_iter()
            .find(|one| pending.contains(*one))?;
        self.pending.fetch_and(!first.bits(), Ordering::AcqRel);
        Some(match first {
            Pending::DRAIN => Signal::Drain,
            Pending::GOAWAY => Signal::GoAway {
                within: Duration::from_millis(self.goaway_ms.load(Ordering::Acquire).into()),
            },
            _ => Signal::Ping,
        })
    }

    /// Turns the heartbeat on, unless the configuration turned it off.
    pub(super) fn enable_heartbeat(&self) {
        if self.shared.params.heartbeat == HeartbeatMode::Off {
            return;
        }
        self.set(State::HEARTBEAT);
        self.info.heartbeat(true, self.pings_sent());
    }

    /// The connection holds `bytes` of a partial frame: reported to the budget
    /// (`max_buffered`), which closes the largest holders when the total passes it.
    pub(super) fn hold(&self, bytes: usize) {
        let shared = &self.shared;
        let limit = || shared.live.config().max_buffered;
        (shared.live.buffers).report(&self.info, bytes, limit, &shared.registry);
    }

    /// Stops the registry from using the socket's descriptor: the stream is about to close it.
    pub(super) fn release_socket(&self) {
        self.shared.registry.release_socket(&self.info);
    }
}
