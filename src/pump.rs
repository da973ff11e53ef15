//! Writes one stream's queue to its client until the client leaves, the queue overflows or the
//! server shuts down (the hub closes every queue then): a resuming stream's backlog first, then
//! what queued up in one write, heartbeats on idle, a jittered `retry:` at shutdown. The client side
//! is a [`Wire`] (see [`crate::http::wire`] for HTTP/1.x and HTTP/2).

use crate::admin::metrics::{CloseReason, RouteMetrics};
use crate::sse;
use crate::stream::{Backlog, Closed, Fill, Next, StreamQueue};
use bytes::Bytes;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How a stream ended.
#[derive(Debug)]
pub enum End {
    Shutdown,
    /// Its route changed or went with a configuration reload: the client reconnects to the new one.
    Reload,
    ClientGone,
    TokenExpired,
    Overflow,
    BrokerError,
    WriteFailed(WriteError),
}

impl End {
    /// The `reason` of the metrics and the access log.
    pub fn reason(&self) -> CloseReason {
        match self {
            End::Shutdown => CloseReason::Shutdown,
            End::Reload => CloseReason::Reload,
            End::ClientGone => CloseReason::Client,
            End::TokenExpired => CloseReason::TokenExpired,
            End::Overflow => CloseReason::Overflow,
            End::BrokerError => CloseReason::BrokerError,
            End::WriteFailed(WriteError::TimedOut(_)) => CloseReason::WriteTimeout,
            // The connection or the stream failed under the write: the client went away.
            End::WriteFailed(_) => CloseReason::Client,
        }
    }
}

/// Why a write to a client failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The client took nothing for the write timeout.
    #[error("no progress writing for {0:?}")]
    TimedOut(Duration),
    /// The connection failed (reset, closed).
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/2 stream failed (reset by the client, or its connection went).
    #[error("HTTP/2 stream: {0}")]
    H2(#[from] h2::Error),
    /// The compressor failed (it does not, short of memory).
    #[error("compressing: {0}")]
    Compress(std::io::Error),
    /// The HTTP/2 stream can send nothing more.
    #[error("the HTTP/2 stream is closed")]
    Closed,
    /// pingora's session refused the write.
    #[error("{0}")]
    Session(Box<pingora::Error>),
}

/// The client side of one SSE stream.
pub trait Wire: Send {
    /// Resolves when the client has gone away.
    fn closed(&mut self) -> impl Future<Output = ()> + Send;
    /// Writes (and flushes) the frames in `frames`, in order, taking each out as it is written. The
    /// frames are shared (with other streams and the replay ring): a wire copies as little of them as
    /// it can. The pump bounds it with the write timeout. Returns the body bytes it wrote (after
    /// any content coding, before any transfer framing).
    fn send(
        &mut self,
        frames: &mut Vec<Bytes>,
    ) -> impl Future<Output = Result<u64, WriteError>> + Send;
    /// Ends the response body.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// The server-wide timings of every stream (one shared copy). A configuration reload sets new
/// values in place, so open streams take them too: the heartbeat from their next wake, the retry
/// when they end, the write timeout from their next write.
pub struct PumpSettings {
    pub heartbeat: SharedDuration,
    pub retry: SharedDuration,
    pub write_timeout: SharedDuration,
}

impl PumpSettings {
    pub fn new(heartbeat: Duration, retry: Duration, write_timeout: Duration) -> Self {
        Self {
            heartbeat: SharedDuration::new(heartbeat),
            retry: SharedDuration::new(retry),
            write_timeout: SharedDuration::new(write_timeout),
        }
    }
}

/// A duration read by many tasks and changed by a reload: an atomic, so reading it takes no lock.
#[derive(Debug)]
pub struct SharedDuration(AtomicU64);

impl SharedDuration {
    pub fn new(value: Duration) -> Self {
        Self(AtomicU64::new(Self::nanos(value)))
    }

    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, value: Duration) {
        self.0.store(Self::nanos(value), Ordering::Relaxed);
    }

    /// Configured durations are at most a day (`config::DURATION_RANGE`): far below u64 nanoseconds.
    fn nanos(value: Duration) -> u64 {
        u64::try_from(value.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What a stream's task holds besides its wire (passed as one reference: every argument of an async
/// function is stored in its state, and the state of an idle stream is what it costs).
pub struct Feed<H = ()> {
    pub queue: Arc<StreamQueue>,
    /// What a resuming stream reads before its queue (see [`crate::hub`]); `None` once caught up.
    pub backlog: Option<Box<dyn Backlog>>,
    pub settings: Arc<PumpSettings>,
    /// For log lines only.
    pub topic: Box<str>,
    /// When the stream's token expires (routes with `auth = true`): the stream ends then.
    pub expires_at: Option<Instant>,
    /// The route's metrics, recorded once per written batch.
    pub metrics: Arc<RouteMetrics>,
    /// What the stream has written so far (for its access log line).
    pub sent: Sent,
    /// Whatever the stream holds until it ends (its topic memberships, its place under the limits).
    pub held: H,
}

/// What one stream wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Event frames (events, gaps), not heartbeats.
    pub events: u64,
    /// Every byte of the body after the preamble.
    pub bytes: u64,
}

/// What a batch about to be written is, for the metrics.
struct Batch {
    events: u64,
    /// When its oldest live event reached sluice (none for backlogs and heartbeats).
    since: Option<Instant>,
    /// The share of the queue it took.
    fill: f64,
}

/// Runs the stream to its end and reports how it ended (logged at debug level here).
///
/// One timer serves the stream: the heartbeat deadline while it waits for events, the write
/// deadline while a write is slow. What an idle stream holds is this function's state, so it is kept
/// small. A busy stream touches no timer per event: a write that completes at once only sets a flag,
/// which the heartbeat timer checks when it fires.
pub async fn pump<H: Sync>(wire: &mut impl Wire, feed: &mut Feed<H>) -> End {
    let timer = tokio::time::sleep_until(next_wake(feed));
    tokio::pin!(timer);
    // Set by every write; the heartbeat timer, when it fires, only re-arms itself if it is set. So
    // an idle stream gets a comment after one to two `heartbeat`s of silence.
    let mut wrote = false;
    let mut dropped_total: u64 = 0;
    // Set when the batch is a heartbeat.
    let mut heartbeat = false;
    // Reused for every batch, so taking frames from the queue allocates nothing.
    let mut frames = Vec::new();
    let end = loop {
        let wake = next_wake(feed);
        let expires_at = feed.expires_at;
        let (queue, backlog, settings, topic, feed_metrics) = feed.parts();
        let next = if let Some(source) = backlog {
            // Catching up: what the queue holds (the opening gap, current values, an interruption)
            // goes first, then the next batch of the backlog. No heartbeat is due: data flows.
            match queue.try_next(&mut frames) {
                Some(next) => next,
                None => {
                    let filled = tokio::select! {
                        biased;
                        () = wire.closed() => break End::ClientGone,
                        filled = source.fill(&mut frames, queue.capacity()) => filled,
                    };
                    match filled {
                        Fill::More => {}
                        Fill::Live => *backlog = None,
                        Fill::Failed => break End::BrokerError,
                    }
                    if frames.is_empty() {
                        continue;
                    }
                    Next::Frames {
                        dropped: 0,
                        conflated: 0,
                        since: None,
                    }
                }
            }
        } else {
            tokio::select! {
                biased;
                () = wire.closed() => break End::ClientGone,
                next = queue.next(&mut frames) => next,
                () = &mut timer => {
                    if expires_at.is_some_and(|e| e <= Instant::now()) {
                        break End::TokenExpired;
                    }
                    timer.as_mut().reset(wake);
                    if std::mem::take(&mut wrote) {
                        // Events went out since the timer was armed: no heartbeat is due yet.
                        continue;
                    }
                    frames.push(sse::heartbeat());
                    // Not an event: counted only in bytes.
                    heartbeat = true;
                    Next::Frames { dropped: 0, conflated: 0, since: None }
                }
            }
        };
        let batch = match next {
            Next::Frames {
                dropped,
                conflated,
                since,
            } => {
                if conflated > 0 {
                    feed_metrics.conflated(conflated);
                }
                let fill = frames.len() as f64 / queue.capacity() as f64;
                let mut events = if std::mem::take(&mut heartbeat) {
                    0
                } else {
                    frames.len() as u64
                };
                if dropped > 0 {
                    feed_metrics.dropped(dropped);
                    feed_metrics.gaps(sse::GapReason::Overflow, 1);
                    if dropped_total == 0 {
                        tracing::debug!(%topic, "slow client: drop-oldest started discarding events");
                    }
                    dropped_total += dropped;
                    // Tell the client, before the frames that follow what was discarded.
                    frames.insert(0, sse::gap(sse::GapReason::Overflow, Some(dropped)));
                    events += 1;
                }
                Batch {
                    events,
                    since,
                    fill,
                }
            }
            Next::Closed(Closed::Overflow) => break End::Overflow,
            Next::Closed(Closed::BrokerError) => break End::BrokerError,
            Next::Closed(Closed::Shutdown) => break End::Shutdown,
            Next::Closed(Closed::Reload) => break End::Reload,
        };
        let write_timeout = settings.write_timeout.get();
        let bytes = match send(wire, &mut frames, timer.as_mut(), write_timeout).await {
            Err(e) => break End::WriteFailed(e),
            // A slow write used the timer as its deadline: back to the heartbeat.
            Ok((true, bytes)) => {
                timer.as_mut().reset(next_wake(feed));
                bytes
            }
            Ok((false, bytes)) => {
                wrote = true;
                bytes
            }
        };
        let lag = batch.since.map(|since| since.elapsed());
        feed.metrics.wrote(batch.events, bytes, lag, batch.fill);
        feed.sent.events += batch.events;
        feed.sent.bytes += bytes;
        // Give back what a burst grew, so an idle stream stays small.
        if frames.capacity() > 64 {
            frames = Vec::new();
        }
    };
    let Feed {
        queue,
        settings,
        topic,
        ..
    } = &*feed;
    if dropped_total > 0 {
        tracing::debug!(%topic, dropped = dropped_total, "stream ended after dropping events");
    }
    match &end {
        End::ClientGone => tracing::debug!(%topic, "client closed the stream"),
        End::WriteFailed(e) => tracing::debug!(%topic, error = %e, "stream write failed"),
        End::TokenExpired => {
            // The browser reconnects (after `retry`) with a fresh token.
            tracing::debug!(%topic, "token expired, closing stream");
            wire.finish().await;
        }
        End::Overflow => {
            tracing::debug!(%topic, buffer = queue.capacity(), "slow client: queue full, closing stream");
            wire.finish().await;
        }
        End::BrokerError => {
            tracing::debug!(%topic, "broker subscription failed, closing stream");
            wire.finish().await;
        }
        End::Shutdown | End::Reload => {
            // Spread the reconnects of every client over a few seconds.
            frames.clear();
            frames.push(sse::shutdown_retry(settings.retry.get()));
            let write_timeout = settings.write_timeout.get();
            let _ = send(wire, &mut frames, timer.as_mut(), write_timeout).await;
            wire.finish().await;
        }
    }
    end
}

/// When a stream's timer should next wake: one heartbeat from now, or the token's expiry if sooner.
fn next_wake<H>(feed: &Feed<H>) -> Instant {
    let heartbeat = Instant::now() + feed.settings.heartbeat.get();
    feed.expires_at.map_or(heartbeat, |e| e.min(heartbeat))
}

impl<H> Feed<H> {
    /// Takes what a stream waits on apart from its settings (so the pump can read both at once).
    fn parts(
        &mut self,
    ) -> (
        &StreamQueue,
        &mut Option<Box<dyn Backlog>>,
        &PumpSettings,
        &str,
        &RouteMetrics,
    ) {
        (
            &self.queue,
            &mut self.backlog,
            &self.settings,
            &self.topic,
            &self.metrics,
        )
    }
}

/// Writes `frames`, failing when the write is not done within `limit`. Most writes complete at once
/// (room in the socket buffer or the h2 window) and leave the timer alone; a slow one resets the
/// stream's `timer` to the write deadline, and then `Ok((true, _))` tells the caller to re-arm it.
/// With the bytes written.
async fn send(
    wire: &mut impl Wire,
    frames: &mut Vec<Bytes>,
    mut timer: Pin<&mut Sleep>,
    limit: Duration,
) -> Result<(bool, u64), WriteError> {
    let write = wire.send(frames);
    tokio::pin!(write);
    if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return done.map(|bytes| (false, bytes));
    }
    timer.as_mut().reset(Instant::now() + limit);
    tokio::select! {
        biased;
        sent = write => sent.map(|bytes| (true, bytes)),
        () = timer => Err(WriteError::TimedOut(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::{pump, End, Feed, PumpSettings, Wire, WriteError};
    use crate::sse::{self, GapReason, Parser};
    use crate::stream::{Closed, Overflow, OverflowStats, StreamQueue};
    use bytes::Bytes;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::sync::watch;
    use tokio::task::JoinHandle;
    use tokio::time::{sleep, Instant};

    const HEARTBEAT: Duration = Duration::from_secs(10);
    const RETRY: Duration = Duration::from_secs(2);
    const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

    /// How the fake client takes a write.
    #[derive(Clone, Copy, Debug)]
    enum Writes {
        /// At once.
        Take,
        /// After this long.
        Slow(Duration),
        /// Never: the client stopped reading.
        Block,
    }

    /// What the fake client saw, shared with the test.
    struct Client {
        start: Instant,
        /// Every frame written, with when (since the start).
        sent: Mutex<Vec<(Duration, Bytes)>>,
        finished: Mutex<bool>,
        writes: watch::Sender<Writes>,
        gone: watch::Sender<bool>,
    }

    impl Client {
        fn sent(&self) -> Vec<(Duration, Bytes)> {
            self.sent.lock().expect("lock").clone()
        }

        fn finished(&self) -> bool {
            *self.finished.lock().expect("lock")
        }

        /// When each heartbeat went out, and how long the stream had been silent then.
        fn heartbeats(&self) -> Vec<(Duration, Duration)> {
            let mut last_write = Duration::ZERO;
            let mut beats = Vec::new();
            for (at, frame) in self.sent() {
                if frame == sse::heartbeat() {
                    beats.push((at, at - last_write));
                }
                last_write = at;
            }
            beats
        }
    }

    /// A client side of a stream that records what it is sent, and can block writes or leave.
    struct FakeWire(Arc<Client>);

    impl Wire for FakeWire {
        async fn closed(&mut self) {
            let _ = self.0.gone.subscribe().wait_for(|gone| *gone).await;
        }

        async fn send(&mut self, frames: &mut Vec<Bytes>) -> Result<u64, WriteError> {
            let writes = *self.0.writes.borrow();
            match writes {
                Writes::Take => {}
                Writes::Slow(delay) => sleep(delay).await,
                Writes::Block => std::future::pending().await,
            }
            let at = self.0.start.elapsed();
            let mut sent = self.0.sent.lock().expect("lock");
            let bytes = frames.iter().map(|f| f.len() as u64).sum();
            sent.extend(frames.drain(..).map(|frame| (at, frame)));
            // A pump that spins (a timer that keeps firing) would stop the paused clock for good.
            assert!(sent.len() < 10_000, "the stream floods its client");
            Ok(bytes)
        }

        async fn finish(&mut self) {
            *self.0.finished.lock().expect("lock") = true;
        }
    }

    /// A stream's pump running in a task of its own on a fake client.
    struct Running {
        client: Arc<Client>,
        queue: Arc<StreamQueue>,
        stats: OverflowStats,
        /// How the stream ended, and when (since the start).
        done: JoinHandle<(End, Duration)>,
    }

    impl Running {
        fn start(queue: StreamQueue, expires_in: Option<Duration>) -> Self {
            let start = Instant::now();
            let client = Arc::new(Client {
                start,
                sent: Mutex::new(Vec::new()),
                finished: Mutex::new(false),
                writes: watch::Sender::new(Writes::Take),
                gone: watch::Sender::new(false),
            });
            let queue = Arc::new(queue);
            let mut feed = Feed {
                queue: queue.clone(),
                backlog: None,
                settings: Arc::new(PumpSettings::new(HEARTBEAT, RETRY, WRITE_TIMEOUT)),
                topic: "t".into(),
                expires_at: expires_in.map(|d| start + d),
                metrics: crate::admin::metrics::global().route(""),
                sent: super::Sent::default(),
                held: (),
            };
            let mut wire = FakeWire(client.clone());
            let done = tokio::spawn(async move {
                let end = pump(&mut wire, &mut feed).await;
                (end, start.elapsed())
            });
            Self {
                client,
                queue,
                stats: OverflowStats::default(),
                done,
            }
        }

        fn live() -> Self {
            Self::start(StreamQueue::new(16, Overflow::Disconnect), None)
        }

        /// A stream with a queue of two whose client takes a while (half the write timeout) with
        /// the event "first", while the events "0", "1", ... up to `more` come.
        async fn behind(overflow: Overflow, more: usize) -> Self {
            let stream = Self::start(StreamQueue::new(2, overflow), None);
            let slow = Writes::Slow(WRITE_TIMEOUT / 2);
            stream.client.writes.send_replace(slow);
            stream.push("first");
            sleep(Duration::from_secs(1)).await;
            for n in 0..more {
                stream.push(&n.to_string());
            }
            stream
        }

        fn push(&self, data: &str) {
            self.queue.push(
                sse::encode_event(None, data.as_bytes()),
                Instant::now(),
                &self.stats,
            );
        }

        /// Waits for the stream to end (failing after a day of the test's paused time).
        async fn end(self) -> (End, Duration, Arc<Client>) {
            let day = Duration::from_secs(24 * 3600);
            let (end, at) = tokio::time::timeout(day, self.done)
                .await
                .expect("the stream ends")
                .expect("the pump task");
            (end, at, self.client)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_gets_a_heartbeat_after_one_to_two_intervals_of_silence() {
        let stream = Running::live();
        sleep(HEARTBEAT * 5 + HEARTBEAT / 2).await;
        let beats = stream.client.heartbeats();
        assert!(beats.len() >= 3, "{beats:?}");
        for (at, silence) in &beats {
            assert!(
                (HEARTBEAT..=2 * HEARTBEAT).contains(silence),
                "at {at:?} after {silence:?}"
            );
        }
        // An event restarts the count: the next heartbeat is one to two intervals after it.
        stream.push("x");
        sleep(HEARTBEAT * 3).await;
        let sent = stream.client.sent();
        let event = sent
            .iter()
            .position(|(_, frame)| frame.as_ref() == b"data: x\n\n")
            .expect("the event was sent");
        let (event_at, _) = sent[event];
        let (next_beat, beat) = &sent[event + 1];
        assert_eq!(*beat, sse::heartbeat());
        assert!(
            (HEARTBEAT..=2 * HEARTBEAT).contains(&(*next_beat - event_at)),
            "{sent:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_heartbeat_while_events_flow() {
        let stream = Running::live();
        for n in 0..30 {
            stream.push(&n.to_string());
            sleep(HEARTBEAT / 3).await;
        }
        let sent = stream.client.sent();
        assert_eq!(sent.len(), 30, "events only: {sent:?}");
        assert!(stream.client.heartbeats().is_empty());
        let mut parser = Parser::new();
        for (_, frame) in &sent {
            parser.feed(frame);
        }
        assert_eq!(parser.comments(), 0);
        let data: Vec<String> = std::iter::from_fn(|| parser.next_event())
            .map(|e| e.data)
            .collect();
        assert_eq!(data, (0..30).map(|n| n.to_string()).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_ends_the_stream_at_the_write_timeout() {
        let stream = Running::live();
        // A slow write that completes within the timeout is fine.
        stream
            .client
            .writes
            .send_replace(Writes::Slow(WRITE_TIMEOUT - Duration::from_secs(1)));
        stream.push("slow");
        sleep(WRITE_TIMEOUT * 2).await;
        assert_eq!(stream.client.sent().len(), 1);
        assert!(!stream.done.is_finished());
        // A write that never completes ends the stream once the timeout has passed since it began.
        stream.client.writes.send_replace(Writes::Block);
        let blocked_at = stream.client.start.elapsed();
        stream.push("stuck");
        let (end, at, client) = stream.end().await;
        assert!(matches!(end, End::WriteFailed(_)), "{end:?}");
        assert_eq!(at - blocked_at, WRITE_TIMEOUT);
        assert!(!client.finished(), "a stuck client gets no more writes");
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_ends_when_its_token_expires() {
        let expires_in = HEARTBEAT * 2 + HEARTBEAT / 2;
        let stream = Running::start(StreamQueue::new(16, Overflow::Disconnect), Some(expires_in));
        stream.push("x");
        let (end, at, client) = stream.end().await;
        assert!(matches!(end, End::TokenExpired), "{end:?}");
        assert_eq!(at, expires_in, "ends at the expiry, not at a heartbeat");
        assert!(client.finished(), "the response is ended properly");
        assert_eq!(client.sent().len(), 3, "the event and two heartbeats");
    }

    #[tokio::test(start_paused = true)]
    async fn drop_oldest_tells_the_client_how_many_events_were_dropped() {
        // Five events come while the client takes "first": the queue keeps the newest two.
        let stream = Running::behind(Overflow::DropOldest, 5).await;
        stream.client.writes.send_replace(Writes::Take);
        sleep(WRITE_TIMEOUT).await;
        let sent: Vec<Bytes> = stream.client.sent().into_iter().map(|(_, f)| f).collect();
        assert_eq!(
            sent,
            [
                sse::encode_event(None, b"first"),
                sse::gap(GapReason::Overflow, Some(3)),
                sse::encode_event(None, b"3"),
                sse::encode_event(None, b"4"),
            ]
        );
        assert_eq!(stream.stats.dropped_events.load(Relaxed), 3);
        // Once the client keeps up, no more gaps; the stream stays open.
        stream.push("5");
        sleep(Duration::from_secs(1)).await;
        assert_eq!(
            stream.client.sent().last().map(|(_, f)| f.clone()),
            Some(sse::encode_event(None, b"5"))
        );
        assert!(!stream.done.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_a_jittered_retry_then_ends_the_response() {
        let stream = Running::live();
        stream.push("x");
        sleep(Duration::from_millis(10)).await;
        stream.queue.close(Closed::Shutdown);
        let (end, _, client) = stream.end().await;
        assert!(matches!(end, End::Shutdown), "{end:?}");
        assert!(client.finished());
        let sent = client.sent();
        assert_eq!(sent.len(), 2, "{sent:?}");
        let mut parser = Parser::new();
        parser.feed(&sent[1].1);
        let retry = parser.retry().expect("a retry: at shutdown");
        let base = RETRY.as_millis() as u64;
        assert!((base..3 * base).contains(&retry), "{retry}");
        assert_eq!(parser.next_event(), None, "only a retry");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_under_disconnect_ends_the_stream() {
        let stream = Running::behind(Overflow::Disconnect, 3).await;
        let stats = stream.stats.disconnects.load(Relaxed);
        let (end, at, client) = stream.end().await;
        assert!(matches!(end, End::Overflow), "{end:?}");
        assert_eq!(at, WRITE_TIMEOUT / 2, "once the slow write is done");
        assert_eq!(stats, 1);
        assert!(client.finished());
        assert_eq!(client.sent().len(), 1, "nothing after the overflow");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_ends_the_stream_at_once() {
        let stream = Running::live();
        sleep(HEARTBEAT / 2).await;
        stream.client.gone.send_replace(true);
        let (end, at, client) = stream.end().await;
        assert!(matches!(end, End::ClientGone), "{end:?}");
        assert_eq!(at, HEARTBEAT / 2);
        assert!(!client.finished() && client.sent().is_empty());
    }
}
