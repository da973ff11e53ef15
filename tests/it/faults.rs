//! Broker faults that must never lose data without telling anyone: a JetStream stream deleted and
//! created again under open streams, and a NATS server that hangs while a stream opens.

use crate::jetstream::orders_stream;
use crate::support::*;
use async_nats::jetstream::{self, stream};
use sluice_testkit::NatsServer;

fn routes(url: &str) -> String {
    format!(
        r#"
[brokers.core]
type = "nats"
url = "{url}"

[[routes]]
path = "/orders"
broker = "core"
topic = "orders.>"
jetstream = "ORDERS"

[[routes]]
path = "/alerts/{{site}}"
broker = "core"
topic = "alerts.{{site}}"
publish = true
"#
    )
}

/// Publishes `data` on `subject` into JetStream and waits for the server's acknowledgement.
async fn store(js: &jetstream::Context, subject: &str, data: &str) -> u64 {
    within("stored", async {
        js.publish(subject.to_owned(), data.to_owned().into())
            .await
            .expect("publish")
            .await
            .expect("ack")
            .sequence
    })
    .await
}

#[tokio::test]
async fn a_replaced_jetstream_stream_is_announced_with_a_gap_and_followed() {
    let server = NatsServer::start();
    let js = orders_stream(&server).await;
    let sluice = Sluice::start(&routes(&server.url())).await;
    let h2 = H2::h2c(sluice.addr).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut stream = h2.stream("/orders").await;
        stream.opened().await;
        streams.push(stream);
    }
    for n in 1..=3 {
        store(&js, "orders.a", &format!("old-{n}")).await;
    }
    for stream in &mut streams {
        for n in 1..=3 {
            let event = stream.next_event().await;
            assert_eq!(event.data, format!("old-{n}"));
            assert_eq!(event.id, Some(n.to_string()));
        }
    }

    js.delete_stream("ORDERS").await.expect("delete stream");
    js.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..stream::Config::default()
    })
    .await
    .expect("create stream again");
    assert_eq!(store(&js, "orders.b", "new-1").await, 1);
    for stream in &mut streams {
        let gap = stream.next_event().await;
        assert_eq!(gap.event, "gap");
        assert!(gap.data.contains("stream-replaced"), "{}", gap.data);
        let event = stream.next_event().await;
        assert_eq!(
            (event.data.as_str(), event.id.as_deref()),
            ("new-1", Some("1"))
        );
    }

    // A new stream and a stream resuming from the old stream's ids carry on from the new stream.
    let mut fresh = h1_stream(sluice.addr, "/orders").await;
    fresh.opened().await;
    let mut resumed = h1_stream_with(sluice.addr, "/orders", &[("last-event-id", "3")]).await;
    resumed.opened().await;
    assert_eq!(store(&js, "orders.b", "new-2").await, 2);
    let event = fresh.next_event().await;
    assert_eq!(
        (event.data.as_str(), event.id.as_deref()),
        ("new-2", Some("2"))
    );
    let gap = resumed.next_event().await;
    assert_eq!(gap.event, "gap", "{}", gap.data);
    let event = resumed.next_event().await;
    assert_eq!(event.data, "new-2");
    for stream in &mut streams {
        assert_eq!(stream.next_event().await.data, "new-2");
    }
}

#[tokio::test]
async fn a_stream_opened_while_the_server_hangs_is_told_what_it_may_have_missed() {
    let server = NatsServer::start();
    let sluice = Sluice::start(&routes(&server.url())).await;
    server.pause();
    // Answered after sluice's 2 s wait for a confirmation that cannot come while the server hangs.
    let mut stream = h1_stream(sluice.addr, "/alerts/hung").await;
    stream.opened().await;
    server.resume();
    let other = within("connect", async_nats::connect(server.url()))
        .await
        .expect("connect");
    let gap = stream.next_event().await;
    assert_eq!(gap.event, "gap");
    assert!(gap.data.contains("late-subscription"), "{}", gap.data);
    other
        .publish("alerts.hung", "after".into())
        .await
        .expect("publish");
    other.flush().await.expect("flush");
    assert_eq!(stream.next_event().await.data, "after");
}

#[tokio::test]
async fn an_mqtt_reconnection_without_a_session_is_announced_with_a_gap() {
    let mut broker = sluice_testkit::Mosquitto::start();
    let config = format!(
        r#"
[brokers.plant]
type = "mqtt"
url = "{}"
qos = 0

[[routes]]
path = "/mq/{{site}}"
broker = "plant"
topic = "sensors/{{site}}"
publish = true
"#,
        broker.url()
    );
    let sluice = Sluice::start(&config).await;
    let addr = sluice.addr;
    let mut stream = live_stream(addr, "/mq/a").await;
    // A clean session: what is published while sluice reconnects is gone.
    broker.restart();
    let mut seen = stream
        .publish_until_received("after", |data| async move {
            // While sluice reconnects its publishes may be refused; only delivery counts here.
            let _ = request(addr, "POST", "/mq/a", data.into()).await;
        })
        .await;
    if !seen.iter().any(|e| e.event == "gap") {
        seen.push(stream.next_event().await);
    }
    let gaps: Vec<&Event> = seen.iter().filter(|e| e.event == "gap").collect();
    assert_eq!(gaps.len(), 1, "{seen:?}");
    assert!(gaps[0].data.contains("broker-disconnected"), "{seen:?}");
}
