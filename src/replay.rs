//! Resume positions: the event ids sluice makes, parsing a client's `Last-Event-ID`, and the
//! in-memory replay buffer of a topic.
//!
//! A memory replay id is `EPOCH.INSTANCE.SEQ` (hex, hex, decimal):
//! - `EPOCH` is random per sluice process, so an id from a previous process is recognised as unknown;
//! - `INSTANCE` numbers the topic's life in this process: a topic that lapsed after its linger time
//!   and came back starts a new instance, so an id into the lapsed one is recognised as expired;
//! - `SEQ` counts the messages of the topic's broker subscription (one per route filter). A wildcard
//!   route's stream carries messages of many concrete topics; they share this one sequence, so a
//!   single number is the position of every concrete topic at once, while the buffer keeps the last
//!   `replay` messages of each concrete topic.
//!
//! A JetStream id is the stream sequence in decimal: the broker holds the history.

use sluice_bridge::Message;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// The longest `Last-Event-ID` considered; a longer one is unknown without being looked at.
pub const MAX_ID_LEN: usize = 128;

/// This process's epoch, drawn once.
pub fn epoch() -> u32 {
    static EPOCH: OnceLock<u32> = OnceLock::new();
    *EPOCH.get_or_init(|| crate::sse::random_u64() as u32)
}

/// A new topic instance number, unique in this process.
pub fn next_instance() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The id of message `seq` of topic instance `instance` in this process.
pub fn memory_id(instance: u64, seq: u64) -> String {
    format!("{:x}.{instance:x}.{seq}", epoch())
}

/// Where a client asked to resume, as far as this process can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// After message `seq` of topic instance `instance` of this process.
    Memory { instance: u64, seq: u64 },
    /// Not an id this process made.
    Unknown,
}

/// Reads a memory replay id.
pub fn parse_memory_id(text: &str) -> Position {
    if text.len() > MAX_ID_LEN {
        return Position::Unknown;
    }
    let mut parts = text.split('.');
    let (Some(epoch_hex), Some(instance_hex), Some(seq), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Position::Unknown;
    };
    let parsed = (
        u32::from_str_radix(epoch_hex, 16),
        u64::from_str_radix(instance_hex, 16),
        seq.parse::<u64>(),
    );
    match parsed {
        (Ok(e), Ok(instance), Ok(seq)) if e == epoch() => Position::Memory { instance, seq },
        _ => Position::Unknown,
    }
}

/// Reads a JetStream id (a stream sequence).
pub fn parse_sequence(text: &str) -> Option<u64> {
    if text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The last `per_topic` messages of each concrete topic of one broker subscription, by sequence.
#[derive(Debug)]
pub struct ReplayBuffer {
    per_topic: usize,
    topics: HashMap<Arc<str>, VecDeque<(u64, Message)>>,
}

impl ReplayBuffer {
    pub fn new(per_topic: usize) -> Self {
        Self {
            per_topic: per_topic.max(1),
            topics: HashMap::new(),
        }
    }

    /// Keeps `message` as number `seq` (sequences only grow), forgetting its topic's oldest if full.
    pub fn record(&mut self, seq: u64, message: &Message) {
        let ring = self.topics.entry(message.topic.clone()).or_default();
        if ring.len() >= self.per_topic {
            ring.pop_front();
        }
        ring.push_back((seq, message.clone()));
    }

    /// Every held message after `seq`, oldest first.
    pub fn after(&self, seq: u64) -> Vec<(u64, Message)> {
        let mut held: Vec<(u64, Message)> = Vec::new();
        for ring in self.topics.values() {
            let start = ring.partition_point(|(s, _)| *s <= seq);
            held.extend(ring.range(start..).cloned());
        }
        if self.topics.len() > 1 {
            held.sort_unstable_by_key(|(s, _)| *s);
        }
        held
    }

    /// The payload bytes held (for diagnostics).
    pub fn held_bytes(&self) -> usize {
        self.topics
            .values()
            .flat_map(|ring| ring.iter().map(|(_, m)| m.payload.len()))
            .sum()
    }
}

/// What resuming a memory replay topic at a client's position gives.
#[derive(Debug, PartialEq, Eq)]
pub struct Resume {
    /// Set when the client cannot get every event after its position: why, and how many it lost when
    /// that is known.
    pub gap: Option<(crate::sse::GapReason, Option<u64>)>,
    /// What to send, oldest first.
    pub held: Vec<(u64, Message)>,
}

/// Resumes from `position` on a topic instance `instance` whose last message is `head`.
pub fn resume(buffer: &ReplayBuffer, instance: u64, head: u64, position: Position) -> Resume {
    use crate::sse::GapReason;
    match position {
        Position::Memory { instance: i, seq } if i == instance && seq <= head => {
            let held = buffer.after(seq);
            // Every sequence after `seq` belongs to exactly one message; what is not held was evicted.
            let lost = (head - seq).saturating_sub(held.len() as u64);
            Resume {
                gap: (lost > 0).then_some((GapReason::Expired, Some(lost))),
                held,
            }
        }
        Position::Memory { instance: i, .. } if i < instance => Resume {
            // An earlier life of this topic (its linger ran out): what happened in between is unknown.
            gap: Some((GapReason::Expired, None)),
            held: buffer.after(0),
        },
        _ => Resume {
            gap: Some((GapReason::UnknownId, None)),
            held: buffer.after(0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::GapReason;
    use bytes::Bytes;

    fn payloads(held: &[(u64, Message)]) -> Vec<Bytes> {
        held.iter().map(|(_, m)| m.payload.clone()).collect()
    }

    fn message(topic: &str, payload: &'static str) -> Message {
        Message::new(Arc::from(topic), Bytes::from_static(payload.as_bytes()))
    }

    #[test]
    fn ids_round_trip_and_foreign_ids_are_unknown() {
        let id = memory_id(3, 42);
        assert_eq!(
            parse_memory_id(&id),
            Position::Memory {
                instance: 3,
                seq: 42
            }
        );
        assert!(!id.contains(['\r', '\n', '\0']));
        let other_epoch = format!("{:x}.3.42", epoch().wrapping_add(1));
        for bad in [
            other_epoch.as_str(),
            "",
            "42",
            "a.b",
            "x.3.42",
            "1.2.3.4",
            "1.2.-3",
        ] {
            assert_eq!(parse_memory_id(bad), Position::Unknown, "{bad:?}");
        }
        assert_eq!(
            parse_memory_id(&"1".repeat(MAX_ID_LEN + 1)),
            Position::Unknown
        );
        assert_eq!(parse_sequence("17"), Some(17));
        assert_eq!(parse_sequence("-1"), None);
        assert_eq!(parse_sequence("+1"), None);
        assert_eq!(parse_sequence("99999999999999999999999"), None);
    }

    #[test]
    fn keeps_the_last_n_of_each_topic_and_merges_by_sequence() {
        let mut buffer = ReplayBuffer::new(2);
        buffer.record(1, &message("a", "a1"));
        buffer.record(2, &message("b", "b1"));
        buffer.record(3, &message("a", "a2"));
        buffer.record(4, &message("a", "a3"));
        assert_eq!(payloads(&buffer.after(0)), ["b1", "a2", "a3"]);
        assert_eq!(payloads(&buffer.after(2)), ["a2", "a3"]);
        assert_eq!(payloads(&buffer.after(4)), Vec::<Bytes>::new());
    }

    #[test]
    fn resume_reports_exactly_what_was_evicted() {
        let mut buffer = ReplayBuffer::new(2);
        for (seq, payload) in [(1, "1"), (2, "2"), (3, "3"), (4, "4")] {
            buffer.record(seq, &message("t", payload));
        }
        let at = |seq| Position::Memory { instance: 7, seq };
        let clean = resume(&buffer, 7, 4, at(2));
        assert_eq!(clean.gap, None);
        assert_eq!(payloads(&clean.held), ["3", "4"]);
        let lost = resume(&buffer, 7, 4, at(0));
        assert_eq!(lost.gap, Some((GapReason::Expired, Some(2))));
        assert_eq!(payloads(&lost.held), ["3", "4"]);
        let lapsed = resume(&buffer, 9, 4, at(2));
        assert_eq!(lapsed.gap, Some((GapReason::Expired, None)));
        let future = resume(&buffer, 7, 4, at(5));
        assert_eq!(future.gap, Some((GapReason::UnknownId, None)));
        assert_eq!(payloads(&future.held), ["3", "4"]);
        let foreign = resume(&buffer, 7, 4, Position::Unknown);
        assert_eq!(foreign.gap, Some((GapReason::UnknownId, None)));
    }
}
