//! HTTP/2: cleartext h2c with prior knowledge, TLS with ALPN, and many streams on one connection.

use crate::support::*;
use http::StatusCode;

const MEMORY: &str = r#"
[brokers.mem]
type = "memory"

[[routes]]
path = "/t/{name}"
broker = "mem"
topic = "t/{name}"
publish = true
"#;

#[tokio::test]
async fn h2c_prior_knowledge_shares_the_http1_port() {
    let sluice = Sluice::start(MEMORY).await;
    let h2 = H2::h2c(sluice.addr).await;
    let mut stream = h2.stream("/t/a").await;
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        stream.header("transfer-encoding"),
        None,
        "no connection-specific header on h2"
    );
    stream.opened().await;
    publish(sluice.addr, "/t/a", "over h2c").await;
    assert_eq!(stream.next_event().await.data, "over h2c");
}

#[tokio::test]
async fn tls_h2_by_alpn() {
    let sluice = Sluice::start_tls(MEMORY).await;
    let tls_addr = sluice.tls_addr.expect("tls listener");
    let h2 = H2::tls(tls_addr, &sluice.dir.0.join("cert.pem")).await;
    let mut stream = h2.stream("/t/secure").await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.opened().await;
    publish(sluice.addr, "/t/secure", "over tls").await;
    assert_eq!(stream.next_event().await.data, "over tls");
}

#[tokio::test]
async fn tls_http1_by_alpn() {
    let sluice = Sluice::start_tls(MEMORY).await;
    let tls_addr = sluice.tls_addr.expect("tls listener");
    let mut stream = tls_h1_stream(tls_addr, &sluice.dir.0.join("cert.pem"), "/t/h1tls").await;
    assert_eq!(stream.status, StatusCode::OK);
    // The preamble arrives at once, before any event or heartbeat.
    stream.opened().await;
    publish(sluice.addr, "/t/h1tls", "over tls h1").await;
    assert_eq!(stream.next_event().await.data, "over tls h1");
}

#[tokio::test]
async fn a_hundred_streams_on_one_h2_connection() {
    let sluice = Sluice::start(MEMORY).await;
    let h2 = H2::h2c(sluice.addr).await;
    let mut streams = Vec::new();
    for i in 0..100 {
        // Two topics, so the streams of one connection are routed independently.
        let mut stream = h2.stream(&format!("/t/{}", i % 2)).await;
        stream.opened().await;
        streams.push(stream);
    }
    for n in 0..5 {
        publish(sluice.addr, "/t/0", format!("even {n}")).await;
        publish(sluice.addr, "/t/1", format!("odd {n}")).await;
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        let kind = if i % 2 == 0 { "even" } else { "odd" };
        for n in 0..5 {
            assert_eq!(
                stream.next_event().await.data,
                format!("{kind} {n}"),
                "stream {i}"
            );
        }
    }
    // Closing one stream (RST_STREAM) leaves its siblings on the connection working.
    drop(streams.remove(0));
    publish(sluice.addr, "/t/0", "still here").await;
    assert_eq!(streams[1].next_event().await.data, "still here");
}
