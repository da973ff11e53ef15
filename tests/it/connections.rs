//! Connections that hold no stream and no request: closed after `request_timeout` in every phase
//! (silent, inside the h2c preface, after the h2 handshake, after a TLS handshake, between
//! HTTP/1.1 requests, after the last h2 stream), and a flood of them past the open-file limit
//! cannot lock real clients out.

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The `request_timeout` below.
const TIMEOUT: Duration = Duration::from_secs(1);
/// How much later than due a close may come on a busy test machine.
const MARGIN: Duration = Duration::from_secs(3);
/// What may separate the client's clock from sluice's: a close can come no sooner than this.
const EARLIEST: Duration = Duration::from_millis(900);

const ROUTES: &str = r#"
request_timeout = "1s"

[brokers.mem]
type = "memory"

[[routes]]
path = "/t/{name}"
broker = "mem"
topic = "t/{name}"
publish = true
"#;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Reads (and discards what the server sends) until the server closes the connection; an error
/// when it is still open after `limit`.
async fn until_closed(socket: &mut TcpStream, limit: Duration) -> Result<(), String> {
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(limit, closed)
        .await
        .map_err(|_| format!("still open after {limit:?}"))
}

#[tokio::test]
async fn connections_that_send_no_request_are_closed_after_request_timeout() {
    let sluice = Sluice::start(ROUTES).await;
    let h2_no_request = [H2_PREFACE, H2_SETTINGS].concat();
    let kinds: [(&str, &[u8]); 4] = [
        ("silent TCP", b""),
        ("partial h2c preface", b"PRI * HTTP/2.0\r\n"),
        ("h2c preface and SETTINGS, no request", &h2_no_request),
        (
            "HTTP/1.1 after its first request",
            b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        ),
    ];
    let checks = kinds.map(|(_, bytes)| async move {
        let start = Instant::now();
        let mut socket = TcpStream::connect(sluice.addr).await.expect("connect");
        socket.write_all(bytes).await.expect("write");
        until_closed(&mut socket, TIMEOUT + MARGIN).await?;
        let after = start.elapsed();
        if after < EARLIEST {
            return Err(format!("closed after {after:?}, before request_timeout"));
        }
        Ok(())
    });
    let failed: Vec<String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .zip(kinds)
        .filter_map(|(result, (what, _))| result.err().map(|e| format!("{what}: {e}")))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[tokio::test]
async fn tls_connections_that_send_no_request_are_closed_after_request_timeout() {
    let sluice = Sluice::start_tls(ROUTES).await;
    let tls_addr = sluice.tls_addr.expect("tls listener");
    let cert = sluice.dir.0.join("cert.pem");
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let start = Instant::now();
        let mut tls = tls_connect(tls_addr, &cert, alpn).await;
        let mut buf = [0u8; 1024];
        let closed = async {
            // What the server sends first (its h2 SETTINGS) is read and dropped; a TLS stream
            // closed without close_notify reads as an error, which is a close too.
            while let Ok(n) = tls.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let what = String::from_utf8_lossy(alpn);
        if tokio::time::timeout(TIMEOUT + MARGIN, closed)
            .await
            .is_err()
        {
            panic!(
                "TLS {what} with no request: still open after {:?}",
                TIMEOUT + MARGIN
            );
        }
        let after = start.elapsed();
        assert!(after >= EARLIEST, "TLS {what}: closed after {after:?}");
    }
}

/// An h2c connection, and a task that ends when the connection does.
async fn h2c(addr: SocketAddr) -> (SendRequest<Empty<Bytes>>, JoinHandle<()>) {
    within("h2c handshake", async {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2c handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        (sender, conn)
    })
    .await
}

async fn h2_get(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> hyper::Response<hyper::body::Incoming> {
    within("h2 request", async {
        sender.ready().await.expect("connection ready");
        let req = Request::get(format!("http://{addr}{path}"))
            .body(Empty::new())
            .expect("request");
        sender.send_request(req).await.expect("h2 response")
    })
    .await
}

/// Fails the test unless `conn` ends within `limit`.
async fn ends_within(conn: &mut JoinHandle<()>, limit: Duration, what: &str) {
    if tokio::time::timeout(limit, conn).await.is_err() {
        panic!("{what}: still open after {limit:?}");
    }
}

#[tokio::test]
async fn an_h2_connection_is_closed_when_its_streams_have_ended_not_while_one_lives() {
    let sluice = Sluice::start(ROUTES).await;
    let addr = sluice.addr;
    let (mut ended, mut ended_conn) = h2c(addr).await;
    let (mut live, mut live_conn) = h2c(addr).await;
    // A stream that ends at once on each connection; the second one also keeps an SSE stream. The
    // first connection is idle from the end of its stream, so no sooner than this.
    let idle_from = Instant::now();
    for sender in [&mut ended, &mut live] {
        let health = h2_get(sender, addr, "/healthz").await;
        assert_eq!(health.status(), StatusCode::OK);
        health.into_body().collect().await.expect("body");
    }
    let mut stream = SseStream::new(h2_get(&mut live, addr, "/t/live").await);
    assert_eq!(stream.status, StatusCode::OK);
    stream.opened().await;

    ends_within(
        &mut ended_conn,
        TIMEOUT + MARGIN,
        "h2 connection whose stream ended",
    )
    .await;
    assert!(
        idle_from.elapsed() >= EARLIEST,
        "closed before request_timeout"
    );

    // Sluice's own idle clock measures one more request_timeout: the live connection outlasts it.
    let mut clock = TcpStream::connect(addr).await.expect("connect");
    until_closed(&mut clock, TIMEOUT + MARGIN)
        .await
        .expect("silent TCP connection closed");
    assert!(
        !live_conn.is_finished(),
        "a connection with a live stream was closed"
    );
    publish(addr, "/t/live", "still here").await;
    assert_eq!(stream.next_event().await.data, "still here");

    // Its last stream reset by the client: now it holds nothing, and goes after request_timeout.
    drop(stream);
    let reset = Instant::now();
    ends_within(
        &mut live_conn,
        TIMEOUT + MARGIN,
        "h2 connection after its last stream",
    )
    .await;
    assert!(reset.elapsed() >= EARLIEST, "closed before request_timeout");
    drop((ended, live));
}

#[tokio::test]
async fn a_flood_of_idle_connections_past_the_file_limit_cannot_lock_clients_out() {
    // Sluice may hold 512 files. The flood waits far less than request_timeout, so only making
    // room (closing the longest-idle connection for a new one) can let clients in.
    const FILE_LIMIT: u64 = 512;
    const FLOOD: usize = 1000;
    let sluice = Sluice::start_opts(
        &ROUTES.replace("\"1s\"", "\"60s\""),
        Options {
            file_limit: Some(FILE_LIMIT),
            capture_log: true,
            ..Options::default()
        },
    )
    .await;
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(
            within("connect", TcpStream::connect(sluice.addr))
                .await
                .expect("connect"),
        );
    }

    let health = within("/healthz under the flood", get(sluice.addr, "/healthz"))
        .await
        .expect("/healthz under the flood");
    assert_eq!(health.status, StatusCode::OK);
    let mut stream = h1_stream(sluice.addr, "/t/flooded").await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.opened().await;
    publish(sluice.addr, "/t/flooded", "through the flood").await;
    assert_eq!(stream.next_event().await.data, "through the flood");

    // The oldest of the flood were closed to make room; the newest are still open.
    let open = |socket: &TcpStream| {
        let mut buf = [0u8; 16];
        matches!(socket.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    };
    let closed = eventually("the flood's oldest connections closed", || {
        let closed = flood.iter().filter(|s| !open(s)).count();
        let oldest_closed = !open(&flood[0]);
        async move { (oldest_closed && closed >= FLOOD - FILE_LIMIT as usize).then_some(closed) }
    })
    .await;
    assert!(closed < FLOOD, "every connection of the flood was closed");
    assert!(open(&flood[FLOOD - 1]), "the newest connection was closed");
    let log = sluice.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("Accept() failed"), "{log}");
}
