//! The read-back window that concurrent JetStream resumes of one topic share: after a restart every
//! client comes back at once, each from about the same position, and without it each would make a
//! consumer of its own on the broker. The first resume reads the broker; the others are served the
//! same encoded frames from the window, and whoever reaches the window's end reads the next batch
//! for everyone, through the one reader the window keeps.

use bytes::Bytes;
use sluice_bridge::HistoryReader;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The most frame bytes a window keeps: past it the window stops growing, and resumes that need
/// more read the broker on their own.
pub(super) const WINDOW_BYTES: usize = 8 * 1024 * 1024;
/// How far back, in stream positions, a window is extended for a resume that comes from before it.
pub(super) const MAX_EXTEND_BACK: u64 = 10_000;

/// How long a read that found nothing new counts for the other resumes at the window's end: about
/// as long as a reader waits for new events before it says there are none.
pub(super) const QUIET_READ: Duration = Duration::from_millis(500);

/// How long a window outlives its last reader: the clients of a storm come back over the few
/// seconds of their jittered `retry:`, and each would otherwise find it gone and read anew.
pub(super) const WINDOW_LINGER: Duration = Duration::from_secs(5);

/// What every resume of a topic shares (see the module docs). The async lock is held while a batch
/// is read from the broker, so concurrent resumes wait for that one read instead of making their own.
#[derive(Default)]
pub(super) struct SharedReadBack {
    pub(super) window: tokio::sync::Mutex<Window>,
    /// Resumes reading from the window now.
    users: AtomicUsize,
    /// Counts the times the window lost its last reader; an expiry only empties the window if no
    /// reader came and went since it was set.
    idled: AtomicU64,
}

/// Frames read back from the broker: every message of the topic with a sequence in `(after, end]`,
/// oldest first, and the reader that continues from `end`.
#[derive(Default)]
pub(super) struct Window {
    pub(super) after: u64,
    pub(super) end: u64,
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    pub(super) reader: Option<Box<dyn HistoryReader>>,
    /// The last read came back short: the window reached the end of the stream then.
    pub(super) caught_up: bool,
    /// The stream's first and last positions when the reader was made: a position the window may
    /// serve must be one the stream had reached, and one whose next event it still held.
    pub(super) first_held: u64,
    pub(super) last: u64,
    /// The topic's stream incarnation it was read from (see `Topic::replaced`).
    pub(super) generation: u64,
    /// When a read last came back empty (the reader waits a moment for new events first).
    read_nothing_at: Option<Instant>,
}

impl Window {
    /// Whether the window is in use (it holds a reader or frames).
    pub(super) fn is_open(&self) -> bool {
        self.reader.is_some() || !self.frames.is_empty()
    }

    /// Starts the window at `after` with `reader`, which reads from there.
    pub(super) fn start(&mut self, after: u64, reader: Box<dyn HistoryReader>, generation: u64) {
        *self = Window {
            after,
            end: after,
            first_held: reader.first_held(),
            last: reader.last(),
            reader: Some(reader),
            generation,
            ..Window::default()
        };
    }

    /// Whether a resume from `position` can read from this window: the window starts at or before
    /// it, the stream had reached it, and still held the event after it.
    pub(super) fn serves(&self, position: u64, generation: u64) -> bool {
        self.is_open()
            && self.generation == generation
            && self.after <= position
            // A position the stream had when the reader was made, or one the window read since.
            && position <= self.last.max(self.end)
            && position.saturating_add(1) >= self.first_held
    }

    /// Records a read from the broker: whether it found nothing new.
    pub(super) fn read(&mut self, nothing: bool) {
        self.read_nothing_at = nothing.then(Instant::now);
    }

    /// How much longer to wait, when a read found nothing new less than [`QUIET_READ`] ago: the
    /// resumes at the window's end then wait that out instead of each reading (and waiting) in turn.
    pub(super) fn read_nothing_lately(&self) -> Option<Duration> {
        let since = self.read_nothing_at?.elapsed();
        QUIET_READ.checked_sub(since).filter(|wait| !wait.is_zero())
    }

    /// Whether a resume from `position`, before the window's start, can have the window extended
    /// back to it: the stream had reached it and still held the event after it, and the stretch is
    /// short (a storm's clients come back within a few events of each other).
    pub(super) fn extends_back_to(&self, position: u64, generation: u64) -> bool {
        self.is_open()
            && self.generation == generation
            && position < self.after
            && self.after - position <= MAX_EXTEND_BACK
            && position.saturating_add(1) >= self.first_held
    }

    /// Puts `read` (sequences in `(position, after]`, in order) before the window's frames, which
    /// then start at `position`; `false` (and nothing changed) when that would make it too large.
    pub(super) fn prepend(&mut self, position: u64, read: Vec<(u64, Bytes)>) -> bool {
        // Strictly increasing, within the stretch: the window never holds an event twice.
        let mut last = position;
        let read: Vec<(u64, Bytes)> = read
            .into_iter()
            .filter(|(seq, _)| {
                let keep = *seq > last && *seq <= self.after;
                if keep {
                    last = *seq;
                }
                keep
            })
            .collect();
        let bytes: usize = read.iter().map(|(_, frame)| frame.len()).sum();
        if self.bytes + bytes > WINDOW_BYTES {
            return false;
        }
        self.bytes += bytes;
        for entry in read.into_iter().rev() {
            self.frames.push_front(entry);
        }
        self.after = position;
        true
    }

    /// Appends to `into` up to `max` frames after `cursor`; returns the last sequence copied.
    pub(super) fn copy_after(&self, cursor: u64, max: usize, into: &mut Vec<Bytes>) -> Option<u64> {
        let start = self.frames.partition_point(|(seq, _)| *seq <= cursor);
        let mut last = None;
        for (seq, frame) in self.frames.iter().skip(start).take(max) {
            into.push(frame.clone());
            last = Some(*seq);
        }
        last
    }

    /// Records frames read from the reader (sequences above `end`, in order); `false` when the
    /// window is full and keeps nothing more (it stays correct, only shorter).
    pub(super) fn extend(&mut self, read: impl IntoIterator<Item = (u64, Bytes)>) -> bool {
        for (seq, frame) in read {
            if seq <= self.end {
                continue;
            }
            if self.bytes + frame.len() > WINDOW_BYTES {
                // Stop here: the window must stay contiguous, so it ends before this frame.
                self.reader = None;
                return false;
            }
            self.bytes += frame.len();
            self.end = seq;
            self.frames.push_back((seq, frame));
        }
        true
    }
}

impl SharedReadBack {
    /// One more resume reads from the window.
    pub(super) fn join(&self) {
        self.users.fetch_add(1, Ordering::AcqRel);
    }

    /// A resume is done with the window. The last one returns the idle count to pass to
    /// [`Self::expire`] after [`WINDOW_LINGER`].
    pub(super) fn leave(&self) -> Option<u64> {
        if self.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            return Some(self.idled.fetch_add(1, Ordering::AcqRel) + 1);
        }
        None
    }

    /// Whether no resume reads from the window now, and the idle count then (see [`Self::expire`]).
    pub(super) fn idle(&self) -> Option<u64> {
        (self.users.load(Ordering::Acquire) == 0).then(|| self.idled.load(Ordering::Acquire))
    }

    /// Empties the window (its frames, and the broker consumer of its reader) if it has had no
    /// reader since `idled`. When the lock is busy, whoever holds it is reading or opening: the
    /// window is in use, and a later expiry empties it.
    pub(super) fn expire(&self, idled: u64) {
        if self.users.load(Ordering::Acquire) != 0 || self.idled.load(Ordering::Acquire) != idled {
            return;
        }
        if let Ok(mut window) = self.window.try_lock() {
            if self.users.load(Ordering::Acquire) == 0 {
                *window = Window::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> (u64, Bytes) {
        (n, Bytes::from(n.to_string()))
    }

    #[test]
    fn a_window_serves_what_it_covers_and_stays_contiguous() {
        let mut window = Window {
            after: 10,
            end: 10,
            first_held: 5,
            last: 20,
            caught_up: false,
            generation: 1,
            ..Window::default()
        };
        assert!(
            !window.serves(12, 1),
            "nothing read yet and no reader: closed"
        );
        window.extend([frame(11), frame(13), frame(14)]);
        assert!(window.serves(10, 1) && window.serves(13, 1) && window.serves(20, 1));
        assert!(!window.serves(9, 1), "before the window");
        assert!(!window.serves(21, 1), "past what the stream had reached");
        assert!(!window.serves(12, 2), "another incarnation of the stream");
        let mut into = Vec::new();
        assert_eq!(window.copy_after(11, 10, &mut into), Some(14));
        assert_eq!(into, [Bytes::from("13"), Bytes::from("14")]);
        into.clear();
        assert_eq!(window.copy_after(14, 10, &mut into), None);
        // Sequences at or below the end are not taken twice.
        window.extend([frame(14), frame(15)]);
        assert_eq!(window.end, 15);
        assert_eq!(window.copy_after(10, 2, &mut into), Some(13));
        // Extended back to 7: what the stream held in (7, 10], and the window then serves 7.
        assert!(window.extends_back_to(7, 1) && !window.serves(7, 1));
        // A repeat (a read-back consumer that recovered) is kept once.
        assert!(window.prepend(7, vec![frame(8), frame(8), frame(10), frame(11)]));
        assert!(window.serves(7, 1) && window.after == 7);
        into.clear();
        assert_eq!(window.copy_after(7, 3, &mut into), Some(11));
        assert_eq!(
            into,
            [Bytes::from("8"), Bytes::from("10"), Bytes::from("11")]
        );
        assert!(
            !window.extends_back_to(3, 1),
            "the stream no longer held the event after 3"
        );
    }
}
