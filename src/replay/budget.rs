//! The memory bound of one replay route (`replay_bytes`): every ring of the route counts what it
//! holds here, and past the bound the route's oldest events are evicted first, whichever topic they
//! belong to.
//!
//! The budget keeps the route's events in the order they were recorded (a ring and a sequence each).
//! Eviction runs outside every other lock: it takes the oldest entry from this queue, then locks that
//! entry's ring. Entries whose event already left (evicted by its topic's `replay` count, or its
//! topic retired) are skipped, and the queue is compacted when they outnumber the held events.

use super::ring::Ring;
use sluice_bridge::lock;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The byte bound shared by every ring of one route.
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    order: Mutex<VecDeque<(Weak<Mutex<Ring>>, u64)>>,
    /// The length of `order`, readable without its lock.
    queued: AtomicUsize,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.limit)
            .field("used", &self.used())
            .finish()
    }
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
            order: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
        })
    }

    /// Bytes held by the route's rings now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(super) fn charge(&self, cost: usize) {
        self.used.fetch_add(cost, Ordering::Relaxed);
    }

    pub(super) fn refund(&self, cost: usize) {
        self.used.fetch_sub(cost, Ordering::Relaxed);
    }

    /// Notes that `ring` recorded event `seq`, the newest of the route.
    pub(super) fn recorded(&self, ring: &Weak<Mutex<Ring>>, seq: u64) {
        let mut order = lock(&self.order);
        order.push_back((ring.clone(), seq));
        self.queued.store(order.len(), Ordering::Relaxed);
    }

    /// Evicts the route's oldest events until it is within its bound. Call it with no ring or topic
    /// locked: it locks the rings it evicts from.
    pub fn enforce(&self) {
        let mut checked = 0usize;
        while self.used() > self.limit {
            let popped = {
                let mut order = lock(&self.order);
                let popped = order.pop_front();
                self.queued.store(order.len(), Ordering::Relaxed);
                popped
            };
            let Some((ring, seq)) = popped else {
                break;
            };
            if let Some(ring) = ring.upgrade() {
                lock(&ring).evict(seq);
            }
            checked += 1;
        }
        if checked == 0 {
            self.compact_if_stale();
        }
    }

    /// Drops queue entries whose events are gone, once the queue is much longer than what the rings
    /// can hold (every entry costs at least the ring's per-event overhead), so the queue stays
    /// proportional to what is held.
    fn compact_if_stale(&self) {
        let held_at_most = self.used() / 64 + 1024;
        if self.queued.load(Ordering::Relaxed) <= 2 * held_at_most {
            return;
        }
        // Checked without holding the queue's lock (a ring records into it while locked).
        let taken = std::mem::take(&mut *lock(&self.order));
        let kept: VecDeque<(Weak<Mutex<Ring>>, u64)> = taken
            .into_iter()
            .filter(|(ring, seq)| ring.upgrade().is_some_and(|r| lock(&r).holds(*seq)))
            .collect();
        let mut order = lock(&self.order);
        // What was recorded meanwhile is newer: it goes after the kept entries.
        let newer = std::mem::replace(&mut *order, kept);
        order.extend(newer);
        self.queued.store(order.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn the_queue_does_not_grow_with_events_that_left_by_themselves() {
        let budget = Budget::new(usize::MAX);
        let ring = Ring::new(1, budget.clone());
        let topic: Arc<str> = Arc::from("t");
        for seq in 1..50_000 {
            lock(&ring).record(seq, &topic, Bytes::from_static(b"data: x\n\n"));
            budget.enforce();
        }
        assert!(
            lock(&budget.order).len() < 4096,
            "{}",
            lock(&budget.order).len()
        );
        assert!(lock(&ring).holds(49_999));
    }
}
