//! One topic's replay ring: the encoded frames of its last events, in sequence order, shared with
//! every stream that reads them (a resume is refcount bumps, never an encoding or a copy).
//!
//! A topic is one broker subscription; on a wildcard route it carries many concrete topics, whose
//! events share one sequence. The ring keeps the last `per_topic` events of each concrete topic, and
//! the route's [`Budget`] bounds the bytes of all its rings together. An event can thus leave from
//! the middle of the sequence: its slot becomes a tombstone until it reaches the front, and the ring
//! is compacted when tombstones outnumber live events, so its size stays proportional to what it
//! holds.

use super::budget::Budget;
use crate::sse::{self, GapReason};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

/// What one held event costs besides its frame: its slot, its place in its concrete topic's list,
/// and the allocator's share. Counted against the budget with the frame.
const EVENT_OVERHEAD: usize = 96;
/// What a concrete topic costs besides its name: its map entry and list.
const TOPIC_OVERHEAD: usize = 96;

/// One position of the sequence: a held event, or a tombstone once it was evicted.
struct Slot {
    seq: u64,
    /// `None` once evicted.
    frame: Option<Bytes>,
    /// The concrete topic (shared with `Ring::by_topic`'s key).
    topic: Arc<str>,
}

/// The replay ring of one topic.
pub struct Ring {
    per_topic: usize,
    slots: VecDeque<Slot>,
    /// The held sequences of each concrete topic, oldest first.
    by_topic: HashMap<Arc<str>, VecDeque<u64>>,
    /// The last sequence recorded (0 before the first).
    head: u64,
    /// Held events, and what they cost (frames and overheads).
    live: usize,
    bytes: usize,
    budget: Arc<Budget>,
    /// This ring, as the budget finds it to evict from it.
    this: Weak<Mutex<Ring>>,
}

/// What [`Ring::read_after`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Read {
    /// The position after the last frame read (or skipped as lost).
    pub cursor: u64,
    /// True when nothing is left after `cursor`: the reader has caught up with the ring.
    pub caught_up: bool,
}

impl Ring {
    /// A new ring keeping `per_topic` events of each concrete topic, within `budget`.
    pub fn new(per_topic: usize, budget: Arc<Budget>) -> Arc<Mutex<Ring>> {
        Arc::new_cyclic(|this| {
            Mutex::new(Ring {
                per_topic: per_topic.max(1),
                slots: VecDeque::new(),
                by_topic: HashMap::new(),
                head: 0,
                live: 0,
                bytes: 0,
                budget,
                this: this.clone(),
            })
        })
    }

    /// The last sequence recorded.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The first sequence held, if any.
    pub fn first(&self) -> Option<u64> {
        self.slots.iter().find(|s| s.frame.is_some()).map(|s| s.seq)
    }

    /// Bytes held (frames and overheads), as counted against the budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `frame` as event `seq` (sequences only grow) of concrete topic `topic`, evicting that
    /// topic's oldest event past `per_topic`. The budget is enforced by the caller, outside its
    /// locks ([`Budget::enforce`]).
    pub fn record(&mut self, seq: u64, topic: &Arc<str>, frame: Bytes) {
        self.head = seq;
        let key = match self.by_topic.get_key_value(topic) {
            Some((key, _)) => key.clone(),
            None => {
                self.by_topic.insert(topic.clone(), VecDeque::new());
                self.charge(topic.len() + TOPIC_OVERHEAD);
                topic.clone()
            }
        };
        let oldest = match self.by_topic.get_mut(&key) {
            Some(seqs) if seqs.len() >= self.per_topic => seqs.pop_front(),
            _ => None,
        };
        if let Some(oldest) = oldest {
            self.tombstone(oldest);
        }
        if let Some(seqs) = self.by_topic.get_mut(&key) {
            seqs.push_back(seq);
        }
        let cost = frame.len() + EVENT_OVERHEAD;
        self.slots.push_back(Slot {
            seq,
            frame: Some(frame),
            topic: key,
        });
        self.live += 1;
        self.charge(cost);
        self.budget.recorded(&self.this, seq);
        self.tidy();
    }

    /// Evicts event `seq` if it is still held (the budget's oldest-first eviction).
    pub fn evict(&mut self, seq: u64) {
        let Some(topic) = self.tombstone(seq) else {
            return;
        };
        if let Some(seqs) = self.by_topic.get_mut(&topic) {
            if let Some(at) = seqs.iter().position(|s| *s == seq) {
                seqs.remove(at);
            }
            if seqs.is_empty() {
                self.by_topic.remove(&topic);
                self.refund(topic.len() + TOPIC_OVERHEAD);
            }
        }
        self.tidy();
    }

    /// True when event `seq` is held.
    pub fn holds(&self, seq: u64) -> bool {
        self.index_of(seq)
            .is_some_and(|at| self.slots[at].frame.is_some())
    }

    /// Appends to `into` up to `max` frames after position `cursor`, in order, with a `gap` event
    /// (reason `expired`, with the count) before each run of events that were evicted.
    pub fn read_after(&self, cursor: u64, max: usize, into: &mut Vec<Bytes>) -> Read {
        let mut cursor = cursor.min(self.head);
        let start = self.slots.partition_point(|s| s.seq <= cursor);
        let mut taken = 0;
        for slot in self.slots.range(start..) {
            let Some(frame) = &slot.frame else {
                continue;
            };
            if taken >= max {
                return Read {
                    cursor,
                    caught_up: false,
                };
            }
            let lost = slot.seq - cursor - 1;
            if lost > 0 {
                into.push(sse::gap(GapReason::Expired, Some(lost)));
            }
            into.push(frame.clone());
            taken += 1;
            cursor = slot.seq;
        }
        // Events after the last one held were evicted too (or the ring is empty).
        if self.head > cursor {
            into.push(sse::gap(GapReason::Expired, Some(self.head - cursor)));
            cursor = self.head;
        }
        Read {
            cursor,
            caught_up: true,
        }
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        let at = self.slots.partition_point(|s| s.seq < seq);
        (self.slots.get(at)?.seq == seq).then_some(at)
    }

    /// Turns event `seq` into a tombstone; returns its concrete topic if it was held.
    fn tombstone(&mut self, seq: u64) -> Option<Arc<str>> {
        let at = self.index_of(seq)?;
        let slot = &mut self.slots[at];
        let frame = slot.frame.take()?;
        let topic = slot.topic.clone();
        self.live -= 1;
        self.refund(frame.len() + EVENT_OVERHEAD);
        Some(topic)
    }

    /// Drops tombstones at the front, and compacts when they outnumber the held events.
    fn tidy(&mut self) {
        while self.slots.front().is_some_and(|s| s.frame.is_none()) {
            self.slots.pop_front();
        }
        if self.slots.len() > 2 * self.live + 64 {
            self.slots.retain(|s| s.frame.is_some());
            self.slots.shrink_to(self.slots.len() * 2);
        }
    }

    fn charge(&mut self, cost: usize) {
        self.bytes += cost;
        self.budget.charge(cost);
    }

    fn refund(&mut self, cost: usize) {
        self.bytes -= cost;
        self.budget.refund(cost);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The budget's queue may still name this ring's events: they are skipped as gone.
        self.budget.refund(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(ring: &Mutex<Ring>) -> std::sync::MutexGuard<'_, Ring> {
        ring.lock().expect("ring lock")
    }

    fn frame(text: &str) -> Bytes {
        Bytes::from(format!("data: {text}\n\n"))
    }

    fn read(ring: &Ring, cursor: u64, max: usize) -> (Vec<String>, Read) {
        let mut frames = Vec::new();
        let read = ring.read_after(cursor, max, &mut frames);
        let text = frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        (text, read)
    }

    #[test]
    fn keeps_the_last_n_of_each_topic_and_reads_in_sequence_order() {
        let budget = Budget::new(usize::MAX);
        let ring = Ring::new(2, budget.clone());
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        {
            let mut ring = lock(&ring);
            ring.record(1, &a, frame("a1"));
            ring.record(2, &b, frame("b1"));
            ring.record(3, &a, frame("a2"));
            ring.record(4, &a, frame("a3"));
        }
        let ring = lock(&ring);
        let (frames, end) = read(&ring, 0, 10);
        // a1 (seq 1) was evicted for a3: one event lost before b1.
        assert_eq!(
            frames,
            [
                "event: gap\ndata: {\"reason\":\"expired\",\"lost\":1}\n\n",
                "data: b1\n\n",
                "data: a2\n\n",
                "data: a3\n\n"
            ]
        );
        assert_eq!(
            end,
            Read {
                cursor: 4,
                caught_up: true
            }
        );
        let (frames, end) = read(&ring, 2, 1);
        assert_eq!(frames, ["data: a2\n\n"]);
        assert_eq!(
            end,
            Read {
                cursor: 3,
                caught_up: false
            }
        );
        assert_eq!(read(&ring, 4, 10).0, Vec::<String>::new());
    }

    #[test]
    fn the_budget_evicts_the_oldest_of_every_ring_and_counts_exactly() {
        let frame_cost = frame("xx").len() + EVENT_OVERHEAD;
        let topic_cost = 1 + TOPIC_OVERHEAD;
        // Room for two topics with two events each.
        let budget = Budget::new(2 * topic_cost + 4 * frame_cost);
        let first = Ring::new(100, budget.clone());
        let second = Ring::new(100, budget.clone());
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        lock(&first).record(1, &a, frame("a1"));
        lock(&second).record(1, &b, frame("b1"));
        lock(&first).record(2, &a, frame("a2"));
        lock(&second).record(2, &b, frame("b2"));
        budget.enforce();
        assert_eq!(budget.used(), 2 * topic_cost + 4 * frame_cost);
        lock(&first).record(3, &a, frame("a3"));
        budget.enforce();
        // The oldest event of all (a1) went.
        assert!(!lock(&first).holds(1));
        assert!(lock(&second).holds(1));
        lock(&second).record(3, &b, frame("b3"));
        budget.enforce();
        assert!(!lock(&second).holds(1));
        assert_eq!(budget.used(), 2 * topic_cost + 4 * frame_cost);
        drop(first);
        assert_eq!(budget.used(), topic_cost + 2 * frame_cost);
        // The queue still names the dropped ring's events; enforcing skips them.
        budget.enforce();
        assert_eq!(lock(&second).first(), Some(2));
    }

    #[test]
    fn tombstones_in_the_middle_are_compacted() {
        let budget = Budget::new(usize::MAX);
        let ring = Ring::new(1, budget.clone());
        let (quiet, busy): (Arc<str>, Arc<str>) = (Arc::from("quiet"), Arc::from("busy"));
        let mut ring = lock(&ring);
        ring.record(1, &quiet, frame("q"));
        for seq in 2..10_000 {
            ring.record(seq, &busy, frame("b"));
        }
        assert!(
            ring.slots.len() <= 2 * ring.live + 64,
            "{}",
            ring.slots.len()
        );
        assert_eq!(ring.live, 2);
        let (frames, _) = read(&ring, 0, 10);
        assert_eq!(frames[0], "data: q\n\n");
        assert!(frames[1].contains("\"lost\":9997"), "{}", frames[1]);
        assert_eq!(frames[2], "data: b\n\n");
    }

    #[test]
    fn an_empty_ring_reports_what_was_evicted_at_its_end() {
        let budget = Budget::new(0);
        let ring = Ring::new(10, budget.clone());
        lock(&ring).record(1, &Arc::from("t"), frame("x"));
        budget.enforce();
        let (frames, end) = read(&lock(&ring), 0, 10);
        assert_eq!(
            frames,
            ["event: gap\ndata: {\"reason\":\"expired\",\"lost\":1}\n\n"]
        );
        assert!(end.caught_up);
        assert_eq!(budget.used(), 0);
    }
}
