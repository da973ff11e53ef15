//! The contract between sluice and its brokers: the `Bridge` trait, `Message`, and topic syntax checks.
//!
//! A bridge owns one client connection to one broker. The gateway asks it for one subscription per
//! concrete topic filter and hands it a [`Sink`]; the bridge calls the sink for every message (and
//! for interruptions and failures of the subscription). A sink never blocks, so a bridge's reader
//! never waits on a browser.

mod syntax;

pub use syntax::TopicSyntax;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, also when a thread panicked while holding it. Every critical section in sluice
/// and its bridges leaves its data consistent before it can panic, so a poisoned lock carries no
/// meaning there: the one place this is decided.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A random number from the standard library's per-process random hash keys (no extra dependency;
/// good enough to spread reconnects, name a private subject, or tell one process's replay ids from
/// another's): the one place sluice and its bridges draw one.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

/// Whether a `content-type` value names an event stream (`text/event-stream`, any case, with or
/// without parameters): what an upstream SSE origin must answer, and what a proxied response is
/// flushed event by event for.
pub fn is_event_stream(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or_default();
    media.trim().eq_ignore_ascii_case("text/event-stream")
}

/// One message as it came from a broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The concrete topic (NATS subject, MQTT topic) it was published on.
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// The broker's own position of the message, where it has one (the JetStream stream sequence).
    pub seq: Option<u64>,
    /// An MQTT retained message: the topic's last known value, sent by the broker on subscribe.
    pub retained: bool,
    /// The event type an upstream SSE origin gave the message (its `event:` field).
    pub event: Option<Arc<str>>,
    /// The origin's own id of the message, where it is text (an upstream SSE origin's `id:`: its
    /// last event id when the event was dispatched, which may be empty).
    pub id: Option<Arc<str>>,
}

impl Message {
    /// A live message with no broker position.
    pub fn new(topic: Arc<str>, payload: Bytes) -> Self {
        Self {
            topic,
            payload,
            seq: None,
            retained: false,
            event: None,
            id: None,
        }
    }
}

/// Reads back a broker's history (JetStream) in order, a batch at a time, so a reader that goes
/// slowly holds one batch.
#[async_trait]
pub trait HistoryReader: Send {
    /// The oldest position the broker held when the reader was opened (0 for an empty stream): a
    /// requested position below `first_held - 1` means the messages in between are gone.
    fn first_held(&self) -> u64;
    /// The newest position of the stream when the reader was opened.
    fn last(&self) -> u64;
    /// The next messages after what was read so far, at most `max`, oldest first. Empty when the
    /// reader has read everything stored so far (and nothing more came within a short wait).
    async fn next(&mut self, max: usize) -> Result<Vec<Message>, BridgeError>;
}

/// What a bridge tells one subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A message on the subscription.
    Message(Message),
    /// Messages may have been lost between the previous delivery and the next one, and the broker
    /// cannot say which (see [`Interruption`]). The subscription goes on.
    Interrupted(Interruption),
    /// The broker refused the subscription (or it had to be given up to keep the connection alive
    /// for every other subscription): nothing more will be delivered.
    Failed(String),
}

/// Why a subscription may have missed messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interruption {
    /// The persistent stream was deleted and created again: its positions start over, and what the old
    /// stream held after the last delivered position is gone.
    StreamReplaced,
    /// The broker confirmed the subscription only after the stream had been answered as live: what was
    /// published in between may not have been delivered.
    LateSubscription,
    /// The connection to the broker was lost and is back: what was published meanwhile, and that
    /// the broker does not keep for sluice, is gone.
    Disconnected,
}

/// Where a bridge delivers what happens on one subscription. Calls must return quickly and never
/// block: a bridge's reader calls it for every message. Which task calls it, per bridge:
/// - NATS: the subscription's reader task (one per subscription, spawned where it was made), and
///   the connection's event callback for interruptions and failures;
/// - MQTT: the connection's event loop task, for every subscription of the broker;
/// - memory: the publisher's own task, inside `publish`.
#[derive(Clone)]
pub struct Sink {
    deliver: Arc<dyn Fn(Delivery) + Send + Sync>,
}

impl Sink {
    pub fn new(deliver: impl Fn(Delivery) + Send + Sync + 'static) -> Self {
        Self {
            deliver: Arc::new(deliver),
        }
    }

    /// Delivers one message.
    pub fn message(&self, message: Message) {
        (self.deliver)(Delivery::Message(message));
    }

    /// Tells the subscriber that messages may have been lost.
    pub fn interrupted(&self, why: Interruption) {
        (self.deliver)(Delivery::Interrupted(why));
    }

    /// Tells the subscriber that the subscription is over.
    pub fn failed(&self, reason: impl Into<String>) {
        (self.deliver)(Delivery::Failed(reason.into()));
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// A live broker subscription; dropping it unsubscribes.
pub struct Subscription {
    _guard: Box<dyn Send + Sync>,
}

impl Subscription {
    /// Wraps whatever value, when dropped, ends the broker subscription.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self {
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

/// A broker connection's state and counts since the bridge was made (for metrics and readiness).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerStatus {
    /// The connection to the broker is up now.
    pub connected: bool,
    /// Times the connection came back after it was lost (the first connect is not one).
    pub reconnects: u64,
    /// Messages received from the broker for live subscriptions (core subscriptions, MQTT topics,
    /// JetStream live consumers; not JetStream read-backs of history).
    pub messages: u64,
    /// Broker subscriptions (and JetStream consumers) the bridge holds now.
    pub subscriptions: u64,
}

/// What can go wrong when talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A topic the broker would refuse (its syntax, characters or length).
    #[error("invalid topic {}: {reason}", Shortened(topic))]
    InvalidTopic { topic: String, reason: String },
    /// A publish larger than the broker takes.
    #[error("the broker takes messages of at most {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The broker cannot be reached (or did not answer in time).
    #[error("broker unavailable: {0}")]
    Unavailable(#[source] Detail),
    /// The broker answered with an error.
    #[error("broker error: {0}")]
    Broker(#[source] Detail),
    #[error("{0}")]
    Unsupported(&'static str),
}

/// What a broker error was about, and the client library's own error when there is one.
#[derive(Debug)]
pub struct Detail {
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.context),
            None => f.write_str(&self.context),
        }
    }
}

impl std::error::Error for Detail {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl BridgeError {
    /// [`BridgeError::Broker`]: `context`, caused by the client library's `source`.
    pub fn broker(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BridgeError::Broker(Detail {
            context: context.into(),
            source: Some(Box::new(source)),
        })
    }

    /// [`BridgeError::Broker`] with no underlying error.
    pub fn broker_says(context: impl Into<String>) -> Self {
        BridgeError::Broker(Detail {
            context: context.into(),
            source: None,
        })
    }

    /// [`BridgeError::Unavailable`]: `context`, caused by the client library's `source`.
    pub fn unavailable(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BridgeError::Unavailable(Detail {
            context: context.into(),
            source: Some(Box::new(source)),
        })
    }

    /// [`BridgeError::Unavailable`] with no underlying error.
    pub fn unavailable_says(context: impl Into<String>) -> Self {
        BridgeError::Unavailable(Detail {
            context: context.into(),
            source: None,
        })
    }

    /// An [`BridgeError::InvalidTopic`] for `topic`.
    pub fn invalid_topic(topic: &str, reason: impl Into<String>) -> Self {
        BridgeError::InvalidTopic {
            topic: topic.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A topic in an error message: a long one is cut, so an error stays readable and small.
struct Shortened<'a>(&'a str);

impl std::fmt::Display for Shortened<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 64;
        match self.0.char_indices().nth(SHOWN) {
            None => write!(f, "{:?}", self.0),
            Some((at, _)) => write!(f, "{:?}... ({} bytes)", &self.0[..at], self.0.len()),
        }
    }
}

impl TopicSyntax {
    /// [`TopicSyntax::check_filter`] as a bridge error, for a bridge's `subscribe`.
    pub fn validate_filter(self, filter: &str) -> Result<(), BridgeError> {
        self.check_filter(filter)
            .map_err(|reason| BridgeError::invalid_topic(filter, reason))
    }

    /// [`TopicSyntax::check_topic`] as a bridge error, for a bridge's `publish`.
    pub fn validate_topic(self, topic: &str) -> Result<(), BridgeError> {
        self.check_topic(topic)
            .map_err(|reason| BridgeError::invalid_topic(topic, reason))
    }
}

/// One connected (or reconnecting) broker.
///
/// A bridge that cannot reach its broker still accepts subscriptions: it keeps them and (re)subscribes
/// when the connection comes up, so streams opened while a broker is down start flowing once it is back.
#[async_trait]
pub trait Bridge: Send + Sync + 'static {
    /// The topic syntax of this broker, used to validate filters and path parameters.
    fn syntax(&self) -> TopicSyntax;

    /// Subscribes to `filter` (broker-native syntax, wildcards allowed) and delivers to `sink` until the
    /// returned [`Subscription`] is dropped.
    async fn subscribe(&self, filter: &str, sink: Sink) -> Result<Subscription, BridgeError>;

    /// Publishes `payload` on the concrete `topic`.
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BridgeError>;

    /// The connection's state and counts now, for metrics and readiness. Cheap and synchronous (no
    /// I/O, no wait on the broker), so it may be called on every scrape and readiness probe. The default, for test doubles and brokers
    /// without a connection to lose, is always connected with nothing counted.
    fn status(&self) -> BrokerStatus {
        BrokerStatus {
            connected: true,
            ..BrokerStatus::default()
        }
    }

    /// Subscribes to the messages stored from now on in the broker's persistent `stream` under `filter`,
    /// each with its [`Message::seq`], in order. Returns the subscription and the position it starts
    /// after (the stream's last position when it was made). Brokers without persistent streams refuse.
    async fn subscribe_stream(
        &self,
        stream: &str,
        filter: &str,
        sink: Sink,
    ) -> Result<(Subscription, u64), BridgeError> {
        let _ = (stream, filter, sink);
        Err(BridgeError::Unsupported(
            "this broker has no persistent streams",
        ))
    }

    /// Opens a reader of what `stream` holds under `filter` after position `after`, which fetches at
    /// most `batch` messages from the broker at a time.
    async fn read_stream(
        &self,
        stream: &str,
        filter: &str,
        after: u64,
        batch: usize,
    ) -> Result<Box<dyn HistoryReader>, BridgeError> {
        let _ = (stream, filter, after, batch);
        Err(BridgeError::Unsupported(
            "this broker has no persistent streams",
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_event_stream_is_named_by_its_media_type_alone() {
        for yes in [
            "text/event-stream",
            "Text/Event-Stream; charset=utf-8",
            " text/event-stream ;x",
        ] {
            assert!(super::is_event_stream(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "text/event-streams",
            "",
            "application/json; text/event-stream",
        ] {
            assert!(!super::is_event_stream(no), "{no}");
        }
    }
}
