//! The NATS bridge: one async-nats client per broker, one NATS subscription per concrete subject.
//!
//! async-nats reconnects by itself (with backoff) and re-sends live subscriptions after a reconnect,
//! so this bridge only maps subjects to sinks. Core NATS has no history: what is published while sluice
//! is disconnected from the server is lost, as for any core NATS subscriber.
//!
//! JetStream routes read a stream through ordered consumers (ephemeral, in server memory, no acks):
//! one shared consumer per route filter for live messages, and one short-lived consumer per resuming
//! client to read back what it missed. An ordered consumer recreates itself after a reconnect from the
//! last sequence it delivered, so a NATS restart loses nothing that the stream stored.

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{Consumer, DeliverPolicy};
use async_nats::{ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use sluice_bridge::{Bridge, BridgeError, History, Message, Sink, Subscription, TopicSyntax};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The longest a new subscription waits for the server's acknowledgement.
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// The longest a resuming client's read-back from JetStream may take.
const READ_BACK_LIMIT: Duration = Duration::from_secs(15);

/// A NATS connection shared by every route that names this broker.
pub struct NatsBridge {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    /// Counts (re)connections, so JetStream readers recreate their consumers after one.
    connections: Arc<watch::Sender<u64>>,
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
        let connections = Arc::new(watch::Sender::new(0u64));
        let client = ConnectOptions::new()
            .name(format!("sluice/{name}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback({
                let connections = connections.clone();
                move |event| {
                    let broker = broker.clone();
                    if matches!(event, Event::Connected) {
                        connections.send_modify(|n| *n += 1);
                    }
                    async move { log_event(&broker, event) }
                }
            })
            .connect(url)
            .await
            .map_err(|e| BridgeError::Unavailable(format!("nats broker {name:?} at {url}: {e}")))?;
        let jetstream = async_nats::jetstream::new(client.clone());
        Ok(Self {
            client,
            jetstream,
            connections,
        })
    }

    /// The stream `name` with fresh state (first and last sequence).
    async fn stream(
        &self,
        name: &str,
    ) -> Result<(async_nats::jetstream::stream::Stream, u64, u64), BridgeError> {
        let stream = self
            .jetstream
            .get_stream(name)
            .await
            .map_err(|e| BridgeError::Unavailable(format!("JetStream stream {name:?}: {e}")))?;
        // get_stream asked the server for the stream's info just now: no second request.
        let state = &stream.cached_info().state;
        let (first, last) = (state.first_sequence, state.last_sequence);
        Ok((stream, first, last))
    }

    /// An ordered consumer of `stream` under `filter` from sequence `start` on.
    async fn ordered(
        stream: &async_nats::jetstream::stream::Stream,
        filter: &str,
        start: u64,
    ) -> Result<Consumer<OrderedConfig>, BridgeError> {
        stream
            .create_consumer(OrderedConfig {
                filter_subject: filter.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                ..OrderedConfig::default()
            })
            .await
            .map_err(|e| BridgeError::Broker(format!("JetStream consumer: {e}")))
    }
}

/// The message stream of an ordered consumer.
async fn messages(consumer: Consumer<OrderedConfig>) -> Result<Ordered, BridgeError> {
    consumer
        .messages()
        .await
        .map_err(|e| BridgeError::Broker(format!("JetStream consumer: {e}")))
}

/// The reader of a shared live JetStream consumer.
struct LiveReader {
    jetstream: async_nats::jetstream::Context,
    stream: String,
    filter: String,
    /// The last stream sequence delivered.
    last: u64,
    sink: Sink,
}

impl LiveReader {
    /// Delivers until dropped. After a reconnection the server may have lost the ephemeral consumer
    /// (a restart), and async-nats can take many seconds to notice: recreate it at once from the
    /// last delivered sequence.
    async fn run(mut self, mut messages: Ordered, mut connections: watch::Receiver<u64>) {
        connections.mark_unchanged();
        loop {
            loop {
                tokio::select! {
                    item = messages.next() => match item {
                        Some(Ok(msg)) => self.deliver(msg),
                        // The ordered consumer recovers from most errors by itself.
                        Some(Err(e)) => tracing::debug!(stream = %self.stream, filter = %self.filter, error = %e, "JetStream consumer"),
                        None => break,
                    },
                    changed = connections.changed() => match changed {
                        Ok(()) => break,
                        Err(_) => return,
                    },
                }
            }
            messages = self.reopen().await;
        }
    }

    fn deliver(&mut self, msg: async_nats::jetstream::Message) {
        if let Some(message) = stream_message(msg) {
            if let Some(seq) = message.seq.filter(|s| *s > self.last) {
                self.last = seq;
                (self.sink)(message);
            }
        }
    }

    /// A new ordered consumer after the last delivered sequence, retried with backoff.
    async fn reopen(&self) -> Ordered {
        let mut backoff = Duration::from_millis(100);
        loop {
            let opened = async {
                let stream = self.jetstream.get_stream(&self.stream).await.map_err(|e| {
                    BridgeError::Unavailable(format!("JetStream stream {:?}: {e}", self.stream))
                })?;
                messages(NatsBridge::ordered(&stream, &self.filter, self.last + 1).await?).await
            };
            match opened.await {
                Ok(messages) => return messages,
                Err(e) => {
                    tracing::debug!(stream = %self.stream, filter = %self.filter, error = %e, "reopening JetStream consumer")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// A JetStream message as a bridge message, with its stream sequence.
fn stream_message(msg: async_nats::jetstream::Message) -> Option<Message> {
    let seq = msg.info().ok()?.stream_sequence;
    let msg = msg.split().0;
    Some(Message {
        seq: Some(seq),
        ..Message::new(Arc::from(msg.subject.as_str()), msg.payload)
    })
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
                sink(Message::new(last_topic.clone(), msg.payload));
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

    async fn subscribe_stream(
        &self,
        stream: &str,
        filter: &str,
        sink: Sink,
    ) -> Result<Subscription, BridgeError> {
        TopicSyntax::Nats.validate_filter(filter)?;
        let (stream_handle, _, last) = self.stream(stream).await?;
        // An explicit start rather than "new": a consumer recreated before it delivered anything
        // would otherwise start again from the policy, and everything below it is dropped here too.
        let messages = messages(Self::ordered(&stream_handle, filter, last + 1).await?).await?;
        let reader = LiveReader {
            jetstream: self.jetstream.clone(),
            stream: stream.to_owned(),
            filter: filter.to_owned(),
            last,
            sink,
        };
        let connections = self.connections.subscribe();
        Ok(Subscription::new(AbortOnDrop(tokio::spawn(
            reader.run(messages, connections),
        ))))
    }

    async fn read_stream(
        &self,
        stream: &str,
        filter: &str,
        after: u64,
        limit: usize,
    ) -> Result<History, BridgeError> {
        TopicSyntax::Nats.validate_filter(filter)?;
        let (stream_handle, first, last) = self.stream(stream).await?;
        let mut history = History {
            messages: Vec::new(),
            first_held: first,
            last,
        };
        if after >= last || limit == 0 {
            return Ok(history);
        }
        let start = (after + 1).max(first);
        let consumer = Self::ordered(&stream_handle, filter, start).await?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(history);
        }
        let mut messages = messages(consumer).await?;
        let read = async {
            while let Some(item) = messages.next().await {
                let Ok(msg) = item else { continue };
                let pending = msg.info().map(|i| i.pending).unwrap_or(1);
                let Some(message) = stream_message(msg) else {
                    continue;
                };
                let seq = message.seq.unwrap_or_default();
                if seq < start {
                    continue;
                }
                history.messages.push(message);
                if pending == 0 || seq >= last || history.messages.len() >= limit {
                    break;
                }
            }
        };
        tokio::time::timeout(READ_BACK_LIMIT, read)
            .await
            .map_err(|_| {
                BridgeError::Unavailable(format!(
                    "reading JetStream stream {stream:?} back took over {READ_BACK_LIMIT:?}"
                ))
            })?;
        Ok(history)
    }
}
