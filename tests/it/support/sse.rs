//! Reading an SSE response as a browser would (sluice's reference parser), with the waits tests
//! need: the next event, the preamble, heartbeats, the end, and a subscription that is live.

use super::{h1_stream, publish, within, DEADLINE};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sluice::sse::Parser;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One server-sent event as a browser dispatches it.
pub use sluice::sse::parser::Event;

/// A streaming SSE response, read and parsed incrementally (by sluice's reference parser).
pub struct SseStream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    parser: Parser,
    /// Every byte received, for assertions on the wire format.
    pub raw: Vec<u8>,
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
        Self {
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
                        self.parser.feed(&data);
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
    /// the events up to and including it. For a subscription that is still being set up, or a broker
    /// that is coming back: what a broker does not deliver while it is away cannot be waited for.
    pub async fn publish_until_received<F, Fut>(
        &mut self,
        prefix: &str,
        mut publish: F,
    ) -> Vec<Event>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let start = Instant::now();
        let mut seen = Vec::new();
        for n in 0.. {
            assert!(
                start.elapsed() < DEADLINE,
                "no {prefix}-N event arrived within {DEADLINE:?}"
            );
            publish(format!("{prefix}-{n}")).await;
            while let Some(event) = self.try_next_event(Duration::from_millis(100)).await {
                let done = event.data.starts_with(&format!("{prefix}-"));
                seen.push(event);
                if done {
                    return seen;
                }
            }
        }
        unreachable!()
    }

    /// Reads until an event with `data` arrives; returns every event read, that one included.
    pub async fn read_until(&mut self, data: &str) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let event = self.next_event().await;
            let done = event.data == data;
            events.push(event);
            if done {
                return events;
            }
        }
    }

    /// Publishes a marker with `publish` and reads until it arrives; returns the events read before
    /// it. A broker keeps the order of what one publisher sends on a topic, so whatever was
    /// published before (the late probes of [`Self::publish_until_received`], a broker's copies sent
    /// again after a reconnect) has been read, and what a test publishes next is the next event.
    pub async fn settle<F, Fut>(&mut self, mut publish: F) -> Vec<Event>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        static MARKERS: AtomicU64 = AtomicU64::new(0);
        let marker = format!("settled-{}", MARKERS.fetch_add(1, Ordering::Relaxed));
        publish(marker.clone()).await;
        let mut events = self.read_until(&marker).await;
        events.pop();
        events
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
