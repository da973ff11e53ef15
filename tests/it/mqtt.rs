//! The MQTT bridge against a real mosquitto: delivery, wildcards and overlapping filters, publishing,
//! and a broker restart mid-stream.

use crate::support::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sluice_testkit::Mosquitto;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

fn routes(url: &str) -> String {
    format!(
        r#"
[brokers.plant]
type = "mqtt"
url = "{url}"
qos = 1

[[routes]]
path = "/sensors/{{site}}/{{sensor}}"
broker = "plant"
topic = "sensors/{{site}}/{{sensor}}"
event = "reading"
publish = true

[[routes]]
path = "/sites/{{site}}"
broker = "plant"
topic = "sensors/{{site}}/#"
event = "{{topic}}"
"#
    )
}

/// A test MQTT client (MQTT 3.1.1, unlike sluice's MQTT 5 bridge) whose event loop runs in a task.
/// Received messages arrive on the returned channel.
async fn mqtt_client(
    broker: &Mosquitto,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    mqtt_client_with_session(broker, false).await
}

/// Like [`mqtt_client`]; with `persistent`, the client keeps its session across reconnections, so
/// rumqttc keeps (and sends after reconnecting) what it could not publish meanwhile. With a clean
/// session rumqttc discards those requests when it reconnects.
async fn mqtt_client_with_session(
    broker: &Mosquitto,
    persistent: bool,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!(
        "it-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_session(!persistent);
    let (client, mut event_loop) = AsyncClient::new(options, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    (client, rx)
}

#[tokio::test]
async fn topics_stream_with_wildcards_and_overlapping_filters() {
    let broker = Mosquitto::start();
    let sluice = Sluice::start(&routes(&broker.url())).await;
    let (publisher, _) = mqtt_client(&broker).await;
    let mut exact = h1_stream(sluice.addr, "/sensors/p1/temp").await;
    let h2 = H2::h2c(sluice.addr).await;
    let mut site = h2.stream("/sites/p1").await;
    exact.opened().await;
    site.opened().await;
    let send = |topic: &'static str| {
        let p = publisher.clone();
        move |data: String| {
            let p = p.clone();
            async move {
                p.publish(topic, QoS::AtLeastOnce, false, data)
                    .await
                    .expect("publish");
            }
        }
    };
    // Wait for both broker subscriptions to be active, and read every probe away.
    exact
        .publish_until_received("warm", send("sensors/p1/temp"))
        .await;
    exact.settle(send("sensors/p1/temp")).await;
    site.publish_until_received("warm", send("sensors/p1/hum"))
        .await;
    site.settle(send("sensors/p1/hum")).await;

    publisher
        .publish("sensors/p1/temp", QoS::AtLeastOnce, false, "21.5")
        .await
        .expect("publish");
    publisher
        .publish("sensors/p1/hum", QoS::AtLeastOnce, false, "40")
        .await
        .expect("publish");
    publisher
        .publish("sensors/p2/temp", QoS::AtLeastOnce, false, "nope")
        .await
        .expect("publish");
    publisher
        .publish("sensors/p1/temp", QoS::AtLeastOnce, false, "22.0")
        .await
        .expect("publish");

    let e = exact.next_event().await;
    assert_eq!((e.event.as_str(), e.data.as_str()), ("reading", "21.5"));
    assert_eq!(exact.next_event().await.data, "22.0");
    // The overlapping filters (sensors/p1/temp and sensors/p1/#) each get every message exactly once.
    let got: Vec<(String, String)> = [
        site.next_event().await,
        site.next_event().await,
        site.next_event().await,
    ]
    .into_iter()
    .map(|e| (e.event, e.data))
    .collect();
    assert_eq!(
        got,
        [
            ("sensors/p1/temp".to_owned(), "21.5".to_owned()),
            ("sensors/p1/hum".to_owned(), "40".to_owned()),
            ("sensors/p1/temp".to_owned(), "22.0".to_owned()),
        ]
    );
    // No duplicates: a marker published after them is the next event of both.
    send("sensors/p1/temp")("end".to_owned()).await;
    assert_eq!(exact.next_event().await.data, "end", "no duplicates");
    let end = site.next_event().await;
    assert_eq!(
        (end.event.as_str(), end.data.as_str()),
        ("sensors/p1/temp", "end"),
        "no duplicates"
    );
}

#[tokio::test]
async fn post_publishes_to_the_topic() {
    let broker = Mosquitto::start();
    let sluice = Sluice::start(&routes(&broker.url())).await;
    let (client, mut received) = mqtt_client(&broker).await;
    client
        .subscribe("sensors/+/valve", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (topic, payload) = within("message via MQTT", async {
        loop {
            // Re-publish until the test client's own subscription is active.
            publish(sluice.addr, "/sensors/p9/valve", "open").await;
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(200), received.recv()).await
            {
                return m;
            }
        }
    })
    .await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("sensors/p9/valve", &b"open"[..])
    );
}

#[tokio::test]
async fn streams_survive_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let sluice = Sluice::start(&routes(&broker.url())).await;
    let mut stream = h1_stream(sluice.addr, "/sensors/r/temp").await;
    stream.opened().await;
    let (publisher, _) = mqtt_client(&broker).await;
    let send = |data: String| {
        let p = publisher.clone();
        async move {
            let _ = p
                .publish("sensors/r/temp", QoS::AtLeastOnce, false, data)
                .await;
        }
    };
    stream.publish_until_received("before", send).await;
    broker.restart();
    // Sluice reconnects with backoff and subscribes again; the same stream carries on.
    stream.publish_until_received("after", send).await;
}

#[tokio::test]
async fn a_broker_down_at_start_is_picked_up_later() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let port = broker.port();
    drop(broker);
    let sluice = Sluice::start(&routes(&url)).await;
    let mut stream = h1_stream(sluice.addr, "/sensors/late/temp").await;
    assert_eq!(stream.status, http::StatusCode::OK);
    stream.opened().await;
    let broker = Mosquitto::start_on(port);
    let (publisher, _) = mqtt_client(&broker).await;
    stream
        .publish_until_received("hello", |data| {
            let p = publisher.clone();
            async move {
                let _ = p
                    .publish("sensors/late/temp", QoS::AtLeastOnce, false, data)
                    .await;
            }
        })
        .await;
}

fn retained_routes(url: &str) -> String {
    format!(
        r#"
[brokers.plant]
type = "mqtt"
url = "{url}"
qos = 1

[[routes]]
path = "/status/{{device}}"
broker = "plant"
topic = "devices/{{device}}/status"
retained = true

[[routes]]
path = "/plain/{{device}}"
broker = "plant"
topic = "devices/{{device}}/status"
"#
    )
}

/// Publishes a retained `value` on `topic` and waits until the broker holds it (a fresh test
/// subscription receives it).
async fn retain(broker: &Mosquitto, topic: &str, value: &str) {
    let (publisher, _) = mqtt_client(broker).await;
    publisher
        .publish(topic, QoS::AtLeastOnce, true, value)
        .await
        .expect("publish");
    let (probe, mut received) = mqtt_client(broker).await;
    probe
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    within("the broker holds the retained value", async {
        while let Some((_, payload)) = received.recv().await {
            if payload == value.as_bytes() {
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn retained_routes_start_with_the_current_value_marked_retained() {
    let broker = Mosquitto::start();
    retain(&broker, "devices/d1/status", "on").await;
    retain(&broker, "devices/d2/status", "idle").await;
    let sluice = Sluice::start(&retained_routes(&broker.url())).await;

    // The first stream gets the broker's retained message; the second, joining the shared
    // subscription, gets it from sluice.
    let mut first = h1_stream(sluice.addr, "/status/d1").await;
    let mut second = h1_stream(sluice.addr, "/status/d1").await;
    for stream in [&mut first, &mut second] {
        let current = stream.next_event().await;
        assert_eq!(
            (current.event.as_str(), current.data.as_str()),
            ("message.retained", "on")
        );
    }
    // A route without `retained` does not get it, even as the first stream on its topic.
    let mut plain = h1_stream(sluice.addr, "/plain/d2").await;
    plain.opened().await;
    let (publisher, _) = mqtt_client(&broker).await;
    let live = plain
        .publish_until_received("live", |data| {
            let p = publisher.clone();
            async move {
                let _ = p
                    .publish("devices/d2/status", QoS::AtLeastOnce, true, data)
                    .await;
            }
        })
        .await;
    assert!(
        live.iter()
            .all(|e| e.event == "message" && e.data != "idle"),
        "{live:?}"
    );

    // A live update is an ordinary event, and becomes the value the next stream starts with.
    publisher
        .publish("devices/d1/status", QoS::AtLeastOnce, true, "off")
        .await
        .expect("publish");
    for stream in [&mut first, &mut second] {
        let update = stream.next_event().await;
        assert_eq!(
            (update.event.as_str(), update.data.as_str()),
            ("message", "off")
        );
    }
    let mut third = h1_stream(sluice.addr, "/status/d1").await;
    let current = third.next_event().await;
    assert_eq!(
        (current.event.as_str(), current.data.as_str()),
        ("message.retained", "off")
    );
}

#[tokio::test]
async fn qos1_messages_published_while_sluice_is_away_arrive_after_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let sluice = Sluice::start(&routes(&broker.url())).await;
    let mut stream = h1_stream(sluice.addr, "/sensors/q/temp").await;
    stream.opened().await;
    let (publisher, _) = mqtt_client_with_session(&broker, true).await;
    let send = |data: String| {
        let p = publisher.clone();
        async move {
            p.publish("sensors/q/temp", QoS::AtLeastOnce, false, data)
                .await
                .expect("queue publish");
        }
    };
    stream.publish_until_received("ready", send).await;
    for n in 0..20 {
        send(n.to_string()).await;
    }
    // A graceful restart keeps sluice's persistent session. Sluice comes back with backoff; the test
    // client reconnects within 50 ms, so what it publishes meanwhile waits in sluice's session.
    broker.restart_gracefully();
    for n in 20..60 {
        send(n.to_string()).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    while seen.len() < 60 && std::time::Instant::now() < deadline {
        if let Some(event) = stream.try_next_event(Duration::from_millis(200)).await {
            if let Ok(n) = event.data.parse::<u32>() {
                seen.insert(n);
            }
        }
    }
    let missing: Vec<u32> = (0..60).filter(|n| !seen.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "lost {missing:?} (QoS 1 may repeat, never lose)"
    );
}
