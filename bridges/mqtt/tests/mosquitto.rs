//! The MQTT bridge against a real mosquitto of the test's own: subscribe and publish round trips,
//! topics and payloads the broker would refuse, and broker restarts with and without the session.

use bytes::Bytes;
use sluice_bridge::{Bridge, BridgeError, Delivery, Interruption, Subscription};
use sluice_mqtt::{MqttBridge, MqttSettings};
use sluice_testkit::bridge::{
    assert_invalid_topics, message, payload, publish, recording_sink, Deliveries,
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
    static N: AtomicU32 = AtomicU32::new(0);
    let settings = MqttSettings {
        url: broker.url(),
        client_id: format!(
            "bridge-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ),
        qos,
    };
    let bridge = MqttBridge::connect("test", &settings).expect("connect");
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
