//! The topic registry: one broker subscription per route and concrete topic filter, shared by every
//! stream on it, and the lifecycle of topics (subscribe on the first stream, drop on the last, or
//! after the route's linger time on a replay route).
//!
//! - [`topic`]: one topic's fan-out: each message encoded once into its SSE frame, and the same
//!   `Bytes` queued for every live stream (a refcount bump, no copy) and kept in the replay ring.
//! - [`resume`]: the one resume path for memory replay and JetStream: a resuming stream reads its
//!   backlog a batch at a time as it drains, then switches to live with no gap and no duplicate.
//!
//! Locks, always taken in this order: the registry, a topic's sequence, its members, its ring, the
//! route's replay budget queue. Nothing is encoded while a topic's members are locked, and no lock is
//! held across an await.

mod resume;
mod topic;

pub use resume::MAX_CATCH_UP;
pub use topic::TopicKey;

use crate::config::Route;
use crate::replay::{Budget, Retention};
use crate::sse::EventName;
use crate::stream::{Backlog, Closed, OverflowStats, StreamQueue};
use sluice_bridge::{Bridge, BridgeError, Delivery, Sink};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use topic::{lock, Member, Topic};

/// The registry shared by every connection.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

/// The most topics that linger at once (their last stream gone, their subscription and replay ring
/// kept for a returning client). A client that opens and leaves streams on ever new topics would
/// otherwise keep a broker subscription for each for the linger time; past this, a topic whose last
/// stream leaves is dropped at once.
pub const MAX_LINGERING: usize = 10_000;

struct HubInner {
    bridges: Vec<Arc<dyn Bridge>>,
    topics: Mutex<HashMap<TopicKey, Arc<Topic>>>,
    /// Linger timers running now (see [`MAX_LINGERING`]).
    lingering: AtomicUsize,
    stats: Arc<OverflowStats>,
    /// Set by [`Hub::shutdown`]: every queue, including those of streams that join later, is closed.
    shutting_down: AtomicBool,
}

/// What every topic of one route shares: where it subscribes, how its events are encoded and how
/// they are kept. Made once per route.
#[derive(Debug)]
pub struct RouteTopics {
    /// The route's index: topics of different routes are never shared.
    pub route: usize,
    /// Index into the configured brokers.
    pub broker: usize,
    pub event: Option<EventName>,
    /// Send each event's data in a JSON envelope with its topic.
    pub envelope: bool,
    /// Send the current value of each concrete topic first (MQTT retained messages).
    pub retained: bool,
    pub retention: Retention,
    /// The replay memory bound of the route (replay routes).
    pub budget: Option<Arc<Budget>>,
}

impl RouteTopics {
    /// The topics of route number `index`.
    pub fn new(index: usize, route: &Route) -> Self {
        let budget = match route.retention {
            Retention::Replay { bytes, .. } => Some(Budget::new(bytes)),
            _ => None,
        };
        Self {
            route: index,
            broker: route.broker,
            event: route.event.clone(),
            envelope: route.envelope,
            retained: route.retained,
            retention: route.retention.clone(),
            budget,
        }
    }

    /// Live-only topics on `broker` with the default event name (for tests and benchmarks).
    pub fn live(broker: usize) -> Self {
        Self {
            route: 0,
            broker,
            event: None,
            envelope: false,
            retained: false,
            retention: Retention::Live,
            budget: None,
        }
    }
}

/// What a stream asks of the hub.
pub struct Join {
    pub route: Arc<RouteTopics>,
    pub filter: String,
    /// The client's `Last-Event-ID`, if it resumes.
    pub last_event_id: Option<String>,
}

impl Join {
    /// A live-only stream on `filter` of `broker`, with the default event name.
    pub fn live(broker: usize, filter: &str) -> Self {
        Self {
            route: Arc::new(RouteTopics::live(broker)),
            filter: filter.to_owned(),
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

/// A stream that joined: its membership, and the backlog it reads first when it resumes.
pub struct Joined {
    pub membership: Membership,
    pub backlog: Option<Box<dyn Backlog>>,
}

impl Hub {
    pub fn new(bridges: Vec<Arc<dyn Bridge>>) -> Self {
        Self {
            inner: Arc::new(HubInner {
                bridges,
                topics: Mutex::new(HashMap::new()),
                lingering: AtomicUsize::new(0),
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

    /// Adds `queue` to the topic of `join`, subscribing on the broker if it is the first. A stream
    /// that resumes gets its backlog to read first; until it has, live events pass it by.
    pub async fn join(&self, join: Join, queue: Arc<StreamQueue>) -> Result<Joined, BridgeError> {
        let bridge = self
            .inner
            .bridges
            .get(join.route.broker)
            // A route names a configured broker (checked with the config): an internal error.
            .ok_or(BridgeError::Unsupported(
                "the route's broker is not configured",
            ))?
            .clone();
        let key = TopicKey {
            route: join.route.route,
            filter: join.filter.into_boxed_str(),
        };
        let (topic, id, created, backlog) = {
            let mut topics = lock(&self.inner.topics);
            let (topic, created) = match topics.get(&key) {
                Some(topic) => (topic.clone(), false),
                None => {
                    let topic = Arc::new(Topic::new(
                        key.clone(),
                        join.route.clone(),
                        self.inner.stats.clone(),
                    ));
                    topics.insert(key, topic.clone());
                    (topic, true)
                }
            };
            if self.inner.shutting_down.load(Ordering::SeqCst) {
                queue.close(Closed::Shutdown);
            }
            let mut members = lock(&topic.members);
            members.next_id += 1;
            let id = members.next_id;
            let start = resume::start(&topic, &members, id, join.last_event_id, &bridge);
            queue.preload(start.first);
            members.by_id.insert(
                id,
                Member {
                    queue,
                    state: start.state,
                },
            );
            drop(members);
            (topic, id, created, start.backlog)
        };
        let membership = Membership {
            hub: self.inner.clone(),
            topic: topic.clone(),
            id,
        };
        if created {
            self.subscribe(&topic, bridge.as_ref()).await?;
        }
        Ok(Joined {
            membership,
            backlog,
        })
    }

    /// Makes the broker subscription of a new topic.
    async fn subscribe(&self, topic: &Arc<Topic>, bridge: &dyn Bridge) -> Result<(), BridgeError> {
        let (weak_topic, weak_hub) = (Arc::downgrade(topic), Arc::downgrade(&self.inner));
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
        let filter = &topic.key.filter;
        let subscribed = match &topic.spec.retention {
            Retention::JetStream { stream } => bridge
                .subscribe_stream(stream, filter, sink)
                .await
                .map(|(subscription, after)| {
                    topic.starts_after(after);
                    subscription
                }),
            _ => bridge.subscribe(filter, sink).await,
        };
        let subscription = match subscribed {
            Ok(subscription) => subscription,
            Err(e) => {
                self.abandon(topic);
                return Err(e);
            }
        };
        tracing::debug!(route = topic.key.route, %filter, "broker subscription opened");
        *lock(&topic.subscription) = Some(subscription);
        topic.mark_established();
        if topic.retired.load(Ordering::Acquire) {
            // Every stream left while the subscription was being made.
            lock(&topic.subscription).take();
        }
        Ok(())
    }

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

impl HubInner {
    /// The broker gave up `topic`'s subscription: its streams end (their clients reconnect and
    /// subscribe afresh) and the topic leaves the registry.
    fn fail(&self, topic: &Arc<Topic>, reason: &str) {
        tracing::warn!(route = topic.key.route, filter = %topic.key.filter, %reason, "broker subscription failed; closing its streams");
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
            tracing::debug!(route = topic.key.route, filter = %topic.key.filter, "broker subscription closed");
        }
        // The broker subscription is dropped here, outside every lock.
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let emptied = {
            let mut members = lock(&self.topic.members);
            members.by_id.remove(&self.id);
            if !members.by_id.is_empty() {
                return;
            }
            members.emptied += 1;
            members.emptied
        };
        let linger = self.topic.linger();
        let room = self.hub.lingering.load(Ordering::Relaxed) < MAX_LINGERING;
        if !linger.is_zero() && room && !self.topic.retired.load(Ordering::Acquire) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                // Keep the subscription and the replay ring, so a client that reconnects within the
                // linger time misses nothing.
                let (hub, topic) = (self.hub.clone(), self.topic.clone());
                hub.lingering.fetch_add(1, Ordering::Relaxed);
                runtime.spawn(async move {
                    tokio::time::sleep(linger).await;
                    hub.retire_if_idle(&topic, emptied);
                    hub.lingering.fetch_sub(1, Ordering::Relaxed);
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
    use crate::stream::{Fill, Next, Overflow};
    use bytes::Bytes;
    use sluice_bridge::{Sink, Subscription};
    use sluice_memory::MemoryBridge;
    use std::time::Duration;

    fn live(filter: &str) -> Join {
        Join::live(0, filter)
    }

    /// A replay route keeping 10 events per topic.
    fn replay_route() -> Arc<RouteTopics> {
        let retention = Retention::Replay {
            per_topic: 10,
            bytes: 1 << 20,
            linger: Duration::from_secs(60),
        };
        Arc::new(RouteTopics {
            retention,
            budget: Some(Budget::new(1 << 20)),
            ..RouteTopics::live(0)
        })
    }

    fn replay(route: &Arc<RouteTopics>, filter: &str, last_event_id: Option<String>) -> Join {
        Join {
            route: route.clone(),
            filter: filter.to_owned(),
            last_event_id,
        }
    }

    async fn take(queue: &StreamQueue) -> Vec<Bytes> {
        let mut frames = Vec::new();
        assert!(matches!(queue.next(&mut frames).await, Next::Frames { .. }));
        frames
    }

    /// What a stream reads first: what its queue starts with, then its whole backlog.
    async fn take_backlog(joined: &mut Joined, queue: &StreamQueue) -> Vec<Bytes> {
        let mut frames = Vec::new();
        queue.try_next(&mut frames);
        if let Some(backlog) = &mut joined.backlog {
            while backlog.fill(&mut frames, 4).await == Fill::More {}
        }
        frames
    }

    #[tokio::test(start_paused = true)]
    async fn a_replay_topic_lingers_for_its_lone_client_then_lets_go() {
        let memory = Arc::new(MemoryBridge::new());
        let hub = Hub::new(vec![memory.clone()]);
        let route = replay_route();
        let first = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let joined = hub
            .join(replay(&route, "t", None), first.clone())
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
        drop(joined);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(memory.subscription_count(), 1, "still lingering");
        memory
            .publish("t", Bytes::from_static(b"2"))
            .await
            .expect("publish");

        let back = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let mut joined = hub
            .join(replay(&route, "t", Some(id)), back.clone())
            .await
            .expect("join");
        let frames = take_backlog(&mut joined, &back).await;
        assert_eq!(frames.len(), 1, "only what came after the id, no gap");
        assert!(frames[0].ends_with(b"data: 2\n\n"));
        drop(joined);

        tokio::time::sleep(Duration::from_secs(61)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(memory.subscription_count(), 0, "released after the linger");
        assert_eq!(hub.topic_count(), 0);
    }

    /// The `data:` of every event frame, and `gap:<data>` for gaps.
    fn texts(frames: &[Bytes]) -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                let text = String::from_utf8_lossy(f);
                let data = text
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or_default()
                    .to_owned();
                if text.starts_with("event: gap") {
                    format!("gap:{data}")
                } else {
                    data
                }
            })
            .collect()
    }

    /// Publishes `n` on topic `t` for each `n` of `range`.
    async fn publish_all(memory: &MemoryBridge, range: std::ops::RangeInclusive<u32>) {
        for n in range {
            memory
                .publish("t", n.to_string().into())
                .await
                .expect("publish");
        }
    }

    /// A replay topic `t` with one stream on it, which has read event `0`: the stream's membership,
    /// and the id of event `0`.
    async fn a_topic_and_an_id(
        hub: &Hub,
        memory: &MemoryBridge,
        route: &Arc<RouteTopics>,
    ) -> (Joined, String) {
        let first = Arc::new(StreamQueue::new(100, Overflow::Disconnect));
        let joined = hub
            .join(replay(route, "t", None), first.clone())
            .await
            .expect("join");
        publish_all(memory, 0..=0).await;
        let id = String::from_utf8_lossy(&take(&first).await[0])
            .lines()
            .find_map(|l| l.strip_prefix("id: ").map(str::to_owned))
            .expect("an id");
        (joined, id)
    }

    #[tokio::test]
    async fn a_resume_reads_its_backlog_in_batches_then_goes_live_without_gap_or_duplicate() {
        let memory = Arc::new(MemoryBridge::new());
        let hub = Hub::new(vec![memory.clone()]);
        let route = replay_route();
        let (joined, id) = a_topic_and_an_id(&hub, &memory, &route).await;
        publish_all(&memory, 1..=8).await;

        let back = Arc::new(StreamQueue::new(3, Overflow::Disconnect));
        let mut resumed = hub
            .join(replay(&route, "t", Some(id)), back.clone())
            .await
            .expect("join");
        let backlog = resumed.backlog.as_mut().expect("a backlog");
        let mut frames = Vec::new();
        assert_eq!(backlog.fill(&mut frames, 3).await, Fill::More);
        assert_eq!(texts(&frames), ["1", "2", "3"], "one batch of `buffer`");
        // Published while the stream catches up: it reaches it through the ring, once.
        publish_all(&memory, 9..=9).await;
        assert!(back.is_empty(), "live events pass a catching-up stream by");
        while backlog.fill(&mut frames, 3).await == Fill::More {}
        assert_eq!(
            texts(&frames),
            ["1", "2", "3", "4", "5", "6", "7", "8", "9"]
        );
        publish_all(&memory, 10..=10).await;
        assert_eq!(texts(&take(&back).await), ["10"]);
        drop((joined, resumed));
    }

    #[tokio::test]
    async fn a_slow_resume_is_told_what_the_ring_evicted_under_it() {
        let memory = Arc::new(MemoryBridge::new());
        let hub = Hub::new(vec![memory.clone()]);
        // 10 events per topic: a stream that reads 2 and then stops while 12 more come loses some.
        let route = replay_route();
        let (joined, id) = a_topic_and_an_id(&hub, &memory, &route).await;
        publish_all(&memory, 1..=5).await;
        let back = Arc::new(StreamQueue::new(2, Overflow::Disconnect));
        let mut resumed = hub
            .join(replay(&route, "t", Some(id)), back.clone())
            .await
            .expect("join");
        let backlog = resumed.backlog.as_mut().expect("a backlog");
        let mut frames = Vec::new();
        assert_eq!(backlog.fill(&mut frames, 2).await, Fill::More);
        publish_all(&memory, 6..=17).await;
        while backlog.fill(&mut frames, 2).await == Fill::More {}
        // The ring holds 8..=17 now: 3 to 7 went while the stream was away.
        let expected: Vec<String> = ["1", "2", "gap:{\"reason\":\"expired\",\"lost\":5}"]
            .into_iter()
            .map(str::to_owned)
            .chain((8..=17).map(|n| n.to_string()))
            .collect();
        assert_eq!(texts(&frames), expected);
        drop((joined, resumed));
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_lingering_topics_linger() {
        let memory = Arc::new(MemoryBridge::new());
        let hub = Hub::new(vec![memory.clone()]);
        let route = replay_route();
        for n in 0..MAX_LINGERING + 5 {
            let queue = Arc::new(StreamQueue::new(1, Overflow::Disconnect));
            let joined = hub
                .join(replay(&route, &format!("t/{n}"), None), queue)
                .await
                .expect("join");
            drop(joined);
        }
        assert_eq!(hub.topic_count(), MAX_LINGERING);
        assert_eq!(memory.subscription_count(), MAX_LINGERING);
        tokio::time::sleep(Duration::from_secs(61)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(hub.topic_count(), 0, "all released after the linger");
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
            Err(BridgeError::broker_says("refused"))
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
