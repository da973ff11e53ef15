//! The one resume path for memory replay and JetStream: a stream that resumes with a `Last-Event-ID`
//! joins its topic as catching up (live events pass it by), reads its backlog a batch at a time as it
//! drains, and switches to live under the topic's lock once it has read up to the last live event,
//! so the switch has no gap and no duplicate. What a resuming stream holds is one batch, however far
//! back it resumes; a stream that stops reading holds nothing more and meets its write timeout.

use super::topic::{lock, Member, Members, State, Topic};
use super::window::WINDOW_LINGER;
use crate::replay::{self, Retention};
use crate::sse::{self, GapReason};
use crate::stream::{Backlog, Fill};
use async_trait::async_trait;
use bytes::Bytes;
use sluice_bridge::{Bridge, HistoryReader};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
                shared: false,
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
    /// A reader of its own, when the topic's shared window does not serve it.
    reader: Option<Box<dyn HistoryReader>>,
    /// It reads from the topic's shared window ([`super::window`]).
    shared: bool,
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

/// How long a resume from a position past everything this instance has seen of the stream waits for
/// its live consumer to reach that position before taking it as unknown.
const AHEAD_WAIT: Duration = Duration::from_secs(2);

impl StreamBacklog {
    /// Opens the reader at the client's position; a `gap` the client gets first goes to `into`. A
    /// position the stream cannot continue from (not a sequence, or one it never reached, as after
    /// the stream was replaced) continues from where the stream joined its topic.
    ///
    /// A position the topic's shared window serves reads from it and asks the broker nothing.
    /// Otherwise the stream makes a reader; when no window is open, that reader starts one, and the
    /// resumes that come meanwhile wait for it (they come back at about the same position).
    async fn open(&mut self, into: &mut Vec<Bytes>, batch: usize) -> Result<(), Fill> {
        // Read back only once the live consumer exists: it starts at the stream's end when it is
        // made, so a read that ended before that could miss what came in between.
        self.topic.wait_established().await;
        let joined_at = self
            .joined_at
            .max(self.topic.started_after.load(Ordering::Acquire));
        let mut after = replay::parse_sequence(&self.last);
        // Before the window's lock: a wait here must not hold up the topic's other resumes.
        let seen_live = match after {
            Some(position) => live_reaches(&self.topic, position).await,
            None => false,
        };
        let generation = self.topic.replaced.load(Ordering::Acquire);
        let topic = self.topic.clone();
        let share = &topic.read_back;
        let mut window = share.window.lock().await;
        if let Some(position) = after.filter(|p| window.extends_back_to(*p, generation)) {
            // A client from a little before the window: read that stretch once, for it and for
            // any that come back from within it.
            let end = window.after;
            let read = self.read_stretch(position, end, batch).await;
            if let Ok(read) = read {
                window.prepend(position, read);
            }
        }
        if let Some(position) = after.filter(|p| window.serves(*p, generation)) {
            self.topic.spec.metrics.resume(true);
            self.cursor = position;
            self.shared = true;
            share.join();
            return Ok(());
        }
        let mut reader = self.reader_after(after.unwrap_or(joined_at), batch).await?;
        let mut expired = false;
        match after {
            // Past the stream's end as the broker reported it, and not seen live either. (A
            // cluster member can report an end behind what it acknowledged: a new stream leader
            // still applying its log. The live consumer is the proof that a position exists.)
            Some(position) if position > reader.last() && !seen_live => after = None,
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
        if window.is_open() {
            self.reader = Some(reader);
            // An idle window whose expiry found it locked (by this open) would stay: expire it later.
            if let Some(idled) = share.idle() {
                Self::expire_later(&self.topic, idled);
            }
        } else {
            window.start(self.cursor, reader, generation);
            self.shared = true;
            share.join();
        }
        Ok(())
    }

    /// Reads the next batch from the shared window: what it holds past the cursor, or, at its end,
    /// the next batch from the broker for every resume (the window's lock is held meanwhile). A full
    /// window goes on with a reader of this stream's own. Returns the frames' count and whether the
    /// stream is caught up with what the broker held at the last read.
    async fn fill_shared(
        &mut self,
        into: &mut Vec<Bytes>,
        max: usize,
    ) -> Result<(usize, bool), Fill> {
        let topic = self.topic.clone();
        let mut window = topic.read_back.window.lock().await;
        if window.generation != topic.replaced.load(Ordering::Acquire) {
            // The stream was replaced under the resume: the client reconnects to the new one.
            return Err(Fill::Failed);
        }
        let before = into.len();
        if let Some(last) = window.copy_after(self.cursor, max, into) {
            self.cursor = last;
        } else if let Some(wait) = window.read_nothing_lately() {
            // Another resume at the end just found nothing new, after waiting: wait as long here
            // (without the lock), not once more per resume in turn.
            drop(window);
            tokio::time::sleep(wait).await;
            return Ok((0, true));
        } else if let Some(reader) = window.reader.as_mut() {
            match reader.next(max).await {
                Ok(messages) => {
                    window.caught_up = messages.len() < max;
                    let frames: Vec<(u64, Bytes)> = messages
                        .iter()
                        .filter_map(|m| Some((m.seq?, topic.encode(None, m, false))))
                        .collect();
                    window.read(frames.is_empty());
                    window.extend(frames.iter().cloned());
                    for (seq, frame) in frames {
                        if seq > self.cursor {
                            self.cursor = seq;
                            into.push(frame);
                        }
                    }
                }
                Err(e) => {
                    // The window stops reading; each resume goes on with a reader of its own.
                    tracing::debug!(stream = %self.stream, error = %e, "JetStream read-back failed");
                    window.reader = None;
                    drop(window);
                    self.leave_window();
                    let reader = self.reader_after(self.cursor, max).await?;
                    self.reader = Some(reader);
                    return Ok((0, false));
                }
            }
        } else {
            // The window is full (or its reader failed): on with a reader of its own from here.
            drop(window);
            self.leave_window();
            let reader = self.reader_after(self.cursor, max).await?;
            self.reader = Some(reader);
            return Ok((0, false));
        }
        let caught_up = window.caught_up && self.cursor >= window.end;
        Ok((into.len() - before, caught_up))
    }

    /// The encoded events of the stream in `(after, until]`, read with a short-lived reader.
    async fn read_stretch(
        &mut self,
        after: u64,
        until: u64,
        batch: usize,
    ) -> Result<Vec<(u64, Bytes)>, Fill> {
        let mut reader = self.reader_after(after, batch).await?;
        let mut read = Vec::new();
        loop {
            let messages = reader.next(batch).await.map_err(|e| {
                tracing::debug!(stream = %self.stream, error = %e, "JetStream read-back failed");
                Fill::Failed
            })?;
            let short = messages.len() < batch;
            let mut reached = false;
            for message in &messages {
                let Some(seq) = message.seq else { continue };
                if seq > until {
                    reached = true;
                    break;
                }
                // Only ever forward: a read-back consumer that recovers by itself may deliver
                // again what it delivered before.
                if read.last().is_none_or(|(last, _)| seq > *last) && seq > after {
                    read.push((seq, self.topic.encode(None, message, false)));
                }
                reached = seq == until;
            }
            // The stretch is whole once the read reached its end, or the stream had nothing more.
            if reached || short {
                return Ok(read);
            }
        }
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
        if self.reader.is_none() && !self.shared {
            if let Err(done) = self.open(into, max).await {
                return done;
            }
        }
        let (read, caught_up) = if self.shared {
            match self.fill_shared(into, max).await {
                Ok(read) => read,
                Err(done) => return done,
            }
        } else {
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
            let mut read = 0;
            for message in &messages {
                if let Some(seq) = message.seq.filter(|s| *s > self.cursor) {
                    self.cursor = seq;
                    read += 1;
                    into.push(self.topic.encode(None, message, false));
                }
            }
            (read, messages.len() < max)
        };
        self.read += read;
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
            self.idle_reads = if read == 0 { self.idle_reads + 1 } else { 0 };
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

/// Whether `topic`'s live consumer has reached `position`, waiting up to [`AHEAD_WAIT`] for
/// it: a client that comes from another instance can be a little ahead of this one.
async fn live_reaches(topic: &Topic, position: u64) -> bool {
    let deadline = tokio::time::Instant::now() + AHEAD_WAIT;
    loop {
        if lock(&topic.members).head >= position {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // Rare (a move between instances, an unknown id): a short poll, not a wake-up per event.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl StreamBacklog {
    /// Stops reading from the topic's window; the last reader to leave has it emptied after
    /// [`WINDOW_LINGER`] unless another resume comes meanwhile.
    fn leave_window(&mut self) {
        if !std::mem::take(&mut self.shared) {
            return;
        }
        if let Some(idled) = self.topic.read_back.leave() {
            Self::expire_later(&self.topic, idled);
        }
    }

    /// Empties `topic`'s window after [`WINDOW_LINGER`] if it has had no reader since `idled`.
    fn expire_later(topic: &Arc<Topic>, idled: u64) {
        // Weak: the wait must not keep a topic (and its broker subscription) that has gone.
        let topic = Arc::downgrade(topic);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(WINDOW_LINGER).await;
                if let Some(topic) = topic.upgrade() {
                    topic.read_back.expire(idled);
                }
            });
        }
    }
}

impl Drop for StreamBacklog {
    fn drop(&mut self) {
        self.leave_window();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, Join, RouteTopics};
    use crate::stream::{Overflow, StreamQueue};
    use sluice_bridge::{BridgeError, Message, Sink, Subscription, TopicSyntax};
    use std::sync::Mutex;

    /// A JetStream-like broker whose stream info lags: it reports `reported_last` as the stream's
    /// end, as a new stream leader that is still applying its log does, while it holds `stored`.
    struct LaggingInfo {
        stored: Vec<u64>,
        reported_last: u64,
        live: Mutex<Option<Sink>>,
    }

    struct Reader {
        last: u64,
        left: Vec<u64>,
    }

    fn message(seq: u64) -> Message {
        Message {
            seq: Some(seq),
            ..Message::new(Arc::from("t"), Bytes::from(seq.to_string()))
        }
    }

    #[async_trait]
    impl HistoryReader for Reader {
        fn first_held(&self) -> u64 {
            1
        }

        fn last(&self) -> u64 {
            self.last
        }

        async fn next(&mut self, max: usize) -> Result<Vec<Message>, BridgeError> {
            let n = self.left.len().min(max);
            Ok(self.left.drain(..n).map(message).collect())
        }
    }

    #[async_trait]
    impl Bridge for LaggingInfo {
        fn syntax(&self) -> TopicSyntax {
            TopicSyntax::Nats
        }

        async fn subscribe(&self, _: &str, _: Sink) -> Result<Subscription, BridgeError> {
            Err(BridgeError::Unsupported("live only through the stream"))
        }

        async fn publish(&self, _: &str, _: Bytes) -> Result<(), BridgeError> {
            Ok(())
        }

        async fn subscribe_stream(
            &self,
            _: &str,
            _: &str,
            sink: Sink,
        ) -> Result<(Subscription, u64), BridgeError> {
            *self.live.lock().expect("sink") = Some(sink);
            Ok((Subscription::new(()), self.reported_last))
        }

        async fn read_stream(
            &self,
            _: &str,
            _: &str,
            after: u64,
            _: usize,
        ) -> Result<Box<dyn HistoryReader>, BridgeError> {
            let left = self.stored.iter().copied().filter(|s| *s > after).collect();
            Ok(Box::new(Reader {
                last: self.reported_last,
                left,
            }))
        }
    }

    /// The `data:` of each frame, and `gap` for gaps.
    fn texts(frames: &[Bytes]) -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                let text = String::from_utf8_lossy(f);
                if text.starts_with("event: gap") {
                    return "gap".to_owned();
                }
                let data = text.lines().find_map(|l| l.strip_prefix("data: "));
                data.unwrap_or_default().to_owned()
            })
            .collect()
    }

    /// Resumes from `id` on a topic whose live consumer has delivered `live` (the stream holds 1 to
    /// 14, its info says 10): what the stream reads first.
    async fn resume(id: &str, live: std::ops::RangeInclusive<u64>) -> Vec<String> {
        let bridge = Arc::new(LaggingInfo {
            stored: (1..=14).collect(),
            reported_last: 10,
            live: Mutex::new(None),
        });
        let route = Arc::new(RouteTopics {
            retention: Retention::JetStream {
                stream: "S".to_owned(),
            },
            ..RouteTopics::live(bridge.clone())
        });
        let hub = Hub::new();
        let first = Arc::new(StreamQueue::new(100, Overflow::Disconnect));
        let joined = hub.join(Join::live(&route, "t"), first).await;
        let sink = bridge
            .live
            .lock()
            .expect("sink")
            .clone()
            .expect("subscribed");
        for seq in live {
            sink.message(message(seq));
        }
        let queue = Arc::new(StreamQueue::new(100, Overflow::Disconnect));
        let join = Join {
            last_event_id: Some(id.to_owned()),
            ..Join::live(&route, "t")
        };
        let mut resumed = hub.join(join, queue).await.expect("join");
        let mut frames = Vec::new();
        let backlog = resumed.backlog.as_mut().expect("a backlog");
        while backlog.fill(&mut frames, 4).await == Fill::More {}
        drop((joined, resumed));
        texts(&frames)
    }

    #[tokio::test(start_paused = true)]
    async fn a_position_the_live_consumer_has_seen_is_known_though_the_stream_info_lags() {
        // A client that read 12 on another instance: this one's consumer delivered 11 to 14.
        assert_eq!(resume("12", 11..=14).await, ["13", "14"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_position_past_everything_seen_is_unknown_after_a_bounded_wait() {
        let started = tokio::time::Instant::now();
        // Unknown: the stream goes on from where it joined (the live 11), after the gap.
        assert_eq!(resume("99", 11..=11).await, ["gap", "12", "13", "14"]);
        assert!(started.elapsed() >= AHEAD_WAIT);
    }
}
