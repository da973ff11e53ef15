//! For the bridge crates' own tests: a [`Sink`] that records what a bridge delivers, and the checks
//! both bridges share.

use crate::listen::{self, Listener, DEADLINE};
use bytes::Bytes;
use sluice_bridge::{Bridge, BridgeError, BrokerStatus, Delivery, Message, Sink};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What a bridge delivered to one subscription, in order.
pub struct Deliveries {
    received: mpsc::UnboundedReceiver<Delivery>,
}

/// A sink to subscribe with, and what it receives.
pub fn recording_sink() -> (Sink, Deliveries) {
    let (tx, received) = mpsc::unbounded_channel();
    let sink = Sink::new(move |delivery| {
        let _ = tx.send(delivery);
    });
    (sink, Deliveries { received })
}

/// The delivery of a live message of `data` on `topic`.
pub fn message(topic: &str, data: &str) -> Delivery {
    Delivery::Message(Message::new(
        Arc::from(topic),
        Bytes::copy_from_slice(data.as_bytes()),
    ))
}

/// The payload of a message delivery, as text (`None` for anything else or binary).
pub fn payload(delivery: &Delivery) -> Option<&str> {
    match delivery {
        Delivery::Message(message) => std::str::from_utf8(&message.payload).ok(),
        _ => None,
    }
}

/// Publishes `data` on `topic` and expects the bridge to take it.
pub async fn publish(bridge: &impl Bridge, topic: &str, data: impl Into<Bytes>) {
    bridge.publish(topic, data.into()).await.expect("publish");
}

/// Asserts that `bridge` refuses every filter of `filters` and every topic of `topics` as
/// [`BridgeError::InvalidTopic`], before anything reaches the broker.
pub async fn assert_invalid_topics(bridge: &impl Bridge, filters: &[&str], topics: &[&str]) {
    for filter in filters {
        let refused = bridge.subscribe(filter, recording_sink().0).await;
        assert!(
            matches!(refused, Err(BridgeError::InvalidTopic { .. })),
            "subscribe {filter:.40?}: {refused:?}"
        );
    }
    for topic in topics {
        let refused = bridge.publish(topic, Bytes::from_static(b"x")).await;
        assert!(
            matches!(refused, Err(BridgeError::InvalidTopic { .. })),
            "publish {topic:.40?}: {refused:?}"
        );
    }
}

/// Polls `bridge`'s status until `done` holds, and returns that status; fails the test, saying
/// `what` was awaited, after [`DEADLINE`]. A status changes in the bridge's own tasks (a broker
/// that went away, a reconnection), so there is nothing to await but the status itself.
pub async fn status_until(
    bridge: &impl Bridge,
    what: &str,
    done: impl Fn(&BrokerStatus) -> bool,
) -> BrokerStatus {
    let start = Instant::now();
    loop {
        let status = bridge.status();
        if done(&status) {
            return status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "not {what} within {DEADLINE:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Listener for Deliveries {
    type Item = Delivery;

    async fn next(&mut self) -> Delivery {
        match tokio::time::timeout(DEADLINE, self.received.recv()).await {
            Ok(Some(delivery)) => delivery,
            Ok(None) => panic!("the subscription's sink was dropped"),
            Err(_) => panic!("no delivery within {DEADLINE:?}"),
        }
    }

    async fn next_within(&mut self, wait: Duration) -> Option<Delivery> {
        tokio::time::timeout(wait, self.received.recv())
            .await
            .ok()
            .flatten()
    }

    fn data(item: &Delivery) -> Option<&str> {
        payload(item)
    }
}

impl Deliveries {
    /// The next delivery; fails the test after [`DEADLINE`] or if the subscription is gone.
    pub async fn next(&mut self) -> Delivery {
        Listener::next(self).await
    }

    /// See [`listen::read_until`].
    pub async fn read_until(&mut self, data: &str) -> Vec<Delivery> {
        listen::read_until(self, data).await
    }

    /// See [`listen::publish_until_received`].
    pub async fn publish_until_received<F, Fut>(
        &mut self,
        prefix: &str,
        publish: F,
    ) -> Vec<Delivery>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        listen::publish_until_received(self, prefix, publish).await
    }

    /// See [`listen::settle`].
    pub async fn settle<F, Fut>(&mut self, publish: F) -> Vec<Delivery>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        listen::settle(self, publish).await
    }

    /// Every delivery until the bridge drops the sink (the subscription ended); fails the test if
    /// that takes longer than [`DEADLINE`].
    pub async fn until_dropped(&mut self) -> Vec<Delivery> {
        let mut read = Vec::new();
        loop {
            match tokio::time::timeout(DEADLINE, self.received.recv()).await {
                Ok(Some(delivery)) => read.push(delivery),
                Ok(None) => return read,
                Err(_) => panic!("the sink was still held after {DEADLINE:?}"),
            }
        }
    }
}
