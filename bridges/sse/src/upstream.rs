//! One upstream stream: a `GET` of one path on the origin, its events parsed and delivered as they
//! arrive, and the reconnection (with `Last-Event-ID`, after the origin's `retry:` or a backoff)
//! whenever it drops or the origin answers with anything but an event stream.

use super::Counts;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::StreamExt;
use reqwest::header::{HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use reqwest::StatusCode;
use sluice_bridge::{BridgeError, Interruption, Message, Sink};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use url::Url;

/// The most bytes read from the origin without a complete event: past it the upstream stream is
/// dropped and reconnected, so an origin cannot make sluice hold an endless line or event.
pub(crate) const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// How long the origin may take to answer a request with its response head.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two attempts, however many failed in a row.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The shortest reconnection delay an origin's `retry:` can set.
const MIN_RETRY: Duration = Duration::from_millis(100);
/// The longest reconnection delay an origin's `retry:` can set.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Everything the task of one upstream stream needs.
pub(crate) struct Upstream {
    pub(crate) broker: Arc<str>,
    pub(crate) topic: Arc<str>,
    pub(crate) url: Url,
    pub(crate) client: reqwest::Client,
    pub(crate) reconnect: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) counts: Arc<Counts>,
    pub(crate) sink: Sink,
}

/// Why an attempt did not become an event stream.
#[derive(Debug)]
enum Failure {
    /// The origin answered, but not with `2xx` and `text/event-stream`.
    Answer(StatusCode, String),
    /// No answer: the connection failed or the head took too long.
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Answer(_, why) | Failure::Transport(why) => f.write_str(why),
        }
    }
}

/// Why reading the body stopped before the parser saw its end.
enum Cut {
    /// Reading from the origin failed.
    Transport(String),
    /// An event grew past [`MAX_EVENT_BYTES`].
    TooLarge,
}

/// Counts this stream in the bridge's status for as long as the task runs (also when aborted).
struct Held {
    counts: Arc<Counts>,
    down: bool,
}

impl Held {
    fn new(counts: Arc<Counts>) -> Self {
        counts.streams.fetch_add(1, Ordering::Relaxed);
        Self {
            counts,
            down: false,
        }
    }

    fn set_down(&mut self, down: bool) {
        if self.down != down {
            self.down = down;
            if down {
                self.counts.down.fetch_add(1, Ordering::Relaxed);
            } else {
                self.counts.down.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.set_down(false);
        self.counts.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// Reads the upstream stream until the task is aborted. The first attempt's outcome goes to
    /// `answered`: a `4xx` ends the task there (the subscriber gets the error); anything else
    /// keeps it going, retrying with backoff.
    pub(crate) async fn run(self, answered: oneshot::Sender<Result<(), BridgeError>>) {
        let mut answered = Some(answered);
        let mut held = Held::new(self.counts.clone());
        // The origin's id of the last event delivered: sent back as `Last-Event-ID`.
        let mut last_id = String::new();
        let mut delay = self.reconnect;
        // Attempts in a row that failed or brought no event (the backoff grows with them).
        let mut failures: u32 = 0;
        // Events may have been lost since the last good answer: the origin failed to answer, or
        // the stream dropped with no id to resume from. The browsers are told when it is back.
        let mut missed = false;
        let mut connected_before = false;
        loop {
            match self.connect(resume_header(&last_id)).await {
                Ok(response) => {
                    if let Some(answered) = answered.take() {
                        let _ = answered.send(Ok(()));
                    }
                    held.set_down(false);
                    if connected_before {
                        self.counts.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    if std::mem::take(&mut missed) {
                        self.sink.interrupted(Interruption::Disconnected);
                    }
                    connected_before = true;
                    let (why, delivered) = self.read(response, &mut last_id, &mut delay).await;
                    tracing::info!(broker = %self.broker, topic = %self.topic, reason = %why, "upstream stream dropped; reconnecting");
                    // An origin that keeps closing at once is retried ever more slowly.
                    failures = if delivered { 0 } else { failures + 1 };
                    // With an id, the origin resumes where the stream dropped.
                    missed = resume_header(&last_id).is_none();
                }
                Err(failure) => {
                    if let Some(answered) = answered.take() {
                        if let Failure::Answer(status, why) = &failure {
                            if status.is_client_error() || *status == StatusCode::NO_CONTENT {
                                tracing::warn!(broker = %self.broker, topic = %self.topic, answer = %why, "upstream refused the stream");
                                let refused = format!("the upstream answered {why}");
                                let _ = answered.send(Err(BridgeError::broker_says(refused)));
                                return;
                            }
                        }
                        // The stream opens for the subscriber, and the origin is retried.
                        let _ = answered.send(Ok(()));
                    }
                    failures += 1;
                    missed = true;
                    // The origin is down when it cannot be reached; an origin that answers (if
                    // only with an error for this path) is up.
                    held.set_down(matches!(failure, Failure::Transport(_)));
                    tracing::warn!(broker = %self.broker, topic = %self.topic, error = %failure, failures, "upstream stream unavailable; retrying");
                }
            }
            tokio::time::sleep(backoff(delay, failures)).await;
        }
    }

    /// One attempt: the request, and the checks of the answer's status and type.
    async fn connect(&self, resume: Option<HeaderValue>) -> Result<reqwest::Response, Failure> {
        let mut request = self
            .client
            .get(self.url.clone())
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(id) = resume {
            request = request.header("last-event-id", id);
        }
        let response = match tokio::time::timeout(ANSWER_TIMEOUT, request.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(Failure::Transport(transport_error(&e))),
            Err(_) => {
                return Err(Failure::Transport(format!(
                    "no answer within {ANSWER_TIMEOUT:?}"
                )))
            }
        };
        let status = response.status();
        if !status.is_success() || status == StatusCode::NO_CONTENT {
            return Err(Failure::Answer(status, status.to_string()));
        }
        let event_stream = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(sluice_bridge::is_event_stream);
        if !event_stream {
            let kind = response.headers().get(CONTENT_TYPE);
            let kind = kind.and_then(|v| v.to_str().ok()).unwrap_or("none");
            return Err(Failure::Answer(
                status,
                format!("{status} with content-type {kind:?}, not text/event-stream"),
            ));
        }
        Ok(response)
    }

    /// Delivers the events of a connected stream until it ends. Returns why it ended, and whether
    /// any event came.
    async fn read(
        &self,
        response: reqwest::Response,
        last_id: &mut String,
        delay: &mut Duration,
    ) -> (String, bool) {
        // Bytes read since the last complete event, shared with the byte stream's guard; and
        // every byte read, for the idle timeout (comments count: they are the origin's heartbeats).
        let pending = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let (guard, counted) = (pending.clone(), received.clone());
        let bytes = response.bytes_stream().map(move |chunk| {
            let chunk = chunk.map_err(|e| Cut::Transport(transport_error(&e)))?;
            counted.fetch_add(chunk.len(), Ordering::Relaxed);
            let held = guard.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len();
            if held > MAX_EVENT_BYTES {
                return Err(Cut::TooLarge);
            }
            Ok(chunk)
        });
        let mut events = bytes.eventsource();
        let topic = self.topic.clone();
        let mut delivered = false;
        let mut seen = 0;
        let why = loop {
            let next = match self.idle_timeout {
                None => events.next().await,
                Some(idle) => match tokio::time::timeout(idle, events.next()).await {
                    Ok(next) => next,
                    // Bytes came (a comment, part of an event): not idle. So the stream is dropped
                    // after one to two idle timeouts of silence.
                    Err(_) if received.load(Ordering::Relaxed) != seen => {
                        seen = received.load(Ordering::Relaxed);
                        continue;
                    }
                    Err(_) => break format!("nothing from the origin for {idle:?}"),
                },
            };
            match next {
                Some(Ok(event)) => {
                    pending.store(0, Ordering::Relaxed);
                    if let Some(retry) = event.retry {
                        *delay = retry.clamp(MIN_RETRY, MAX_RETRY);
                    }
                    // An empty id after a non-empty one resets the browser's last event id too.
                    let id = if event.id.is_empty() && last_id.is_empty() {
                        None
                    } else {
                        Some(Arc::from(event.id.as_str()))
                    };
                    last_id.clone_from(&event.id);
                    let name = (event.event != "message").then(|| Arc::from(event.event));
                    self.counts.messages.fetch_add(1, Ordering::Relaxed);
                    delivered = true;
                    self.sink.message(Message {
                        event: name,
                        id,
                        ..Message::new(topic.clone(), event.data.into())
                    });
                }
                Some(Err(EventStreamError::Transport(Cut::Transport(why)))) => break why,
                Some(Err(EventStreamError::Transport(Cut::TooLarge))) => {
                    // The event is skipped, and the origin may not send it again: the browsers
                    // are told.
                    self.sink.interrupted(Interruption::Disconnected);
                    break format!("more than {MAX_EVENT_BYTES} bytes without a complete event");
                }
                Some(Err(EventStreamError::Utf8(e))) => break format!("not UTF-8: {e}"),
                Some(Err(EventStreamError::Parser(e))) => break format!("unparsable: {e}"),
                None => break "the origin ended the stream".to_owned(),
            }
        };
        (why, delivered)
    }
}

/// The `Last-Event-ID` that resumes after `last_id`, as a browser sends it (the id's UTF-8
/// bytes). None when there is no id, or it holds a byte a header cannot carry (a control
/// character): the origin then starts afresh, and a drop counts as a possible loss.
fn resume_header(last_id: &str) -> Option<HeaderValue> {
    if last_id.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(last_id.as_bytes()).ok()
}

/// A transport error with its causes (reqwest's own message is often only "error sending request").
fn transport_error(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The wait before the next attempt: the reconnection delay, doubled for each failure in a row
/// after the first (up to [`MAX_BACKOFF`]), plus up to a quarter at random so the streams of one
/// origin do not all come back in the same instant.
fn backoff(delay: Duration, failures: u32) -> Duration {
    let doubled = delay.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let wait = doubled.min(MAX_BACKOFF.max(delay));
    let quarter = wait.as_millis() as u64 / 4;
    wait + Duration::from_millis(sluice_bridge::random_u64() % quarter.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_sent_back_as_its_utf8_bytes_unless_a_header_cannot_carry_it() {
        assert_eq!(resume_header(""), None);
        let header = resume_header("caf\u{e9}-7").map(|h| h.as_bytes().to_vec());
        assert_eq!(header.as_deref(), Some("caf\u{e9}-7".as_bytes()));
        assert_eq!(resume_header("a\u{1}b"), None);
        assert_eq!(resume_header("a\u{7f}"), None);
    }

    #[test]
    fn backoff_doubles_per_failure_up_to_the_cap() {
        let second = Duration::from_secs(1);
        let within = |d: Duration, low: u64, high: u64| {
            d >= Duration::from_millis(low) && d <= Duration::from_millis(high)
        };
        assert!(within(backoff(second, 0), 1000, 1250));
        assert!(within(backoff(second, 1), 1000, 1250));
        assert!(within(backoff(second, 2), 2000, 2500));
        assert!(within(backoff(second, 5), 16000, 20000));
        assert!(within(backoff(second, 40), 30000, 37500));
        // A retry: longer than the cap is kept as it is.
        assert!(within(backoff(Duration::from_secs(60), 3), 60000, 75000));
    }
}
