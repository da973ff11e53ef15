//! JetStream routes against a real nats-server: ids are stream sequences, and a client resumes without
//! loss or duplicate across a dropped connection, a sluice restart and a NATS restart.

use crate::support::*;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use sluice_testkit::NatsServer;
use std::time::Duration;

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
buffer = 20000
"#
    )
}

/// A JetStream context on `server` with the stream `ORDERS` on `orders.>` (file storage, so it
/// survives a server restart).
pub async fn orders_stream(server: &NatsServer) -> jetstream::Context {
    orders_stream_at(&server.url(), 1).await
}

/// A JetStream context through the server at `url` with the stream `ORDERS` on `orders.>`, stored
/// `replicas` times (3 on a cluster). Retried until the server takes it: a cluster that just formed
/// may still be placing its peers.
pub async fn orders_stream_at(url: &str, replicas: usize) -> jetstream::Context {
    let client = within("connect", async_nats::connect(url))
        .await
        .expect("connect");
    let js = jetstream::new(client);
    eventually("the ORDERS stream created", || async {
        js.create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            num_replicas: replicas,
            ..stream::Config::default()
        })
        .await
        .ok()
    })
    .await;
    js
}

/// Publishes `n` as order `n` until the server acknowledges it.
async fn publish_order(js: &jetstream::Context, n: usize) {
    publish_acked(js, format!("orders.{}", n % 3), n.to_string()).await;
}

/// Publishes `data` on `subject` until the server acknowledges it. The message id (`data`) makes a
/// retried publish whose first try was stored count once.
pub async fn publish_acked(js: &jetstream::Context, subject: String, data: String) {
    within("order stored", async {
        loop {
            let message = PublishMessage::build()
                .payload(data.clone().into())
                .message_id(data.clone());
            if let Ok(ack) = js.send_publish(subject.clone(), message).await {
                if tokio::time::timeout(Duration::from_secs(2), ack)
                    .await
                    .is_ok_and(|a| a.is_ok())
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Publishes orders `range` in the background, in order.
fn publish_orders(
    js: jetstream::Context,
    range: std::ops::Range<usize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for n in range {
            publish_order(&js, n).await;
        }
    })
}

/// Reads events until order `last`, returning every event's data on the way.
async fn read_until(stream: &mut SseStream, last: usize) -> Vec<String> {
    let events = stream.read_until(&last.to_string()).await;
    for event in &events {
        assert_eq!(event.event, "message", "no gap: {}", event.data);
    }
    events.into_iter().map(|e| e.data).collect()
}

/// Asserts that `seen` is orders `0..count` exactly once and in order, naming the first difference.
fn assert_orders(seen: &[String], count: usize) {
    for (n, data) in seen.iter().enumerate() {
        assert_eq!(*data, n.to_string(), "event #{n} (of {})", seen.len());
    }
    assert_eq!(seen.len(), count, "every order arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_from_the_stream_exactly_once() {
    let server = NatsServer::start();
    let js = orders_stream(&server).await;
    let sluice = Sluice::start(&routes(&server.url())).await;
    let mut first = h1_stream(sluice.addr, "/orders").await;
    first.opened().await;
    const ORDERS: usize = 10_000;
    let burst = publish_orders(js, 0..ORDERS);
    let mut seen = Vec::new();
    while seen.len() < 3_000 {
        let event = first.next_event().await;
        assert_eq!(
            event.id.as_deref(),
            Some((seen.len() + 1).to_string().as_str()),
            "ids are stream sequences"
        );
        seen.push(event.data);
    }
    let last_id = first.last_event_id.clone().expect("ids");
    drop(first);
    let mut second = h1_stream_with(sluice.addr, "/orders", &[("last-event-id", &last_id)]).await;
    seen.extend(read_until(&mut second, ORDERS - 1).await);
    within("burst published", burst).await.expect("publisher");
    assert_orders(&seen, ORDERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_a_restarted_sluice_without_loss() {
    let server = NatsServer::start();
    let js = orders_stream(&server).await;
    let config = routes(&server.url());
    let before = Sluice::start(&config).await;
    let mut first = h1_stream(before.addr, "/orders").await;
    first.opened().await;
    const ORDERS: usize = 3_000;
    let burst = publish_orders(js, 0..ORDERS);
    let mut seen = Vec::new();
    while seen.len() < 500 {
        seen.push(first.next_event().await.data);
    }
    let last_id = first.last_event_id.clone().expect("ids");
    drop(first);
    drop(before);
    // The burst goes on while no sluice runs; the new process knows nothing of the old one.
    let after = Sluice::start(&config).await;
    let mut second = h1_stream_with(after.addr, "/orders", &[("last-event-id", &last_id)]).await;
    seen.extend(read_until(&mut second, ORDERS - 1).await);
    within("burst published", burst).await.expect("publisher");
    assert_orders(&seen, ORDERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_a_nats_restart_without_loss() {
    let mut server = NatsServer::start();
    let js = orders_stream(&server).await;
    let sluice = Sluice::start(&routes(&server.url())).await;
    let mut stream = h1_stream(sluice.addr, "/orders").await;
    stream.opened().await;
    for n in 0..100 {
        publish_order(&js, n).await;
    }
    let mut seen = read_until(&mut stream, 99).await;
    server.restart();
    // The publisher (and sluice) reconnect by themselves; the stream stays open.
    let rest = publish_orders(js, 100..300);
    seen.extend(read_until(&mut stream, 299).await);
    within("orders published", rest).await.expect("publisher");
    assert_orders(&seen, 300);
}

#[tokio::test]
async fn unknown_and_purged_positions_get_a_gap() {
    let server = NatsServer::start();
    let js = orders_stream(&server).await;
    for n in 0..5 {
        publish_order(&js, n).await;
    }
    let sluice = Sluice::start(&routes(&server.url())).await;
    for id in ["banana", "999"] {
        let mut stream = h1_stream_with(sluice.addr, "/orders", &[("last-event-id", id)]).await;
        let gap = stream.next_event().await;
        assert_eq!(gap.event, "gap", "id {id:?}");
        assert_eq!(gap.data, r#"{"reason":"unknown-id","lost":null}"#);
    }
    // Purge the first three: a client at sequence 1 lost 2 and 3.
    js.get_stream("ORDERS")
        .await
        .expect("stream")
        .purge()
        .sequence(4)
        .await
        .expect("purge");
    let mut stream = h1_stream_with(sluice.addr, "/orders", &[("last-event-id", "1")]).await;
    let gap = stream.next_event().await;
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.data, r#"{"reason":"expired","lost":null}"#);
    let rest = [stream.next_event().await, stream.next_event().await];
    assert_eq!(rest.map(|e| e.data), ["3", "4"]);
}

#[tokio::test]
async fn a_missing_stream_is_a_clear_503() {
    let server = NatsServer::start();
    let sluice = Sluice::start(&routes(&server.url())).await;
    let resp = get(sluice.addr, "/orders").await.expect("response");
    assert_eq!(resp.status, 503);
    assert!(resp.text().contains("ORDERS"), "{}", resp.text());
}

/// A reconnect storm in small: clients of one topic come back at once from different positions
/// while orders keep coming. Concurrent resumes share one read-back window (`src/hub/window.rs`):
/// each must still get every order after its own position exactly once, in order, and then live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resumes_of_one_topic_each_get_exactly_what_they_missed() {
    const CLIENTS: usize = 40;
    const ORDERS: usize = 600;
    let server = NatsServer::start();
    let js = orders_stream(&server).await;
    let sluice = Sluice::start(&routes(&server.url())).await;
    // Every client reads a different number of the first orders, then leaves with its id.
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut stream = h1_stream(sluice.addr, "/orders").await;
        stream.opened().await;
        clients.push(stream);
    }
    let first = publish_orders(js.clone(), 0..100);
    let mut positions = Vec::new();
    for (i, mut stream) in clients.into_iter().enumerate() {
        let seen = read_until(&mut stream, 2 * i).await;
        let id = stream.last_event_id.clone().expect("ids");
        positions.push((seen, id));
    }
    within("first orders published", first)
        .await
        .expect("publisher");
    // All come back at once while the rest is published.
    let rest = publish_orders(js, 100..ORDERS);
    let resumes: Vec<_> = positions
        .into_iter()
        .map(|(mut seen, id)| {
            let addr = sluice.addr;
            tokio::spawn(async move {
                let mut stream = h1_stream_with(addr, "/orders", &[("last-event-id", &id)]).await;
                seen.extend(read_until(&mut stream, ORDERS - 1).await);
                seen
            })
        })
        .collect();
    for (i, resume) in resumes.into_iter().enumerate() {
        let seen = within("a client caught up", resume).await.expect("client");
        assert_eq!(seen.len(), ORDERS, "client {i}: every order");
        assert_orders(&seen, ORDERS);
    }
    within("every order published", rest)
        .await
        .expect("publisher");
}
