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
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!(
        "it-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(5));
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
    // Wait for both broker subscriptions to be active.
    exact
        .publish_until_received("warm", send("sensors/p1/temp"))
        .await;
    site.publish_until_received("warm", send("sensors/p1/hum"))
        .await;
    while site
        .try_next_event(Duration::from_millis(200))
        .await
        .is_some()
    {}

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
    assert!(
        exact
            .try_next_event(Duration::from_millis(300))
            .await
            .is_none(),
        "no duplicates"
    );
    assert!(
        site.try_next_event(Duration::from_millis(100))
            .await
            .is_none(),
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
