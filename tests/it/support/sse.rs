//! Reading an SSE response as a browser would (sluice's reference parser), with the waits tests
//! need: the next event, the preamble, heartbeats, the end, and a subscription that is live.

use super::{h1_stream, publish, within};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sluice::sse::Parser;
use sluice_testkit::listen::{self, Listener};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// One server-sent event as a browser dispatches it.
pub use sluice::sse::parser::Event;

/// A streaming SSE response, read and parsed incrementally (by sluice's reference parser).
pub struct SseStream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    parser: Parser,
    /// Every byte received (as sent, compressed or not), for assertions on the wire format.
    pub raw: Vec<u8>,
    /// The decoder of a compressed response (by its `content-encoding`), as a browser decodes it.
    decoder: Option<Decoder>,
    /// The id of the last event taken (with [`Self::next_event`] and friends), as a browser keeps it
    /// for its `Last-Event-ID` when it reconnects.
    pub last_event_id: Option<String>,
    /// The last `retry:` received.
    pub retry: Option<u64>,
    /// The comment lines received (the preamble's and heartbeats).
    pub comments: usize,
    pub ended: bool,
}

impl SseStream {
    pub fn new(resp: hyper::Response<Incoming>) -> Self {
        let (parts, body) = resp.into_parts();
        let encoding = parts.headers.get("content-encoding");
        let decoder = encoding.map(|e| Decoder::new(e.to_str().unwrap_or_default()));
        Self {
            decoder,
            status: parts.status,
            headers: parts.headers,
            body,
            parser: Parser::new(),
            raw: Vec::new(),
            last_event_id: None,
            retry: None,
            comments: 0,
            ended: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Reads one more chunk from the network. False when the stream ended.
    async fn read_more(&mut self) -> bool {
        loop {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.raw.extend_from_slice(&data);
                        match &mut self.decoder {
                            Some(decoder) => self.parser.feed(&decoder.decode(&data)),
                            None => self.parser.feed(&data),
                        }
                        assert!(!self.parser.invalid_utf8(), "stream is UTF-8");
                        self.retry = self.parser.retry();
                        self.comments = self.parser.comments();
                        return true;
                    }
                }
                Some(Err(_)) | None => {
                    self.ended = true;
                    return false;
                }
            }
        }
    }

    /// Takes the oldest parsed event, remembering its id.
    fn pop_event(&mut self) -> Option<Event> {
        let event = self.parser.next_event()?;
        if event.id.is_some() {
            self.last_event_id.clone_from(&event.id);
        }
        Some(event)
    }

    /// The next event; fails the test after [`DEADLINE`] or if the stream ends first.
    pub async fn next_event(&mut self) -> Event {
        within("next SSE event", async {
            loop {
                if let Some(event) = self.pop_event() {
                    return event;
                }
                if !self.read_more().await {
                    panic!("stream ended while waiting for an event");
                }
            }
        })
        .await
    }

    /// The next event if one arrives within `wait`.
    pub async fn try_next_event(&mut self, wait: Duration) -> Option<Event> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(event) = self.pop_event() {
                    return Some(event);
                }
                if !self.read_more().await {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Publishes `prefix-N` with `publish` (N counting up) until the stream receives one, and returns
    /// the events up to and including it (see [`listen::publish_until_received`]).
    pub async fn publish_until_received<F, Fut>(&mut self, prefix: &str, publish: F) -> Vec<Event>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        listen::publish_until_received(self, prefix, publish).await
    }

    /// Reads until an event with `data` arrives; returns every event read, that one included.
    pub async fn read_until(&mut self, data: &str) -> Vec<Event> {
        listen::read_until(self, data).await
    }

    /// Publishes a marker with `publish` and reads until it arrives; returns the events read before
    /// it, so what a test publishes next is the next event (see [`listen::settle`]).
    pub async fn settle<F, Fut>(&mut self, publish: F) -> Vec<Event>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        listen::settle(self, publish).await
    }

    /// Reads until the preamble (`retry:` and the first comment) has arrived.
    pub async fn opened(&mut self) {
        within("stream preamble", async {
            while self.comments == 0 {
                assert!(self.read_more().await, "stream ended before its preamble");
            }
        })
        .await;
    }

    /// Reads until the server ends the stream; returns the events that came before the end.
    pub async fn until_end(&mut self) -> Vec<Event> {
        within("end of stream", async { while self.read_more().await {} }).await;
        std::iter::from_fn(|| self.parser.next_event()).collect()
    }

    /// Waits until `n` comment lines (the preamble's included) have arrived.
    pub async fn comments_at_least(&mut self, n: usize) {
        within("heartbeat comments", async {
            while self.comments < n {
                assert!(self.read_more().await, "stream ended");
            }
        })
        .await;
    }
}

/// A streaming decoder of a compressed body: each piece decodes to what it completes, at once.
enum Decoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Decoder {
    fn new(encoding: &str) -> Self {
        match encoding {
            "gzip" => Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            "br" => Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            "zstd" => Decoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).expect("zstd")),
            other => panic!("unexpected content-encoding {other:?}"),
        }
    }

    fn decode(&mut self, data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let out = match self {
            Decoder::Gzip(d) => {
                d.write_all(data)
                    .and_then(|()| d.flush())
                    .expect("valid gzip");
                d.get_mut()
            }
            Decoder::Brotli(d) => {
                d.write_all(data)
                    .and_then(|()| d.flush())
                    .expect("valid br");
                d.get_mut()
            }
            Decoder::Zstd(d) => {
                d.write_all(data)
                    .and_then(|()| d.flush())
                    .expect("valid zstd");
                d.get_mut()
            }
        };
        std::mem::take(out)
    }
}

impl Listener for SseStream {
    type Item = Event;

    async fn next(&mut self) -> Event {
        self.next_event().await
    }

    async fn next_within(&mut self, wait: Duration) -> Option<Event> {
        self.try_next_event(wait).await
    }

    fn data(item: &Event) -> Option<&str> {
        Some(&item.data)
    }
}

/// Opens an HTTP/1.1 stream on `path`, a route with `publish = true`, and returns it once its
/// subscription is live (a probe POSTed to `path` arrived) and every probe was read away.
pub async fn live_stream(addr: SocketAddr, path: &str) -> SseStream {
    let mut stream = h1_stream(addr, path).await;
    stream.opened().await;
    let probe = |data| async move { publish(addr, path, data).await };
    stream.publish_until_received("warm", probe).await;
    stream.settle(probe).await;
    stream
}
