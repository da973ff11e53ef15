//! A compressed stream's wire: every write is compressed and flushed on its own, in front of the
//! stream's own wire (HTTP/1.x, HTTP/2 or pingora's session).

use crate::compress::Encoder;
use crate::pump::{Wire, WriteError};
use crate::sse;
use bytes::Bytes;

/// `W` with every write compressed by the stream's encoder.
pub struct Compressed<W> {
    inner: W,
    encoder: Encoder,
    /// The one compressed buffer of a write (kept to reuse its allocation).
    out: Vec<Bytes>,
}

impl<W: Wire> Compressed<W> {
    pub fn new(inner: W, encoder: Encoder) -> Self {
        Self {
            inner,
            encoder,
            out: Vec::with_capacity(1),
        }
    }

    async fn send_encoded(&mut self, encoded: Bytes) -> Result<u64, WriteError> {
        if encoded.is_empty() {
            return Ok(0);
        }
        self.out.clear();
        self.out.push(encoded);
        self.inner.send(&mut self.out).await
    }
}

impl<W: Wire> Wire for Compressed<W> {
    async fn closed(&mut self) {
        self.inner.closed().await;
    }

    async fn send(&mut self, frames: &mut Vec<Bytes>) -> Result<u64, WriteError> {
        // A write of heartbeats only means the stream has been idle for a heartbeat interval: the
        // encoder gives back its working state until the next event.
        let heartbeat = sse::heartbeat();
        let idle = frames.iter().all(|f| *f == heartbeat);
        let encoded = self
            .encoder
            .encode(frames, idle)
            .map_err(WriteError::Compress)?;
        frames.clear();
        self.send_encoded(encoded).await
    }

    async fn finish(&mut self) {
        if let Ok(last) = self.encoder.finish() {
            // Best effort, as the body's end always is: the client may be gone.
            let _ = self.send_encoded(last).await;
        }
        self.inner.finish().await;
    }
}
