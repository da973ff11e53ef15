//! The wires a stream is written to once its response head is sent: the raw HTTP/1.x connection,
//! the send half of an HTTP/2 stream, or (for any other session) pingora's session itself.
//!
//! A stream leaves pingora's session for a small task of its own, which matters with tens of
//! thousands of idle streams. An HTTP/1.x stream keeps the raw connection ([`RawH1Wire`]) instead of
//! pingora's per-connection session, buffers and task. An HTTP/2 stream keeps only its h2 send half
//! ([`H2Wire`]): pingora's session (request and response headers, body reader) and the boxed future
//! of its per-stream task, several KiB per stream, are freed.

use crate::pump::{Wire, WriteError};
use crate::sse;
use bytes::{BufMut, Bytes, BytesMut};
use h2::SendStream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    async fn send(&mut self, frames: &mut Vec<Bytes>) -> Result<u64, WriteError> {
        let one = as_one(frames);
        let pieces = match &one {
            Some(one) => std::slice::from_ref(one),
            None => &frames[..],
        };
        let bytes = pieces.iter().map(|p| p.len() as u64).sum();
        for piece in pieces {
            let mut data = piece.clone();
            // h2 queues a DATA frame whatever the window; waiting for capacity first keeps what a
            // stalled client holds bounded.
            while !data.is_empty() {
                self.send.reserve_capacity(data.len());
                match poll_fn(|cx| self.send.poll_capacity(cx)).await {
                    None => return Err(WriteError::Closed),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(n)) => {
                        let part = data.split_to(n.min(data.len()));
                        self.send.send_data(part, false)?;
                    }
                }
            }
        }
        frames.clear();
        Ok(bytes)
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

    async fn send(&mut self, frames: &mut Vec<Bytes>) -> Result<u64, WriteError> {
        let body = sse::coalesce(frames);
        let bytes = body.len() as u64;
        self.0
            .write_response_body(body, false)
            .await
            .map_err(WriteError::Session)?;
        Ok(bytes)
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
    pub async fn flush(&mut self) -> Result<(), WriteError> {
        bounded(self.write_timeout, self.io.flush()).await
    }

    /// Writes `frames` as one chunk of the chunked body (or as they are, close-delimited) with
    /// `writev`: the listener has no write buffer, so the shared frames go to the kernel without
    /// being copied into a per-connection buffer. A lone frame (the usual case) or a small burst
    /// needs no allocation for the write; a large batch (a backlog) is written as it is, uncopied.
    async fn write_chunk(&mut self, frames: &[Bytes], len: usize) -> std::io::Result<()> {
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
) -> Result<(), WriteError> {
    match tokio::time::timeout(limit, write).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(WriteError::TimedOut(limit)),
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

    async fn send(&mut self, frames: &mut Vec<Bytes>) -> Result<u64, WriteError> {
        // An empty chunk would end a chunked body.
        frames.retain(|f| !f.is_empty());
        let len: usize = frames.iter().map(Bytes::len).sum();
        if !frames.is_empty() {
            self.write_chunk(frames, len).await?;
        }
        frames.clear();
        Ok(len as u64)
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
