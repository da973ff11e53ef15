//! The topic registry: one broker subscription per route and concrete topic filter, shared by every
//! stream on it, and the lifecycle of topics (subscribe on the first stream, drop on the last, or
//! after the route's linger time on a replay route).
//!
//! - [`topic`]: one topic's fan-out: each message encoded once into its SSE frame, and the same
//!   `Bytes` queued for every live stream (a refcount bump, no copy) and kept in the replay ring.
//! - [`resume`]: the one resume path for memory replay and JetStream: a resuming stream reads its
//!   backlog a batch at a time as it drains, then switches to live with no gap and no duplicate.
//! - [`window`]: the JetStream read-back that concurrent resumes of a topic share (a reconnect
//!   storm reads the broker once, not once per client).
//!
//! - [`reload`]: a configuration reload ends the streams of the routes it changed or removed, and
//!   of tokens whose key it took away.
//!
//! Locks, always taken in this order: the registry, the revoked keys, a topic's sequence, its
//! members, its ring, the route's replay budget queue. Nothing is encoded while a topic's members are locked, and no lock is
//! held across an await.

mod reload;
mod resume;
mod topic;
mod window;

pub use resume::MAX_CATCH_UP;
pub use topic::TopicKey;

use crate::admin::metrics::{self, RouteMetrics};
use crate::auth::KeyId;
use crate::config::Route;
use crate::replay::{Budget, Retention};
use crate::sse::EventName;
use crate::stream::{Backlog, Closed, OverflowStats, StreamQueue};
use sluice_bridge::{Bridge, BridgeError, Delivery, Sink};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    topics: Mutex<HashMap<TopicKey, Arc<Topic>>>,
    /// Linger timers running now (see [`MAX_LINGERING`]).
    lingering: AtomicUsize,
    stats: Arc<OverflowStats>,
    /// Set by [`Hub::shutdown`]: every queue, including those of streams that join later, is closed.
    shutting_down: AtomicBool,
    /// Token keys a reload took away (see [`Hub::revoke_keys`]): a stream whose token one of them
    /// verified is closed, also when it joins after the reload.
    revoked_keys: Mutex<HashSet<KeyId>>,
}

/// What every topic of one route shares: where it subscribes, how its events are encoded and how
/// they are kept. Made once per route definition: a configuration reload that leaves the route as
/// it was keeps it (and with it the route's topics, rings and budget).
pub struct RouteTopics {
    /// The route's identity in this process: topics of different routes are never shared, and a
    /// route keeps its id across reloads that leave it unchanged, whatever its place in the list.
    pub route: u64,
    /// The route's broker connection.
    pub bridge: Arc<dyn Bridge>,
    pub event: Option<EventName>,
    /// Send each event's data in a JSON envelope with its topic.
    pub envelope: bool,
    /// Send the current value of each concrete topic first (MQTT retained messages).
    pub retained: bool,
    pub retention: Retention,
    /// The replay memory bound of the route (replay routes).
    pub budget: Option<Arc<Budget>>,
    /// Set when a reload changed or removed the route (see [`Hub::retire_route`]).
    pub(crate) retired: AtomicBool,
    /// The route's metrics (shared by every definition of the same path).
    pub metrics: Arc<RouteMetrics>,
}

/// Gives every route definition its own id.
fn next_route_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl RouteTopics {
    /// The topics of `route`, subscribed through `bridge` (the route's broker).
    pub fn new(route: &Route, bridge: Arc<dyn Bridge>) -> Self {
        let budget = match route.retention {
            Retention::Replay { bytes, .. } => Some(Budget::new(bytes)),
            _ => None,
        };
        Self {
            route: next_route_id(),
            bridge,
            event: route.event.clone(),
            envelope: route.envelope,
            retained: route.retained,
            retention: route.retention.clone(),
            budget,
            retired: AtomicBool::new(false),
            metrics: metrics::global().route(route.path.as_str()),
        }
    }

    /// Live-only topics on `bridge` with the default event name (for tests and benchmarks).
    pub fn live(bridge: Arc<dyn Bridge>) -> Self {
        Self {
            route: next_route_id(),
            bridge,
            event: None,
            envelope: false,
            retained: false,
            retention: Retention::Live,
            budget: None,
            retired: AtomicBool::new(false),
            metrics: metrics::global().route(""),
        }
    }
}

impl std::fmt::Debug for RouteTopics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTopics")
            .field("route", &self.route)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// What a stream asks of the hub.
pub struct Join {
    pub route: Arc<RouteTopics>,
    pub filter: String,
    /// The client's `Last-Event-ID`, if it resumes.
    pub last_event_id: Option<String>,
    /// The key that verified the stream's token (routes with `auth = true`).
    pub key: Option<KeyId>,
}

impl Join {
    /// A live-only stream on `filter` of `route` (e.g. [`RouteTopics::live`]).
    pub fn live(route: &Arc<RouteTopics>, filter: &str) -> Self {
        Self {
            route: route.clone(),
            filter: filter.to_owned(),
            last_event_id: None,
            key: None,
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

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(HubInner {
                topics: Mutex::new(HashMap::new()),
                lingering: AtomicUsize::new(0),
                stats: Arc::new(OverflowStats::default()),
                shutting_down: AtomicBool::new(false),
                revoked_keys: Mutex::new(HashSet::new()),
            }),
        }
    }

    pub fn stats(&self) -> &OverflowStats {
        &self.inner.stats
    }

    /// Whether [`Hub::shutdown`] has run (the server is shutting down or draining for an upgrade).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
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
        let bridge = join.route.bridge.clone();
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
            // Under the registry lock, as a reload's retiring and revoking take it: a stream that
            // matched the old configuration and joins now is closed here, so its client reconnects.
            if self.inner.outdated(&join.route, join.key) {
                queue.close(Closed::Reload);
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
                    key: join.key,
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

    /// A live route on `bridge`.
    fn live_route(bridge: Arc<dyn Bridge>) -> Arc<RouteTopics> {
        Arc::new(RouteTopics::live(bridge))
    }

    /// A replay route keeping 10 events per topic.
    fn replay_route(memory: &Arc<MemoryBridge>) -> Arc<RouteTopics> {
        let retention = Retention::Replay {
            per_topic: 10,
            bytes: 1 << 20,
            linger: Duration::from_secs(60),
        };
        Arc::new(RouteTopics {
            retention,
            budget: Some(Budget::new(1 << 20)),
            ..RouteTopics::live(memory.clone())
        })
    }

    fn replay(route: &Arc<RouteTopics>, filter: &str, last_event_id: Option<String>) -> Join {
        Join {
            route: route.clone(),
            filter: filter.to_owned(),
            last_event_id,
            key: None,
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
        let hub = Hub::new();
        let route = replay_route(&memory);
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
        let hub = Hub::new();
        let route = replay_route(&memory);
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
        let hub = Hub::new();
        // 10 events per topic: a stream that reads 2 and then stops while 12 more come loses some.
        let route = replay_route(&memory);
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
        let hub = Hub::new();
        let route = replay_route(&memory);
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
        let hub = Hub::new();
        let a = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let b = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let route = live_route(memory.clone());
        let ma = hub
            .join(Join::live(&route, "t/1"), a.clone())
            .await
            .expect("join");
        let mb = hub
            .join(Join::live(&route, "t/1"), b.clone())
            .await
            .expect("join");
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
        let hub = Arc::new(Hub::new());
        let route = live_route(Arc::new(FailingBridge {
            release: release.clone(),
        }));
        let first = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let creator = tokio::spawn({
            let (hub, first, route) = (hub.clone(), first.clone(), route.clone());
            async move { hub.join(Join::live(&route, "t"), first).await.map(drop) }
        });
        // Wait until the creator is inside subscribe, then join the same topic.
        while hub.topic_count() == 0 {
            tokio::task::yield_now().await;
        }
        let second = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let joined = hub.join(Join::live(&route, "t"), second.clone()).await;
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
