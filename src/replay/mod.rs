//! Resume positions: the event ids sluice makes, parsing a client's `Last-Event-ID`, where a resuming
//! stream starts, and the in-memory replay of a topic ([`ring`], bounded per route by [`budget`]).
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

pub mod budget;
pub mod ring;

pub use budget::Budget;
pub use ring::Ring;

use crate::sse::GapReason;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// How a route's topics keep history for streams that resume with `Last-Event-ID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Live only: events carry no id and a resume starts live.
    Live,
    /// The last `per_topic` events of each concrete topic stay in memory, within `bytes` for all the
    /// route's topics together (oldest evicted first), and a topic (with its broker subscription)
    /// outlives its last stream by `linger`.
    Replay {
        per_topic: usize,
        bytes: usize,
        linger: Duration,
    },
    /// The broker's JetStream stream holds the history; ids are its sequences.
    JetStream { stream: String },
}

/// The longest `Last-Event-ID` considered; a longer one is unknown without being looked at.
pub const MAX_ID_LEN: usize = 128;

/// This process's epoch, drawn once.
pub fn epoch() -> u32 {
    static EPOCH: OnceLock<u32> = OnceLock::new();
    *EPOCH.get_or_init(|| sluice_bridge::random_u64() as u32)
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

/// Where a stream resuming at `position` on a topic instance `instance` starts reading its ring,
/// and the `gap` it gets first when the position is not one the ring can continue from.
#[derive(Debug, PartialEq, Eq)]
pub struct Start {
    pub gap: Option<GapReason>,
    /// The position after which the stream reads; events after it that the ring no longer holds are
    /// reported as `expired` (with their count) as the stream reads past them.
    pub cursor: u64,
}

/// Resumes from `position` on a topic instance `instance` whose ring holds events from `first`
/// (if any) up to `head`.
pub fn start(instance: u64, first: Option<u64>, head: u64, position: Position) -> Start {
    // From everything held, without counting what came before as lost: that is unknown.
    let from_the_start = first.map_or(head, |first| first - 1);
    match position {
        Position::Memory { instance: i, seq } if i == instance && seq <= head => Start {
            gap: None,
            cursor: seq,
        },
        // An earlier life of this topic (its linger ran out): what happened in between is unknown.
        Position::Memory { instance: i, .. } if i < instance => Start {
            gap: Some(GapReason::Expired),
            cursor: from_the_start,
        },
        _ => Start {
            gap: Some(GapReason::UnknownId),
            cursor: from_the_start,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn resumes_start_where_the_ring_can_continue() {
        let at = |seq| Position::Memory { instance: 7, seq };
        assert_eq!(
            start(7, Some(3), 4, at(2)),
            Start {
                gap: None,
                cursor: 2
            }
        );
        // Behind what is held: the ring reports the evicted events as it is read.
        assert_eq!(start(7, Some(3), 4, at(0)).cursor, 0);
        assert_eq!(
            start(9, Some(3), 4, at(2)),
            Start {
                gap: Some(GapReason::Expired),
                cursor: 2
            }
        );
        assert_eq!(
            start(7, Some(3), 4, at(5)),
            Start {
                gap: Some(GapReason::UnknownId),
                cursor: 2
            }
        );
        assert_eq!(
            start(7, None, 4, Position::Unknown),
            Start {
                gap: Some(GapReason::UnknownId),
                cursor: 4
            }
        );
    }
}
