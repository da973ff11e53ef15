//! The topic registry: one shared broker subscription per concrete topic, and encode-once fan-out of
//! each message to the queue of every stream on that topic.
//!
//! A message is encoded into its SSE frame once per distinct event name among the topic's streams
//! (almost always once) and the same `Bytes` is queued for every stream: a refcount bump, no copy.
//! When the last stream on a topic leaves, the broker subscription is dropped at once, or after the
//! route's linger time on a replay route.
//!
//! Resuming ([`crate::replay`]): on a replay topic a stream's backlog is taken from the topic's buffer
//! under the same lock that fans messages out, so the switch from backlog to live has no gap and no
//! duplicate. On a JetStream topic the stream joins first and holds its live messages while the
//! backlog is read from the broker; the two are then spliced by stream sequence.

use crate::config::{EventName, Retention};
use crate::replay::{self, ReplayBuffer};
use crate::sse::{self, GapReason};
use crate::stream::{Closed, OverflowStats, StreamQueue};
use bytes::Bytes;
use sluice_bridge::{Bridge, BridgeError, Delivery, Interruption, Message, Sink, Subscription};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

/// The most messages one resuming stream reads back from JetStream; further back is a `gap`.
pub const MAX_CATCH_UP: usize = 100_000;

/// A topic is identified by its broker (index into the configured brokers), its filter and how it keeps
/// history (two routes on one filter with different retention keep separate topics).
type TopicKey = (usize, String, Retention);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its data consistent, so poisoning carries no meaning.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The registry shared by every connection.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    bridges: Vec<Arc<dyn Bridge>>,
    topics: Mutex<HashMap<TopicKey, Arc<Topic>>>,
    stats: Arc<OverflowStats>,
    /// Set by [`Hub::shutdown`]: every queue, including those of streams that join later, is closed.
    shutting_down: AtomicBool,
}

struct Topic {
    key: TopicKey,
    /// This topic's life in this process, part of its memory replay ids.
    instance: u64,
    members: Mutex<Members>,
    subscription: Mutex<Option<Subscription>>,
    /// Set once the topic has left the registry; a subscription that arrives later is dropped.
    retired: AtomicBool,
    /// Set (and `on_established` notified) once the broker subscription is live.
    established: AtomicBool,
    on_established: tokio::sync::Notify,
    stats: Arc<OverflowStats>,
}

#[derive(Default)]
struct Members {
    next_id: u64,
    by_id: HashMap<u64, Member>,
    /// The last sequence given (replay) or seen (JetStream).
    head: u64,
    replay: Option<ReplayBuffer>,
    /// The current value of each concrete topic, kept once a route with `retained = true` joined:
    /// the broker's retained message, replaced by every later message on that topic.
    current: HashMap<Arc<str>, Message>,
    keep_current: bool,
    /// Counts the times the topic became empty, so a linger timer knows whether it is still current.
    emptied: u64,
    /// Members whose JetStream backlog is being read, with the live messages that arrived meanwhile
    /// (kept apart from `Member`, which every idle stream holds).
    holding: HashMap<u64, Vec<Message>>,
}

struct Member {
    queue: Arc<StreamQueue>,
    event: Option<EventName>,
    /// Wants retained messages (the route's `retained = true`).
    retained: bool,
    envelope: bool,
}

/// What a stream asks of the hub.
pub struct Join {
    pub broker: usize,
    pub filter: String,
    pub event: Option<EventName>,
    pub retention: Retention,
    /// Send the current value of each concrete topic first (MQTT retained messages).
    pub retained: bool,
    /// Send each event's data in a JSON envelope with its topic.
    pub envelope: bool,
    /// The client's `Last-Event-ID`, if it resumes.
    pub last_event_id: Option<String>,
}

impl Join {
    /// A live-only stream on `filter` of `broker`, with the default event name.
    pub fn live(broker: usize, filter: &str) -> Self {
        Self {
            broker,
            filter: filter.to_owned(),
            event: None,
            retention: Retention::Live,
            retained: false,
            envelope: false,
            last_event_id: None,
        }
    }
}

/// A stream's place on a topic; dropping it leaves the topic.
pub struct Membership {
    hub: Arc<HubInner>,
    topic: Arc<Topic>,
    id: u64,
}

impl Hub {
    pub fn new(bridges: Vec<Arc<dyn Bridge>>) -> Self {
        Self {
            inner: Arc::new(HubInner {
                bridges,
                topics: Mutex::new(HashMap::new()),
                stats: Arc::new(OverflowStats::default()),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    pub fn bridge(&self, broker: usize) -> Option<&Arc<dyn Bridge>> {
        self.inner.bridges.get(broker)
    }

    pub fn stats(&self) -> &OverflowStats {
        &self.inner.stats
    }

    /// Ends every stream: their queues are closed with [`Closed::Shutdown`], so a stream waits on its
    /// queue alone and needs no shutdown watch of its own. Streams that join later are closed at once.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        // Under the registry lock: a stream joining now either is seen here or sees the flag.
        let topics = lock(&self.inner.topics);
        for topic in topics.values() {
            for member in lock(&topic.members).by_id.values() {
                member.queue.close(Closed::Shutdown);
            }
        }
    }

    /// How many topics have a live broker subscription (or one being set up, or lingering).
    pub fn topic_count(&self) -> usize {
        lock(&self.inner.topics).len()
    }

    /// Adds `queue` to the topic of `join`, subscribing on the broker if it is the first, and queues
    /// the stream's backlog first when it resumes.
    pub async fn join(
        &self,
        join: Join,
        queue: Arc<StreamQueue>,
    ) -> Result<Membership, BridgeError> {
        let bridge = self
            .inner
            .bridges
            .get(join.broker)
            .ok_or_else(|| BridgeError::Broker(format!("no broker #{}", join.broker)))?
            .clone();
        let reads_back =
            matches!(join.retention, Retention::JetStream { .. }) && join.last_event_id.is_some();
        let key = (join.broker, join.filter, join.retention);
        let (topic, id, created) = {
            let mut topics = lock(&self.inner.topics);
            let (topic, created) = match topics.get(&key) {
                Some(topic) => (topic.clone(), false),
                None => {
                    let topic = Arc::new(Topic::new(key.clone(), self.inner.stats.clone()));
                    topics.insert(key.clone(), topic.clone());
                    (topic, true)
                }
            };
            if self.inner.shutting_down.load(Ordering::SeqCst) {
                queue.close(Closed::Shutdown);
            }
            let mut members = lock(&topic.members);
            members.next_id += 1;
            let id = members.next_id;
            let mut backlog = Vec::new();
            members.keep_current |= join.retained;
            if join.retained {
                let mut current: Vec<&Message> = members.current.values().collect();
                current.sort_by(|a, b| a.topic.cmp(&b.topic));
                for message in current {
                    backlog.push(topic.encode((join.event.as_ref(), join.envelope), None, message));
                }
            }
            if let (Some(last), Retention::Replay { .. }) = (&join.last_event_id, &topic.key.2) {
                let format = (join.event.as_ref(), join.envelope);
                topic.replay_backlog(&members, format, last, &mut backlog);
            }
            queue.preload(backlog);
            if reads_back {
                members.holding.insert(id, Vec::new());
            }
            members.by_id.insert(
                id,
                Member {
                    queue,
                    event: join.event,
                    retained: join.retained,
                    envelope: join.envelope,
                },
            );
            drop(members);
            (topic, id, created)
        };
        let membership = Membership {
            hub: self.inner.clone(),
            topic: topic.clone(),
            id,
        };
        if created {
            let (weak_topic, weak_hub) = (Arc::downgrade(&topic), Arc::downgrade(&self.inner));
            let sink = Sink::new(move |delivery| {
                let Some(topic) = Weak::upgrade(&weak_topic) else {
                    return;
                };
                match delivery {
                    Delivery::Message(message) => topic.fan_out(&message),
                    Delivery::Interrupted(why) => topic.interrupted(why),
                    Delivery::Failed(reason) => {
                        if let Some(hub) = Weak::upgrade(&weak_hub) {
                            hub.fail(&topic, &reason);
                        }
                    }
                }
            });
            let subscribed = match &key.2 {
                Retention::JetStream { stream } => {
                    bridge.subscribe_stream(stream, &key.1, sink).await
                }
                _ => bridge.subscribe(&key.1, sink).await,
            };
            let subscription = match subscribed {
                Ok(subscription) => subscription,
                Err(e) => {
                    self.abandon(&topic);
                    return Err(e);
                }
            };
            tracing::debug!(broker = key.0, filter = %key.1, "broker subscription opened");
            *lock(&topic.subscription) = Some(subscription);
            topic.mark_established();
            if topic.retired.load(Ordering::Acquire) {
                // Every stream left while the subscription was being made.
                lock(&topic.subscription).take();
            }
        }
        if reads_back {
            // Read back only once the live consumer exists: it starts at the stream's end when it is
            // made, so a read that ended before that could miss what came in between.
            topic.wait_established().await;
            let last = join.last_event_id.unwrap_or_default();
            topic.catch_up(bridge.as_ref(), id, &last).await?;
        }
        Ok(membership)
    }
}

impl Hub {
    /// A topic whose broker subscription failed: take it out of the registry, so the next stream
    /// subscribes afresh, and close the streams that joined it meanwhile, so their clients reconnect
    /// rather than wait on a subscription that does not exist.
    fn abandon(&self, topic: &Arc<Topic>) {
        let mut topics = lock(&self.inner.topics);
        topic.leave_registry(&mut topics);
        for member in lock(&topic.members).by_id.values() {
            member.queue.close(Closed::BrokerError);
        }
        topic.on_established.notify_waiters();
    }
}

impl Topic {
    fn new(key: TopicKey, stats: Arc<OverflowStats>) -> Self {
        let replay = match &key.2 {
            Retention::Replay { per_topic, .. } => Some(ReplayBuffer::new(*per_topic)),
            _ => None,
        };
        Self {
            key,
            instance: replay::next_instance(),
            members: Mutex::new(Members {
                replay,
                ..Members::default()
            }),
            subscription: Mutex::new(None),
            retired: AtomicBool::new(false),
            established: AtomicBool::new(false),
            on_established: tokio::sync::Notify::new(),
            stats,
        }
    }

    /// Returns once the broker subscription is live (or the topic is gone).
    async fn wait_established(&self) {
        loop {
            let notified = self.on_established.notified();
            tokio::pin!(notified);
            // Registered before the check, so a notification in between is not missed.
            notified.as_mut().enable();
            if self.established.load(Ordering::Acquire) || self.retired.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn mark_established(&self) {
        self.established.store(true, Ordering::Release);
        self.on_established.notify_waiters();
    }

    fn linger(&self) -> Duration {
        match self.key.2 {
            Retention::Replay { linger, .. } => linger,
            _ => Duration::ZERO,
        }
    }

    /// Removes the topic from the registry (if it is still there) and marks it retired.
    fn leave_registry(self: &Arc<Self>, topics: &mut HashMap<TopicKey, Arc<Topic>>) {
        if topics.get(&self.key).is_some_and(|t| Arc::ptr_eq(t, self)) {
            topics.remove(&self.key);
        }
        self.retired.store(true, Ordering::Release);
    }

    /// The SSE id of message `seq`, when the topic gives ids.
    fn event_id(&self, seq: Option<u64>) -> Option<String> {
        let seq = seq?;
        match self.key.2 {
            Retention::Live => None,
            Retention::Replay { .. } => Some(replay::memory_id(self.instance, seq)),
            Retention::JetStream { .. } => Some(seq.to_string()),
        }
    }

    /// Encodes one message for a stream whose event name is `event`; a retained message (sent as the
    /// current value) has `.retained` appended to its type.
    fn encode(
        &self,
        (event, envelope): (Option<&EventName>, bool),
        seq: Option<u64>,
        message: &Message,
    ) -> Bytes {
        let name = event.map(|e| e.render(&message.topic));
        let name = if message.retained {
            Some(format!(
                "{}{}",
                name.as_deref().unwrap_or(sse::DEFAULT_EVENT),
                sse::RETAINED_SUFFIX
            ))
        } else {
            name
        };
        let id = self.event_id(seq.or(message.seq));
        if envelope {
            let data = sse::envelope(&message.topic, &message.payload);
            return sse::encode_event_with_id(name.as_deref(), id.as_deref(), &data);
        }
        sse::encode_event_with_id(name.as_deref(), id.as_deref(), &message.payload)
    }

    /// Appends to `backlog` what a stream resuming after `last` gets from the replay buffer.
    fn replay_backlog(
        &self,
        members: &Members,
        format: (Option<&EventName>, bool),
        last: &str,
        backlog: &mut Vec<Bytes>,
    ) {
        let Some(buffer) = &members.replay else {
            return;
        };
        let resume = replay::resume(
            buffer,
            self.instance,
            members.head,
            replay::parse_memory_id(last),
        );
        if let Some((reason, lost)) = resume.gap {
            backlog.push(sse::gap(reason, lost));
        }
        for (seq, message) in &resume.held {
            backlog.push(self.encode(format, Some(*seq), message));
        }
    }

    /// Reads a resuming JetStream stream's backlog from the broker, then queues it followed by the live
    /// messages held meanwhile, each sequence once and in order.
    async fn catch_up(&self, bridge: &dyn Bridge, id: u64, last: &str) -> Result<(), BridgeError> {
        let Retention::JetStream { stream } = &self.key.2 else {
            return Ok(());
        };
        let mut backlog = Vec::new();
        let mut history = Vec::new();
        let mut covered = 0;
        match replay::parse_sequence(last) {
            None => backlog.push(sse::gap(GapReason::UnknownId, None)),
            Some(after) => {
                let read = bridge
                    .read_stream(stream, &self.key.1, after, MAX_CATCH_UP)
                    .await?;
                covered = after;
                if after > read.last {
                    backlog.push(sse::gap(GapReason::UnknownId, None));
                    covered = read.last;
                } else if read.first_held > after.saturating_add(1) {
                    // The stream no longer holds what came right after the client's position.
                    backlog.push(sse::gap(GapReason::Expired, None));
                }
                history = read.messages;
            }
        }
        let mut members = lock(&self.members);
        let held = members.holding.remove(&id).unwrap_or_default();
        let Some(member) = members.by_id.get(&id) else {
            return Ok(());
        };
        let truncated = history.len() >= MAX_CATCH_UP;
        for (part, messages) in [history, held].iter().enumerate() {
            if part == 1 && truncated && messages.first().and_then(|m| m.seq) > Some(covered + 1) {
                // The read stopped at its limit short of the live messages.
                backlog.push(sse::gap(GapReason::Expired, None));
            }
            for message in messages {
                if let Some(seq) = message.seq.filter(|s| *s > covered) {
                    covered = seq;
                    let format = (member.event.as_ref(), member.envelope);
                    backlog.push(self.encode(format, None, message));
                }
            }
        }
        member.queue.preload(backlog);
        Ok(())
    }

    /// The broker may have lost messages of this topic: every stream is told with a `gap` event. A
    /// JetStream stream that was replaced starts its sequences over.
    fn interrupted(&self, why: Interruption) {
        let mut members = lock(&self.members);
        let reason = match why {
            Interruption::StreamReplaced => {
                members.head = 0;
                GapReason::StreamReplaced
            }
            Interruption::LateSubscription => GapReason::LateSubscription,
        };
        tracing::info!(broker = self.key.0, filter = %self.key.1, reason = reason.as_str(), "broker interruption; telling every stream");
        let frame = sse::gap(reason, None);
        for member in members.by_id.values() {
            member.queue.push(frame.clone(), &self.stats);
        }
    }

    fn fan_out(&self, message: &Message) {
        let mut guard = lock(&self.members);
        let members = &mut *guard;
        let seq = match &self.key.2 {
            Retention::Live => None,
            // A retained message is a topic's current value, re-sent on every (re)subscribe, not an
            // event in the topic's history: it gets no position.
            Retention::Replay { .. } if message.retained => None,
            Retention::Replay { .. } => {
                members.head += 1;
                Some(members.head)
            }
            Retention::JetStream { .. } => match message.seq {
                // A recreated consumer may deliver again what was already seen: skip it.
                Some(seq) if seq > members.head => {
                    members.head = seq;
                    Some(seq)
                }
                _ => return,
            },
        };
        if let (Some(buffer), Some(seq)) = (&mut members.replay, seq) {
            buffer.record(seq, message);
        }
        if members.keep_current {
            if message.retained && message.payload.is_empty() {
                // An empty retained message clears the topic's value.
                members.current.remove(&message.topic);
                return;
            }
            members.current.insert(
                message.topic.clone(),
                Message {
                    retained: true,
                    ..message.clone()
                },
            );
        }
        // One frame per distinct event name and format; nearly always a single entry.
        let mut frames: Vec<((Option<&EventName>, bool), Bytes)> = Vec::with_capacity(1);
        for (id, member) in &members.by_id {
            if let Some(held) = members.holding.get_mut(id) {
                if held.len() < member.queue.capacity() {
                    held.push(message.clone());
                } else {
                    // The backlog read takes too long for what arrives meanwhile.
                    member.queue.close(Closed::Overflow);
                }
                continue;
            }
            if message.retained && !member.retained {
                // Sent by the broker because of a (re)subscribe: only `retained` routes want it.
                continue;
            }
            let key = (member.event.as_ref(), member.envelope);
            let frame = match frames.iter().find(|(e, _)| *e == key) {
                Some((_, frame)) => frame.clone(),
                None => {
                    let frame = self.encode(key, seq, message);
                    frames.push((key, frame.clone()));
                    frame
                }
            };
            member.queue.push(frame, &self.stats);
        }
    }
}

impl HubInner {
    /// The broker gave up `topic`'s subscription: its streams end (their clients reconnect and
    /// subscribe afresh) and the topic leaves the registry.
    fn fail(&self, topic: &Arc<Topic>, reason: &str) {
        tracing::warn!(broker = topic.key.0, filter = %topic.key.1, %reason, "broker subscription failed; closing its streams");
        let subscription = {
            let mut topics = lock(&self.topics);
            topic.leave_registry(&mut topics);
            for member in lock(&topic.members).by_id.values() {
                member.queue.close(Closed::BrokerError);
            }
            lock(&topic.subscription).take()
        };
        topic.on_established.notify_waiters();
        // Dropped outside every lock: dropping a subscription may call into the bridge.
        drop(subscription);
    }

    /// Retires `topic` if no stream joined it since it became empty for the `emptied`-th time.
    fn retire_if_idle(&self, topic: &Arc<Topic>, emptied: u64) {
        let subscription = {
            let mut topics = lock(&self.topics);
            let members = lock(&topic.members);
            if !members.by_id.is_empty() || members.emptied != emptied {
                return;
            }
            drop(members);
            topic.leave_registry(&mut topics);
            lock(&topic.subscription).take()
        };
        if subscription.is_some() {
            tracing::debug!(broker = topic.key.0, filter = %topic.key.1, "broker subscription closed");
        }
        // The broker subscription is dropped here, outside every lock.
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let emptied = {
            let mut members = lock(&self.topic.members);
            members.by_id.remove(&self.id);
            members.holding.remove(&self.id);
            if !members.by_id.is_empty() {
                return;
            }
            members.emptied += 1;
            members.emptied
        };
        let linger = self.topic.linger();
        if !linger.is_zero() && !self.topic.retired.load(Ordering::Acquire) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                // Keep the subscription and the replay buffer, so a client that reconnects within the
                // linger time misses nothing.
                let (hub, topic) = (self.hub.clone(), self.topic.clone());
                runtime.spawn(async move {
                    tokio::time::sleep(linger).await;
                    hub.retire_if_idle(&topic, emptied);
                });
                return;
            }
        }
        self.hub.retire_if_idle(&self.topic, emptied);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overflow;
    use crate::stream::Next;
    use sluice_memory::MemoryBridge;

    fn live(filter: &str) -> Join {
        Join::live(0, filter)
    }

    fn replay(filter: &str, last_event_id: Option<String>) -> Join {
        Join {
            retention: Retention::Replay {
                per_topic: 10,
                linger: Duration::from_secs(60),
            },
            last_event_id,
            ..Join::live(0, filter)
        }
    }

    async fn take(queue: &StreamQueue) -> Vec<Bytes> {
        let mut frames = Vec::new();
        assert!(matches!(queue.next(&mut frames).await, Next::Frames { .. }));
        frames
    }

    #[tokio::test(start_paused = true)]
    async fn a_replay_topic_lingers_for_its_lone_client_then_lets_go() {
        let memory = Arc::new(MemoryBridge::new());
        let hub = Hub::new(vec![memory.clone()]);
        let first = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let membership = hub
            .join(replay("t", None), first.clone())
            .await
            .expect("join");
        memory
            .publish("t", Bytes::from_static(b"1"))
            .await
            .expect("publish");
        let frame = take(&first).await.remove(0);
        let id = std::str::from_utf8(&frame)
            .expect("utf-8")
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .expect("an id")
            .to_owned();
        drop(membership);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(memory.subscription_count(), 1, "still lingering");
        memory
            .publish("t", Bytes::from_static(b"2"))
            .await
            .expect("publish");

        let back = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let membership = hub
            .join(replay("t", Some(id)), back.clone())
            .await
            .expect("join");
        let frames = take(&back).await;
        assert_eq!(frames.len(), 1, "only what came after the id, no gap");
        assert!(frames[0].ends_with(b"data: 2\n\n"));
        drop(membership);

        tokio::time::sleep(Duration::from_secs(61)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(memory.subscription_count(), 0, "released after the linger");
        assert_eq!(hub.topic_count(), 0);
    }

    #[tokio::test]
    async fn shares_one_subscription_and_encodes_once() {
        let memory = Arc::new(MemoryBridge::new());
        let hub = Hub::new(vec![memory.clone()]);
        let a = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let b = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let ma = hub.join(live("t/1"), a.clone()).await.expect("join");
        let mb = hub.join(live("t/1"), b.clone()).await.expect("join");
        assert_eq!(memory.subscription_count(), 1);
        memory
            .publish("t/1", Bytes::from_static(b"hi"))
            .await
            .expect("publish");
        let (mut fa, mut fb) = (Vec::new(), Vec::new());
        assert!(matches!(a.next(&mut fa).await, Next::Frames { .. }));
        assert!(matches!(b.next(&mut fb).await, Next::Frames { .. }));
        assert_eq!(fa[0], Bytes::from_static(b"data: hi\n\n"));
        // The same allocation is shared: encode once, no per-subscriber copy.
        assert_eq!(fa[0].as_ptr(), fb[0].as_ptr());
        drop(ma);
        assert_eq!(memory.subscription_count(), 1);
        drop(mb);
        assert_eq!(memory.subscription_count(), 0);
        assert_eq!(hub.topic_count(), 0);
    }

    /// A broker whose subscriptions fail once `release` is notified.
    struct FailingBridge {
        release: Arc<tokio::sync::Notify>,
    }

    #[async_trait::async_trait]
    impl Bridge for FailingBridge {
        fn syntax(&self) -> sluice_bridge::TopicSyntax {
            sluice_bridge::TopicSyntax::Mqtt
        }

        async fn subscribe(&self, _: &str, _: Sink) -> Result<Subscription, BridgeError> {
            self.release.notified().await;
            Err(BridgeError::Broker("refused".into()))
        }

        async fn publish(&self, _: &str, _: Bytes) -> Result<(), BridgeError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failed_subscription_closes_its_streams_and_is_forgotten() {
        let release = Arc::new(tokio::sync::Notify::new());
        let hub = Arc::new(Hub::new(vec![Arc::new(FailingBridge {
            release: release.clone(),
        })]));
        let first = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let creator = tokio::spawn({
            let (hub, first) = (hub.clone(), first.clone());
            async move { hub.join(live("t"), first).await.map(drop) }
        });
        // Wait until the creator is inside subscribe, then join the same topic.
        while hub.topic_count() == 0 {
            tokio::task::yield_now().await;
        }
        let second = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let joined = hub.join(live("t"), second.clone()).await;
        assert!(joined.is_ok(), "a later stream joins the pending topic");
        release.notify_one();
        assert!(creator.await.expect("joined").is_err());
        assert!(matches!(
            second.next(&mut Vec::new()).await,
            Next::Closed(Closed::BrokerError)
        ));
        assert_eq!(hub.topic_count(), 0, "the next stream subscribes afresh");
    }
}
