//! HTTP behaviour on a memory broker: statuses, headers, the stream preamble, publishing, payloads.

use crate::support::*;
use bytes::Bytes;
use http::StatusCode;

const MEMORY: &str = r#"
heartbeat = "300ms"
max_publish_bytes = 1024

[brokers.mem]
type = "memory"

[[routes]]
path = "/rooms/{room}"
broker = "mem"
topic = "rooms/{room}"
publish = true

[[routes]]
path = "/readonly/{room}"
broker = "mem"
topic = "rooms/{room}"
event = "reading"

[[routes]]
path = "/all"
broker = "mem"
topic = "rooms/+"
event = "{topic}"
"#;

#[tokio::test]
async fn stream_headers_preamble_and_events() {
    let sluice = Sluice::start(MEMORY).await;
    let mut stream = h1_stream(sluice.addr, "/rooms/lobby").await;
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    assert_eq!(stream.header("cache-control"), Some("no-cache"));
    assert_eq!(stream.header("x-accel-buffering"), Some("no"));
    stream.opened().await;
    let retry = stream.retry.expect("a retry is sent first");
    assert!(
        (2000..3000).contains(&retry),
        "the configured 2 s plus up to half of it at random: {retry}"
    );
    assert!(stream.raw.starts_with(b"retry: "));

    publish(sluice.addr, "/rooms/lobby", "hello").await;
    let event = stream.next_event().await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("message", "hello")
    );
}

#[tokio::test]
async fn event_names_fixed_and_from_topic() {
    let sluice = Sluice::start(MEMORY).await;
    let mut named = h1_stream(sluice.addr, "/readonly/a").await;
    let mut all = h1_stream(sluice.addr, "/all").await;
    named.opened().await;
    all.opened().await;
    publish(sluice.addr, "/rooms/a", "1").await;
    publish(sluice.addr, "/rooms/b", "2").await;
    assert_eq!(named.next_event().await.event, "reading");
    let first = all.next_event().await;
    let second = all.next_event().await;
    assert_eq!(
        (first.event.as_str(), first.data.as_str()),
        ("rooms/a", "1")
    );
    assert_eq!(
        (second.event.as_str(), second.data.as_str()),
        ("rooms/b", "2")
    );
}

#[tokio::test]
async fn multi_line_and_binary_payloads_cannot_forge_events() {
    let sluice = Sluice::start(MEMORY).await;
    let mut stream = h1_stream(sluice.addr, "/rooms/p").await;
    stream.opened().await;
    publish(
        sluice.addr,
        "/rooms/p",
        "line1\r\nline2\rline3\n\nevent: forged\ndata: x",
    )
    .await;
    publish(
        sluice.addr,
        "/rooms/p",
        Bytes::from_static(&[0xff, 0xfe, b'\n', 0x00]),
    )
    .await;
    publish(sluice.addr, "/rooms/p", "after").await;
    let text = stream.next_event().await;
    assert_eq!(text.event, "message");
    assert_eq!(text.data, "line1\nline2\nline3\n\nevent: forged\ndata: x");
    let binary = stream.next_event().await;
    assert_eq!(binary.event, "message.base64");
    assert_eq!(binary.data, "//4KAA==");
    assert_eq!(stream.next_event().await.data, "after");
    assert!(std::str::from_utf8(&stream.raw).is_ok());
}

#[tokio::test]
async fn heartbeats_on_an_idle_stream() {
    let sluice = Sluice::start(MEMORY).await;
    let mut stream = h1_stream(sluice.addr, "/rooms/quiet").await;
    // The preamble comment, then at least two heartbeats (300 ms apart).
    stream.comments_at_least(3).await;
}

#[tokio::test]
async fn statuses_for_bad_requests() {
    let sluice = Sluice::start(MEMORY).await;
    let addr = sluice.addr;

    let health = get(addr, "/healthz").await.expect("healthz");
    assert_eq!(health.status, StatusCode::OK);

    let missing = get(addr, "/nowhere").await.expect("404");
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let wrong = request(addr, "DELETE", "/rooms/a", Bytes::new())
        .await
        .expect("405");
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), Some("GET, POST"));

    let readonly = request(addr, "POST", "/readonly/a", Bytes::from_static(b"x"))
        .await
        .expect("405");
    assert_eq!(readonly.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(readonly.header("allow"), Some("GET"));

    for bad in [
        "/rooms/%2B",
        "/rooms/+",
        "/rooms/%23",
        "/rooms/a%2Fb",
        "/rooms/%00",
        "/rooms/%0A",
        "/rooms/",
        "/rooms/%FF",
    ] {
        let resp = get(addr, bad).await.expect("400");
        assert_eq!(
            resp.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            resp.text()
        );
        assert!(resp
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")));
        assert!(
            resp.text().contains("room"),
            "the reason names the parameter: {}",
            resp.text()
        );
    }
}

#[tokio::test]
async fn publish_size_limit() {
    let sluice = Sluice::start(MEMORY).await;
    let mut stream = h1_stream(sluice.addr, "/rooms/big").await;
    stream.opened().await;
    let too_big = request(
        sluice.addr,
        "POST",
        "/rooms/big",
        Bytes::from(vec![b'x'; 1025]),
    )
    .await
    .expect("413");
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    publish(sluice.addr, "/rooms/big", vec![b'y'; 1024]).await;
    // The refused body never reached the stream; the accepted one did.
    assert_eq!(stream.next_event().await.data.len(), 1024);
}

#[tokio::test]
async fn graceful_shutdown_ends_streams_with_a_retry() {
    let mut sluice = Sluice::start(MEMORY).await;
    let mut stream = h1_stream(sluice.addr, "/rooms/bye").await;
    stream.opened().await;
    let status = sluice.terminate().await;
    assert!(status.success(), "exit status {status}");
    stream.until_end().await;
    let text = String::from_utf8(stream.raw.clone()).expect("utf-8");
    let last_retry: u64 = text
        .rsplit("retry: ")
        .next()
        .and_then(|r| r.lines().next())
        .and_then(|v| v.parse().ok())
        .expect("a retry field at shutdown");
    assert!(text.matches("retry: ").count() == 2, "{text:?}");
    assert!(
        (2000..6000).contains(&last_retry),
        "jittered retry {last_retry}"
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut sluice = Sluice::start(MEMORY).await;
    let mut stream = h1_stream(sluice.addr, "/rooms/twice").await;
    stream.opened().await;
    sluice.send_sigterm();
    // The stream's end shows the first signal was handled; the process is still in its grace period.
    stream.until_end().await;
    sluice.send_sigterm();
    let status = sluice.exited().await;
    assert_eq!(status.code(), Some(130), "exit status {status}");
}

#[tokio::test]
async fn a_busy_port_is_a_clear_start_up_error() {
    let sluice = Sluice::start(MEMORY).await;
    let config = sluice.dir.0.join("config.toml");
    let out = std::process::Command::new(sluice_bin())
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "error")
        .output()
        .expect("run a second sluice");
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("cannot listen on {}", sluice.addr)),
        "{log}"
    );
}

#[tokio::test]
async fn static_files_are_regular_files_directly_in_the_folder() {
    let dir = TempDir::new("static");
    let (site, outside) = (dir.0.join("site"), dir.0.join("outside"));
    std::fs::create_dir_all(site.join("sub")).expect("create folders");
    std::fs::create_dir_all(&outside).expect("create folders");
    std::fs::write(site.join("index.html"), "<p>dashboard</p>").expect("write");
    std::fs::write(site.join("sub").join("inner.js"), "inner").expect("write");
    std::fs::write(outside.join("secret.txt"), "secret").expect("write");
    std::os::unix::fs::symlink(outside.join("secret.txt"), site.join("passwd")).expect("symlink");
    std::os::unix::fs::symlink("/etc/passwd", site.join("etc")).expect("symlink");
    let sluice = Sluice::start(&format!("static_dir = \"{}\"\n{MEMORY}", site.display())).await;
    let index = get(sluice.addr, "/").await.expect("GET /");
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(index.text(), "<p>dashboard</p>");
    for path in ["/passwd", "/etc", "/sub/inner.js", "/sub"] {
        let resp = get(sluice.addr, path).await.expect("GET");
        assert_eq!(
            resp.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            resp.text()
        );
    }
}

/// Sends `request` on a fresh socket and reads until the server closes it or `until` appears.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8], until: Option<&[u8]>) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket.write_all(request).await.expect("send");
    let mut received = Vec::new();
    within("the server's answer", async {
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            received.extend_from_slice(&buf[..n]);
            if until.is_some_and(|u| received.windows(u.len()).any(|w| w == u)) {
                return;
            }
        }
    })
    .await;
    received
}

#[tokio::test]
async fn an_http_1_0_client_gets_a_close_delimited_stream() {
    let sluice = Sluice::start(MEMORY).await;
    let addr = sluice.addr;
    let reader = tokio::spawn(async move {
        raw_exchange(
            addr,
            b"GET /rooms/old HTTP/1.0\r\n\r\n",
            Some(b"data: hello\n\n"),
        )
        .await
    });
    // Publish until the stream has it (its subscription is live once its preamble went out).
    let received = within("the HTTP/1.0 stream gets an event", async {
        loop {
            publish(addr, "/rooms/old", "hello").await;
            if reader.is_finished() {
                return reader.await.expect("reader");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    // No chunk sizes: the body is the event stream itself.
    assert!(body.starts_with("retry: "), "{body:?}");
    assert!(body.contains("\n\ndata: hello\n\n"), "{body:?}");
}

#[tokio::test]
async fn a_request_head_that_does_not_parse_gets_a_400_with_a_reason() {
    let sluice = Sluice::start(MEMORY).await;
    for request in [
        &b"GET /rooms/a>b HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        b"GET /rooms/a HTTP/1.1\r\nhost: x\r\na header line without a colon\r\n\r\n",
        b"GET /rooms/a HTTP/1.1\r\nho st: x\r\n\r\n",
    ] {
        let answer = raw_exchange(sluice.addr, request, None).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{:?}: {text:?}",
            String::from_utf8_lossy(request)
        );
        assert!(text.ends_with("does not parse as HTTP/1.1\n"), "{text:?}");
    }
    // The server is fine afterwards.
    let health = get(sluice.addr, "/healthz").await.expect("healthz");
    assert_eq!(health.status, StatusCode::OK);
}
