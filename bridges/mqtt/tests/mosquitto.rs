//! The MQTT bridge against a real mosquitto of the test's own: subscribe and publish round trips,
//! topics and payloads the broker would refuse, broker restarts with and without the session, and
//! the bridge's status (connection, reconnects, counts).

use bytes::Bytes;
use sluice_bridge::{Bridge, BridgeError, BrokerStatus, Delivery, Interruption, Subscription};
use sluice_mqtt::{MqttBridge, MqttSettings};
use sluice_testkit::bridge::{
    assert_invalid_topics, message, payload, publish, recording_sink, status_until, Deliveries,
};
use sluice_testkit::Mosquitto;
use std::sync::atomic::{AtomicU32, Ordering};

/// A bridge to `broker` at `qos` and a subscription to `filter`, returned once it is live: MQTT
/// subscribes in the background, so probes are published on `topic` until one comes back, and
/// read away, so what is published next is what comes next.
async fn subscribed(
    broker: &Mosquitto,
    qos: u8,
    filter: &str,
    topic: &str,
) -> (MqttBridge, Subscription, Deliveries) {
    let bridge = MqttBridge::connect("test", &settings(broker, qos)).expect("connect");
    let (sink, mut deliveries) = recording_sink();
    let subscription = bridge.subscribe(filter, sink).await.expect("subscribe");
    let probe = |data: String| {
        let bridge = &bridge;
        async move {
            let _ = bridge.publish(topic, data.into()).await;
        }
    };
    deliveries.publish_until_received("warm", probe).await;
    deliveries.settle(probe).await;
    (bridge, subscription, deliveries)
}

/// Settings for a bridge to `broker` at `qos`, with a client id of its own.
fn settings(broker: &Mosquitto, qos: u8) -> MqttSettings {
    static N: AtomicU32 = AtomicU32::new(0);
    MqttSettings {
        url: broker.url(),
        client_id: format!(
            "bridge-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ),
        qos,
    }
}

/// Restarts the broker with `restart`, then publishes on `topic` until the subscription gets
/// messages again; returns every delivery until a marker published after that.
async fn across_a_restart(
    broker: &mut Mosquitto,
    restart: fn(&mut Mosquitto),
    bridge: &MqttBridge,
    deliveries: &mut Deliveries,
    topic: &str,
) -> Vec<Delivery> {
    restart(broker);
    let probe = |data: String| async move {
        let _ = bridge.publish(topic, data.into()).await;
    };
    let mut read = deliveries.publish_until_received("after", probe).await;
    read.extend(deliveries.settle(probe).await);
    read
}

#[tokio::test]
async fn a_subscription_gets_what_matches_its_filter_until_it_is_dropped() {
    let broker = Mosquitto::start();
    let (bridge, subscription, mut deliveries) =
        subscribed(&broker, 1, "plant/+/temp", "plant/a/temp").await;
    publish(&bridge, "plant/b/temp", "21").await;
    publish(&bridge, "plant/b/hum", "no").await;
    publish(&bridge, "plant/b/temp/x", "no").await;
    publish(&bridge, "plant/c/temp", "22").await;
    assert_eq!(deliveries.next().await, message("plant/b/temp", "21"));
    assert_eq!(deliveries.next().await, message("plant/c/temp", "22"));

    drop(subscription);
    publish(&bridge, "plant/d/temp", "after").await;
    assert_eq!(
        deliveries.until_dropped().await,
        [],
        "nothing after the subscription was dropped"
    );
}

#[tokio::test]
async fn topics_the_broker_would_refuse_are_refused_before_they_reach_it() {
    let broker = Mosquitto::start();
    let (bridge, _subscription, mut deliveries) = subscribed(&broker, 1, "ok", "ok").await;
    // mosquitto drops the connection for each of these.
    assert_invalid_topics(
        &bridge,
        &["a/#/b", "a+/b", "", "a/\u{FFFF}", "a/\u{85}", "a\0b"],
        &["a/+", "a/#", "", "a/\u{FDD0}"],
    )
    .await;
    // The connection never saw them: what is published next arrives, with no interruption.
    publish(&bridge, "ok", "after").await;
    assert_eq!(deliveries.next().await, message("ok", "after"));
}

#[tokio::test]
async fn a_payload_past_the_brokers_maximum_packet_is_refused_and_one_at_it_goes_through() {
    let broker = Mosquitto::start_with("max_packet_size 1000");
    // Live: the broker's CONNACK, with its maximum packet size, has arrived.
    let (bridge, _subscription, mut deliveries) = subscribed(&broker, 1, "big", "big").await;
    let refused = bridge.publish("big", vec![b'x'; 1000].into()).await;
    let Err(BridgeError::PayloadTooLarge { limit }) = refused else {
        panic!("{refused:?}");
    };
    // The limit is the payload of a packet of exactly 1000 bytes.
    assert!((980..1000).contains(&limit), "{limit}");
    let refused = bridge.publish("big", vec![b'x'; limit + 1].into()).await;
    assert!(
        matches!(refused, Err(BridgeError::PayloadTooLarge { .. })),
        "{refused:?}"
    );
    let fits = "y".repeat(limit);
    publish(&bridge, "big", Bytes::from(fits.clone())).await;
    assert_eq!(deliveries.next().await, message("big", &fits));
}

#[tokio::test]
async fn a_broker_restart_that_loses_the_session_is_announced_as_an_interruption() {
    let mut broker = Mosquitto::start();
    // QoS 0: a clean session on every connection.
    let (bridge, _subscription, mut deliveries) = subscribed(&broker, 0, "alerts", "alerts").await;
    let read = across_a_restart(
        &mut broker,
        Mosquitto::restart,
        &bridge,
        &mut deliveries,
        "alerts",
    )
    .await;
    // Told on the new connection's CONNACK, before any message of it.
    assert_eq!(
        read.first(),
        Some(&Delivery::Interrupted(Interruption::Disconnected)),
        "{read:?}"
    );
    assert!(read[1..].iter().all(|d| payload(d).is_some()), "{read:?}");
}

#[tokio::test]
async fn a_broker_restart_that_keeps_the_session_is_no_interruption() {
    let mut broker = Mosquitto::start();
    // QoS 1: a persistent session, which mosquitto saves when it stops gracefully.
    let (bridge, _subscription, mut deliveries) = subscribed(&broker, 1, "alerts", "alerts").await;
    let read = across_a_restart(
        &mut broker,
        Mosquitto::restart_gracefully,
        &bridge,
        &mut deliveries,
        "alerts",
    )
    .await;
    assert!(
        read.iter().all(|d| payload(d).is_some()),
        "messages only: {read:?}"
    );
}

#[tokio::test]
async fn status_follows_the_connection_the_messages_and_the_broker_subscriptions() {
    let mut broker = Mosquitto::start();
    let bridge = MqttBridge::connect("test", &settings(&broker, 1)).expect("connect");
    let status = status_until(&bridge, "connected", |s| s.connected).await;
    let connected = BrokerStatus {
        connected: true,
        ..BrokerStatus::default()
    };
    assert_eq!(status, connected);

    let (sink, mut deliveries) = recording_sink();
    let first = bridge.subscribe("status/a", sink).await.expect("subscribe");
    assert_eq!(bridge.status().subscriptions, 1);
    // Live once a probe comes back; the probes are counted too, so count from after them.
    let probe = |data: String| {
        let bridge = &bridge;
        async move {
            let _ = bridge.publish("status/a", data.into()).await;
        }
    };
    deliveries.publish_until_received("warm", probe).await;
    deliveries.settle(probe).await;
    let before = bridge.status().messages;
    assert!(before > 0, "the probes were counted");
    for n in ["1", "2", "3"] {
        publish(&bridge, "status/a", n).await;
    }
    for n in ["1", "2", "3"] {
        assert_eq!(deliveries.next().await, message("status/a", n));
    }
    assert_eq!(bridge.status().messages, before + 3);

    // A second subscriber of the same filter shares its broker subscription, and a message for
    // both is one message from the broker.
    let (sink, mut shared_deliveries) = recording_sink();
    let shared = bridge.subscribe("status/a", sink).await.expect("subscribe");
    assert_eq!(bridge.status().subscriptions, 1);
    let other = bridge
        .subscribe("status/b", recording_sink().0)
        .await
        .expect("subscribe");
    assert_eq!(bridge.status().subscriptions, 2);
    publish(&bridge, "status/a", "both").await;
    assert_eq!(deliveries.next().await, message("status/a", "both"));
    shared_deliveries.read_until("both").await;
    assert_eq!(bridge.status().messages, before + 4);

    drop(other);
    assert_eq!(bridge.status().subscriptions, 1);
    drop(shared);
    assert_eq!(
        bridge.status().subscriptions,
        1,
        "status/a still has a subscriber"
    );
    drop(first);
    assert_eq!(bridge.status().subscriptions, 0);

    // The broker goes away and comes back on the same port.
    broker.stop();
    status_until(&bridge, "disconnected", |s| !s.connected).await;
    broker.restart();
    let status = status_until(&bridge, "reconnected", |s| s.connected).await;
    assert_eq!(
        status,
        BrokerStatus {
            reconnects: 1,
            messages: before + 4,
            ..connected
        }
    );
}
