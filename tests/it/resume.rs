//! Resuming from the in-memory replay buffer with `Last-Event-ID`: exactly once across a dropped
//! connection, `gap` events for what cannot be resumed, and the linger time of a lone client's topic.

use crate::support::*;
use std::collections::HashSet;

const ROUTES: &str = r#"
[brokers.mem]
type = "memory"

[[routes]]
path = "/alerts/{site}"
broker = "mem"
topic = "alerts/{site}"
publish = true
replay = 20000
buffer = 20000

[[routes]]
path = "/short/{site}"
broker = "mem"
topic = "short/{site}"
publish = true
replay = 5

[[routes]]
path = "/sites"
broker = "mem"
topic = "alerts/+"
event = "{topic}"
replay = 100
"#;

fn data(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.data.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_a_burst_exactly_once() {
    let sluice = Sluice::start(ROUTES).await;
    let mut first = h1_stream(sluice.addr, "/alerts/north").await;
    first.opened().await;
    const EVENTS: usize = 10_000;
    let addr = sluice.addr;
    let burst = tokio::spawn(async move {
        let mut publisher = Publisher::connect(addr).await;
        for n in 0..EVENTS {
            publisher.publish("/alerts/north", n.to_string()).await;
        }
    });
    // Drop the connection in the middle of the burst.
    let mut received = Vec::new();
    while received.len() < 3_000 {
        received.push(first.next_event().await);
    }
    let last_id = first.last_event_id.clone().expect("events carry ids");
    drop(first);
    let mut second = h1_stream_with(
        sluice.addr,
        "/alerts/north",
        &[("last-event-id", last_id.as_str())],
    )
    .await;
    assert_eq!(second.status, 200);
    received.extend(second.read_until(&(EVENTS - 1).to_string()).await);
    within("burst published", burst).await.expect("publisher");
    let expected: Vec<String> = (0..EVENTS).map(|n| n.to_string()).collect();
    assert_eq!(data(&received), expected, "every event once, in order");
    assert!(received.iter().all(|e| e.event == "message"), "no gap");
    let ids: HashSet<&str> = received.iter().filter_map(|e| e.id.as_deref()).collect();
    assert_eq!(ids.len(), EVENTS, "every event has its own id");
}

#[tokio::test]
async fn ids_that_cannot_be_resumed_get_a_gap_then_what_is_held() {
    let sluice = Sluice::start(ROUTES).await;
    let mut watcher = h1_stream(sluice.addr, "/short/a").await;
    watcher.opened().await;
    let mut publisher = Publisher::connect(sluice.addr).await;
    for n in 0..8 {
        publisher.publish("/short/a", n.to_string()).await;
    }
    let seen = watcher.read_until("7").await;
    let id_of = |n: usize| seen[n].id.clone().expect("id");
    let held: Vec<String> = (3..8).map(|n| n.to_string()).collect();

    // The id of event 0: events 1 and 2 were evicted from the 5-event buffer.
    let mut expired =
        h1_stream_with(sluice.addr, "/short/a", &[("last-event-id", &id_of(0))]).await;
    let gap = expired.next_event().await;
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.data, r#"{"reason":"expired","lost":2}"#);
    assert_eq!(gap.id, None, "a gap does not move the client's position");
    assert_eq!(data(&expired.read_until("7").await), held);

    // A clean resume, through the query parameter, has no gap.
    let path = format!("/short/a?last-event-id={}", id_of(5));
    let mut clean = h1_stream(sluice.addr, &path).await;
    assert_eq!(data(&clean.read_until("7").await), ["6", "7"]);

    // Malformed, future, and foreign ids (another process's epoch) are unknown.
    let mut parts: Vec<String> = id_of(7).split('.').map(str::to_owned).collect();
    let future = format!("{}.{}.{}", parts[0], parts[1], 1_000_000);
    parts[0] = if parts[0] == "1" {
        "2".into()
    } else {
        "1".into()
    };
    let foreign = parts.join(".");
    for id in ["garbage", "1.2", future.as_str(), foreign.as_str()] {
        let mut unknown = h1_stream_with(sluice.addr, "/short/a", &[("last-event-id", id)]).await;
        let gap = unknown.next_event().await;
        assert_eq!(
            (gap.event.as_str(), gap.data.as_str()),
            ("gap", r#"{"reason":"unknown-id","lost":null}"#),
            "id {id:?}"
        );
        assert_eq!(data(&unknown.read_until("7").await), held);
    }
}

#[tokio::test]
async fn an_id_from_a_previous_process_is_unknown() {
    let before = Sluice::start(ROUTES).await;
    let mut stream = h1_stream(before.addr, "/short/b").await;
    stream.opened().await;
    publish(before.addr, "/short/b", "old").await;
    assert_eq!(stream.next_event().await.data, "old");
    let old_id = stream.last_event_id.clone().expect("id");
    drop(stream);
    drop(before);

    let after = Sluice::start(ROUTES).await;
    let mut resumed = h1_stream_with(after.addr, "/short/b", &[("last-event-id", &old_id)]).await;
    let gap = resumed.next_event().await;
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.data, r#"{"reason":"unknown-id","lost":null}"#);
    publish(after.addr, "/short/b", "new").await;
    let next = resumed.next_event().await;
    assert_eq!(next.data, "new");
    assert_ne!(next.id, Some(old_id), "a new process makes new ids");
}

#[tokio::test]
async fn a_lone_client_that_reconnects_within_the_linger_misses_nothing() {
    let sluice = Sluice::start(ROUTES).await;
    let mut stream = h1_stream(sluice.addr, "/short/c").await;
    stream.opened().await;
    publish(sluice.addr, "/short/c", "1").await;
    assert_eq!(stream.next_event().await.data, "1");
    let id = stream.last_event_id.clone().expect("id");
    drop(stream);
    // Nobody is connected now; the topic lingers (60 s by default) and keeps what is published.
    for n in 2..=4 {
        publish(sluice.addr, "/short/c", n.to_string()).await;
    }
    let mut back = h1_stream_with(sluice.addr, "/short/c", &[("last-event-id", &id)]).await;
    assert_eq!(data(&back.read_until("4").await), ["2", "3", "4"]);
}

#[tokio::test]
async fn a_wildcard_stream_resumes_across_its_topics() {
    let sluice = Sluice::start(ROUTES).await;
    let mut stream = h1_stream(sluice.addr, "/sites").await;
    stream.opened().await;
    let mut publisher = Publisher::connect(sluice.addr).await;
    publisher.publish("/alerts/x", "x1").await;
    publisher.publish("/alerts/y", "y1").await;
    let seen = stream.read_until("y1").await;
    let id = seen[0].id.clone().expect("id");
    drop(stream);
    publisher.publish("/alerts/x", "x2").await;
    publisher.publish("/alerts/y", "y2").await;
    let mut back = h1_stream_with(sluice.addr, "/sites", &[("last-event-id", &id)]).await;
    let events = back.read_until("y2").await;
    let pairs: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.event.clone(), e.data.clone()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("alerts/y".to_owned(), "y1".to_owned()),
            ("alerts/x".to_owned(), "x2".to_owned()),
            ("alerts/y".to_owned(), "y2".to_owned()),
        ]
    );
    // Nothing twice: a marker published after them is the next event.
    publisher.publish("/alerts/x", "x3").await;
    let next = back.next_event().await;
    assert_eq!(
        (next.event.as_str(), next.data.as_str()),
        ("alerts/x", "x3"),
        "nothing twice"
    );
}

/// A room of big events, as in the attack on the shipped configuration.
const BIG_ROOM: &str = r#"
write_timeout = "60s"

[brokers.mem]
type = "memory"

[[routes]]
path = "/demo/{room}"
broker = "mem"
topic = "demo/{room}"
publish = true
replay = 1000
"#;

/// Sends a resuming request on a raw socket and waits until the response has started to arrive;
/// the socket is then never read again.
async fn stalled_h1_resume(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nlast-event-id: x\r\n\r\n");
    socket
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut probe = [0u8; 1];
    within("response started", socket.peek(&mut probe))
        .await
        .expect("peek");
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_resumes_hold_a_batch_not_a_copy_of_the_backlog() {
    let sluice = Sluice::start(BIG_ROOM).await;
    // A stream on the room keeps its topic (and so its replay ring) alive while it fills.
    let mut watcher = h1_stream(sluice.addr, "/demo/big").await;
    watcher.opened().await;
    let watching = tokio::spawn(async move {
        for _ in 0..300 {
            watcher.next_event().await;
        }
        watcher
    });
    let mut publisher = Publisher::connect(sluice.addr).await;
    let payload = "x".repeat(64 * 1024 - 3);
    for n in 0..300 {
        publisher
            .publish("/demo/big", format!("{n:03}{payload}"))
            .await;
    }
    let watcher = within("the watcher read every event", watching)
        .await
        .expect("watcher");
    let before = sluice.rss_kib();

    // Ten HTTP/1.1 clients that never read, and five HTTP/2 streams on one connection whose window
    // is zero: each asks for the whole 19 MiB backlog.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(stalled_h1_resume(sluice.addr, "/demo/big").await);
    }
    let tcp = tokio::net::TcpStream::connect(sluice.addr)
        .await
        .expect("connect");
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    let mut responses = Vec::new();
    for _ in 0..5 {
        let request = http::Request::get(format!("http://{}/demo/big", sluice.addr))
            .header("last-event-id", "x")
            .body(())
            .expect("request");
        let mut client = within("h2 ready", client.clone().ready())
            .await
            .expect("ready");
        let (response, _) = client.send_request(request, true).expect("send");
        responses.push(within("h2 response", response).await.expect("response"));
    }
    // Every stream is open, and its pump has its first batch in hand.
    let after = sluice.rss_kib();
    let grown = after.saturating_sub(before);
    // Before, each resume encoded and copied the whole backlog: 15 of them grew RSS by 288 MiB.
    assert!(
        grown < 48 * 1024,
        "15 stalled resumes grew RSS by {grown} KiB (from {before} KiB)"
    );
    drop((held, responses, watcher));
}
