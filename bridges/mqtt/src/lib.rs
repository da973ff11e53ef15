//! The MQTT bridge: one rumqttc (MQTT 5) connection per broker, one subscription per topic filter.
//!
//! Every filter carries an MQTT 5 subscription identifier, so a message that matches several
//! overlapping filters is routed by the broker's own match list rather than re-matched (and possibly
//! duplicated) here. The event loop runs in its own task and only calls non-blocking sinks; after a
//! connection error it waits with backoff, reconnects, and re-sends every live subscription.

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use sluice_bridge::{Bridge, BridgeError, Message, Sink, Subscription, TopicSyntax};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long the broker keeps a QoS 1 session (subscriptions and queued messages) after sluice
/// disconnects: long enough for a broker or network blip, short enough not to pile up after sluice
/// itself is gone.
const SESSION_EXPIRY_SECS: u32 = 300;

/// How the MQTT bridge connects.
#[derive(Clone, Debug)]
pub struct MqttSettings {
    /// `mqtt://host:port` (port defaults to 1883).
    pub url: String,
    pub client_id: String,
    /// 0 or 1: the QoS of subscriptions and publishes.
    pub qos: u8,
}

/// An MQTT connection shared by every route that names this broker.
pub struct MqttBridge {
    client: AsyncClient,
    qos: QoS,
    filters: Arc<Filters>,
    event_loop: JoinHandle<()>,
}

/// The live filters by subscription identifier.
#[derive(Default)]
struct Filters {
    inner: Mutex<FilterTable>,
}

#[derive(Default)]
struct FilterTable {
    next_id: usize,
    by_id: HashMap<usize, (String, Sink)>,
}

impl Filters {
    fn table(&self) -> MutexGuard<'_, FilterTable> {
        // The table is consistent after every statement, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Parses `mqtt://host[:port]` into host and port.
fn parse_url(url: &str) -> Result<(String, u16), BridgeError> {
    let bad = |why: &str| BridgeError::Unavailable(format!("invalid mqtt url {url:?}: {why}"));
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if parsed.scheme() != "mqtt" && parsed.scheme() != "tcp" {
        return Err(bad("the scheme must be mqtt://"));
    }
    let host = parsed.host_str().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, parsed.port().unwrap_or(1883)))
}

impl MqttBridge {
    /// Starts the connection task and returns at once; a broker that is down is retried with backoff.
    pub fn connect(name: &str, settings: &MqttSettings) -> Result<Self, BridgeError> {
        let (host, port) = parse_url(&settings.url)?;
        let qos = match settings.qos {
            0 => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let mut options = MqttOptions::new(settings.client_id.clone(), host, port);
        options
            .set_keep_alive(Duration::from_secs(20))
            .set_max_packet_size(Some(1024 * 1024));
        if qos == QoS::AtLeastOnce {
            // A persistent session: the broker keeps the subscriptions and queues QoS 1 messages while
            // sluice is briefly away, and delivers them when it reconnects.
            options
                .set_clean_start(false)
                .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
        } else {
            options.set_clean_start(true);
        }
        let (client, event_loop) = AsyncClient::new(options, 1024);
        let filters = Arc::new(Filters::default());
        let event_loop = tokio::spawn(run_event_loop(
            name.to_owned(),
            settings.url.clone(),
            event_loop,
            client.clone(),
            filters.clone(),
            qos,
        ));
        Ok(Self {
            client,
            qos,
            filters,
            event_loop,
        })
    }
}

impl Drop for MqttBridge {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

fn subscribe_request(client: &AsyncClient, filter: &str, id: usize, qos: QoS) {
    let properties = SubscribeProperties {
        id: Some(id),
        user_properties: Vec::new(),
    };
    // Try synchronously first so requests keep their order with unsubscribes; only when the bounded
    // request channel is full, wait for room in a task rather than hold up the caller.
    if client
        .try_subscribe_with_properties(filter.to_owned(), qos, properties.clone())
        .is_ok()
    {
        return;
    }
    let client = client.clone();
    let filter = filter.to_owned();
    tokio::spawn(async move {
        if let Err(e) = client
            .subscribe_with_properties(filter.clone(), qos, properties)
            .await
        {
            tracing::warn!(%filter, error = %e, "mqtt subscribe request failed");
        }
    });
}

async fn run_event_loop(
    broker: String,
    url: String,
    mut event_loop: EventLoop,
    client: AsyncClient,
    filters: Arc<Filters>,
    qos: QoS,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = MIN_BACKOFF;
    let mut connected = false;
    let mut warned = false;
    loop {
        match event_loop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(%broker, %url, "mqtt connected");
                connected = true;
                warned = false;
                backoff = MIN_BACKOFF;
                // A clean session starts with no subscriptions, and a persistent one may have been lost
                // with a broker restart: send every live filter again.
                let live: Vec<(usize, String)> = filters
                    .table()
                    .by_id
                    .iter()
                    .map(|(id, (filter, _))| (*id, filter.clone()))
                    .collect();
                for (id, filter) in live {
                    subscribe_request(&client, &filter, id, qos);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => deliver(&filters, publish),
            Ok(_) => {}
            Err(e) => {
                if connected || !warned {
                    tracing::warn!(%broker, %url, error = %e, "mqtt connection lost; reconnecting");
                    warned = true;
                } else {
                    tracing::debug!(%broker, error = %e, "mqtt reconnect failed");
                }
                connected = false;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn deliver(filters: &Filters, publish: rumqttc::v5::mqttbytes::v5::Publish) {
    let Ok(topic) = std::str::from_utf8(&publish.topic) else {
        tracing::debug!("mqtt message with a non-UTF-8 topic ignored");
        return;
    };
    let message = Message {
        retained: publish.retain,
        ..Message::new(Arc::from(topic), publish.payload)
    };
    let ids = publish
        .properties
        .map(|p| p.subscription_identifiers)
        .unwrap_or_default();
    let sinks: Vec<Sink> = {
        let table = filters.table();
        if ids.is_empty() {
            // A broker that does not echo subscription identifiers: match the filters here.
            table
                .by_id
                .values()
                .filter(|(filter, _)| TopicSyntax::Mqtt.matches(filter, topic))
                .map(|(_, sink)| sink.clone())
                .collect()
        } else {
            ids.iter()
                .filter_map(|id| table.by_id.get(id).map(|(_, sink)| sink.clone()))
                .collect()
        }
    };
    for sink in sinks {
        sink(message.clone());
    }
}

/// Removes the filter and unsubscribes when the subscription is dropped.
struct Unsubscribe {
    client: AsyncClient,
    filters: Arc<Filters>,
    id: usize,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Some((filter, _)) = self.filters.table().by_id.remove(&self.id) else {
            return;
        };
        if self.client.try_unsubscribe(filter.clone()).is_err() {
            let client = self.client.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = client.unsubscribe(filter).await;
                });
            }
        }
    }
}

#[async_trait]
impl Bridge for MqttBridge {
    fn syntax(&self) -> TopicSyntax {
        TopicSyntax::Mqtt
    }

    async fn subscribe(&self, filter: &str, sink: Sink) -> Result<Subscription, BridgeError> {
        TopicSyntax::Mqtt.validate_filter(filter)?;
        let id = {
            let mut table = self.filters.table();
            // Subscription identifiers run from 1 to 268,435,455.
            table.next_id = table.next_id % 268_435_455 + 1;
            let id = table.next_id;
            table.by_id.insert(id, (filter.to_owned(), sink));
            id
        };
        subscribe_request(&self.client, filter, id, self.qos);
        Ok(Subscription::new(Unsubscribe {
            client: self.client.clone(),
            filters: self.filters.clone(),
            id,
        }))
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BridgeError> {
        TopicSyntax::Mqtt.validate_topic(topic)?;
        self.client
            .publish_bytes(topic.to_owned(), self.qos, false, payload)
            .await
            .map_err(|e| BridgeError::Broker(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").ok(),
            Some(("127.0.0.1".into(), 1884))
        );
        assert_eq!(
            parse_url("mqtt://localhost").ok(),
            Some(("localhost".into(), 1883))
        );
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("nonsense").is_err());
    }
}
