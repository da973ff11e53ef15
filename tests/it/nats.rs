//! The NATS bridge against a real nats-server: delivery, shared subscriptions counted on the server,
//! release of idle subscriptions, publishing, and a server that is down at start or restarts.

use crate::support::*;
use bytes::Bytes;
use sluice_testkit::NatsServer;
use std::time::{Duration, Instant};

fn routes(url: &str) -> String {
    format!(
        r#"
[brokers.core]
type = "nats"
url = "{url}"

[[routes]]
path = "/alerts/{{site}}"
broker = "core"
topic = "alerts.{{site}}"
event = "alert"
publish = true

[[routes]]
path = "/alerts"
broker = "core"
topic = "alerts.>"
event = "{{topic}}"
"#
    )
}

async fn client(server: &NatsServer) -> async_nats::Client {
    within("connect test client", async_nats::connect(server.url()))
        .await
        .expect("connect to nats")
}

/// The subjects sluice's own connection (named `sluice/core`) is subscribed to for its topics, from
/// `/connz`.
async fn sluice_subscriptions(server: &NatsServer) -> Vec<String> {
    let json = nats_monitor(server, "/connz?subs=1").await;
    let mut subs: Vec<String> = json["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == "sluice/core")
        .flat_map(|c| {
            c["subscriptions_list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|s| s.as_str().map(str::to_owned))
        // The client's own reply inbox (its confirmation round trips use it), not a topic.
        .filter(|s| !s.starts_with("_INBOX."))
        .collect();
    subs.sort();
    subs
}

#[tokio::test]
async fn subjects_stream_to_http1_and_h2c() {
    let nats = NatsServer::start();
    let sluice = Sluice::start(&routes(&nats.url())).await;
    let publisher = client(&nats).await;
    let mut h1 = h1_stream(sluice.addr, "/alerts/plant-1").await;
    let h2 = H2::h2c(sluice.addr).await;
    let mut h2s = h2.stream("/alerts/plant-1").await;
    let mut all = h1_stream(sluice.addr, "/alerts").await;
    for s in [&mut h1, &mut h2s, &mut all] {
        s.opened().await;
    }
    // Sluice waits up to 2 s for the server to confirm each subscription; on a loaded CI machine
    // that can run out, so make sure the server has both before publishing.
    eventually("both subscriptions on the server", || async {
        (sluice_subscriptions(&nats).await == ["alerts.>", "alerts.plant-1"]).then_some(())
    })
    .await;
    publisher
        .publish("alerts.plant-1", Bytes::from_static(b"fire\ndrill"))
        .await
        .expect("publish");
    publisher
        .publish("alerts.plant-2", Bytes::from_static(&[0x80, 0x81]))
        .await
        .expect("publish");
    publisher.flush().await.expect("flush");
    for s in [&mut h1, &mut h2s] {
        let e = s.next_event().await;
        assert_eq!(
            (e.event.as_str(), e.data.as_str()),
            ("alert", "fire\ndrill")
        );
    }
    let first = all.next_event().await;
    assert_eq!(
        (first.event.as_str(), first.data.as_str()),
        ("alerts.plant-1", "fire\ndrill")
    );
    let second = all.next_event().await;
    assert_eq!(
        (second.event.as_str(), second.data.as_str()),
        ("alerts.plant-2.base64", "gIE=")
    );
}

#[tokio::test]
async fn one_server_subscription_per_topic_released_when_the_last_stream_leaves() {
    let nats = NatsServer::start();
    let sluice = Sluice::start(&routes(&nats.url())).await;
    let h2 = H2::h2c(sluice.addr).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut s = h1_stream(sluice.addr, "/alerts/a").await;
        s.opened().await;
        streams.push(s);
        let mut s = h2.stream("/alerts/a").await;
        s.opened().await;
        streams.push(s);
    }
    let mut other = h1_stream(sluice.addr, "/alerts/b").await;
    other.opened().await;
    eventually("one subscription per distinct subject", || async {
        (sluice_subscriptions(&nats).await == ["alerts.a", "alerts.b"]).then_some(())
    })
    .await;

    // Ten streams share one subscription; when they all hang up it goes, promptly.
    streams.clear();
    let left = Instant::now();
    eventually("alerts.a unsubscribed", || async {
        (sluice_subscriptions(&nats).await == ["alerts.b"]).then_some(())
    })
    .await;
    // The contract is "within a second"; allow scheduling slack on a loaded 2-core CI machine.
    assert!(
        left.elapsed() < Duration::from_secs(2),
        "took {:?}",
        left.elapsed()
    );
    drop(other);
    eventually("alerts.b unsubscribed", || async {
        sluice_subscriptions(&nats).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn post_publishes_to_the_subject() {
    let nats = NatsServer::start();
    let sluice = Sluice::start(&routes(&nats.url())).await;
    let mut sub = client(&nats)
        .await
        .subscribe("alerts.north")
        .await
        .expect("subscribe");
    // The test client's own SUB must reach the server before the publish.
    client(&nats).await.flush().await.expect("flush");
    publish(sluice.addr, "/alerts/north", "from http").await;
    use futures::StreamExt;
    let msg = within("message via NATS", sub.next())
        .await
        .expect("message");
    assert_eq!(msg.payload, Bytes::from_static(b"from http"));
}

#[tokio::test]
async fn streams_survive_a_server_restart() {
    let mut nats = NatsServer::start();
    let sluice = Sluice::start(&routes(&nats.url())).await;
    let mut stream = h1_stream(sluice.addr, "/alerts/r").await;
    stream.opened().await;
    let publisher = client(&nats).await;
    publisher
        .publish("alerts.r", Bytes::from_static(b"before"))
        .await
        .expect("publish");
    assert_eq!(stream.next_event().await.data, "before");

    nats.restart();
    // Core NATS drops what is published while sluice reconnects: the stream is told with a gap, and
    // once sluice is back, events flow again on the very same stream.
    let publisher = client(&nats).await;
    let mut seen = stream
        .publish_until_received("after", |data| {
            let p = publisher.clone();
            async move {
                p.publish("alerts.r", data.into()).await.expect("publish");
            }
        })
        .await;
    if !seen.iter().any(|e| e.event == "gap") {
        // The gap is queued when sluice notices the reconnection, which may come just after the
        // first event of the new connection.
        seen.push(stream.next_event().await);
    }
    let gaps: Vec<&Event> = seen.iter().filter(|e| e.event == "gap").collect();
    assert_eq!(gaps.len(), 1, "{seen:?}");
    assert!(gaps[0].data.contains("broker-disconnected"), "{seen:?}");
    assert!(seen.iter().all(|e| e.event == "alert" || e.event == "gap"));
}

#[tokio::test]
async fn a_server_down_at_start_is_picked_up_later() {
    let port = sluice_testkit::free_port();
    let sluice = Sluice::start(&routes(&format!("nats://127.0.0.1:{port}"))).await;
    // The stream opens although the broker is down.
    let mut stream = h1_stream(sluice.addr, "/alerts/late").await;
    assert_eq!(stream.status, http::StatusCode::OK);
    stream.opened().await;
    let nats = NatsServer::start_on(port);
    let publisher = client(&nats).await;
    stream
        .publish_until_received("hello", |data| {
            let p = publisher.clone();
            async move {
                p.publish("alerts.late", data.into())
                    .await
                    .expect("publish");
            }
        })
        .await;
}

/// Whether sluice's connection (named `sluice/core`) is on `server`, from its `/connz`.
async fn holds_sluice(server: &NatsServer) -> bool {
    let json = nats_monitor(server, "/connz").await;
    json["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == "sluice/core")
}

#[tokio::test]
async fn a_broker_with_a_url_list_fails_over_to_another_server() {
    let mut servers = [NatsServer::start(), NatsServer::start()];
    let list = format!("[\"{}\", \"{}\"]", servers[0].url(), servers[1].url());
    let config = routes("X").replace("url = \"X\"", &format!("url = {list}"));
    let sluice = Sluice::start(&config).await;
    let mut stream = h1_stream(sluice.addr, "/alerts/r").await;
    stream.opened().await;
    publish(sluice.addr, "/alerts/r", "before").await;
    assert_eq!(stream.next_event().await.data, "before");

    // Stop the server sluice is on: it reconnects to the other one, and the same stream goes on.
    let mut on = None;
    for (i, server) in servers.iter().enumerate() {
        if holds_sluice(server).await {
            on = Some(i);
        }
    }
    let on = on.expect("sluice is connected to one of the servers");
    servers[on].stop();
    let addr = sluice.addr;
    let seen = stream
        .publish_until_received("after", |data| async move {
            // Refused (503) while sluice has no server: tried again by the loop.
            let _ = request(addr, "POST", "/alerts/r", data.into()).await;
        })
        .await;
    assert!(
        seen.iter().all(|e| e.event == "alert" || e.event == "gap"),
        "{seen:?}"
    );
    assert!(
        holds_sluice(&servers[1 - on]).await,
        "sluice moved to the other server"
    );
    let ready = get(sluice.addr, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
}
