//! Latest-value conflation of one stream (a route's `max_rate`): at most one event per concrete
//! topic per interval; what arrives in between is held, one frame per topic, each newer one
//! replacing the last, and released when its topic's interval is over.

use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Past this many topics, those with nothing held and their interval over are forgotten (as
/// often as the held ones are counted), so a stream's table follows the topics that are busy.
const PRUNE_ABOVE: usize = 1024;

/// One concrete topic of the stream.
#[derive(Debug)]
struct Slot {
    /// When the next frame of this topic may go out.
    open_at: Instant,
    /// The newest frame held, and when it reached sluice.
    held: Option<(Bytes, Instant)>,
}

/// The conflation state of one stream, kept beside its queue (under the same lock).
#[derive(Debug)]
pub(super) struct Conflation {
    interval: Duration,
    slots: HashMap<Arc<str>, Slot>,
    /// When each held frame is due, earliest first: one entry per topic with a frame held.
    due: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
}

/// What [`Conflation::admit`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Queue it now.
    Now(Bytes),
    /// Held, and it is the topic's first held frame: the consumer must learn of the new deadline.
    HeldFirst,
    /// Held in place of an older frame of the same topic.
    Replaced,
}

impl Conflation {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            slots: HashMap::new(),
            due: BinaryHeap::new(),
        }
    }

    /// A frame of `topic` that reached sluice `at`. `room`: the queue can take one more frame (a
    /// full queue holds the frame rather than meeting its overflow policy).
    pub(super) fn admit(
        &mut self,
        topic: &Arc<str>,
        frame: Bytes,
        at: Instant,
        room: bool,
    ) -> Admit {
        let interval = self.interval;
        let slot = self.slots.entry(topic.clone()).or_insert(Slot {
            open_at: at,
            held: None,
        });
        if slot.held.is_none() && slot.open_at <= at && room {
            slot.open_at = at + interval;
            return Admit::Now(frame);
        }
        match slot.held.replace((frame, at)) {
            Some(_) => Admit::Replaced,
            None => {
                self.due
                    .push(Reverse((slot.open_at.max(at), topic.clone())));
                Admit::HeldFirst
            }
        }
    }

    /// Moves the held frames that are due at `now` into `queue` while it has room (up to
    /// `capacity`), oldest deadline first. Returns when the oldest of them reached sluice.
    pub(super) fn release(
        &mut self,
        now: Instant,
        queue: &mut VecDeque<Bytes>,
        capacity: usize,
    ) -> Option<Instant> {
        let mut oldest: Option<Instant> = None;
        while let Some(Reverse((when, _))) = self.due.peek() {
            if *when > now || queue.len() >= capacity {
                break;
            }
            let Some(Reverse((_, topic))) = self.due.pop() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&topic) else {
                continue;
            };
            if let Some((frame, at)) = slot.held.take() {
                queue.push_back(frame);
                slot.open_at = now + self.interval;
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
        }
        if self.slots.len() > PRUNE_ABOVE && self.slots.len() > 4 * self.due.len() {
            self.slots
                .retain(|_, slot| slot.held.is_some() || slot.open_at > now);
        }
        oldest
    }

    /// When the next held frame is due, if one is held.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((when, _))| *when)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[test]
    fn the_newest_frame_of_a_topic_goes_out_when_its_interval_is_over() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut c = Conflation::new(SECOND);
        let t0 = Instant::now();
        assert_eq!(c.admit(&a, frame(1), t0, true), Admit::Now(frame(1)));
        assert_eq!(c.admit(&a, frame(2), t0, true), Admit::HeldFirst);
        assert_eq!(c.admit(&a, frame(3), t0, true), Admit::Replaced);
        // Another topic is not held back by a busy one.
        assert_eq!(c.admit(&b, frame(9), t0, true), Admit::Now(frame(9)));
        assert_eq!(c.next_due(), Some(t0 + SECOND));
        let mut queue = VecDeque::new();
        assert_eq!(c.release(t0 + SECOND / 2, &mut queue, 8), None);
        assert!(queue.is_empty());
        assert_eq!(c.release(t0 + SECOND, &mut queue, 8), Some(t0));
        assert_eq!(queue, [frame(3)]);
        assert_eq!(c.next_due(), None);
        // The next one waits a whole interval after that release.
        assert_eq!(c.admit(&a, frame(4), t0 + SECOND, true), Admit::HeldFirst);
        assert_eq!(c.next_due(), Some(t0 + 2 * SECOND));
        // After a quiet interval a frame goes out at once.
        let later = t0 + 5 * SECOND;
        c.release(later, &mut queue, 8);
        assert_eq!(
            c.admit(&a, frame(5), later + SECOND, true),
            Admit::Now(frame(5))
        );
    }

    #[test]
    fn a_full_queue_holds_the_newest_frame_until_it_has_room() {
        let a: Arc<str> = Arc::from("a");
        let mut c = Conflation::new(SECOND);
        let t0 = Instant::now();
        assert_eq!(c.admit(&a, frame(1), t0, false), Admit::HeldFirst);
        assert_eq!(c.admit(&a, frame(2), t0, false), Admit::Replaced);
        let mut queue = VecDeque::from([frame(0)]);
        // Due, but no room.
        assert_eq!(c.release(t0, &mut queue, 1), None);
        queue.clear();
        assert_eq!(c.release(t0, &mut queue, 1), Some(t0));
        assert_eq!(queue, [frame(2)]);
    }

    #[test]
    fn quiet_topics_are_forgotten_once_there_are_many() {
        let mut c = Conflation::new(SECOND);
        let t0 = Instant::now();
        for n in 0..2000 {
            let topic: Arc<str> = Arc::from(format!("t{n}"));
            assert!(matches!(c.admit(&topic, frame(0), t0, true), Admit::Now(_)));
        }
        c.release(t0 + 2 * SECOND, &mut VecDeque::new(), 8);
        assert!(c.slots.is_empty());
    }
}
