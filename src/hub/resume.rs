//! The one resume path for memory replay and JetStream: a stream that resumes with a `Last-Event-ID`
//! joins its topic as catching up (live events pass it by), reads its backlog a batch at a time as it
//! drains, and switches to live under the topic's lock once it has read up to the last live event,
//! so the switch has no gap and no duplicate. What a resuming stream holds is one batch, however far
//! back it resumes; a stream that stops reading holds nothing more and meets its write timeout.

use super::topic::{lock, Member, Members, State, Topic};
use crate::replay::{self, Retention};
use crate::sse::{self, GapReason};
use crate::stream::{Backlog, Fill};
use async_trait::async_trait;
use bytes::Bytes;
use sluice_bridge::{Bridge, HistoryReader};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The most events one resuming stream reads back from JetStream; further back is a `gap`.
pub const MAX_CATCH_UP: usize = 100_000;

/// How a stream starts on its topic: its state, what it gets first, and its backlog, if any.
pub(super) struct Start {
    pub(super) state: State,
    pub(super) first: Vec<Bytes>,
    pub(super) backlog: Option<Box<dyn Backlog>>,
}

/// Decides how a stream that asks for `last_event_id` starts, under the topic's members lock (so
/// the ring cannot move meanwhile). `id` is the stream's member id.
pub(super) fn start(
    topic: &Arc<Topic>,
    members: &Members,
    id: u64,
    last_event_id: Option<String>,
    bridge: &Arc<dyn Bridge>,
) -> Start {
    let mut first = Vec::new();
    if topic.spec.retained {
        let mut current: Vec<(&Arc<str>, &Bytes)> = members.current.iter().collect();
        current.sort_by(|a, b| a.0.cmp(b.0));
        first.extend(current.into_iter().map(|(_, frame)| frame.clone()));
    }
    let live = |first| Start {
        state: State::Live,
        first,
        backlog: None,
    };
    let Some(last) = last_event_id else {
        return live(first);
    };
    match (&topic.spec.retention, &topic.ring) {
        (Retention::Replay { .. }, Some(ring)) => {
            let ring = lock(ring);
            let start = replay::start(
                topic.instance,
                ring.first(),
                ring.head(),
                replay::parse_memory_id(&last),
            );
            topic.spec.metrics.resume(start.gap.is_none());
            if let Some(reason) = start.gap {
                topic.spec.metrics.gaps(reason, 1);
                first.push(sse::gap(reason, None));
            }
            if start.cursor >= ring.head() {
                return live(first);
            }
            Start {
                state: State::CatchingUp,
                first,
                backlog: Some(Box::new(RingBacklog {
                    topic: topic.clone(),
                    id,
                    cursor: start.cursor,
                })),
            }
        }
        (Retention::JetStream { stream }, _) => Start {
            state: State::CatchingUp,
            first,
            backlog: Some(Box::new(StreamBacklog {
                topic: topic.clone(),
                bridge: bridge.clone(),
                stream: stream.clone(),
                id,
                last,
                joined_at: members.head,
                reader: None,
                cursor: 0,
                read: 0,
                idle_reads: 0,
            })),
        },
        _ => live(first),
    }
}

/// Switches member `id` to live (if it is still there), skipping live events up to `cursor`.
fn go_live(members: &mut Members, id: u64, cursor: u64) {
    let head = members.head;
    if let Some(Member { state, .. }) = members.by_id.get_mut(&id) {
        *state = if cursor > head {
            State::LiveAfter(cursor)
        } else {
            State::Live
        };
    }
}

/// A memory replay backlog: the topic's ring from a position on.
struct RingBacklog {
    topic: Arc<Topic>,
    id: u64,
    /// The last sequence read.
    cursor: u64,
}

#[async_trait]
impl Backlog for RingBacklog {
    async fn fill(&mut self, into: &mut Vec<Bytes>, max: usize) -> Fill {
        let Some(ring) = &self.topic.ring else {
            return Fill::Live;
        };
        // Under the members' lock, so no event is queued to live streams between the end of the
        // read and the switch to live.
        let mut members = lock(&self.topic.members);
        let read = lock(ring).read_after(self.cursor, max, into);
        self.cursor = read.cursor;
        if !read.caught_up {
            return Fill::More;
        }
        go_live(&mut members, self.id, self.cursor);
        Fill::Live
    }
}

/// A JetStream backlog: the broker's stream from a position on, read with a reader of the bridge.
struct StreamBacklog {
    topic: Arc<Topic>,
    bridge: Arc<dyn Bridge>,
    stream: String,
    id: u64,
    /// The client's `Last-Event-ID`.
    last: String,
    /// The last event queued to live streams when this one joined: everything after it passed it by.
    joined_at: u64,
    reader: Option<Box<dyn HistoryReader>>,
    /// The last sequence read (or skipped as lost).
    cursor: u64,
    /// Events read so far (bounded by [`MAX_CATCH_UP`]).
    read: usize,
    /// Reads in a row that found nothing new while live events were ahead (see `fill`).
    idle_reads: u32,
}

/// How many empty reads in a row (each waits half a second) a resuming stream waits for live events
/// to show up in the JetStream stream before it takes them as gone (purged, or expired by the
/// stream's limits) and goes live with a `gap`.
const MAX_IDLE_READS: u32 = 4;

impl StreamBacklog {
    /// Opens the reader at the client's position; a `gap` the client gets first goes to `into`. A
    /// position the stream cannot continue from (not a sequence, or one it never reached, as after
    /// the stream was replaced) continues from where the stream joined its topic.
    async fn open(&mut self, into: &mut Vec<Bytes>, batch: usize) -> Result<(), Fill> {
        // Read back only once the live consumer exists: it starts at the stream's end when it is
        // made, so a read that ended before that could miss what came in between.
        self.topic.wait_established().await;
        let joined_at = self
            .joined_at
            .max(self.topic.started_after.load(Ordering::Acquire));
        let mut after = replay::parse_sequence(&self.last);
        let mut reader = self.reader_after(after.unwrap_or(joined_at), batch).await?;
        let mut expired = false;
        match after {
            Some(position) if position > reader.last() => after = None,
            Some(position) if reader.first_held() > position.saturating_add(1) => {
                // The stream no longer holds what came right after the client's position.
                into.push(self.gap(GapReason::Expired));
                expired = true;
            }
            _ => {}
        }
        self.topic.spec.metrics.resume(after.is_some() && !expired);
        if after.is_none() {
            into.push(self.gap(GapReason::UnknownId));
            if self.cursor != joined_at || reader.last() < joined_at {
                reader = self.reader_after(joined_at, batch).await?;
            }
        }
        self.cursor = after.unwrap_or(joined_at);
        self.reader = Some(reader);
        Ok(())
    }

    async fn reader_after(
        &mut self,
        after: u64,
        batch: usize,
    ) -> Result<Box<dyn HistoryReader>, Fill> {
        self.cursor = after;
        self.bridge
            .read_stream(&self.stream, &self.topic.key.filter, after, batch)
            .await
            .map_err(|e| {
                tracing::debug!(stream = %self.stream, error = %e, "JetStream read-back failed");
                Fill::Failed
            })
    }

    /// A `gap` frame for `reason`, counted.
    fn gap(&self, reason: GapReason) -> Bytes {
        self.topic.spec.metrics.gaps(reason, 1);
        sse::gap(reason, None)
    }

    /// Switches to live from the last live event on.
    fn live_now(&mut self) -> Fill {
        let mut members = lock(&self.topic.members);
        self.cursor = members.head;
        go_live(&mut members, self.id, self.cursor);
        Fill::Live
    }
}

#[async_trait]
impl Backlog for StreamBacklog {
    async fn fill(&mut self, into: &mut Vec<Bytes>, max: usize) -> Fill {
        if self.reader.is_none() {
            if let Err(done) = self.open(into, max).await {
                return done;
            }
        }
        let Some(reader) = &mut self.reader else {
            return Fill::Failed;
        };
        let messages = match reader.next(max).await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::debug!(stream = %self.stream, error = %e, "JetStream read-back failed");
                return Fill::Failed;
            }
        };
        let caught_up = messages.len() < max;
        for message in &messages {
            if let Some(seq) = message.seq.filter(|s| *s > self.cursor) {
                self.cursor = seq;
                self.read += 1;
                into.push(self.topic.encode(None, message, false));
            }
        }
        if self.read >= MAX_CATCH_UP {
            // The read stopped at its limit, short of the live events.
            into.push(self.gap(GapReason::Expired));
            return self.live_now();
        }
        if !caught_up {
            return Fill::More;
        }
        let mut members = lock(&self.topic.members);
        if self.cursor < members.head {
            // Live events came in meanwhile: they are in the stream, read them too, unless the
            // stream keeps showing nothing new (they were removed from it since).
            self.idle_reads = if messages.is_empty() {
                self.idle_reads + 1
            } else {
                0
            };
            if self.idle_reads < MAX_IDLE_READS {
                return Fill::More;
            }
            into.push(self.gap(GapReason::Expired));
            self.cursor = members.head;
        }
        go_live(&mut members, self.id, self.cursor);
        Fill::Live
    }
}
