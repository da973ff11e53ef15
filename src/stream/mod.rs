//! One client stream's bounded queue: the hub pushes frames without ever waiting, the client's task
//! takes everything queued at once, and a full queue meets the route's overflow policy. A resuming
//! stream reads its backlog from a [`Backlog`] instead, a batch at a time as it drains, and joins the
//! live queue once it has caught up. On a route with `max_rate`, [`conflate`] holds each topic's
//! newest frame until its interval is over.

mod conflate;

use async_trait::async_trait;
use bytes::Bytes;
use conflate::{Admit, Conflation};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What happens when a stream's queue is full (a route's `overflow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Close that stream; the client reconnects.
    Disconnect,
    /// Discard the oldest queued events to make room.
    DropOldest,
}

/// Process-wide counts of what the overflow policies did.
#[derive(Debug, Default)]
pub struct OverflowStats {
    /// Streams closed by the `disconnect` policy.
    pub disconnects: AtomicU64,
    /// Events discarded by the `drop-oldest` policy.
    pub dropped_events: AtomicU64,
}

/// Why a stream's queue stopped delivering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The queue was full under the `disconnect` policy.
    Overflow,
    /// The broker subscription behind the stream could not be made.
    BrokerError,
    /// The server is shutting down (or draining for an upgrade).
    Shutdown,
    /// The stream's route was changed or removed by a configuration reload.
    Reload,
}

/// What [`Backlog::fill`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// Frames were added (or none yet); there is more to read.
    More,
    /// The stream has caught up: from now on its queue receives the live events.
    Live,
    /// The backlog cannot be read (its broker failed): the stream ends.
    Failed,
}

/// A resuming stream's backlog, read as the stream drains, so that what a stream holds is one batch
/// however far back it resumes, and a stream that stops reading holds nothing more.
#[async_trait]
pub trait Backlog: Send {
    /// Appends the next frames, about `max` of them, to `into`.
    async fn fill(&mut self, into: &mut Vec<Bytes>, max: usize) -> Fill;
}

/// What the client task gets from [`StreamQueue::next`].
#[derive(Debug)]
pub enum Next {
    /// Every queued frame was moved into the caller's buffer, oldest first; `dropped` frames were
    /// discarded before them since the last call (drop-oldest policy), and `conflated` replaced by
    /// a newer one of their topic (`max_rate`). `since`: when the oldest of them reached sluice
    /// (for the delivery lag).
    Frames {
        dropped: u64,
        conflated: u64,
        since: Option<Instant>,
    },
    Closed(Closed),
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    /// When the oldest queued frame reached sluice: set by the push into an empty queue.
    since: Option<Instant>,
    dropped: u64,
    /// Frames replaced by a newer one of their topic since the last take (`max_rate`).
    conflated: u64,
    closed: Option<Closed>,
    /// The route's `max_rate`: each topic's newest frame, held until its interval is over.
    conflation: Option<Conflation>,
}

impl State {
    /// Queues the held frames that are due now; returns when the next one will be.
    fn release_due(&mut self, capacity: usize) -> Option<Instant> {
        let conflation = self.conflation.as_mut()?;
        let was_empty = self.frames.is_empty();
        let oldest = conflation.release(Instant::now(), &mut self.frames, capacity);
        if let (true, Some(at)) = (was_empty, oldest) {
            self.since = Some(at);
        }
        conflation.next_due()
    }

    /// Moves every queued frame into `into`.
    fn take(&mut self, into: &mut Vec<Bytes>) -> Next {
        into.extend(self.frames.drain(..));
        let dropped = std::mem::take(&mut self.dropped);
        let conflated = std::mem::take(&mut self.conflated);
        let since = self.since.take();
        // Release the ring's memory if it grew while the client was behind.
        if self.frames.capacity() > 64 {
            self.frames.shrink_to(16);
        }
        Next::Frames {
            dropped,
            conflated,
            since,
        }
    }
}

/// A bounded, single-consumer queue of encoded SSE frames.
#[derive(Debug)]
pub struct StreamQueue {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
    overflow: Overflow,
    /// Set once, with `State::conflation`: a plain queue's push takes its lock once.
    conflates: bool,
}

impl StreamQueue {
    pub fn new(capacity: usize, overflow: Overflow) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            capacity: capacity.max(1),
            overflow,
            conflates: false,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        sluice_bridge::lock(&self.state)
    }

    /// A queue that sends at most one event per concrete topic per `interval` (a route's
    /// `max_rate`), each topic's newest: see [`Self::push_for`].
    pub fn conflating(capacity: usize, overflow: Overflow, interval: Duration) -> Self {
        let queue = Self {
            conflates: true,
            ..Self::new(capacity, overflow)
        };
        queue.state().conflation = Some(Conflation::new(interval));
        queue
    }

    /// Queues a frame of the concrete `topic`. On a conflating queue, a frame that comes within its
    /// topic's interval (or finds the queue full) is held instead, replacing the topic's frame held
    /// before: a slow client gets each topic's newest value, never a queue of stale ones. Else as
    /// [`Self::push`].
    pub fn push_for(&self, topic: &Arc<str>, frame: Bytes, at: Instant, stats: &OverflowStats) {
        if !self.conflates {
            return self.push(frame, at, stats);
        }
        let mut state = self.state();
        if state.closed.is_some() {
            return;
        }
        let room = state.frames.len() < self.capacity;
        let Some(conflation) = state.conflation.as_mut() else {
            return;
        };
        match conflation.admit(topic, frame, at, room) {
            Admit::Now(frame) => self.push_locked(state, frame, at, stats),
            // The consumer may be waiting with no deadline, or a later one: it looks again.
            Admit::HeldFirst => {
                drop(state);
                self.ready.notify_one();
            }
            Admit::Replaced => state.conflated += 1,
        }
    }

    /// Queues a frame that reached sluice `at` without waiting; a full queue meets the overflow
    /// policy, counted in `stats`. The caller reads the clock once for every stream it pushes to.
    pub fn push(&self, frame: Bytes, at: Instant, stats: &OverflowStats) {
        self.push_locked(self.state(), frame, at, stats);
    }

    /// [`Self::push`], with the queue's lock already taken.
    fn push_locked(
        &self,
        mut state: MutexGuard<'_, State>,
        frame: Bytes,
        at: Instant,
        stats: &OverflowStats,
    ) {
        if state.closed.is_some() {
            return;
        }
        if state.frames.len() >= self.capacity {
            match self.overflow {
                Overflow::Disconnect => {
                    state.closed = Some(Closed::Overflow);
                    state.frames.clear();
                    stats.disconnects.fetch_add(1, Ordering::Relaxed);
                    drop(state);
                    self.ready.notify_one();
                    return;
                }
                Overflow::DropOldest => {
                    state.frames.pop_front();
                    state.dropped += 1;
                    stats.dropped_events.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let was_empty = state.frames.is_empty();
        if was_empty {
            state.since = Some(at);
        }
        state.frames.push_back(frame);
        drop(state);
        // Only the first frame needs a wake-up: the consumer takes everything queued at once.
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// The most frames the queue holds before its overflow policy applies.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues what a stream starts with (the current values, a `gap`) before any live frame. It is
    /// not bounded by the capacity: its frames are shared with the topic, and the consumer takes all
    /// of it at its next read. A resumed backlog goes through a [`Backlog`] instead.
    pub fn preload(&self, frames: Vec<Bytes>) {
        if frames.is_empty() {
            return;
        }
        let mut state = self.state();
        if state.closed.is_some() {
            return;
        }
        let was_empty = state.frames.is_empty();
        if was_empty {
            state.since = Some(Instant::now());
        }
        state.frames.extend(frames);
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Ends the stream: the consumer gets `reason` next, and later pushes are ignored.
    pub fn close(&self, reason: Closed) {
        let mut state = self.state();
        if state.closed.is_none() {
            state.closed = Some(reason);
            state.frames.clear();
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Like [`Self::next`] without waiting: `None` when nothing is queued.
    pub fn try_next(&self, into: &mut Vec<Bytes>) -> Option<Next> {
        let mut state = self.state();
        if let Some(reason) = state.closed {
            return Some(Next::Closed(reason));
        }
        state.release_due(self.capacity);
        if state.frames.is_empty() {
            return None;
        }
        Some(state.take(into))
    }

    /// Waits until something is queued (or the queue is closed) and moves all of it into `into`,
    /// a buffer the caller reuses, so taking frames allocates nothing.
    pub async fn next(&self, into: &mut Vec<Bytes>) -> Next {
        loop {
            let due = {
                let mut state = self.state();
                if let Some(reason) = state.closed {
                    return Next::Closed(reason);
                }
                let due = state.release_due(self.capacity);
                if !state.frames.is_empty() {
                    return state.take(into);
                }
                due
            };
            // notify_one stores a permit when nobody waits, so a push between the check above and
            // this await is not lost.
            match due {
                None => self.ready.notified().await,
                Some(due) => {
                    tokio::select! {
                        () = self.ready.notified() => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
            }
        }
    }

    /// How many frames are waiting (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.state().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[tokio::test]
    async fn takes_everything_queued_in_order() {
        let q = StreamQueue::new(4, Overflow::Disconnect);
        let stats = OverflowStats::default();
        q.push(frame(1), Instant::now(), &stats);
        q.push(frame(2), Instant::now(), &stats);
        let mut frames = Vec::new();
        match q.next(&mut frames).await {
            Next::Frames { dropped, .. } => {
                assert_eq!(frames, vec![frame(1), frame(2)]);
                assert_eq!(dropped, 0);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn disconnect_policy_closes_when_full() {
        let q = StreamQueue::new(2, Overflow::Disconnect);
        let stats = OverflowStats::default();
        for n in 0..3 {
            q.push(frame(n), Instant::now(), &stats);
        }
        let mut frames = Vec::new();
        assert!(matches!(
            q.next(&mut frames).await,
            Next::Closed(Closed::Overflow)
        ));
        assert_eq!(stats.disconnects.load(Ordering::Relaxed), 1);
        q.push(frame(9), Instant::now(), &stats);
        assert!(matches!(
            q.next(&mut frames).await,
            Next::Closed(Closed::Overflow)
        ));
        assert!(frames.is_empty());
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_newest_and_counts() {
        let q = StreamQueue::new(2, Overflow::DropOldest);
        let stats = OverflowStats::default();
        for n in 0..5 {
            q.push(frame(n), Instant::now(), &stats);
        }
        let mut frames = Vec::new();
        match q.next(&mut frames).await {
            Next::Frames { dropped, .. } => {
                assert_eq!(frames, vec![frame(3), frame(4)]);
                assert_eq!(dropped, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(stats.dropped_events.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflating_queue_sends_each_topics_newest_frame_once_per_interval() {
        let interval = std::time::Duration::from_millis(250);
        let q = std::sync::Arc::new(StreamQueue::conflating(4, Overflow::Disconnect, interval));
        let stats = OverflowStats::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let start = Instant::now();
        for n in 1..=5 {
            q.push_for(&a, frame(n), Instant::now(), &stats);
        }
        q.push_for(&b, frame(20), Instant::now(), &stats);
        let mut frames = Vec::new();
        assert!(matches!(q.next(&mut frames).await, Next::Frames { .. }));
        assert_eq!(frames, [frame(1), frame(20)]);
        // The newest of the burst comes when the interval is over, woken by the queue itself.
        frames.clear();
        assert!(matches!(q.next(&mut frames).await, Next::Frames { .. }));
        assert_eq!(frames, [frame(5)]);
        assert_eq!(start.elapsed(), interval);
        // More than the queue holds, faster than the rate: nothing overflows, the newest wins.
        for n in 30..40 {
            q.push_for(&a, frame(n), Instant::now(), &stats);
        }
        frames.clear();
        let next = q.next(&mut frames).await;
        assert!(
            matches!(next, Next::Frames { conflated: 9, .. }),
            "{next:?}"
        );
        assert_eq!(frames, [frame(39)]);
        assert_eq!(start.elapsed(), 2 * interval);
        assert_eq!(stats.disconnects.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken() {
        let q = std::sync::Arc::new(StreamQueue::new(4, Overflow::Disconnect));
        let consumer = tokio::spawn({
            let q = q.clone();
            async move { q.next(&mut Vec::new()).await }
        });
        tokio::task::yield_now().await;
        q.push(frame(7), Instant::now(), &OverflowStats::default());
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), consumer)
            .await
            .expect("woken")
            .expect("joined");
        assert!(matches!(next, Next::Frames { .. }));
    }
}
