//! Writes one stream's queue to its client until the client leaves, the queue overflows or the
//! server shuts down (the hub closes every queue then): coalesced writes, heartbeats on idle, a
//! jittered `retry:` at shutdown.
//!
//! Once its response head is sent, a stream leaves pingora's session for a small task of its own,
//! which matters with tens of thousands of idle streams. An HTTP/1.1 stream keeps the raw connection
//! ([`RawH1Wire`]) instead of pingora's per-connection session, buffers and task. An HTTP/2 stream
//! keeps only its h2 send half ([`H2Wire`]): pingora's session (request and response headers, body
//! reader) and the boxed future of its per-stream task, several KiB per stream, are freed.

use crate::sse;
use crate::stream::{Backlog, Closed, Fill, Next, StreamQueue};
use bytes::{BufMut, Bytes, BytesMut};
use h2::SendStream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

/// How a stream ended.
#[derive(Debug)]
pub enum End {
    Shutdown,
    ClientGone,
    TokenExpired,
    Overflow,
    BrokerError,
    WriteFailed(String),
}

/// The client side of one SSE stream.
pub trait Wire: Send {
    /// Resolves when the client has gone away.
    fn closed(&mut self) -> impl Future<Output = ()> + Send;
    /// Writes (and flushes) the frames in `frames`, in order, taking each out as it is written. The
    /// frames are shared (with other streams and the replay ring): a wire copies as little of them as
    /// it can. The pump bounds it with the write timeout.
    fn send(&mut self, frames: &mut Vec<Bytes>) -> impl Future<Output = Result<(), String>> + Send;
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
) -> Result<bool, String> {
    let write = wire.send(frames);
    tokio::pin!(write);
    if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return done.map(|()| false);
    }
    timer.as_mut().reset(Instant::now() + limit);
    tokio::select! {
        biased;
        sent = write => sent.map(|()| true),
        () = timer => Err(format!("no progress writing for {limit:?}")),
    }
}

/// Up to this many bytes, the frames of one write are copied together (a burst of small events is
/// then one chunk or one DATA frame); past it, they are written as they are, shared, so a backlog
/// is never copied (h2's default frame size).
const SMALL_BURST: usize = 16 * 1024;

/// The frames of one write as a single buffer when that costs no copy (one frame, the usual case) or
/// a small one (a burst of small frames); `None` for a large batch, written frame by frame.
fn as_one(frames: &[Bytes]) -> Option<Bytes> {
    match frames {
        [] => Some(Bytes::new()),
        [one] => Some(one.clone()),
        _ => {
            let len: usize = frames.iter().map(Bytes::len).sum();
            if len > SMALL_BURST {
                return None;
            }
            let mut one = BytesMut::with_capacity(len);
            for frame in frames {
                one.put_slice(frame);
            }
            Some(one.freeze())
        }
    }
}

/// An HTTP/2 stream reduced to its h2 send half, after pingora wrote the response head.
pub struct H2Wire {
    send: SendStream<Bytes>,
}

impl H2Wire {
    pub fn new(send: SendStream<Bytes>) -> Self {
        Self { send }
    }
}

impl Wire for H2Wire {
    async fn closed(&mut self) {
        // Resolves on the client's RST_STREAM or when the connection is gone.
        let _ = poll_fn(|cx| self.send.poll_reset(cx)).await;
    }

    async fn send(&mut self, frames: &mut Vec<Bytes>) -> Result<(), String> {
        let one = as_one(frames);
        let pieces = match &one {
            Some(one) => std::slice::from_ref(one),
            None => &frames[..],
        };
        for piece in pieces {
            let mut data = piece.clone();
            // h2 queues a DATA frame whatever the window; waiting for capacity first keeps what a
            // stalled client holds bounded.
            while !data.is_empty() {
                self.send.reserve_capacity(data.len());
                match poll_fn(|cx| self.send.poll_capacity(cx)).await {
                    None => return Err("the stream cannot send".to_owned()),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(n)) => {
                        let part = data.split_to(n.min(data.len()));
                        self.send
                            .send_data(part, false)
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        frames.clear();
        Ok(())
    }

    async fn finish(&mut self) {
        let _ = self.send.send_data(Bytes::new(), true);
    }
}

/// A stream inside pingora's session (usable for any HTTP version).
pub struct SessionWire<'a>(pub &'a mut ServerSession);

impl Wire for SessionWire<'_> {
    async fn closed(&mut self) {
        // Returns only on a client close or reset: no request body is expected on a stream.
        let _ = self.0.read_body_or_idle(true).await;
    }

    async fn send(&mut self, frames: &mut Vec<Bytes>) -> Result<(), String> {
        self.0
            .write_response_body(sse::coalesce(frames), false)
            .await
            .map_err(|e| e.to_string())
    }

    async fn finish(&mut self) {
        let _ = self.0.write_response_body(Bytes::new(), true).await;
    }
}

/// An HTTP/1.x stream on the raw connection, after pingora wrote the response head: a chunked body
/// for HTTP/1.1, a close-delimited one for HTTP/1.0 (which knows no chunks).
pub struct RawH1Wire {
    io: Stream,
    write_timeout: Duration,
    chunked: bool,
}

impl RawH1Wire {
    pub fn new(io: Stream, write_timeout: Duration, chunked: bool) -> Self {
        Self {
            io,
            write_timeout,
            chunked,
        }
    }

    /// Sends whatever pingora left buffered on the connection.
    pub async fn flush(&mut self) -> Result<(), String> {
        bounded(self.write_timeout, self.io.flush()).await
    }

    /// Writes `frames` as one chunk of the chunked body (or as they are, close-delimited) with
    /// `writev`: the listener has no write buffer, so the shared frames go to the kernel without
    /// being copied into a per-connection buffer. A lone frame (the usual case) or a small burst
    /// needs no allocation for the write; a large batch (a backlog) is written as it is, uncopied.
    async fn write_chunk(&mut self, frames: &[Bytes]) -> std::io::Result<()> {
        let len = frames.iter().map(Bytes::len).sum();
        let mut head_buf = [0u8; 20];
        let (head, tail): (&[u8], &[u8]) = if self.chunked {
            (chunk_head(len, &mut head_buf), b"\r\n")
        } else {
            (b"", b"")
        };
        let one = as_one(frames);
        let mut few;
        let mut many;
        let mut rest: &mut [IoSlice<'_>] = match &one {
            Some(one) => {
                few = [IoSlice::new(head), IoSlice::new(one), IoSlice::new(tail)];
                &mut few
            }
            None => {
                many = Vec::with_capacity(frames.len() + 2);
                many.push(IoSlice::new(head));
                many.extend(frames.iter().map(|f| IoSlice::new(f)));
                many.push(IoSlice::new(tail));
                &mut many
            }
        };
        while rest.iter().any(|s| !s.is_empty()) {
            // At most IOV_MAX (1024) slices per call.
            let upto = rest.len().min(1024);
            let written = self.io.write_vectored(&rest[..upto]).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, written);
        }
        self.io.flush().await
    }
}

/// Runs one write of the raw wire, failing it when it makes no progress for `limit`.
async fn bounded(
    limit: Duration,
    write: impl Future<Output = std::io::Result<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(limit, write).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no progress writing for {limit:?}")),
    }
}

/// Formats `len` as a chunk-size line (`{len:x}\r\n`) into `buf`, without allocating.
fn chunk_head(mut len: usize, buf: &mut [u8; 20]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = buf.len() - 2;
    buf[at..].copy_from_slice(b"\r\n");
    loop {
        at -= 1;
        buf[at] = HEX[len & 0xf];
        len >>= 4;
        if len == 0 {
            break;
        }
    }
    &buf[at..]
}

impl Wire for RawH1Wire {
    async fn closed(&mut self) {
        // A client sends nothing after its request; a read returns only on close (0) or error.
        // Anything else it sends (it should not) is read and ignored.
        let mut probe = [0u8; 1];
        loop {
            match self.io.read(&mut probe).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    async fn send(&mut self, frames: &mut Vec<Bytes>) -> Result<(), String> {
        // An empty chunk would end a chunked body.
        frames.retain(|f| !f.is_empty());
        if !frames.is_empty() {
            self.write_chunk(frames).await.map_err(|e| e.to_string())?;
        }
        frames.clear();
        Ok(())
    }

    async fn finish(&mut self) {
        let last = async {
            if self.chunked {
                self.io.write_all(b"0\r\n\r\n").await?;
            }
            self.io.flush().await?;
            // A close-delimited body ends with the connection; a chunked one could go on, but an
            // SSE stream is the last thing on its connection.
            self.io.shutdown().await
        };
        let _ = tokio::time::timeout(self.write_timeout, last).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{as_one, chunk_head, SMALL_BURST};
    use bytes::Bytes;

    #[test]
    fn small_bursts_are_one_buffer_and_large_batches_are_not_copied() {
        let frame = |n: usize| Bytes::from(vec![b'x'; n]);
        let lone = [frame(7)];
        assert_eq!(as_one(&lone).map(|b| b.as_ptr()), Some(lone[0].as_ptr()));
        assert_eq!(as_one(&[frame(10), frame(20)]).map(|b| b.len()), Some(30));
        assert!(as_one(&[frame(SMALL_BURST), frame(1)]).is_none());
    }

    #[test]
    fn chunk_heads_are_hex_lines() {
        let mut buf = [0u8; 20];
        assert_eq!(chunk_head(0, &mut buf), b"0\r\n");
        assert_eq!(chunk_head(10, &mut buf), b"a\r\n");
        assert_eq!(chunk_head(0x1f3c, &mut buf), b"1f3c\r\n");
        assert_eq!(chunk_head(usize::MAX, &mut buf), b"ffffffffffffffff\r\n");
    }
}
