//! Writes one stream's queue to its client until the client leaves, the queue overflows or the
//! server shuts down: coalesced writes, heartbeats on idle, a jittered `retry:` at shutdown.
//!
//! Two wires carry it. HTTP/2 streams stay inside pingora's session ([`SessionWire`]). An HTTP/1.1
//! stream, once its response head is sent, is taken out of pingora ([`RawH1Wire`]): the connection
//! then costs one small task and the socket, instead of pingora's per-connection session, buffers and
//! task, which matters with tens of thousands of idle streams.

use crate::sse;
use crate::stream::{Closed, Next, StreamQueue};
use bytes::Bytes;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io::IoSlice;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// A timeout that never fires in practice (about 30 years).
const NEVER: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

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
    /// Writes (and flushes) one piece of the event stream.
    fn send(&mut self, data: Bytes) -> impl Future<Output = Result<(), String>> + Send;
    /// Ends the response body.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// What one stream needs to know besides its wire.
pub struct PumpSettings {
    pub heartbeat: Duration,
    pub retry: Duration,
    pub topic: String,
    pub buffer: usize,
    /// The stream ends when its token expires (routes with `auth = true`).
    pub expires_in: Option<Duration>,
}

/// Runs the stream to its end and reports how it ended (logged at debug level here).
pub async fn pump(
    wire: &mut impl Wire,
    queue: &StreamQueue,
    settings: &PumpSettings,
    shutdown: &ShutdownWatch,
) -> End {
    let topic = settings.topic.as_str();
    let idle = tokio::time::sleep(settings.heartbeat);
    tokio::pin!(idle);
    // Far enough to never fire when there is no token (tokio caps deadlines anyway).
    let expiry = tokio::time::sleep(settings.expires_in.unwrap_or(NEVER));
    tokio::pin!(expiry);
    let mut shutdown = shutdown.clone();
    let mut dropped_total: u64 = 0;
    // Reused for every batch, so taking frames from the queue allocates nothing.
    let mut frames = Vec::new();
    let end = loop {
        let data = tokio::select! {
            biased;
            _ = shutdown.changed() => break End::Shutdown,
            () = wire.closed() => break End::ClientGone,
            () = &mut expiry => break End::TokenExpired,
            next = queue.next(&mut frames) => match next {
                Next::Frames { dropped } => {
                    if dropped > 0 {
                        if dropped_total == 0 {
                            tracing::debug!(%topic, "slow client: drop-oldest started discarding events");
                        }
                        dropped_total += dropped;
                        // Tell the client, before the frames that follow what was discarded.
                        frames.insert(0, sse::gap(sse::GapReason::Overflow, Some(dropped)));
                    }
                    sse::coalesce(&mut frames)
                }
                Next::Closed(Closed::Overflow) => break End::Overflow,
                Next::Closed(Closed::BrokerError) => break End::BrokerError,
            },
            () = &mut idle => sse::heartbeat(),
        };
        if let Err(e) = wire.send(data).await {
            break End::WriteFailed(e);
        }
        idle.as_mut().reset(Instant::now() + settings.heartbeat);
        // Give back what a burst grew, so an idle stream stays small.
        if frames.capacity() > 64 {
            frames = Vec::new();
        }
    };
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
            tracing::debug!(%topic, buffer = settings.buffer, "slow client: queue full, closing stream");
            wire.finish().await;
        }
        End::BrokerError => {
            tracing::debug!(%topic, "broker subscription failed, closing stream");
            wire.finish().await;
        }
        End::Shutdown => {
            // Spread the reconnects of every client over a few seconds.
            let _ = wire.send(sse::shutdown_retry(settings.retry)).await;
            wire.finish().await;
        }
    }
    end
}

/// A stream inside pingora's session (HTTP/2; also usable for HTTP/1.1).
pub struct SessionWire<'a>(pub &'a mut ServerSession);

impl Wire for SessionWire<'_> {
    async fn closed(&mut self) {
        // Returns only on a client close or reset: no request body is expected on a stream.
        let _ = self.0.read_body_or_idle(true).await;
    }

    async fn send(&mut self, data: Bytes) -> Result<(), String> {
        self.0
            .write_response_body(data, false)
            .await
            .map_err(|e| e.to_string())
    }

    async fn finish(&mut self) {
        let _ = self.0.write_response_body(Bytes::new(), true).await;
    }
}

/// An HTTP/1.1 stream on the raw connection, after pingora wrote the chunked response head.
pub struct RawH1Wire {
    io: Stream,
    write_timeout: Duration,
}

impl RawH1Wire {
    pub fn new(io: Stream, write_timeout: Duration) -> Self {
        Self { io, write_timeout }
    }

    /// Sends whatever pingora left buffered on the connection.
    pub async fn flush(&mut self) -> Result<(), String> {
        bounded(self.write_timeout, self.io.flush()).await
    }

    /// Writes one chunk of the chunked body with one `writev` (the listener has no write buffer, so
    /// the shared frame goes to the kernel without being copied into a per-connection buffer).
    async fn write_chunk(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut head_buf = [0u8; 20];
        let head = chunk_head(data.len(), &mut head_buf);
        let mut parts = [head, data, b"\r\n"];
        let mut first = 0;
        while first < parts.len() {
            let slices = [
                IoSlice::new(parts[first]),
                IoSlice::new(parts.get(first + 1).copied().unwrap_or_default()),
                IoSlice::new(parts.get(first + 2).copied().unwrap_or_default()),
            ];
            let mut written = self.io.write_vectored(&slices).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while first < parts.len() && written >= parts[first].len() {
                written -= parts[first].len();
                first += 1;
            }
            if first < parts.len() {
                parts[first] = &parts[first][written..];
            }
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

    async fn send(&mut self, data: Bytes) -> Result<(), String> {
        if data.is_empty() {
            return Ok(());
        }
        bounded(self.write_timeout, self.write_chunk(&data)).await
    }

    async fn finish(&mut self) {
        let last = async {
            self.io.write_all(b"0\r\n\r\n").await?;
            self.io.flush().await
        };
        let _ = tokio::time::timeout(self.write_timeout, last).await;
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_head;

    #[test]
    fn chunk_heads_are_hex_lines() {
        let mut buf = [0u8; 20];
        assert_eq!(chunk_head(0, &mut buf), b"0\r\n");
        assert_eq!(chunk_head(10, &mut buf), b"a\r\n");
        assert_eq!(chunk_head(0x1f3c, &mut buf), b"1f3c\r\n");
        assert_eq!(chunk_head(usize::MAX, &mut buf), b"ffffffffffffffff\r\n");
    }
}
