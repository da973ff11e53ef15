//! The NATS bridge: one async-nats client per broker, one NATS subscription per concrete subject.
//!
//! async-nats reconnects by itself (with backoff) and re-sends live subscriptions after a reconnect,
//! so this bridge only maps subjects to sinks. Core NATS has no history: what is published while sluice
//! is disconnected from the server is lost, as for any core NATS subscriber.
//!
//! Nothing reaches the shared connection that the server would refuse by dropping it: a subject must
//! fit the server's `max_control_line` (with room for the protocol's own words around it) and a
//! payload its announced `max_payload`. Should the server still drop the connection for a control
//! line (its limit set lower than configured), the bridge lowers its limit and gives up the live
//! subscriptions that no longer fit, rather than re-send them on every reconnect.
//!
//! JetStream routes read a stream through ordered consumers (ephemeral, in server memory, no acks):
//! one shared consumer per route filter for live messages, and one short-lived consumer per resuming
//! client to read back what it missed. An ordered consumer recreates itself after a reconnect from the
//! last sequence it delivered, so a NATS restart loses nothing that the stream stored.
//!
//! The bridge's status takes the connection state and the count of connects from async-nats itself;
//! live messages and held subscriptions are counted here, with one relaxed add per message.

use async_nats::connection::State;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{Consumer, DeliverPolicy};
use async_nats::{ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use sluice_bridge::{
    Bridge, BridgeError, BrokerStatus, HistoryReader, Message, Sink, Subscription, TopicSyntax,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The longest a new subscription waits for the server's acknowledgement.
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// nats-server's default `max_control_line`: the longest protocol line it reads (`SUB`, `PUB` and
/// `HPUB` lines carry the subject). The server does not announce it.
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;
/// The smallest `max_control_line` sluice works with.
pub const MIN_MAX_CONTROL_LINE: usize = 1024;
/// What a protocol line holds besides the subject: the verb, a subscription id or a reply inbox,
/// sizes, and for JetStream the API prefix and a consumer name (the stream name comes on top).
/// The longest such line sluice sends is about 130 bytes plus the stream name; this leaves room.
const CONTROL_LINE_OVERHEAD: usize = 256;

/// How the NATS bridge connects.
#[derive(Clone, Debug)]
pub struct NatsSettings {
    /// `nats://host:port`, one or more servers of a cluster: async-nats connects to one of them and
    /// fails over to the others (and to the servers the cluster announces).
    pub urls: Vec<String>,
    /// The server's `max_control_line` ([`DEFAULT_MAX_CONTROL_LINE`] unless it was raised).
    pub max_control_line: usize,
}
/// How long the first try to make a live consumer again may take (see `LiveReader::reopen`).
const REOPEN_FIRST_TRY: Duration = Duration::from_secs(2);
/// The longest a resuming client's read-back from JetStream may take.
const READ_BACK_LIMIT: Duration = Duration::from_secs(15);

/// A NATS connection shared by every route that names this broker.
pub struct NatsBridge {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    /// Counts (re)connections, so JetStream readers recreate their consumers after one.
    connections: Arc<watch::Sender<u64>>,
    live: Arc<Live>,
    /// A subject no one answers: a request to it is a round trip that the server answers only
    /// after it has read everything sent before it on this connection.
    confirm_subject: String,
}

/// The live subscriptions and the control-line limit they were checked against.
struct Live {
    /// The longest protocol line the server takes, as far as the bridge knows.
    max_control_line: AtomicUsize,
    next_id: AtomicU64,
    by_id: Mutex<HashMap<u64, Entry>>,
    /// Messages received for live subscriptions and live JetStream consumers (see [`BrokerStatus`]).
    messages: AtomicU64,
    /// Broker subscriptions and JetStream consumers held now (see [`Held`]).
    held: AtomicU64,
}

/// One live subscription.
struct Entry {
    subject: String,
    /// What its protocol lines add to the subject (the stream name on JetStream).
    extra: usize,
    sink: Sink,
    /// A core NATS subscription, which loses what is published while sluice is disconnected
    /// (a JetStream consumer resumes from its last sequence).
    core: bool,
}

impl Live {
    fn table(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        sluice_bridge::lock(&self.by_id)
    }

    /// Checks that `subject`, with `extra` bytes of other words, fits a protocol line.
    fn check(&self, subject: &str, extra: usize) -> Result<(), BridgeError> {
        let limit = self.max_control_line.load(Ordering::Relaxed);
        let longest = limit.saturating_sub(CONTROL_LINE_OVERHEAD + extra);
        if subject.len() > longest {
            return Err(BridgeError::invalid_topic(
                subject,
                format!("subject longer than {longest} bytes (the server's max_control_line is {limit})"),
            ));
        }
        Ok(())
    }

    /// Counts a broker subscription or JetStream consumer as held until the guard is dropped.
    fn hold(self: &Arc<Self>) -> Held {
        self.held.fetch_add(1, Ordering::Relaxed);
        Held { live: self.clone() }
    }

    /// Counts one message received for a live subscription: on the hot path, so one relaxed add.
    fn received(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers a live subscription; dropping the guard removes it.
    fn register(
        self: &Arc<Self>,
        subject: &str,
        extra: usize,
        sink: Sink,
        core: bool,
    ) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            subject: subject.to_owned(),
            extra,
            sink,
            core,
        };
        self.table().insert(id, entry);
        Registered {
            live: self.clone(),
            id,
            _held: self.hold(),
        }
    }

    /// The server dropped the connection for a protocol line longer than it takes: lower the limit
    /// (halving it, down to [`MIN_MAX_CONTROL_LINE`]) and give up every subscription that no longer
    /// fits, so reconnecting does not send it again and again.
    fn control_line_exceeded(&self, broker: &str) {
        let old = self.max_control_line.load(Ordering::Relaxed);
        let new = (old / 2).max(MIN_MAX_CONTROL_LINE);
        self.max_control_line.store(new, Ordering::Relaxed);
        let failed: Vec<(String, Sink)> = self
            .table()
            .values()
            .filter(|e| self.check(&e.subject, e.extra).is_err())
            .map(|e| (e.subject.clone(), e.sink.clone()))
            .collect();
        tracing::error!(
            broker,
            old,
            new,
            given_up = failed.len(),
            "nats server refused a protocol line as too long: set max_control_line to the server's; \
             subscriptions that no longer fit are given up"
        );
        // Outside the lock: a sink drops its subscription, which takes the lock.
        for (subject, sink) in failed {
            sink.failed(format!(
                "the server refused the subject as too long ({} bytes)",
                subject.len()
            ));
        }
    }
}

impl Live {
    /// Sluice reconnected to the server: what was published on core subjects while it was away is
    /// lost, so every core subscription is told.
    fn reconnected(&self) {
        let sinks: Vec<Sink> = self
            .table()
            .values()
            .filter(|e| e.core)
            .map(|e| e.sink.clone())
            .collect();
        // Outside the lock, as sinks may call back into the bridge.
        for sink in sinks {
            sink.interrupted(sluice_bridge::Interruption::Disconnected);
        }
    }
}

/// Removes a subscription from [`Live`] when dropped (and, through its [`Held`], from the count).
struct Registered {
    live: Arc<Live>,
    id: u64,
    _held: Held,
}

/// One broker subscription or JetStream consumer in [`Live::held`], until dropped.
struct Held {
    live: Arc<Live>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.live.held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.live.table().remove(&self.id);
    }
}

/// Aborts the reader task when the subscription is dropped (dropping the task's `Subscriber` then
/// sends UNSUB to the server), and takes the subscription out of [`Live`].
struct AbortOnDrop {
    reader: JoinHandle<()>,
    _registered: Registered,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl NatsBridge {
    /// Starts connecting to the `urls` and returns at once: servers that are down at start are
    /// retried in the background, and subscriptions made meanwhile are sent when a connection comes
    /// up.
    pub async fn connect(name: &str, settings: &NatsSettings) -> Result<Self, BridgeError> {
        let broker = name.to_owned();
        let urls = &settings.urls;
        let connections = Arc::new(watch::Sender::new(0u64));
        let live = Arc::new(Live {
            max_control_line: AtomicUsize::new(settings.max_control_line.max(MIN_MAX_CONTROL_LINE)),
            next_id: AtomicU64::new(1),
            by_id: Mutex::new(HashMap::new()),
            messages: AtomicU64::new(0),
            held: AtomicU64::new(0),
        });
        let client = ConnectOptions::new()
            .name(format!("sluice/{name}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback({
                let (connections, live) = (connections.clone(), live.clone());
                move |event| {
                    let broker = broker.clone();
                    match &event {
                        Event::Connected => {
                            let mut reconnected = false;
                            connections.send_modify(|n| {
                                reconnected = *n > 0;
                                *n += 1;
                            });
                            if reconnected {
                                live.reconnected();
                            }
                        }
                        Event::ServerError(async_nats::ServerError::Other(e))
                            if e.to_ascii_lowercase().contains("control line") =>
                        {
                            live.control_line_exceeded(&broker)
                        }
                        _ => {}
                    }
                    async move { log_event(&broker, event) }
                }
            })
            .connect(urls)
            .await
            .map_err(|e| {
                let at = urls.join(", ");
                BridgeError::unavailable(format!("nats broker {name:?} at {at}"), e)
            })?;
        let jetstream = async_nats::jetstream::new(client.clone());
        Ok(Self {
            client,
            jetstream,
            connections,
            live,
            confirm_subject: format!("_sluice.confirm.{:016x}", sluice_bridge::random_u64()),
        })
    }

    /// Checks a publish against the server's limits: the subject's line and `max_payload`.
    fn check_publish(&self, topic: &str, payload: &Bytes) -> Result<(), BridgeError> {
        TopicSyntax::Nats.validate_topic(topic)?;
        self.live.check(topic, 0)?;
        let limit = self.client.max_payload();
        if payload.len() > limit {
            return Err(BridgeError::PayloadTooLarge { limit });
        }
        Ok(())
    }

    /// Checks a JetStream filter: consumer requests carry it together with the stream name.
    fn check_stream_filter(&self, stream: &str, filter: &str) -> Result<(), BridgeError> {
        TopicSyntax::Nats.validate_filter(filter)?;
        self.live.check(filter, stream.len())
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
            .map_err(|e| BridgeError::unavailable(format!("JetStream stream {name:?}"), e))?;
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
            .map_err(|e| BridgeError::broker("JetStream consumer", e))
    }
}

/// The message stream of an ordered consumer.
async fn messages(consumer: Consumer<OrderedConfig>) -> Result<Ordered, BridgeError> {
    consumer
        .messages()
        .await
        .map_err(|e| BridgeError::broker("JetStream consumer", e))
}

/// The reader of a shared live JetStream consumer.
struct LiveReader {
    jetstream: async_nats::jetstream::Context,
    stream: String,
    filter: String,
    /// When the stream was created (unix nanoseconds): a stream deleted and created again under the
    /// same name is a new stream whose sequences start over.
    created: i128,
    /// The last stream sequence delivered.
    last: u64,
    sink: Sink,
    /// Where received messages are counted.
    live: Arc<Live>,
}

impl LiveReader {
    /// Delivers until dropped, and opens a new consumer when the current one cannot be trusted:
    /// - after a reconnection the server may have lost the ephemeral consumer (a restart), and
    ///   async-nats can take many seconds to notice: recreate it at once from the last delivered
    ///   sequence;
    /// - when the server announces that the stream was deleted or created (JetStream advisories),
    ///   the ordered consumer would follow the new stream from the old stream's last sequence and
    ///   skip what the new one holds below it: wait for the stream, and if it is a new one, tell
    ///   the subscriber and read it from its start.
    async fn run(
        mut self,
        mut messages: Ordered,
        mut advisories: async_nats::Subscriber,
        mut connections: watch::Receiver<u64>,
    ) {
        connections.mark_unchanged();
        loop {
            loop {
                tokio::select! {
                    // Advisories first: a deletion must be seen before anything of a new stream.
                    biased;
                    advisory = advisories.next() => match advisory {
                        Some(_) => break,
                        None => return,
                    },
                    changed = connections.changed() => match changed {
                        Ok(()) => break,
                        Err(_) => return,
                    },
                    item = messages.next() => match item {
                        Some(Ok(msg)) => self.deliver(msg),
                        // The ordered consumer recovers from most errors by itself.
                        Some(Err(e)) => tracing::debug!(stream = %self.stream, filter = %self.filter, error = %e, "JetStream consumer"),
                        None => break,
                    },
                }
            }
            // Stop reading the old consumer while the stream is looked at again.
            drop(messages);
            messages = self.reopen(&mut advisories).await;
        }
    }

    fn deliver(&mut self, msg: async_nats::jetstream::Message) {
        // Counted as received, also when dropped below as one delivered already: the count is of
        // what the broker sent.
        self.live.received();
        if let Some(message) = stream_message(msg) {
            if let Some(seq) = message.seq.filter(|s| *s > self.last) {
                self.last = seq;
                self.sink.message(message);
            }
        }
    }

    /// A new ordered consumer after the last delivered sequence, retried with backoff (or at the
    /// next advisory, when the stream is created again). A stream that was replaced meanwhile is
    /// read from its start, after the subscriber is told.
    async fn reopen(&mut self, advisories: &mut async_nats::Subscriber) -> Ordered {
        let mut backoff = Duration::from_millis(100);
        // Each try is cut short, then given longer: on a cluster that lost a node, the server may
        // place the new consumer on a peer that is away, and the request then hangs for the whole
        // JetStream timeout (10 s) while another try would land on a live peer at once.
        let mut patience = REOPEN_FIRST_TRY;
        loop {
            let tried = tokio::time::timeout(patience, self.try_reopen()).await;
            match tried {
                Ok(Ok(messages)) => return messages,
                Ok(Err(e)) => {
                    tracing::debug!(stream = %self.stream, filter = %self.filter, error = %e, "reopening JetStream consumer")
                }
                Err(_) => {
                    tracing::debug!(stream = %self.stream, filter = %self.filter, ?patience, "reopening JetStream consumer timed out; trying again")
                }
            }
            patience = (patience * 2).min(READ_BACK_LIMIT);
            tokio::select! {
                _ = advisories.next() => {}
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn try_reopen(&mut self) -> Result<Ordered, BridgeError> {
        let stream = self.jetstream.get_stream(&self.stream).await.map_err(|e| {
            BridgeError::unavailable(format!("JetStream stream {:?}", self.stream), e)
        })?;
        let created = stream.cached_info().created.unix_timestamp_nanos();
        if created != self.created {
            tracing::warn!(stream = %self.stream, filter = %self.filter, "JetStream stream was replaced; reading the new one from its start");
            self.created = created;
            self.last = 0;
            self.sink
                .interrupted(sluice_bridge::Interruption::StreamReplaced);
        }
        messages(NatsBridge::ordered(&stream, &self.filter, self.last + 1).await?).await
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

impl NatsBridge {
    /// Returns once the server has read everything this client sent before.
    async fn confirm(&self) {
        confirm(&self.client, &self.confirm_subject).await;
    }
}

/// Returns once the server has read everything `client` sent before: a request to `subject`, which
/// no one answers, comes back as "no responders" only after that. Retried until it does.
async fn confirm(client: &async_nats::Client, subject: &str) {
    loop {
        match client.request(subject.to_owned(), Bytes::new()).await {
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => continue,
            // Answered: "no responders", or a reply from someone who listens there after all.
            Ok(_) | Err(_) => return,
        }
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

/// A resuming client's read-back: a short-lived ordered consumer from the client's position.
struct NatsHistory {
    first_held: u64,
    last: u64,
    /// The first sequence wanted (a recreated ordered consumer may start earlier).
    start: u64,
    /// What the server still had to deliver after the last message read.
    pending: u64,
    messages: Ordered,
    /// The read-back's consumer counts as held while the reader lives (its messages are not
    /// counted: they are history, not live traffic).
    _held: Held,
}

/// How long a read-back that has read everything stored waits for what is being stored now.
const CAUGHT_UP_WAIT: Duration = Duration::from_millis(500);

#[async_trait]
impl HistoryReader for NatsHistory {
    fn first_held(&self) -> u64 {
        self.first_held
    }

    fn last(&self) -> u64 {
        self.last
    }

    async fn next(&mut self, max: usize) -> Result<Vec<Message>, BridgeError> {
        let mut read = Vec::new();
        let mut errors = 0;
        while read.len() < max {
            let caught_up = self.pending == 0;
            if caught_up && !read.is_empty() {
                break;
            }
            let wait = if caught_up {
                CAUGHT_UP_WAIT
            } else {
                READ_BACK_LIMIT
            };
            let msg = match tokio::time::timeout(wait, self.messages.next()).await {
                Err(_) if caught_up => break,
                Err(_) => {
                    return Err(BridgeError::unavailable_says(format!(
                        "reading a JetStream stream back made no progress for {READ_BACK_LIMIT:?}"
                    )))
                }
                Ok(None) => {
                    return Err(BridgeError::broker_says(
                        "the JetStream read-back consumer ended",
                    ))
                }
                // The ordered consumer recovers from most errors by itself.
                Ok(Some(Err(e))) => {
                    errors += 1;
                    if errors > 10 {
                        return Err(BridgeError::broker("JetStream read-back", e));
                    }
                    continue;
                }
                Ok(Some(Ok(msg))) => msg,
            };
            self.pending = msg.info().map_or(1, |i| i.pending);
            let Some(message) = stream_message(msg) else {
                continue;
            };
            if message.seq.unwrap_or_default() >= self.start {
                read.push(message);
            }
        }
        Ok(read)
    }
}

#[async_trait]
impl Bridge for NatsBridge {
    fn syntax(&self) -> TopicSyntax {
        TopicSyntax::Nats
    }

    async fn subscribe(&self, filter: &str, sink: Sink) -> Result<Subscription, BridgeError> {
        TopicSyntax::Nats.validate_filter(filter)?;
        self.live.check(filter, 0)?;
        let mut subscriber = self
            .client
            .subscribe(filter.to_owned())
            .await
            .map_err(|e| BridgeError::broker("nats subscribe", e))?;
        let registered = self.live.register(filter, 0, sink.clone(), true);
        // Wait (briefly) for the server to confirm the SUB, so a stream that opens gets every message
        // published after it opened. A request queued behind the SUB is answered (by "no
        // responders") only once the server has read the SUB.
        let confirmed = tokio::time::timeout(FLUSH_WAIT, self.confirm())
            .await
            .is_ok();
        let (client, confirm_subject) = (self.client.clone(), self.confirm_subject.clone());
        let live = self.live.clone();
        let reader = tokio::spawn(async move {
            // The server hangs or is away: the streams were answered without waiting longer, and
            // are told with a gap once the server has the subscription, since what was published
            // before it did may not have reached them.
            let late = async {
                if confirmed {
                    return std::future::pending().await;
                }
                confirm(&client, &confirm_subject).await;
            };
            tokio::pin!(late);
            let mut waiting = !confirmed;
            // Subjects repeat on every message of a plain subscription: reuse the last Arc.
            let mut last_topic: Arc<str> = Arc::from("");
            loop {
                tokio::select! {
                    () = &mut late, if waiting => {
                        waiting = false;
                        sink.interrupted(sluice_bridge::Interruption::LateSubscription);
                    }
                    msg = subscriber.next() => {
                        let Some(msg) = msg else { break };
                        live.received();
                        if *last_topic != *msg.subject.as_str() {
                            last_topic = Arc::from(msg.subject.as_str());
                        }
                        sink.message(Message::new(last_topic.clone(), msg.payload));
                    }
                }
            }
        });
        Ok(Subscription::new(AbortOnDrop {
            reader,
            _registered: registered,
        }))
    }

    fn status(&self) -> BrokerStatus {
        BrokerStatus {
            connected: self.client.connection_state() == State::Connected,
            // async-nats counts every successful connect, the first one included. Exact, unlike
            // counting `Event::Connected`, which async-nats drops when its event channel is full.
            reconnects: self
                .client
                .statistics()
                .connects
                .load(Ordering::Relaxed)
                .saturating_sub(1),
            messages: self.live.messages.load(Ordering::Relaxed),
            subscriptions: self.live.held.load(Ordering::Relaxed),
        }
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BridgeError> {
        self.check_publish(topic, &payload)?;
        self.client
            .publish(topic.to_owned(), payload)
            .await
            .map_err(|e| BridgeError::broker("nats publish", e))
    }

    async fn subscribe_stream(
        &self,
        stream: &str,
        filter: &str,
        sink: Sink,
    ) -> Result<(Subscription, u64), BridgeError> {
        self.check_stream_filter(stream, filter)?;
        // Subscribed before the stream is looked at, so a replacement after that is not missed.
        let advisories = self
            .client
            .subscribe(format!("$JS.EVENT.ADVISORY.STREAM.*.{stream}"))
            .await
            .map_err(|e| BridgeError::broker("nats subscribe to stream advisories", e))?;
        let (stream_handle, _, last) = self.stream(stream).await?;
        let created = stream_handle.cached_info().created.unix_timestamp_nanos();
        // An explicit start rather than "new": a consumer recreated before it delivered anything
        // would otherwise start again from the policy, and everything below it is dropped here too.
        let messages = messages(Self::ordered(&stream_handle, filter, last + 1).await?).await?;
        let reader = LiveReader {
            jetstream: self.jetstream.clone(),
            stream: stream.to_owned(),
            filter: filter.to_owned(),
            created,
            last,
            sink,
            live: self.live.clone(),
        };
        let registered = self
            .live
            .register(filter, stream.len(), reader.sink.clone(), false);
        let connections = self.connections.subscribe();
        let subscription = Subscription::new(AbortOnDrop {
            reader: tokio::spawn(reader.run(messages, advisories, connections)),
            _registered: registered,
        });
        Ok((subscription, last))
    }

    async fn read_stream(
        &self,
        stream: &str,
        filter: &str,
        after: u64,
        batch: usize,
    ) -> Result<Box<dyn HistoryReader>, BridgeError> {
        self.check_stream_filter(stream, filter)?;
        let (stream_handle, first, last) = self.stream(stream).await?;
        let start = (after + 1).max(first);
        let consumer = stream_handle
            .create_consumer(OrderedConfig {
                filter_subject: filter.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                // What the client fetches ahead of the reader: one batch.
                max_batch: batch.clamp(1, 500) as i64,
                ..OrderedConfig::default()
            })
            .await
            .map_err(|e| BridgeError::broker("JetStream consumer", e))?;
        let pending = consumer.cached_info().num_pending;
        Ok(Box::new(NatsHistory {
            first_held: first,
            last,
            start,
            pending,
            messages: messages(consumer).await?,
            _held: self.live.hold(),
        }))
    }
}
