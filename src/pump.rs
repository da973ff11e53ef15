//! Writes one stream's queue to its client until the client leaves, the queue overflows or the
//! server shuts down (the hub closes every queue then): a resuming stream's backlog first, then
//! what queued up in one write, heartbeats on idle, a jittered `retry:` at shutdown. The client side
//! is a [`Wire`] (see [`crate::http::wire`] for HTTP/1.x and HTTP/2).

use crate::sse;
use crate::stream::{Backlog, Closed, Fill, Next, StreamQueue};
use bytes::Bytes;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How a stream ended.
#[derive(Debug)]
pub enum End {
    Shutdown,
    ClientGone,
    TokenExpired,
    Overflow,
    BrokerError,
    WriteFailed(WriteError),
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
    /// it can. The pump bounds it with the write timeout.
    fn send(
        &mut self,
        frames: &mut Vec<Bytes>,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// Ends the response body.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// The server-wide timings of every stream (one shared copy).
pub struct PumpSettings {
    pub heartbeat: Duration,
    pub retry: Duration,
    pub write_timeout: Duration,
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
    /// Whatever the stream holds until it ends (its topic memberships, its place under the limits).
    pub held: H,
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
    // Reused for every batch, so taking frames from the queue allocates nothing.
    let mut frames = Vec::new();
    let end = loop {
        let wake = next_wake(feed);
        let expires_at = feed.expires_at;
        let (queue, backlog, settings, topic) = feed.parts();
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
                    Next::Frames { dropped: 0 }
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
                    Next::Frames { dropped: 0 }
                }
            }
        };
        match next {
            Next::Frames { dropped } => {
                if dropped > 0 {
                    if dropped_total == 0 {
                        tracing::debug!(%topic, "slow client: drop-oldest started discarding events");
                    }
                    dropped_total += dropped;
                    // Tell the client, before the frames that follow what was discarded.
                    frames.insert(0, sse::gap(sse::GapReason::Overflow, Some(dropped)));
                }
            }
            Next::Closed(Closed::Overflow) => break End::Overflow,
            Next::Closed(Closed::BrokerError) => break End::BrokerError,
            Next::Closed(Closed::Shutdown) => break End::Shutdown,
        }
        let write_timeout = settings.write_timeout;
        match send(wire, &mut frames, timer.as_mut(), write_timeout).await {
            Err(e) => break End::WriteFailed(e),
            // A slow write used the timer as its deadline: back to the heartbeat.
            Ok(true) => timer.as_mut().reset(next_wake(feed)),
            Ok(false) => wrote = true,
        }
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
        End::Shutdown => {
            // Spread the reconnects of every client over a few seconds.
            frames.clear();
            frames.push(sse::shutdown_retry(settings.retry));
            let _ = send(wire, &mut frames, timer.as_mut(), settings.write_timeout).await;
            wire.finish().await;
        }
    }
    end
}

/// When a stream's timer should next wake: one heartbeat from now, or the token's expiry if sooner.
fn next_wake<H>(feed: &Feed<H>) -> Instant {
    let heartbeat = Instant::now() + feed.settings.heartbeat;
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
    ) {
        (&self.queue, &mut self.backlog, &self.settings, &self.topic)
    }
}

/// Writes `frames`, failing when the write is not done within `limit`. Most writes complete at once
/// (room in the socket buffer or the h2 window) and leave the timer alone; a slow one resets the
/// stream's `timer` to the write deadline, and then `Ok(true)` tells the caller to re-arm it.
async fn send(
    wire: &mut impl Wire,
    frames: &mut Vec<Bytes>,
    mut timer: Pin<&mut Sleep>,
    limit: Duration,
) -> Result<bool, WriteError> {
    let write = wire.send(frames);
    tokio::pin!(write);
    if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return done.map(|()| false);
    }
    timer.as_mut().reset(Instant::now() + limit);
    tokio::select! {
        biased;
        sent = write => sent.map(|()| true),
        () = timer => Err(WriteError::TimedOut(limit)),
    }
}
