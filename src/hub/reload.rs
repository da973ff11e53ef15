//! What a configuration reload asks of the hub: ending the streams of a route it changed or removed,
//! and of tokens whose key it took away; the topics of every other route are left as they are.

use super::topic::{lock, Topic};
use super::{Hub, HubInner, RouteTopics};
use crate::auth::KeyId;
use crate::stream::Closed;
use sluice_bridge::Subscription;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Hub {
    /// Ends every stream of `route` (a reload changed or removed it): their queues close with
    /// [`Closed::Reload`], so each client gets a jittered `retry:` and reconnects to the new
    /// configuration. The route's topics leave the registry at once, with their broker subscriptions
    /// and replay rings, and never linger; a stream that still joins the route later is closed as it
    /// joins. Returns how many memberships were closed (a stream of several topics has one each).
    pub fn retire_route(&self, route: &RouteTopics) -> usize {
        route.retired.store(true, Ordering::SeqCst);
        let mut closed = 0;
        let subscriptions: Vec<Subscription> = {
            let mut topics = lock(&self.inner.topics);
            let retiring: Vec<Arc<Topic>> = topics
                .values()
                .filter(|t| t.key.route == route.route)
                .cloned()
                .collect();
            retiring
                .iter()
                .filter_map(|topic| {
                    topic.leave_registry(&mut topics);
                    for member in lock(&topic.members).by_id.values() {
                        member.queue.close(Closed::Reload);
                        closed += 1;
                    }
                    lock(&topic.subscription).take()
                })
                .collect()
        };
        // Dropped outside every lock: dropping a subscription may call into the bridge.
        drop(subscriptions);
        closed
    }

    /// Ends every stream whose token was verified by one of the keys in `gone` (a reload removed
    /// them), also those that join later, until a reload brings the key back (`current`). Returns
    /// how many memberships were closed.
    pub fn revoke_keys(&self, current: &[KeyId], gone: &[KeyId]) -> usize {
        let topics = lock(&self.inner.topics);
        {
            let mut revoked = lock(&self.inner.revoked_keys);
            revoked.retain(|key| !current.contains(key));
            revoked.extend(gone.iter().copied());
        }
        if gone.is_empty() {
            return 0;
        }
        let mut closed = 0;
        for topic in topics.values() {
            for member in lock(&topic.members).by_id.values() {
                if member.key.is_some_and(|key| gone.contains(&key)) {
                    member.queue.close(Closed::Reload);
                    closed += 1;
                }
            }
        }
        closed
    }
}

impl HubInner {
    /// Whether a stream joining `route` with a token verified by `key` belongs to a configuration a
    /// reload has replaced. Called under the registry lock.
    pub(super) fn outdated(&self, route: &RouteTopics, key: Option<KeyId>) -> bool {
        route.retired.load(Ordering::SeqCst)
            || key.is_some_and(|key| lock(&self.revoked_keys).contains(&key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Join;
    use crate::replay::{Budget, Retention};
    use crate::stream::{Next, Overflow, StreamQueue};
    use bytes::Bytes;
    use sluice_bridge::Bridge;
    use sluice_memory::MemoryBridge;
    use std::time::Duration;

    fn queue() -> Arc<StreamQueue> {
        Arc::new(StreamQueue::new(8, Overflow::Disconnect))
    }

    async fn closed(queue: &StreamQueue) -> Option<Closed> {
        let mut frames = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), queue.next(&mut frames)).await {
            Ok(Next::Closed(why)) => Some(why),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_retired_route_ends_its_streams_drops_its_topics_and_refuses_late_joins() {
        let memory = Arc::new(MemoryBridge::new());
        let hub = Hub::new();
        let replay = Retention::Replay {
            per_topic: 10,
            bytes: 1 << 20,
            linger: Duration::from_secs(60),
        };
        let retiring = Arc::new(RouteTopics {
            retention: replay,
            budget: Some(Budget::new(1 << 20)),
            ..RouteTopics::live(memory.clone())
        });
        let staying = Arc::new(RouteTopics::live(memory.clone()));
        let (a, b) = (queue(), queue());
        let ja = hub
            .join(Join::live(&retiring, "t"), a.clone())
            .await
            .expect("join");
        let jb = hub
            .join(Join::live(&staying, "t"), b.clone())
            .await
            .expect("join");
        assert_eq!(memory.subscription_count(), 2, "one per route");

        assert_eq!(hub.retire_route(&retiring), 1);
        assert_eq!(closed(&a).await, Some(Closed::Reload));
        assert_eq!(
            memory.subscription_count(),
            1,
            "the retired topic unsubscribed"
        );
        assert_eq!(hub.topic_count(), 1);
        drop(ja);
        assert_eq!(
            hub.topic_count(),
            1,
            "a retired replay topic does not linger"
        );

        // The other route's stream goes on receiving.
        memory
            .publish("t", Bytes::from_static(b"x"))
            .await
            .expect("publish");
        let mut frames = Vec::new();
        assert!(matches!(b.next(&mut frames).await, Next::Frames { .. }));
        assert_eq!(frames, [Bytes::from_static(b"data: x\n\n")]);

        // A request that matched the old configuration and joins now is closed at once.
        let late = queue();
        let jl = hub
            .join(Join::live(&retiring, "t"), late.clone())
            .await
            .expect("join");
        assert_eq!(closed(&late).await, Some(Closed::Reload));
        drop((jl, jb));
        assert_eq!(hub.topic_count(), 0);
    }

    #[tokio::test]
    async fn revoking_a_key_ends_its_streams_until_it_comes_back() {
        let memory = Arc::new(MemoryBridge::new());
        let hub = Hub::new();
        let route = Arc::new(RouteTopics::live(memory.clone()));
        let key = |secret: &[u8]| {
            let auth = crate::auth::AuthConfig {
                keys: vec![crate::auth::JwtKey::secret(secret)],
                cookie: "c".into(),
                query: "q".into(),
                audience: None,
                secret_env: None,
            };
            auth.key_ids()[0]
        };
        let (old, new) = (key(b"old"), key(b"new"));
        assert_ne!(old, new);
        let join = |key| Join {
            key,
            ..Join::live(&route, "t")
        };
        let (by_old, by_new, open) = (queue(), queue(), queue());
        let _m = (
            hub.join(join(Some(old)), by_old.clone())
                .await
                .expect("join"),
            hub.join(join(Some(new)), by_new.clone())
                .await
                .expect("join"),
            hub.join(join(None), open.clone()).await.expect("join"),
        );
        assert_eq!(hub.revoke_keys(&[new], &[old]), 1);
        assert_eq!(closed(&by_old).await, Some(Closed::Reload));
        memory
            .publish("t", Bytes::from_static(b"x"))
            .await
            .expect("publish");
        for kept in [&by_new, &open] {
            let mut frames = Vec::new();
            assert!(matches!(kept.next(&mut frames).await, Next::Frames { .. }));
        }

        let late = queue();
        let _l = hub.join(join(Some(old)), late.clone()).await.expect("join");
        assert_eq!(
            closed(&late).await,
            Some(Closed::Reload),
            "revoked for late joins too"
        );
        // A reload that brings the key back lets its tokens in again.
        assert_eq!(hub.revoke_keys(&[old, new], &[]), 0);
        let back = queue();
        let _b = hub.join(join(Some(old)), back.clone()).await.expect("join");
        assert!(back.is_empty() && back.try_next(&mut Vec::new()).is_none());
    }
}
