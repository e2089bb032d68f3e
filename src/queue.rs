//! The bounded queue between the connections and the sink, with its overflow policy.
//!
//! Storage is a lock-free segmented queue ([`crossbeam_queue::SegQueue`]), so items from many
//! connections pass without a global lock, and memory follows the depth: an idle server does not
//! hold `capacity` empty slots. The bound is kept by counting. Under `backpressure` a semaphore
//! counts free slots: a producer
//! waits for one, which parks its connection's read loop, so TCP flow control slows that client
//! and nothing is dropped. Under `drop-newest` the new item is handed back; under `drop-oldest`
//! the evicted one is. Either way the caller tells the sender, and the drop is counted here.
//!
//! Like an mpsc channel, the queue closes when the last [`Producer`] is dropped: the consumer
//! then drains what is left and sees the end.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;
use tokio::sync::{Notify, Semaphore};

use crate::config::Overflow;

struct Shared<T> {
    items: SegQueue<T>,
    capacity: usize,
    /// Items queued (or about to be: a push counts before it stores).
    len: AtomicUsize,
    /// Free slots; used under `backpressure` only.
    space: Semaphore,
    /// Wakes the consumer after a push or when the last producer leaves.
    ready: Notify,
    producers: AtomicUsize,
    overflow: Overflow,
    pushed: AtomicU64,
    dropped: AtomicU64,
}

/// The sending side; cloned once per connection.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving side; one per queue.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
}

/// A read-only view of a queue's counters; it neither sends nor keeps the queue open.
pub struct Monitor<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Monitor<T> {
    fn clone(&self) -> Self {
        Monitor {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> std::fmt::Debug for Monitor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<T> Monitor<T> {
    /// The queue's counters now.
    pub fn stats(&self) -> QueueStats {
        stats(&self.shared)
    }
}

/// Counters of a queue, readable from any side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Items queued now.
    pub depth: usize,
    /// Most items the queue holds.
    pub capacity: usize,
    /// Items taken since start.
    pub pushed: u64,
    /// Items dropped by the overflow policy since start.
    pub dropped: u64,
}

/// What became of a push.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// The item is queued.
    Queued,
    /// `drop-newest` and the queue was full: this item was not taken.
    Rejected(T),
    /// `drop-oldest` and the queue was full: the new item was taken and this one evicted.
    Evicted(T),
}

/// A queue of `capacity` items with the given overflow policy.
pub fn bounded<T>(capacity: usize, overflow: Overflow) -> (Producer<T>, Consumer<T>) {
    assert!(capacity > 0, "queue capacity is validated to be at least 1");
    let permits = if overflow == Overflow::Backpressure {
        capacity
    } else {
        0
    };
    let shared = Arc::new(Shared {
        items: SegQueue::new(),
        capacity,
        len: AtomicUsize::new(0),
        space: Semaphore::new(permits),
        ready: Notify::new(),
        producers: AtomicUsize::new(1),
        overflow,
        pushed: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    });
    (
        Producer {
            shared: Arc::clone(&shared),
        },
        Consumer { shared },
    )
}

fn stats<T>(shared: &Shared<T>) -> QueueStats {
    QueueStats {
        depth: shared.items.len(),
        capacity: shared.capacity,
        pushed: shared.pushed.load(Ordering::Relaxed),
        dropped: shared.dropped.load(Ordering::Relaxed),
    }
}

impl<T> Producer<T> {
    /// Offers an item. Under `backpressure` this waits until there is room.
    pub async fn push(&self, item: T) -> Pushed<T> {
        match self.try_push(item) {
            Ok(outcome) => outcome,
            Err(item) => {
                let slot = self
                    .shared
                    .space
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                self.push_with_slot(slot, item)
            }
        }
    }

    /// Offers an item without waiting: `Err` hands it back when `backpressure` would wait.
    pub fn try_push(&self, item: T) -> Result<Pushed<T>, T> {
        let shared = &*self.shared;
        let outcome = match shared.overflow {
            Overflow::Backpressure => {
                return match shared.space.try_acquire() {
                    Ok(slot) => Ok(self.push_with_slot(slot, item)),
                    Err(_) => Err(item),
                };
            }
            Overflow::DropNewest => {
                let claimed = shared
                    .len
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < shared.capacity).then_some(n + 1)
                    });
                if claimed.is_err() {
                    Pushed::Rejected(item)
                } else {
                    shared.items.push(item);
                    Pushed::Queued
                }
            }
            Overflow::DropOldest => {
                let full = shared.len.fetch_add(1, Ordering::AcqRel) >= shared.capacity;
                // Evict first, so the queue never holds more than its capacity for long.
                let evicted = if full { shared.items.pop() } else { None };
                if evicted.is_some() {
                    shared.len.fetch_sub(1, Ordering::AcqRel);
                }
                shared.items.push(item);
                match evicted {
                    Some(evicted) => Pushed::Evicted(evicted),
                    None => Pushed::Queued,
                }
            }
        };
        match &outcome {
            Pushed::Queued => {
                shared.pushed.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::Evicted(_) => {
                shared.pushed.fetch_add(1, Ordering::Relaxed);
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::Rejected(_) => {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        shared.ready.notify_one();
        Ok(outcome)
    }

    fn push_with_slot(&self, slot: tokio::sync::SemaphorePermit<'_>, item: T) -> Pushed<T> {
        let shared = &*self.shared;
        // The slot is returned by the consumer once it pops the item.
        slot.forget();
        shared.len.fetch_add(1, Ordering::AcqRel);
        shared.items.push(item);
        shared.pushed.fetch_add(1, Ordering::Relaxed);
        shared.ready.notify_one();
        Pushed::Queued
    }

    /// The queue's counters now.
    pub fn stats(&self) -> QueueStats {
        stats(&self.shared)
    }
}

impl<T> Clone for Producer<T> {
    fn clone(&self) -> Self {
        self.shared.producers.fetch_add(1, Ordering::Relaxed);
        Producer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        if self.shared.producers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.ready.notify_one();
        }
    }
}

impl<T> Consumer<T> {
    /// A view of the counters that outlives this consumer.
    pub fn monitor(&self) -> Monitor<T> {
        Monitor {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Moves up to `max` items into `out`, waiting while the queue is empty. Returns false once
    /// every producer is gone and the queue is empty.
    pub async fn pop_batch(&mut self, max: usize, out: &mut Vec<T>) -> bool {
        let shared = &*self.shared;
        loop {
            let mut taken = 0;
            while taken < max {
                match shared.items.pop() {
                    Some(item) => {
                        out.push(item);
                        taken += 1;
                    }
                    None => break,
                }
            }
            if taken > 0 {
                shared.len.fetch_sub(taken, Ordering::AcqRel);
                if shared.overflow == Overflow::Backpressure {
                    shared.space.add_permits(taken);
                }
                return true;
            }
            if shared.producers.load(Ordering::Acquire) == 0 && shared.items.is_empty() {
                return false;
            }
            // A push between the pop above and this wait leaves a stored notification, so
            // no wake-up is lost.
            shared.ready.notified().await;
        }
    }

    /// The queue's counters now.
    pub fn stats(&self) -> QueueStats {
        stats(&self.shared)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn backpressure_waits_for_room_and_loses_nothing() {
        let (producer, mut consumer) = bounded::<u32>(2, Overflow::Backpressure);
        let writer = tokio::spawn(async move {
            for i in 0..100 {
                assert_eq!(producer.push(i).await, Pushed::Queued);
            }
        });
        let mut all = Vec::new();
        while consumer.pop_batch(1, &mut all).await {}
        writer.await.unwrap();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(consumer.stats().dropped, 0);
    }

    #[tokio::test]
    async fn drop_newest_hands_back_the_new_item() {
        let (producer, _consumer) = bounded::<u32>(1, Overflow::DropNewest);
        assert_eq!(producer.push(1).await, Pushed::Queued);
        assert_eq!(producer.push(2).await, Pushed::Rejected(2));
        assert_eq!(producer.stats().dropped, 1);
    }

    #[tokio::test]
    async fn drop_oldest_hands_back_the_evicted_item() {
        let (producer, mut consumer) = bounded::<u32>(2, Overflow::DropOldest);
        producer.push(1).await;
        producer.push(2).await;
        assert_eq!(producer.push(3).await, Pushed::Evicted(1));
        drop(producer);
        let mut out = Vec::new();
        while consumer.pop_batch(10, &mut out).await {}
        assert_eq!(out, vec![2, 3]);
    }

    #[tokio::test]
    async fn consumer_ends_when_last_producer_leaves() {
        let (producer, mut consumer) = bounded::<u32>(4, Overflow::Backpressure);
        let second = producer.clone();
        drop(producer);
        let waiting = tokio::spawn(async move {
            let mut out = Vec::new();
            let more = consumer.pop_batch(4, &mut out).await;
            (more, out)
        });
        second.push(7).await;
        let (more, out) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(more);
        assert_eq!(out, vec![7]);
        drop(second);
    }
}
