//! Memory pressure: one budget (`max_buffered`) for the bytes of partial objects held across
//! all connections.
//!
//! Each connection may hold up to `max_frame` bytes of an object it has not finished reading;
//! thousands of peers each holding most of one (64 KiB × 20,000 = 1.3 GB) would exhaust the
//! gateway without breaking any per-connection limit. Connections report what their read
//! buffer holds after every read ([`BufferBudget::report`]); the read
//! that takes the total past the budget asks, there and then, the connections holding the most
//! to close (reason `memory_pressure`, told to the peer) until the rest fits. Done in the
//! reading connection rather than in a task of its own, so that no read waits for a task to be
//! scheduled while buffers keep growing. Whole items are never held across reads, so a
//! well-behaved client holds little and is closed last.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::registry::{ConnInfo, Registry, Relief};

/// How often, at most, the relief is logged (an attack may need many rounds).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The bytes of read buffers holding partial objects, across all connections.
#[derive(Debug, Default)]
pub(crate) struct BufferBudget {
    held: AtomicUsize,
    /// One relief at a time: a connection that finds one under way goes on reading, and the
    /// relief under way looks again before it ends ([`BufferBudget::recheck`]).
    relieving: Mutex<()>,
    /// Set by a connection whose growth passed the budget while a relief was under way: that
    /// relief may have measured the excess before the growth, and when every peer then stops
    /// sending, no later read would ever look again (found by the `max_buffered` siege test,
    /// which then stayed above the budget for good).
    recheck: AtomicBool,
    /// What the reliefs closed since the last log line.
    unlogged: Mutex<Relief>,
    /// Wakes [`log_reliefs`].
    relieved: Notify,
}

impl BufferBudget {
    /// `conn` now holds `held` bytes of a partial object (its read buffer's capacity, with a
    /// partial TLS record's): what it reported before leaves the budget and `held` enters it,
    /// and a growth past `limit` (asked only then: it reads the configuration in force) closes
    /// the largest holders among `registry`'s connections until the rest fits. A connection
    /// that goes reports 0.
    pub fn report(
        &self,
        conn: &ConnInfo,
        held: usize,
        limit: impl FnOnce() -> Option<u64>,
        registry: &Registry,
    ) {
        let held = held.min(u32::MAX as usize);
        let reported = conn.buffered() as usize;
        if held > reported {
            conn.set_buffered(held as u32);
            self.grow(reported, held, limit(), registry);
        } else if held < reported {
            conn.set_buffered(held as u32);
            self.shrink(reported, held);
        }
    }

    /// A connection's buffer grew from `from` to `to` bytes. When that takes the total past
    /// `limit`, closes the largest holders among `registry`'s connections until it fits.
    fn grow(&self, from: usize, to: usize, limit: Option<u64>, registry: &Registry) {
        let total = self.held.fetch_add(to - from, Ordering::Relaxed) + (to - from);
        if let Some(limit) = limit.filter(|&limit| total as u64 > limit) {
            self.relieve(limit, registry);
        }
    }

    /// A connection's buffer shrank from `from` to `to` bytes (or went: `to` is 0).
    fn shrink(&self, from: usize, to: usize) {
        self.held.fetch_sub(from - to, Ordering::Relaxed);
    }

    /// The bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn relieve(&self, limit: u64, registry: &Registry) {
        // Said before trying the lock: a relief under way that ends without seeing this flag
        // began after this connection's growth, and measured it.
        self.recheck.store(true, Ordering::SeqCst);
        loop {
            let Ok(one_at_a_time) = self.relieving.try_lock() else {
                return;
            };
            // A swap, not a store: reading a connection's flag orders its growth before the
            // measure below.
            self.recheck.swap(false, Ordering::SeqCst);
            let excess = (self.held() as u64).saturating_sub(limit) as usize;
            if excess > 0 {
                let relief = registry.close_largest_buffers(excess);
                if relief.closed > 0 {
                    let mut unlogged = self.unlogged.lock().unwrap_or_else(|p| p.into_inner());
                    unlogged.closed += relief.closed;
                    unlogged.bytes += relief.bytes;
                    self.relieved.notify_one();
                }
            }
            drop(one_at_a_time);
            if !self.recheck.load(Ordering::SeqCst) {
                return;
            }
        }
    }
}

/// What holds a [`BufferBudget`] and knows the limit in force (`max_buffered`, which a reload
/// may change): the connections' shared state, seen from here without importing it.
pub(crate) trait Budgeted: Send + Sync + 'static {
    /// The budget.
    fn budget(&self) -> &BufferBudget;
    /// `max_buffered` in force.
    fn limit(&self) -> Option<u64>;
}

/// Logs what the reliefs closed, at most once per [`LOG_EVERY`], until `stop`.
pub(crate) async fn log_reliefs(owner: Arc<impl Budgeted>, stop: CancellationToken) {
    let budget = owner.budget();
    loop {
        tokio::select! {
            _ = budget.relieved.notified() => {}
            _ = stop.cancelled() => return,
        }
        let relief =
            std::mem::take(&mut *budget.unlogged.lock().unwrap_or_else(|p| p.into_inner()));
        tracing::warn!(
            closed = relief.closed,
            freed_bytes = relief.bytes,
            held_bytes = budget.held(),
            max_buffered = owner.limit(),
            "partial objects exceeded max_buffered: closed the connections holding the most (memory_pressure)"
        );
        tokio::select! {
            _ = tokio::time::sleep(LOG_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}
