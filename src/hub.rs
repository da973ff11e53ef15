//! The topic registry: one shared broker subscription per concrete topic, and encode-once fan-out of
//! each message to the queue of every stream on that topic.
//!
//! A message is encoded into its SSE frame once per distinct event name among the topic's streams
//! (almost always once) and the same `Bytes` is queued for every stream: a refcount bump, no copy.
//! When the last stream on a topic leaves, the broker subscription is dropped at once.

use crate::config::EventName;
use crate::sse;
use crate::stream::{Closed, OverflowStats, StreamQueue};
use bytes::Bytes;
use sluice_bridge::{Bridge, BridgeError, Message, Sink, Subscription};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

/// A topic is identified by its broker (index into the configured brokers) and its filter.
type TopicKey = (usize, String);

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
    members: Mutex<Members>,
    subscription: Mutex<Option<Subscription>>,
    /// Set once the topic has left the registry; a subscription that arrives later is dropped.
    retired: AtomicBool,
    stats: Arc<OverflowStats>,
}

#[derive(Default)]
struct Members {
    next_id: u64,
    by_id: HashMap<u64, Member>,
}

struct Member {
    queue: Arc<StreamQueue>,
    event: Option<EventName>,
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

    /// How many topics have a live broker subscription (or one being set up).
    pub fn topic_count(&self) -> usize {
        lock(&self.inner.topics).len()
    }

    /// Adds `queue` to the topic `filter` of `broker`, subscribing on the broker if it is the first.
    pub async fn join(
        &self,
        broker: usize,
        filter: String,
        event: Option<EventName>,
        queue: Arc<StreamQueue>,
    ) -> Result<Membership, BridgeError> {
        let bridge = self
            .inner
            .bridges
            .get(broker)
            .ok_or_else(|| BridgeError::Broker(format!("no broker #{broker}")))?
            .clone();
        let key = (broker, filter);
        let (topic, id, created) = {
            let mut topics = lock(&self.inner.topics);
            let (topic, created) = match topics.get(&key) {
                Some(topic) => (topic.clone(), false),
                None => {
                    let topic = Arc::new(Topic {
                        key: key.clone(),
                        members: Mutex::new(Members::default()),
                        subscription: Mutex::new(None),
                        retired: AtomicBool::new(false),
                        stats: self.inner.stats.clone(),
                    });
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
            members.by_id.insert(id, Member { queue, event });
            drop(members);
            (topic, id, created)
        };
        let membership = Membership {
            hub: self.inner.clone(),
            topic: topic.clone(),
            id,
        };
        if created {
            let weak = Arc::downgrade(&topic);
            let sink: Sink = Arc::new(move |message: Message| {
                if let Some(topic) = Weak::upgrade(&weak) {
                    topic.fan_out(&message);
                }
            });
            let subscription = match bridge.subscribe(&key.1, sink).await {
                Ok(subscription) => subscription,
                Err(e) => {
                    self.abandon(&topic);
                    return Err(e);
                }
            };
            tracing::debug!(broker, filter = %key.1, "broker subscription opened");
            *lock(&topic.subscription) = Some(subscription);
            if topic.retired.load(Ordering::Acquire) {
                // Every stream left while the subscription was being made.
                lock(&topic.subscription).take();
            }
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
        if topics
            .get(&topic.key)
            .is_some_and(|t| Arc::ptr_eq(t, topic))
        {
            topics.remove(&topic.key);
        }
        topic.retired.store(true, Ordering::Release);
        for member in lock(&topic.members).by_id.values() {
            member.queue.close(Closed::BrokerError);
        }
    }
}

impl Topic {
    fn fan_out(&self, message: &Message) {
        let members = lock(&self.members);
        // One frame per distinct event name; nearly always a single entry.
        let mut frames: Vec<(Option<&EventName>, Bytes)> = Vec::with_capacity(1);
        for member in members.by_id.values() {
            let key = member.event.as_ref();
            let frame = match frames.iter().find(|(e, _)| *e == key) {
                Some((_, frame)) => frame.clone(),
                None => {
                    let name = key.map(|e| e.render(&message.topic));
                    let frame = sse::encode_event(name.as_deref(), &message.payload);
                    frames.push((key, frame.clone()));
                    frame
                }
            };
            member.queue.push(frame, &self.stats);
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let retired = {
            let mut topics = lock(&self.hub.topics);
            let mut members = lock(&self.topic.members);
            members.by_id.remove(&self.id);
            if !members.by_id.is_empty() {
                return;
            }
            drop(members);
            if topics
                .get(&self.topic.key)
                .is_some_and(|t| Arc::ptr_eq(t, &self.topic))
            {
                topics.remove(&self.topic.key);
            }
            self.topic.retired.store(true, Ordering::Release);
            lock(&self.topic.subscription).take()
        };
        if retired.is_some() {
            tracing::debug!(broker = self.topic.key.0, filter = %self.topic.key.1, "broker subscription closed");
        }
        // `retired` (the broker subscription) is dropped here, outside every lock.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overflow;
    use crate::stream::Next;
    use sluice_memory::MemoryBridge;

    #[tokio::test]
    async fn shares_one_subscription_and_encodes_once() {
        let memory = Arc::new(MemoryBridge::new());
        let hub = Hub::new(vec![memory.clone()]);
        let a = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let b = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let ma = hub
            .join(0, "t/1".into(), None, a.clone())
            .await
            .expect("join");
        let mb = hub
            .join(0, "t/1".into(), None, b.clone())
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
            async move { hub.join(0, "t".into(), None, first).await.map(drop) }
        });
        // Wait until the creator is inside subscribe, then join the same topic.
        while hub.topic_count() == 0 {
            tokio::task::yield_now().await;
        }
        let second = Arc::new(StreamQueue::new(8, Overflow::Disconnect));
        let joined = hub.join(0, "t".into(), None, second.clone()).await;
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
