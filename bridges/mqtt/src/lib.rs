//! The MQTT bridge: one rumqttc (MQTT 5) connection per broker, one subscription per topic filter.
//!
//! Every filter carries an MQTT 5 subscription identifier, so a message that matches several
//! overlapping filters is routed by the broker's own match list rather than re-matched (and possibly
//! duplicated) here. The event loop runs in its own task and only calls non-blocking sinks; after a
//! connection error it waits with backoff, reconnects, and re-sends every live subscription.
//!
//! Nothing reaches the shared connection that the broker would refuse by dropping it: topics follow
//! the specification's UTF-8 rules (see `TopicSyntax::check_filter`) and every packet fits the
//! maximum packet size the broker announces. Should the broker still drop the connection again and
//! again right after sluice (re)connects, what sluice sent since its last stable connection is given
//! up (see [`Breaker`]) instead of being re-sent forever: pending publishes are dropped and counted,
//! and recent subscriptions fail, which closes their streams.
//!
//! A QoS 1 message comes again after a reconnect when sluice's acknowledgement of it was lost with
//! the connection (rumqttc acknowledges a message as soon as it reads it, so sluice had delivered it
//! already). Such a redelivery is recognised and dropped (see [`Redeliveries`]): each message gets
//! one replay id, once.
//!
//! The event loop keeps the bridge's status: a CONNACK means connected, any error not; every
//! PUBLISH received is counted once, however many filters it matched.

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{ConnAckProperties, Packet, Publish, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions, Request};
use sluice_bridge::{Bridge, BridgeError, BrokerStatus, Message, Sink, Subscription, TopicSyntax};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long the broker keeps a QoS 1 session (subscriptions and queued messages) after sluice
/// disconnects: long enough for a broker or network blip, short enough not to pile up after sluice
/// itself is gone.
const SESSION_EXPIRY_SECS: u32 = 300;

/// How many QoS 1 messages the broker may send before sluice acknowledges them (MQTT 5 receive
/// maximum). Announced rather than left to the broker (mosquitto would take 20, the protocol 65,535):
/// it bounds how many messages can come again after a reconnect, and so how many [`Redeliveries`]
/// must remember. Sluice acknowledges as soon as it reads, so the window only needs to cover the
/// round trip.
const RECEIVE_MAXIMUM: u16 = 1024;

/// How the MQTT bridge connects.
#[derive(Clone, Debug)]
pub struct MqttSettings {
    /// `mqtt://host:port` (port defaults to 1883).
    pub url: String,
    pub client_id: String,
    /// 0 or 1: the QoS of subscriptions and publishes.
    pub qos: u8,
}

/// The largest packet sluice accepts from the broker (it says so in CONNECT, so the broker does not
/// send larger ones).
const MAX_INCOMING_PACKET: u32 = 1024 * 1024;
/// The most an MQTT packet's remaining length can say.
const PROTOCOL_MAX_REMAINING: usize = 268_435_455;

/// An MQTT connection shared by every route that names this broker.
pub struct MqttBridge {
    client: AsyncClient,
    qos: QoS,
    filters: Arc<Filters>,
    shared: Arc<Shared>,
    event_loop: JoinHandle<()>,
}

/// What the broker announced in its last CONNACK, and what the event loop counts.
struct Shared {
    /// The broker's maximum packet size (0: it announced none).
    max_packet: AtomicU32,
    /// The highest QoS the broker takes (a client must not publish above it).
    max_qos: AtomicU8,
    /// Whether the broker supports subscription identifiers (a SUBSCRIBE with one is a protocol
    /// error otherwise).
    subscription_ids: AtomicBool,
    /// Publishes given up because the broker kept dropping the connection while they were pending.
    dropped_publishes: AtomicU64,
    /// Whether the current connection is up: set on CONNACK, cleared on any connection error.
    connected: AtomicBool,
    /// CONNACKs after the first one.
    reconnects: AtomicU64,
    /// PUBLISH packets received (one per message, however many filters it matched).
    messages: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            max_packet: AtomicU32::new(0),
            max_qos: AtomicU8::new(2),
            subscription_ids: AtomicBool::new(true),
            dropped_publishes: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            messages: AtomicU64::new(0),
        }
    }
}

impl Shared {
    /// Keeps what a CONNACK announces; a property left out means the protocol's default.
    fn connected(&self, properties: Option<&ConnAckProperties>) {
        let max_packet = properties.and_then(|p| p.max_packet_size).unwrap_or(0);
        let max_qos = properties.and_then(|p| p.max_qos).unwrap_or(2);
        let ids = properties
            .and_then(|p| p.subscription_identifiers_available)
            .is_none_or(|available| available != 0);
        self.max_packet.store(max_packet, Ordering::Relaxed);
        self.max_qos.store(max_qos, Ordering::Relaxed);
        self.subscription_ids.store(ids, Ordering::Relaxed);
    }

    /// `qos`, or the broker's maximum when that is lower.
    fn qos(&self, qos: QoS) -> QoS {
        match (self.max_qos.load(Ordering::Relaxed), qos) {
            (0, _) => QoS::AtMostOnce,
            (1, QoS::ExactlyOnce) => QoS::AtLeastOnce,
            _ => qos,
        }
    }
}

/// The live filters by subscription identifier.
#[derive(Default)]
struct Filters {
    inner: Mutex<FilterTable>,
    /// How many filters (broker subscriptions) the table holds, so a status read takes no lock.
    held: AtomicU64,
}

/// One broker subscription per distinct filter: MQTT keeps one subscription per filter and client
/// (a second SUBSCRIBE to the same filter replaces the first), so subscribers of the same filter
/// (several routes) share it.
#[derive(Default)]
struct FilterTable {
    next_id: usize,
    next_sink: u64,
    by_id: HashMap<usize, Filter>,
    by_filter: HashMap<String, usize>,
}

struct Filter {
    filter: String,
    /// Every subscriber of this filter, by a token of its own.
    sinks: Vec<(u64, Sink)>,
    /// When it was subscribed, to tell recent filters from proven ones (see [`Breaker`]).
    since: Instant,
}

impl Filters {
    fn table(&self) -> MutexGuard<'_, FilterTable> {
        sluice_bridge::lock(&self.inner)
    }

    /// Records how many filters `table` (this one's, locked) holds; called wherever a filter is
    /// added or removed, under the same lock, so the count cannot drift from the table.
    fn count(&self, table: &FilterTable) {
        self.held.store(table.by_id.len() as u64, Ordering::Relaxed);
    }

    /// Every subscriber of every filter.
    fn all_sinks(&self) -> Vec<Sink> {
        self.table()
            .by_id
            .values()
            .flat_map(|f| f.sinks.iter().map(|(_, sink)| sink.clone()))
            .collect()
    }
}

/// Parses `mqtt://host[:port]` into host and port.
fn parse_url(url: &str) -> Result<(String, u16), BridgeError> {
    let bad = |why: &str| BridgeError::unavailable_says(format!("invalid mqtt url {url:?}: {why}"));
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
            .set_max_packet_size(Some(MAX_INCOMING_PACKET))
            .set_receive_maximum(Some(RECEIVE_MAXIMUM));
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
        let shared = Arc::new(Shared::default());
        let event_loop = tokio::spawn(run_event_loop(
            Connection {
                broker: name.to_owned(),
                url: settings.url.clone(),
                client: client.clone(),
                filters: filters.clone(),
                shared: shared.clone(),
                qos,
            },
            event_loop,
        ));
        Ok(Self {
            client,
            qos,
            filters,
            shared,
            event_loop,
        })
    }

    /// Publishes given up because the broker kept dropping the connection while they were pending.
    pub fn dropped_publishes(&self) -> u64 {
        self.shared.dropped_publishes.load(Ordering::Relaxed)
    }

    /// Checks that a packet of `len` bytes fits what the broker takes, or returns the limit.
    fn check_packet(&self, len: usize) -> Result<(), usize> {
        let announced = self.shared.max_packet.load(Ordering::Relaxed) as usize;
        let limit = if announced == 0 {
            PROTOCOL_MAX_REMAINING
        } else {
            announced
        };
        if len > limit {
            return Err(limit);
        }
        Ok(())
    }
}

/// The length of an MQTT variable-length integer.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The size of a PUBLISH packet as sluice sends it (MQTT 5, no properties).
fn publish_packet_len(topic: usize, payload: usize, qos: QoS) -> usize {
    let packet_id = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + topic + packet_id + 1 + payload;
    1 + varint_len(remaining) + remaining
}

/// The size of a SUBSCRIBE packet for one filter with subscription identifier `id`.
fn subscribe_packet_len(filter: usize, id: usize) -> usize {
    let properties = 1 + varint_len(id);
    let remaining = 2 + varint_len(properties) + properties + 2 + filter + 1;
    1 + varint_len(remaining) + remaining
}

impl Drop for MqttBridge {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

fn subscribe_request(client: &AsyncClient, shared: &Shared, filter: &str, id: usize, qos: QoS) {
    let properties = SubscribeProperties {
        // Without identifiers, `deliver` matches the filters itself.
        id: shared
            .subscription_ids
            .load(Ordering::Relaxed)
            .then_some(id),
        user_properties: Vec::new(),
    };
    let qos = shared.qos(qos);
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

/// Recognises a QoS 1 message that the broker sends again, after a reconnect, because sluice's
/// acknowledgement did not reach it. rumqttc acknowledges a message as soon as it reads it and sluice
/// delivers it at once; when the connection drops before that PUBACK reaches the broker (a broker
/// that hangs and then drops sluice for its keep-alive before reading what sluice sent; a network
/// cut), the resumed session sends the message again with DUP set and the same packet id. Without
/// this it would reach the streams a second time, under a second replay id.
///
/// A DUP publish is a repeat when the latest QoS 1 message sluice received with that packet id has
/// the same topic and payload. A broker reuses a packet id only once the previous message with it was
/// acknowledged, so a newer message with that id replaces the entry, and a DUP=0 publish is always
/// delivered. A DUP publish that matches nothing is one sluice never received (it was lost with the
/// connection): it is delivered. The one ambiguity is a broker that reuses a packet id at once for
/// a message identical in topic and payload, lost as the connection dropped: it is taken for a
/// repeat. (mosquitto counts packet ids up: it reuses one after 65,535 other messages.)
struct Redeliveries {
    /// (packet id, fingerprint of topic and payload) of the latest QoS 1 messages, oldest first.
    recent: VecDeque<(u16, u64)>,
    /// Keyed per process, so that nobody who publishes can aim for a collision.
    hasher: RandomState,
}

impl Redeliveries {
    /// The broker holds at most [`RECEIVE_MAXIMUM`] unacknowledged messages, and a repeat is one of
    /// them, so it is among the latest messages received; twice that covers the messages received
    /// again in between when reconnects follow each other.
    const WINDOW: usize = 2 * RECEIVE_MAXIMUM as usize;

    fn new() -> Self {
        Self {
            recent: VecDeque::new(),
            hasher: RandomState::new(),
        }
    }

    /// Records a received publish; true when it is a repeat of one already delivered.
    fn is_repeat(&mut self, publish: &Publish) -> bool {
        // QoS 0 is never sent again; sluice subscribes at QoS 1 at most.
        if publish.qos != QoS::AtLeastOnce {
            return false;
        }
        let fingerprint = self
            .hasher
            .hash_one((publish.topic.as_ref(), publish.payload.as_ref()));
        let repeat = publish.dup
            && self
                .recent
                .iter()
                .rev()
                .find(|(pkid, _)| *pkid == publish.pkid)
                .is_some_and(|(_, seen)| *seen == fingerprint);
        if self.recent.len() == Self::WINDOW {
            self.recent.pop_front();
        }
        // A repeat is recorded again: it is unacknowledged again until this connection's PUBACK
        // arrives.
        self.recent.push_back((publish.pkid, fingerprint));
        repeat
    }

    /// The broker did not keep the session: it sends nothing again.
    fn session_lost(&mut self) {
        self.recent.clear();
    }
}

/// What the event loop task works with.
struct Connection {
    broker: String,
    url: String,
    client: AsyncClient,
    filters: Arc<Filters>,
    shared: Arc<Shared>,
    qos: QoS,
}

/// Breaks the loop in which the broker drops the connection for something sluice keeps sending: a
/// pending QoS 1 publish is re-sent on every reconnect (the session requires it), and every live
/// filter is subscribed again. When the broker drops the connection [`Breaker::STREAK`] times in a
/// row within [`Breaker::QUICK`] of accepting it, what sluice sent since the start of its last
/// connection that lasted longer is given up: filters that were live through a longer connection
/// are proven, so the culprit is among the rest.
struct Breaker {
    /// When the current connection was accepted (its CONNACK).
    connected_at: Option<Instant>,
    /// When the last connection that outlived `QUICK` was accepted.
    last_stable: Option<Instant>,
    /// Connections in a row that the broker dropped within `QUICK`.
    quick_drops: u32,
}

impl Breaker {
    const QUICK: Duration = Duration::from_secs(2);
    const STREAK: u32 = 3;

    /// Records a lost connection; true when the streak calls for giving things up.
    fn lost(&mut self) -> bool {
        let Some(connected_at) = self.connected_at.take() else {
            // Never accepted: the broker is down or refuses sluice; nothing was sent.
            return false;
        };
        if connected_at.elapsed() >= Self::QUICK {
            self.last_stable = Some(connected_at);
            self.quick_drops = 0;
            return false;
        }
        self.quick_drops += 1;
        if self.quick_drops >= Self::STREAK {
            self.quick_drops = 0;
            return true;
        }
        false
    }
}

async fn run_event_loop(conn: Connection, mut event_loop: EventLoop) {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let Connection {
        broker, url, qos, ..
    } = &conn;
    let mut backoff = MIN_BACKOFF;
    let mut warned = false;
    // Whether a connection was made before (a CONNACK after it is a reconnection).
    let mut connected_before = false;
    let mut breaker = Breaker {
        connected_at: None,
        last_stable: None,
        quick_drops: 0,
    };
    let mut redeliveries = Redeliveries::new();
    // Whether this connection dropped a redelivery yet: one log line per reconnect, not per message.
    let mut dropped_repeat = false;
    loop {
        match event_loop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                tracing::info!(%broker, %url, "mqtt connected");
                breaker.connected_at = Some(Instant::now());
                warned = false;
                backoff = MIN_BACKOFF;
                conn.shared.connected(connack.properties.as_ref());
                if !connack.session_present {
                    redeliveries.session_lost();
                }
                let reconnected = std::mem::replace(&mut connected_before, true);
                if reconnected {
                    conn.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                // Released after the reconnect count, so a status that reads connected reads the
                // count of this connection too.
                conn.shared.connected.store(true, Ordering::Release);
                // Without a session kept for it (QoS 0, or a broker that lost it), what was published
                // while sluice was away is gone: tell every stream.
                if reconnected && !connack.session_present {
                    for sink in conn.filters.all_sinks() {
                        sink.interrupted(sluice_bridge::Interruption::Disconnected);
                    }
                }
                dropped_repeat = false;
                if conn.shared.qos(*qos) != *qos {
                    tracing::warn!(%broker, "the mqtt broker takes QoS 0 only: publishing and subscribing at QoS 0");
                }
                // A clean session starts with no subscriptions, and a persistent one may have been lost
                // with a broker restart: send every live filter again.
                let live: Vec<(usize, String)> = conn
                    .filters
                    .table()
                    .by_id
                    .iter()
                    .map(|(id, f)| (*id, f.filter.clone()))
                    .collect();
                for (id, filter) in live {
                    subscribe_request(&conn.client, &conn.shared, &filter, id, *qos);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // Counted as received, also when dropped below as a repeat: the count is of what
                // the broker sent.
                conn.shared.messages.fetch_add(1, Ordering::Relaxed);
                if redeliveries.is_repeat(&publish) {
                    if !dropped_repeat {
                        dropped_repeat = true;
                        tracing::info!(%broker, "the mqtt broker sends again messages whose acknowledgements were lost with the connection; sluice drops those it delivered already");
                    }
                } else {
                    deliver(&conn.filters, publish);
                }
            }
            Ok(_) => {}
            Err(e) => {
                // Every failed poll ends the connection (rumqttc reconnects on the next one); a
                // DISCONNECT from the broker comes here too.
                conn.shared.connected.store(false, Ordering::Release);
                let was_connected = breaker.connected_at.is_some();
                if was_connected || !warned {
                    tracing::warn!(%broker, %url, error = %e, "mqtt connection lost; reconnecting");
                    warned = true;
                } else {
                    tracing::debug!(%broker, error = %e, "mqtt reconnect failed");
                }
                if breaker.lost() {
                    give_up_recent(&conn, &mut event_loop, breaker.last_stable);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The broker keeps dropping the connection right after accepting it: drop the publishes waiting to be
/// re-sent and fail the filters subscribed since the last stable connection (`since`), so that
/// whatever the broker refuses is not sent again.
fn give_up_recent(conn: &Connection, event_loop: &mut EventLoop, since: Option<Instant>) {
    let before = event_loop.pending.len();
    event_loop
        .pending
        .retain(|request| !matches!(request, Request::Publish(_) | Request::Subscribe(_)));
    let dropped = before - event_loop.pending.len();
    let failed: Vec<(String, Sink)> = {
        let mut table = conn.filters.table();
        let recent: Vec<usize> = table
            .by_id
            .iter()
            .filter(|(_, f)| since.is_none_or(|stable| f.since >= stable))
            .map(|(id, _)| *id)
            .collect();
        let mut failed = Vec::new();
        for id in recent {
            if let Some(f) = table.by_id.remove(&id) {
                table.by_filter.remove(&f.filter);
                failed.extend(
                    f.sinks
                        .into_iter()
                        .map(|(_, sink)| (f.filter.clone(), sink)),
                );
            }
        }
        conn.filters.count(&table);
        failed
    };
    conn.shared
        .dropped_publishes
        .fetch_add(dropped as u64, Ordering::Relaxed);
    tracing::error!(
        broker = %conn.broker,
        dropped_requests = dropped,
        failed_subscriptions = failed.len(),
        "mqtt broker keeps closing the connection right after accepting it; giving up what sluice \
         sent since its last stable connection (pending publishes and recent subscriptions)"
    );
    // Outside the table's lock: a sink drops its subscription, which takes it.
    for (filter, sink) in failed {
        tracing::warn!(broker = %conn.broker, %filter, "mqtt subscription given up");
        sink.failed("the broker kept closing the connection after it was subscribed");
    }
}

fn deliver(filters: &Filters, publish: Publish) {
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
                .filter(|f| TopicSyntax::Mqtt.matches(&f.filter, topic))
                .flat_map(|f| f.sinks.iter().map(|(_, sink)| sink.clone()))
                .collect()
        } else {
            ids.iter()
                .filter_map(|id| table.by_id.get(id))
                .flat_map(|f| f.sinks.iter().map(|(_, sink)| sink.clone()))
                .collect()
        }
    };
    for sink in sinks {
        sink.message(message.clone());
    }
}

/// Removes its subscriber when dropped, and the filter with an UNSUBSCRIBE when it was the last.
struct Unsubscribe {
    client: AsyncClient,
    filters: Arc<Filters>,
    id: usize,
    token: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let filter = {
            let mut table = self.filters.table();
            let Some(entry) = table.by_id.get_mut(&self.id) else {
                return;
            };
            entry.sinks.retain(|(token, _)| *token != self.token);
            if !entry.sinks.is_empty() {
                return;
            }
            let Some(Filter { filter, .. }) = table.by_id.remove(&self.id) else {
                return;
            };
            table.by_filter.remove(&filter);
            self.filters.count(&table);
            filter
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
        // The largest identifier gives the largest packet.
        self.check_packet(subscribe_packet_len(filter.len(), PROTOCOL_MAX_REMAINING))
            .map_err(|limit| {
                BridgeError::invalid_topic(
                    filter,
                    format!("too long for the broker's maximum packet size of {limit} bytes"),
                )
            })?;
        let (id, token) = {
            let mut table = self.filters.table();
            table.next_sink += 1;
            let token = table.next_sink;
            let existing = table.by_filter.get(filter).copied();
            let existing = existing.and_then(|id| Some((id, table.by_id.get_mut(&id)?)));
            let id = match existing {
                Some((id, entry)) => {
                    entry.sinks.push((token, sink));
                    id
                }
                None => {
                    // Subscription identifiers run from 1 to 268,435,455.
                    table.next_id = table.next_id % 268_435_455 + 1;
                    let id = table.next_id;
                    let entry = Filter {
                        filter: filter.to_owned(),
                        sinks: vec![(token, sink)],
                        since: Instant::now(),
                    };
                    table.by_id.insert(id, entry);
                    table.by_filter.insert(filter.to_owned(), id);
                    self.filters.count(&table);
                    id
                }
            };
            (id, token)
        };
        // Sent for a shared filter too: the broker replaces its subscription with the same one and
        // sends the retained messages again, which a new (`retained = true`) subscriber wants.
        subscribe_request(&self.client, &self.shared, filter, id, self.qos);
        Ok(Subscription::new(Unsubscribe {
            client: self.client.clone(),
            filters: self.filters.clone(),
            id,
            token,
        }))
    }

    fn status(&self) -> BrokerStatus {
        // Acquired before the counts: see where the event loop releases it.
        let connected = self.shared.connected.load(Ordering::Acquire);
        BrokerStatus {
            connected,
            reconnects: self.shared.reconnects.load(Ordering::Relaxed),
            messages: self.shared.messages.load(Ordering::Relaxed),
            subscriptions: self.filters.held.load(Ordering::Relaxed),
        }
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BridgeError> {
        TopicSyntax::Mqtt.validate_topic(topic)?;
        let qos = self.shared.qos(self.qos);
        let packet = publish_packet_len(topic.len(), payload.len(), qos);
        self.check_packet(packet)
            .map_err(|limit| BridgeError::PayloadTooLarge {
                limit: limit.saturating_sub(packet - payload.len()),
            })?;
        self.client
            .publish_bytes(topic.to_owned(), qos, false, payload)
            .await
            .map_err(|e| BridgeError::broker("mqtt publish", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_sizes_match_what_rumqttc_writes() {
        use rumqttc::v5::mqttbytes::v5::{Filter, Publish, Subscribe};
        for topic in [1, 3, 200, 20_000] {
            for payload in [0, 2, 120, 124, 20_000, 3_000_000] {
                for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                    let mut packet = Publish::new("t".repeat(topic), qos, vec![0u8; payload], None);
                    packet.pkid = 1;
                    assert_eq!(
                        publish_packet_len(topic, payload, qos),
                        Packet::Publish(packet).size(),
                        "{topic} {payload} {qos:?}"
                    );
                }
            }
        }
        for (filter, id) in [(1, 1), (100, 200), (20_000, 268_435_455)] {
            let properties = SubscribeProperties {
                id: Some(id),
                user_properties: Vec::new(),
            };
            let mut packet = Subscribe::new(
                Filter::new("f".repeat(filter), QoS::AtLeastOnce),
                Some(properties),
            );
            packet.pkid = 1;
            assert_eq!(
                subscribe_packet_len(filter, id),
                Packet::Subscribe(packet).size(),
                "{filter} {id}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_trips_on_a_streak_of_quick_drops_only() {
        let mut breaker = Breaker {
            connected_at: None,
            last_stable: None,
            quick_drops: 0,
        };
        assert!(!breaker.lost(), "a failed connect is no drop");
        breaker.connected_at = Some(Instant::now());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!breaker.lost(), "a long connection is stable");
        let stable = breaker.last_stable;
        assert!(stable.is_some());
        for _ in 0..2 {
            breaker.connected_at = Some(Instant::now());
            tokio::time::advance(Duration::from_millis(100)).await;
            assert!(!breaker.lost());
        }
        breaker.connected_at = Some(Instant::now());
        assert!(
            breaker.lost(),
            "the third quick drop in a row after the stable one trips"
        );
        assert_eq!(breaker.last_stable, stable);
    }

    fn publish(pkid: u16, dup: bool, topic: &str, payload: &str) -> Publish {
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_owned(), None);
        publish.pkid = pkid;
        publish.dup = dup;
        publish
    }

    #[test]
    fn a_redelivery_of_a_delivered_message_is_a_repeat_and_nothing_else_is() {
        let mut seen = Redeliveries::new();
        assert!(!seen.is_repeat(&publish(7, false, "t", "a")));
        assert!(
            seen.is_repeat(&publish(7, true, "t", "a")),
            "sent again after a lost PUBACK"
        );
        assert!(
            seen.is_repeat(&publish(7, true, "t", "a")),
            "and again after one more reconnect"
        );
        assert!(
            !seen.is_repeat(&publish(7, false, "t", "a")),
            "DUP=0: a new message that reuses the packet id"
        );
        assert!(
            !seen.is_repeat(&publish(8, true, "t", "a")),
            "never received: lost with the connection"
        );
        assert!(
            !seen.is_repeat(&publish(7, true, "t", "b")),
            "other payload"
        );
        assert!(!seen.is_repeat(&publish(7, true, "u", "b")), "other topic");
        // The latest message with a packet id is the one a redelivery can repeat.
        assert!(!seen.is_repeat(&publish(9, false, "t", "old")));
        assert!(!seen.is_repeat(&publish(9, false, "t", "new")));
        assert!(seen.is_repeat(&publish(9, true, "t", "new")));
        assert!(!seen.is_repeat(&publish(9, true, "t", "old")));

        let mut qos0 = publish(10, true, "t", "a");
        qos0.qos = QoS::AtMostOnce;
        assert!(!seen.is_repeat(&qos0));
        assert!(!seen.is_repeat(&qos0), "QoS 0 is never a repeat");

        assert!(!seen.is_repeat(&publish(11, false, "t", "a")));
        seen.session_lost();
        assert!(
            !seen.is_repeat(&publish(11, true, "t", "a")),
            "a new session repeats nothing"
        );
    }

    #[test]
    fn redeliveries_remember_a_bounded_window() {
        let mut seen = Redeliveries::new();
        let total = Redeliveries::WINDOW as u16 + 10;
        for pkid in 1..=total {
            assert!(!seen.is_repeat(&publish(pkid, false, "t", "x")));
        }
        assert_eq!(seen.recent.len(), Redeliveries::WINDOW);
        assert!(!seen.is_repeat(&publish(1, true, "t", "x")), "forgotten");
        assert!(seen.is_repeat(&publish(total, true, "t", "x")));
    }

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
