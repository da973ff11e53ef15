//! The NATS bridge against a real nats-server of the test's own: subscribe and publish round trips,
//! subjects and payloads the server would refuse, a server restart under a subscription, and the
//! bridge's status (connection, reconnects, counts).

use bytes::Bytes;
use sluice_bridge::{Bridge, BridgeError, BrokerStatus, Delivery, Interruption, Subscription};
use sluice_nats::{NatsBridge, NatsSettings, DEFAULT_MAX_CONTROL_LINE};
use sluice_testkit::bridge::{
    assert_invalid_topics, message, payload, publish, recording_sink, status_until, Deliveries,
};
use sluice_testkit::NatsServer;

/// A bridge to `server` and a subscription to `filter`, live once this returns (the bridge waits
/// for the server to confirm it), so nothing published after it is missed.
async fn subscribed(server: &NatsServer, filter: &str) -> (NatsBridge, Subscription, Deliveries) {
    let bridge = connect(server).await;
    let (sink, deliveries) = recording_sink();
    let subscription = bridge.subscribe(filter, sink).await.expect("subscribe");
    (bridge, subscription, deliveries)
}

/// A bridge to `server` (connecting in the background).
async fn connect(server: &NatsServer) -> NatsBridge {
    let settings = NatsSettings {
        urls: vec![server.url()],
        max_control_line: DEFAULT_MAX_CONTROL_LINE,
    };
    NatsBridge::connect("test", &settings)
        .await
        .expect("connect")
}

#[tokio::test]
async fn a_subscription_gets_what_matches_its_filter_until_it_is_dropped() {
    let server = NatsServer::start();
    let (bridge, subscription, mut deliveries) = subscribed(&server, "orders.*").await;
    publish(&bridge, "orders.a", "1").await;
    publish(&bridge, "other.a", "no").await;
    publish(&bridge, "orders.a.deep", "no").await;
    publish(&bridge, "orders.b", "2").await;
    assert_eq!(deliveries.next().await, message("orders.a", "1"));
    assert_eq!(deliveries.next().await, message("orders.b", "2"));

    drop(subscription);
    publish(&bridge, "orders.c", "after").await;
    assert_eq!(
        deliveries.until_dropped().await,
        [],
        "nothing after the subscription was dropped"
    );
}

#[tokio::test]
async fn subjects_the_server_would_refuse_are_refused_before_they_reach_it() {
    let server = NatsServer::start();
    let (bridge, _subscription, mut deliveries) = subscribed(&server, "ok").await;
    // Past the server's control line (with room for the protocol's words) is refused too.
    let long = "a".repeat(DEFAULT_MAX_CONTROL_LINE);
    assert_invalid_topics(
        &bridge,
        &["a..b", ".a", "a.", "a b", "", &long],
        &["a.*", "a.>", "a b", "a\r\nb", &long],
    )
    .await;
    // The connection never saw them.
    publish(&bridge, "ok", "after").await;
    assert_eq!(deliveries.next().await, message("ok", "after"));
}

#[tokio::test]
async fn a_payload_past_the_servers_max_payload_is_refused_and_one_at_it_goes_through() {
    let server = NatsServer::start();
    let (bridge, _subscription, mut deliveries) = subscribed(&server, "big").await;
    // The limit is the one the server announced (its default, 1 MiB) once the bridge is connected.
    publish(&bridge, "big", "connected").await;
    deliveries.read_until("connected").await;
    let limit = 1024 * 1024;
    let refused = bridge.publish("big", vec![b'x'; limit + 1].into()).await;
    assert!(
        matches!(refused, Err(BridgeError::PayloadTooLarge { limit: l }) if l == limit),
        "{refused:?}"
    );
    publish(&bridge, "big", vec![b'y'; limit]).await;
    let Delivery::Message(fits) = deliveries.next().await else {
        panic!("a message");
    };
    assert_eq!(fits.payload, Bytes::from(vec![b'y'; limit]));
}

#[tokio::test]
async fn a_server_restart_is_announced_as_an_interruption_and_messages_flow_again() {
    let mut server = NatsServer::start();
    let (bridge, _subscription, mut deliveries) = subscribed(&server, "alerts").await;
    publish(&bridge, "alerts", "before").await;
    assert_eq!(deliveries.next().await, message("alerts", "before"));

    server.restart();
    // Core NATS drops what is published while the bridge reconnects: the sink is told. That may
    // come just after the first message of the new connection, and before a marker sent then.
    let bridge = &bridge;
    let probe = |data: String| async move {
        let _ = bridge.publish("alerts", data.into()).await;
    };
    let mut read = deliveries.publish_until_received("after", probe).await;
    read.extend(deliveries.settle(probe).await);
    let told: Vec<&Delivery> = read.iter().filter(|d| payload(d).is_none()).collect();
    assert_eq!(
        told,
        [&Delivery::Interrupted(Interruption::Disconnected)],
        "{read:?}"
    );
}

#[tokio::test]
async fn status_follows_the_connection_the_live_messages_and_the_subscriptions() {
    let mut server = NatsServer::start();
    let bridge = connect(&server).await;
    let status = status_until(&bridge, "connected", |s| s.connected).await;
    let connected = BrokerStatus {
        connected: true,
        ..BrokerStatus::default()
    };
    assert_eq!(status, connected);

    // A core subscription: held, and its messages counted.
    let (sink, mut core_deliveries) = recording_sink();
    let core = bridge
        .subscribe("status.core", sink)
        .await
        .expect("subscribe");
    assert_eq!(bridge.status().subscriptions, 1);
    for n in ["1", "2", "3"] {
        publish(&bridge, "status.core", n).await;
    }
    for n in ["1", "2", "3"] {
        assert_eq!(core_deliveries.next().await, message("status.core", n));
    }
    assert_eq!(bridge.status().messages, 3);

    // A live JetStream consumer counts the same way; a read-back of history is held while it
    // lives, and what it reads is not live traffic.
    let js = async_nats::jetstream::new(
        async_nats::connect(server.url())
            .await
            .expect("connect for JetStream"),
    );
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "STATUS".into(),
        subjects: vec!["status.js.>".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let (sink, mut js_deliveries) = recording_sink();
    let (live, _) = bridge
        .subscribe_stream("STATUS", "status.js.>", sink)
        .await
        .expect("subscribe to the stream");
    assert_eq!(bridge.status().subscriptions, 2);
    for n in ["a", "b"] {
        js.publish("status.js.x", n.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    for n in ["a", "b"] {
        assert_eq!(payload(&js_deliveries.next().await), Some(n));
    }
    assert_eq!(bridge.status().messages, 5);
    let mut history = bridge
        .read_stream("STATUS", "status.js.>", 0, 10)
        .await
        .expect("read back");
    assert_eq!(bridge.status().subscriptions, 3);
    assert_eq!(history.next(10).await.expect("read").len(), 2);
    assert_eq!(bridge.status().messages, 5, "a read-back is not counted");

    drop(history);
    assert_eq!(bridge.status().subscriptions, 2);
    drop(live);
    assert_eq!(bridge.status().subscriptions, 1);
    drop(core);
    assert_eq!(bridge.status().subscriptions, 0);

    // The server goes away and comes back on the same port.
    server.stop();
    status_until(&bridge, "disconnected", |s| !s.connected).await;
    server.restart();
    let status = status_until(&bridge, "reconnected", |s| s.connected).await;
    assert_eq!(
        status,
        BrokerStatus {
            reconnects: 1,
            messages: 5,
            ..connected
        }
    );
}
