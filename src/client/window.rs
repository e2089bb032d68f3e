//! The items a client has taken but the server has not yet acknowledged, in order.
//!
//! Each item gets a sequence number, sent as its `id`. A slot is *sent* once its bytes went into
//! the connection's output, and *settled* once it is acknowledged or refused for good; settled
//! slots leave from the front, so the window always starts at the oldest unsettled item. After a
//! reconnect, [`Window::rewind`] makes every unsettled item unsent again: they go out once more,
//! in their order (at-least-once delivery; the only duplicates are items that were in flight).

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

/// One item of the window.
#[derive(Debug)]
struct Slot {
    /// The object without an `id`.
    object: Bytes,
    sent: bool,
    /// Sent on an earlier connection: sending it again counts as a resend.
    sent_before: bool,
    settled: bool,
}

/// What settling an id did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The slot was unsettled and is settled now.
    Now,
    /// The id was settled before, or is not one of this window's (a late duplicate ack).
    Unknown,
}

/// A bounded, ordered window of unacknowledged items.
#[derive(Debug)]
pub struct Window {
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    first_seq: u64,
    /// Index of the first slot that may be unsent (every slot before it is sent).
    cursor: usize,
    capacity: usize,
    /// Whether items carry an `id` (and so wait for an ack).
    with_ids: bool,
    /// Slots sent and not settled.
    in_flight: usize,
}

impl Window {
    /// An empty window of `capacity` items; `with_ids` makes frames carry the `id` acks echo.
    pub fn new(capacity: usize, with_ids: bool) -> Window {
        Window {
            slots: VecDeque::with_capacity(capacity.min(65_536)),
            first_seq: 0,
            cursor: 0,
            capacity: capacity.max(1),
            with_ids,
            in_flight: 0,
        }
    }

    /// Whether another item fits.
    pub fn has_room(&self) -> bool {
        self.slots.len() < self.capacity
    }

    /// Whether the window is worth refilling: empty, or at least a quarter free. Taking items
    /// one ack at a time would turn every ack into a tiny write on each side.
    pub fn wants_more(&self) -> bool {
        self.slots.is_empty() || self.slots.len() + self.capacity.div_ceil(4) <= self.capacity
    }

    /// No item is waiting for anything.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Items taken and not settled.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Items sent on this connection and not yet settled.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether some item waits to be sent.
    pub fn has_unsent(&self) -> bool {
        // Every slot before the cursor was sent, settled or handed back as too large.
        self.cursor < self.slots.len()
    }

    /// Takes an item (an object without `id`); returns its sequence number.
    pub fn push(&mut self, object: Bytes) -> u64 {
        debug_assert!(self.has_room());
        self.slots.push_back(Slot {
            object,
            sent: false,
            sent_before: false,
            settled: false,
        });
        self.first_seq + self.slots.len() as u64 - 1
    }

    /// Appends unsent items to `out` until it holds `max_bytes` or none is left. Items larger
    /// than `max_frame` (with their id) are not sent: they are returned to be refused.
    /// Returns (items appended, of which resends).
    pub fn fill(&mut self, out: &mut BytesMut, max_bytes: usize, max_frame: usize) -> Filled {
        let mut filled = Filled::default();
        while out.len() < max_bytes && self.cursor < self.slots.len() {
            let seq = self.first_seq + self.cursor as u64;
            let slot = &mut self.slots[self.cursor];
            self.cursor += 1;
            if slot.sent || slot.settled {
                continue;
            }
            let start = out.len();
            encode_frame(out, &slot.object, self.with_ids.then_some(seq));
            if out.len() - start > max_frame {
                out.truncate(start);
                filled.too_large.push(seq);
                continue;
            }
            slot.sent = true;
            self.in_flight += 1;
            filled.items += 1;
            if slot.sent_before {
                filled.resent += 1;
            }
        }
        filled
    }

    /// Settles the item `seq` (acknowledged, or refused for good).
    pub fn settle(&mut self, seq: u64) -> Settled {
        let Some(index) = seq.checked_sub(self.first_seq) else {
            return Settled::Unknown;
        };
        let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        else {
            return Settled::Unknown;
        };
        if slot.settled {
            return Settled::Unknown;
        }
        slot.settled = true;
        if slot.sent {
            self.in_flight -= 1;
        }
        self.pop_settled();
        Settled::Now
    }

    /// Settles every sent item: without ids, an item is done once the kernel has its bytes.
    /// Returns how many were settled.
    pub fn settle_sent(&mut self) -> usize {
        let mut settled = 0;
        for slot in self.slots.iter_mut().filter(|s| s.sent && !s.settled) {
            slot.settled = true;
            settled += 1;
        }
        self.in_flight = 0;
        self.pop_settled();
        settled
    }

    /// A new connection: every unsettled item is to be sent again, in order.
    pub fn rewind(&mut self) {
        for slot in self.slots.iter_mut() {
            if slot.sent {
                slot.sent = false;
                slot.sent_before = true;
            }
        }
        self.cursor = 0;
        self.in_flight = 0;
    }

    fn pop_settled(&mut self) {
        while self.slots.front().is_some_and(|s| s.settled) {
            self.slots.pop_front();
            self.first_seq += 1;
            self.cursor = self.cursor.saturating_sub(1);
        }
    }
}

/// What [`Window::fill`] appended.
#[derive(Debug, Default)]
pub struct Filled {
    /// Items appended.
    pub items: u64,
    /// Of which sent before, on an earlier connection.
    pub resent: u64,
    /// Sequence numbers of items too large for the server's `max_frame`.
    pub too_large: Vec<u64>,
}

/// Writes `object` as one line, with `"id":seq` as its first key when `seq` is given.
fn encode_frame(out: &mut BytesMut, object: &[u8], seq: Option<u64>) {
    match seq {
        Some(seq) => {
            // `object` is a validated JSON object with at least an `ip` key: `{` then content.
            out.put_slice(b"{\"id\":");
            out.put_slice(seq.to_string().as_bytes());
            out.put_u8(b',');
            out.put_slice(&object[1..]);
        }
        None => out.put_slice(object),
    }
    out.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u32) -> Bytes {
        Bytes::from(format!("{{\"ip\":\"10.0.0.{n}\"}}"))
    }

    fn lines(buf: &BytesMut) -> Vec<String> {
        std::str::from_utf8(buf)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn items_carry_their_sequence_as_id_and_leave_when_acked() {
        let mut window = Window::new(3, true);
        for n in 0..3 {
            assert_eq!(window.push(item(n)), u64::from(n));
        }
        assert!(!window.has_room());
        let mut out = BytesMut::new();
        let filled = window.fill(&mut out, usize::MAX, usize::MAX);
        assert_eq!(filled.items, 3);
        assert_eq!(
            lines(&out),
            [
                r#"{"id":0,"ip":"10.0.0.0"}"#,
                r#"{"id":1,"ip":"10.0.0.1"}"#,
                r#"{"id":2,"ip":"10.0.0.2"}"#
            ]
        );
        // Out of order: the front stays until it is settled itself.
        assert_eq!(window.settle(1), Settled::Now);
        assert_eq!(window.len(), 3);
        assert_eq!(window.settle(1), Settled::Unknown);
        assert_eq!(window.settle(0), Settled::Now);
        assert_eq!(window.len(), 1);
        assert_eq!(window.in_flight(), 1);
        assert_eq!(window.settle(0), Settled::Unknown);
        assert_eq!(window.settle(7), Settled::Unknown);
        assert_eq!(window.push(item(3)), 3);
    }

    #[test]
    fn rewind_resends_every_unsettled_item_in_order() {
        let mut window = Window::new(10, true);
        for n in 0..5 {
            window.push(item(n));
        }
        let mut out = BytesMut::new();
        window.fill(&mut out, usize::MAX, usize::MAX);
        window.settle(0);
        window.settle(2);
        window.push(item(5));
        window.rewind();
        out.clear();
        let filled = window.fill(&mut out, usize::MAX, usize::MAX);
        assert_eq!((filled.items, filled.resent), (4, 3));
        let ids: Vec<String> = lines(&out)
            .iter()
            .map(|l| l.split(',').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            ids,
            [r#"{"id":1"#, r#"{"id":3"#, r#"{"id":4"#, r#"{"id":5"#]
        );
    }

    #[test]
    fn fill_stops_at_the_byte_budget_and_refuses_oversized_items() {
        let mut window = Window::new(10, false);
        window.push(item(1));
        window.push(Bytes::from(format!(
            "{{\"ip\":\"1.1.1.1\",\"x\":\"{}\"}}",
            "a".repeat(100)
        )));
        window.push(item(2));
        let mut out = BytesMut::new();
        let filled = window.fill(&mut out, 1, 64);
        assert_eq!(filled.items, 1);
        let filled = window.fill(&mut out, usize::MAX, 64);
        assert_eq!(
            (filled.items, filled.too_large.as_slice()),
            (1, &[1u64][..])
        );
        assert_eq!(
            lines(&out),
            [r#"{"ip":"10.0.0.1"}"#, r#"{"ip":"10.0.0.2"}"#]
        );
        assert_eq!(window.settle_sent(), 2);
        assert_eq!(
            window.len(),
            2,
            "the oversized item holds the front until refused"
        );
        assert_eq!(window.settle(1), Settled::Now);
        assert!(window.is_empty());
    }
}
