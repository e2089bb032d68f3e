//! Paced drain, for rebalancing a fleet after a scale-out: a share of the live connections is
//! told `goaway` at an even pace over a window, so that their clients reconnect (through the
//! balancer, to the new capacity) without a wave, and without a restart.
//!
//! **Which connections**: the oldest first. A connection that has just arrived (perhaps from
//! another gateway's drain, or a client's reconnect) is not sent away again, and the oldest are
//! the ones placed before the capacity changed. Connections already closing or already told
//! `goaway` are not counted. The share is of the connections live when the drain starts.
//!
//! **How**: the `k`-th of `n` chosen is told at `k/n` of the window, with `goaway_window` as the
//! time its client has to reconnect (each client picks a random moment inside it). A client
//! that honours `goaway` (the client library, `send`) waits for the acks of its items in
//! flight and closes itself. A connection still open `goaway_window` + `shutdown_grace` after it
//! was told (a raw client that ignores the message) is closed as `drained`.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::close_reason::CloseReason;
use crate::metrics::Metrics;
use crate::registry::{Registry, SharedInfo};

/// What a drain is asked to do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DrainPlan {
    /// The share of the live connections to move, above 0 and at most 1.
    pub fraction: f64,
    /// The window over which they are told, at an even pace.
    pub over: Duration,
    /// The time each told client has to reconnect (`goaway_window`).
    pub reconnect_within: Duration,
    /// The time, after `reconnect_within`, before a told connection still open is closed as
    /// `drained` (`shutdown_grace`).
    pub grace: Duration,
}

/// Why a drain was not started.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DrainError {
    /// The fraction is not above 0 and at most 1.
    #[error("fraction {0} must be above 0 and at most 1")]
    Fraction(f64),
    /// Another drain is telling its connections; it can be cancelled first.
    #[error("a drain is under way ({told} of {chosen} told); cancel it first, or wait for it")]
    UnderWay {
        /// Connections it told so far.
        told: usize,
        /// Connections it chose.
        chosen: usize,
    },
}

/// Where a drain stands, as the admin API, the live page and `connwarden drain` show it.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct DrainStatus {
    /// `telling` (connections still to be told), `waiting` (all told; the ones that ignore it
    /// are still to be closed), `done` or `cancelled` (no more are told; those told still are
    /// closed when their time is up).
    pub state: String,
    /// The share asked for.
    pub fraction: f64,
    /// The window of the telling, in seconds.
    pub over_s: f64,
    /// The time each told client has to reconnect, in seconds.
    pub reconnect_within_s: f64,
    /// When the drain started.
    pub started_at: String,
    /// Connections live (and not already leaving) when it started.
    pub live_at_start: usize,
    /// Connections chosen: `fraction` of those, oldest first.
    pub chosen: usize,
    /// Connections told `goaway` so far (a chosen one that closed before its turn is skipped).
    pub told: usize,
    /// Told connections closed as `drained`, for ignoring the `goaway` past its window and
    /// grace.
    pub closed_as_drained: usize,
}

/// How often the closing task looks whether the told connection it waits for is gone.
const LOOK_EVERY: Duration = Duration::from_millis(100);

const TELLING: u8 = 0;
const WAITING: u8 = 1;
const DONE: u8 = 2;
const CANCELLED: u8 = 3;

/// One drain's progress, shared by its task and the readers of its status.
#[derive(Debug)]
struct Progress {
    plan: DrainPlan,
    started_at: SystemTime,
    live_at_start: usize,
    chosen: usize,
    told: AtomicUsize,
    drained: AtomicUsize,
    state: AtomicU8,
    cancel: CancellationToken,
}

impl Progress {
    fn status(&self) -> DrainStatus {
        let state = match self.state.load(Ordering::Acquire) {
            TELLING => "telling",
            WAITING => "waiting",
            DONE => "done",
            _ => "cancelled",
        };
        DrainStatus {
            state: state.to_owned(),
            fraction: self.plan.fraction,
            over_s: self.plan.over.as_secs_f64(),
            reconnect_within_s: self.plan.reconnect_within.as_secs_f64(),
            started_at: crate::view::timestamp(self.started_at),
            live_at_start: self.live_at_start,
            chosen: self.chosen,
            told: self.told.load(Ordering::Relaxed),
            closed_as_drained: self.drained.load(Ordering::Relaxed),
        }
    }

    fn telling(&self) -> bool {
        self.state.load(Ordering::Acquire) == TELLING
    }

    /// Moves from `from` to `to`, unless the state already moved on (a cancel).
    fn advance(&self, from: u8, to: u8) {
        let _ = self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Runs paced drains over a server's connections, one at a time; the last one's status stays
/// readable. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Rebalancer {
    registry: Registry,
    metrics: Arc<Metrics>,
    current: Mutex<Option<Arc<Progress>>>,
}

impl Rebalancer {
    /// A rebalancer of `registry`'s connections, reporting to `metrics`.
    pub fn new(registry: Registry, metrics: Arc<Metrics>) -> Rebalancer {
        Rebalancer {
            registry,
            metrics,
            current: Mutex::new(None),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<Arc<Progress>>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a drain as `plan` says, on the current Tokio runtime, and returns its status at
    /// start (what was chosen).
    pub fn start(&self, plan: DrainPlan) -> Result<DrainStatus, DrainError> {
        if !(plan.fraction > 0.0 && plan.fraction <= 1.0) {
            return Err(DrainError::Fraction(plan.fraction));
        }
        let mut current = self.current();
        if let Some(running) = current.as_ref().filter(|p| p.telling()) {
            return Err(DrainError::UnderWay {
                told: running.told.load(Ordering::Relaxed),
                chosen: running.chosen,
            });
        }
        let (live, chosen) = self.registry.oldest_staying(plan.fraction);
        let progress = Arc::new(Progress {
            plan,
            started_at: SystemTime::now(),
            live_at_start: live,
            chosen: chosen.len(),
            told: AtomicUsize::new(0),
            drained: AtomicUsize::new(0),
            state: AtomicU8::new(TELLING),
            cancel: CancellationToken::new(),
        });
        tracing::info!(
            fraction = plan.fraction,
            over_s = plan.over.as_secs_f64(),
            live,
            chosen = chosen.len(),
            "drain started: telling the oldest connections goaway at an even pace"
        );
        self.metrics.drain_started(chosen.len());
        *current = Some(Arc::clone(&progress));
        let status = progress.status();
        tokio::spawn(run(
            self.registry.clone(),
            Arc::clone(&self.metrics),
            progress,
            chosen,
        ));
        Ok(status)
    }

    /// The running drain's status, or the last one's; `None` before the first.
    pub fn status(&self) -> Option<DrainStatus> {
        self.current().as_ref().map(|progress| progress.status())
    }

    /// Stops telling more connections (those told still close when their time is up); the
    /// drain's status, `None` when none ever ran.
    pub fn cancel(&self) -> Option<DrainStatus> {
        let current = self.current();
        let progress = current.as_ref()?;
        progress.advance(TELLING, CANCELLED);
        progress.advance(WAITING, CANCELLED);
        progress.cancel.cancel();
        Some(progress.status())
    }
}

/// Tells the chosen connections at an even pace, and closes each told one still open when its
/// time is up, in a second task fed in the order they were told (their deadlines ascend).
async fn run(
    registry: Registry,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
    chosen: Vec<SharedInfo>,
) {
    let plan = progress.plan;
    let (told_tx, told_rx) = mpsc::unbounded_channel();
    let closer = tokio::spawn(close_when_due(
        registry.clone(),
        Arc::clone(&progress),
        told_rx,
    ));
    let start = Instant::now();
    let n = chosen.len() as u32;
    for (k, info) in chosen.into_iter().enumerate() {
        let turn = start + plan.over.mul_f64(f64::from(k as u32) / f64::from(n));
        tokio::select! {
            _ = tokio::time::sleep_until(turn) => {}
            _ = progress.cancel.cancelled() => break,
        }
        // Closed, or closing, since it was chosen: nothing to tell.
        if !registry.is_live(info.id) || info.closing_reason().is_some() {
            metrics.drain_skipped();
            continue;
        }
        info.ask_goaway(plan.reconnect_within);
        progress.told.fetch_add(1, Ordering::Relaxed);
        metrics.drain_told();
        let due = Instant::now() + plan.reconnect_within + plan.grace;
        let _ = told_tx.send((due, info));
    }
    drop(told_tx);
    metrics.drain_ended();
    progress.advance(TELLING, WAITING);
    let _ = closer.await;
    progress.advance(WAITING, DONE);
    let status = progress.status();
    tracing::info!(
        state = %status.state,
        chosen = status.chosen,
        told = status.told,
        closed_as_drained = status.closed_as_drained,
        "drain ended"
    );
}

async fn close_when_due(
    registry: Registry,
    progress: Arc<Progress>,
    mut told: mpsc::UnboundedReceiver<(Instant, SharedInfo)>,
) {
    while let Some((due, info)) = told.recv().await {
        // Looked at every so often rather than at `due` alone, so that the drain is seen done
        // as soon as its connections are gone.
        while registry.is_live(info.id) {
            let now = Instant::now();
            if now >= due {
                if info.ask_to_close(CloseReason::Drained) {
                    progress.drained.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            tokio::time::sleep((due - now).min(LOOK_EVERY)).await;
        }
    }
}
