//! An in-process broker with MQTT topic syntax: the embedded default and hermetic tests.

use async_trait::async_trait;
use bytes::Bytes;
use sluice_bridge::{Bridge, BridgeError, BrokerStatus, Message, Sink, Subscription, TopicSyntax};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The broker: a list of live filters, each with its sink.
#[derive(Default)]
pub struct MemoryBridge {
    inner: Arc<Registry>,
}

#[derive(Default)]
struct Registry {
    next_id: Mutex<u64>,
    subscriptions: Mutex<Vec<(u64, String, Sink)>>,
    /// How many subscriptions the list holds, kept beside it so a status read takes no lock.
    held: AtomicU64,
    /// Messages handed to subscriptions (one per matching subscription per publish).
    delivered: AtomicU64,
}

impl Registry {
    fn subscriptions(&self) -> MutexGuard<'_, Vec<(u64, String, Sink)>> {
        sluice_bridge::lock(&self.subscriptions)
    }

    /// Changes the list under its lock and records its new length, so `held` cannot drift from it.
    fn change(&self, f: impl FnOnce(&mut Vec<(u64, String, Sink)>)) {
        let mut subscriptions = self.subscriptions();
        f(&mut subscriptions);
        self.held
            .store(subscriptions.len() as u64, Ordering::Relaxed);
    }
}

/// Removes its subscription from the registry when dropped.
struct Unsubscribe {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.registry
            .change(|subscriptions| subscriptions.retain(|(id, _, _)| *id != self.id));
    }
}

impl MemoryBridge {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many subscriptions are live (for tests and diagnostics).
    pub fn subscription_count(&self) -> usize {
        self.inner.subscriptions().len()
    }
}

#[async_trait]
impl Bridge for MemoryBridge {
    fn syntax(&self) -> TopicSyntax {
        TopicSyntax::Mqtt
    }

    async fn subscribe(&self, filter: &str, sink: Sink) -> Result<Subscription, BridgeError> {
        TopicSyntax::Mqtt.validate_filter(filter)?;
        let id = {
            let mut next = sluice_bridge::lock(&self.inner.next_id);
            *next += 1;
            *next
        };
        self.inner
            .change(|subscriptions| subscriptions.push((id, filter.to_owned(), sink)));
        Ok(Subscription::new(Unsubscribe {
            registry: self.inner.clone(),
            id,
        }))
    }

    /// In process: always connected, never reconnected.
    fn status(&self) -> BrokerStatus {
        BrokerStatus {
            connected: true,
            reconnects: 0,
            messages: self.inner.delivered.load(Ordering::Relaxed),
            subscriptions: self.inner.held.load(Ordering::Relaxed),
        }
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BridgeError> {
        TopicSyntax::Mqtt.validate_topic(topic)?;
        let topic: Arc<str> = Arc::from(topic);
        // Collect the sinks first: a sink may subscribe or unsubscribe, which takes the lock.
        let sinks: Vec<Sink> = self
            .inner
            .subscriptions()
            .iter()
            .filter(|(_, filter, _)| TopicSyntax::Mqtt.matches(filter, &topic))
            .map(|(_, _, sink)| sink.clone())
            .collect();
        // One add per publish, not per subscriber.
        self.inner
            .delivered
            .fetch_add(sinks.len() as u64, Ordering::Relaxed);
        for sink in sinks {
            sink.message(Message::new(topic.clone(), payload.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_to_matching_filters_until_dropped() {
        let bridge = MemoryBridge::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let sink = Sink::new(move |d| {
            if let sluice_bridge::Delivery::Message(m) = d {
                log.lock().expect("lock").push(m.topic);
            }
        });
        let sub = bridge.subscribe("a/+", sink).await.expect("subscribe");
        bridge
            .publish("a/b", Bytes::from_static(b"x"))
            .await
            .expect("publish");
        bridge
            .publish("c/d", Bytes::from_static(b"x"))
            .await
            .expect("publish");
        drop(sub);
        bridge
            .publish("a/c", Bytes::from_static(b"x"))
            .await
            .expect("publish");
        assert_eq!(*seen.lock().expect("lock"), vec![Arc::from("a/b")]);
        assert_eq!(bridge.subscription_count(), 0);
    }

    #[tokio::test]
    async fn status_counts_deliveries_and_the_subscriptions_held() {
        let bridge = MemoryBridge::new();
        let idle = BrokerStatus {
            connected: true,
            ..BrokerStatus::default()
        };
        assert_eq!(bridge.status(), idle);
        let all = bridge
            .subscribe("s/#", Sink::new(|_| {}))
            .await
            .expect("subscribe");
        let one = bridge
            .subscribe("s/a", Sink::new(|_| {}))
            .await
            .expect("subscribe");
        assert_eq!(bridge.status().subscriptions, 2);
        for topic in ["s/a", "s/b", "other"] {
            bridge
                .publish(topic, Bytes::from_static(b"x"))
                .await
                .expect("publish");
        }
        // s/a reached both subscriptions, s/b one, other none.
        assert_eq!(bridge.status().messages, 3);
        drop(one);
        assert_eq!(bridge.status().subscriptions, 1);
        drop(all);
        assert_eq!(
            bridge.status(),
            BrokerStatus {
                messages: 3,
                ..idle
            }
        );
    }
}
