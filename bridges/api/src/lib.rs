//! The contract between sluice and its brokers: the `Bridge` trait, `Message`, and topic syntax checks.
//!
//! A bridge owns one client connection to one broker. The gateway asks it for one subscription per
//! concrete topic filter and hands it a [`Sink`]; the bridge calls the sink for every message, from its
//! own reader task. A sink never blocks, so a bridge's reader never waits on a browser.

mod syntax;

pub use syntax::TopicSyntax;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// One message as it came from a broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The concrete topic (NATS subject, MQTT topic) it was published on.
    pub topic: Arc<str>,
    pub payload: Bytes,
}

/// Where a bridge delivers the messages of one subscription. Must return quickly and never block.
pub type Sink = Arc<dyn Fn(Message) + Send + Sync>;

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

/// What can go wrong when talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker error: {0}")]
    Broker(String),
}

impl TopicSyntax {
    /// [`TopicSyntax::check_filter`] as a bridge error, for a bridge's `subscribe`.
    pub fn validate_filter(self, filter: &str) -> Result<(), BridgeError> {
        self.check_filter(filter)
            .map_err(|reason| BridgeError::InvalidTopic {
                topic: filter.to_owned(),
                reason,
            })
    }

    /// [`TopicSyntax::check_topic`] as a bridge error, for a bridge's `publish`.
    pub fn validate_topic(self, topic: &str) -> Result<(), BridgeError> {
        self.check_topic(topic)
            .map_err(|reason| BridgeError::InvalidTopic {
                topic: topic.to_owned(),
                reason,
            })
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
}
