//! Per-stream queues: a stalled reader never slows the others, and meets its route's overflow policy.

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = r#"
[brokers.mem]
type = "memory"

[[routes]]
path = "/strict/{t}"
broker = "mem"
topic = "strict/{t}"
publish = true
buffer = 16
overflow = "disconnect"

[[routes]]
path = "/lossy/{t}"
broker = "mem"
topic = "strict/{t}"
buffer = 16
overflow = "drop-oldest"
"#;

/// An HTTP/1.1 client with a tiny receive buffer that sends its request, reads the stream's opening
/// (so its subscription is live: it gets every event published from now on) and then reads nothing.
async fn stalled_client(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut opening = Vec::new();
    within("the stalled client's stream opens", async {
        while !opening.windows(10).any(|w| w == b": sluice\n\n") {
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "the stream ended before its preamble");
            opening.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_slow_fifty_others() {
    let sluice = Sluice::start(ROUTES).await;
    let mut stalled = stalled_client(sluice.addr, "/strict/feed").await;
    let mut readers = Vec::new();
    for _ in 0..50 {
        let mut s = h1_stream(sluice.addr, "/strict/feed").await;
        s.opened().await;
        readers.push(s);
    }
    const MESSAGES: usize = 1500;
    let payload = "x".repeat(1000);
    // Read concurrently with publishing: every reader keeps up, so none overflows its 16-event queue.
    let consumers: Vec<_> = readers
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                for n in 0..MESSAGES {
                    let event = s.next_event().await;
                    assert!(
                        event.data.starts_with(&format!("{n}:")),
                        "in order: got {:.10} for {n}",
                        event.data
                    );
                }
            })
        })
        .collect();
    for n in 0..MESSAGES {
        publish(sluice.addr, "/strict/feed", format!("{n}:{payload}")).await;
    }
    for c in consumers {
        within("reader finished", c)
            .await
            .expect("reader saw every message in order");
    }
    // The stalled client was disconnected by its full queue: reading what reached it ends in EOF
    // well before all 1.5 MB arrived.
    let mut received = Vec::new();
    within(
        "stalled client sees the close",
        stalled.read_to_end(&mut received),
    )
    .await
    .expect("read");
    assert!(
        received.len() < MESSAGES * payload.len(),
        "got {} bytes",
        received.len()
    );
}

#[tokio::test]
async fn drop_oldest_keeps_the_stream_open_with_the_newest() {
    let sluice = Sluice::start(ROUTES).await;
    let mut stalled = stalled_client(sluice.addr, "/lossy/feed").await;
    let mut watcher = h1_stream(sluice.addr, "/strict/feed").await;
    watcher.opened().await;
    const MESSAGES: usize = 600;
    let payload = "y".repeat(2000);
    for n in 0..MESSAGES {
        publish(sluice.addr, "/strict/feed", format!("{n}:{payload}")).await;
        // Keep the watcher (disconnect policy) drained so only the stalled client falls behind.
        watcher.next_event().await;
    }
    publish(sluice.addr, "/strict/feed", "last").await;
    // Now read the stalled client: the stream is still open and ends with the newest event, after a
    // gap where old events were dropped.
    let mut text = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    within("stalled client catches up to the newest event", async {
        while !text.ends_with(b"data: last\n\n")
            && !text.windows(12).any(|w| w == b"data: last\n\n")
        {
            let n = stalled.read(&mut buf).await.expect("read");
            assert!(n > 0, "drop-oldest must not close the stream");
            text.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&text);
    let seen: Vec<usize> = text
        .split("data: ")
        .filter_map(|d| d.split(':').next()?.parse().ok())
        .collect();
    assert!(
        seen.len() < MESSAGES,
        "some events were dropped ({} seen)",
        seen.len()
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "what arrives stays in order"
    );
    // The client is told: a `gap` event stands where events were dropped, with how many.
    let lost: u64 = text
        .split("event: gap\ndata: {\"reason\":\"overflow\",\"lost\":")
        .skip(1)
        .filter_map(|rest| rest.split('}').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        lost as usize,
        MESSAGES - seen.len(),
        "the gap events count every dropped event"
    );
}
