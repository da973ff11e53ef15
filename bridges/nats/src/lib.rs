//! The NATS bridge: one async-nats client per broker, one NATS subscription per concrete subject.
//!
//! async-nats reconnects by itself (with backoff) and re-sends live subscriptions after a reconnect,
//! so this bridge only maps subjects to sinks. Core NATS has no history: what is published while sluice
//! is disconnected from the server is lost, as for any core NATS subscriber.

use async_nats::{ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use sluice_bridge::{Bridge, BridgeError, Message, Sink, Subscription, TopicSyntax};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The longest a new subscription waits for the server's acknowledgement.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// A NATS connection shared by every route that names this broker.
pub struct NatsBridge {
    client: async_nats::Client,
}

/// Aborts the reader task when the subscription is dropped; dropping the task's `Subscriber` then sends
/// UNSUB to the server.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl NatsBridge {
    /// Starts connecting to `url` and returns at once: a server that is down at start is retried in the
    /// background, and subscriptions made meanwhile are sent when the connection comes up.
    pub async fn connect(name: &str, url: &str) -> Result<Self, BridgeError> {
        let broker = name.to_owned();
        let client = ConnectOptions::new()
            .name(format!("sluice/{name}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let broker = broker.clone();
                async move { log_event(&broker, event) }
            })
            .connect(url)
            .await
            .map_err(|e| BridgeError::Unavailable(format!("nats broker {name:?} at {url}: {e}")))?;
        Ok(Self { client })
    }
}

fn log_event(broker: &str, event: Event) {
    match event {
        Event::Connected => tracing::info!(broker, "nats connected"),
        Event::Disconnected => tracing::warn!(broker, "nats disconnected; reconnecting"),
        Event::SlowConsumer(sid) => {
            tracing::warn!(broker, sid, "nats dropped messages for a slow subscription")
        }
        // Every failed reconnect attempt reports one; the disconnect itself was already a warning.
        Event::ClientError(e) => tracing::debug!(broker, error = %e, "nats client error"),
        Event::ServerError(e) => tracing::warn!(broker, error = %e, "nats server error"),
        other => tracing::debug!(broker, event = %other, "nats event"),
    }
}

#[async_trait]
impl Bridge for NatsBridge {
    fn syntax(&self) -> TopicSyntax {
        TopicSyntax::Nats
    }

    async fn subscribe(&self, filter: &str, sink: Sink) -> Result<Subscription, BridgeError> {
        TopicSyntax::Nats.validate_filter(filter)?;
        let mut subscriber = self
            .client
            .subscribe(filter.to_owned())
            .await
            .map_err(|e| BridgeError::Broker(e.to_string()))?;
        // Wait (briefly) for the server to confirm the SUB, so a stream that opens gets every message
        // published after it opened. A PING queued behind the SUB is answered only once the server
        // has it; while the server is unreachable this gives up after FLUSH_WAIT and the SUB goes
        // out on reconnect.
        let _ = tokio::time::timeout(FLUSH_WAIT, self.client.flush()).await;
        let reader = tokio::spawn(async move {
            // Subjects repeat on every message of a plain subscription: reuse the last Arc.
            let mut last_topic: Arc<str> = Arc::from("");
            while let Some(msg) = subscriber.next().await {
                if *last_topic != *msg.subject.as_str() {
                    last_topic = Arc::from(msg.subject.as_str());
                }
                sink(Message {
                    topic: last_topic.clone(),
                    payload: msg.payload,
                });
            }
        });
        Ok(Subscription::new(AbortOnDrop(reader)))
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BridgeError> {
        TopicSyntax::Nats.validate_topic(topic)?;
        self.client
            .publish(topic.to_owned(), payload)
            .await
            .map_err(|e| BridgeError::Broker(e.to_string()))
    }
}
