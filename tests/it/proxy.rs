//! Pass-through proxying to an application (a test origin that records what it gets): what sluice
//! answers itself (routes, static files, its own paths) and what it passes on (any method, bodies
//! streamed, HTTP/1.1 and h2c clients, event streams flushed per event), the headers it sets and
//! removes, request smuggling refused, upstream failures as `502`/`504`, and upstream keep-alive.

mod origin;

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use origin::Origin;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A memory route, a static folder, and the proxy to `upstream`, with `extra` proxy keys.
fn config(upstream: SocketAddr, static_dir: &std::path::Path, extra: &str) -> String {
    format!(
        r#"static_dir = "{}"

[brokers.m]
type = "memory"

[[routes]]
path = "/rooms/{{room}}"
broker = "m"
topic = "rooms/{{room}}"
publish = true

[proxy]
upstream = "http://{upstream}"
{extra}
"#,
        static_dir.display()
    )
}

/// A static folder with `index.html` and `app.js`.
fn static_folder(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    std::fs::write(dir.0.join("index.html"), "<h1>sluice's page</h1>").expect("write");
    std::fs::write(dir.0.join("app.js"), "// sluice's script").expect("write");
    dir
}

async fn start(origin: &Origin, tag: &str, extra: &str) -> (Sluice, TempDir) {
    let dir = static_folder(tag);
    let sluice = Sluice::start(&config(origin.addr, &dir.0, extra)).await;
    (sluice, dir)
}

/// One request on its own HTTP/1.1 connection, with headers.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Response {
    within("a proxied request", async {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "app.example");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = sender
            .send_request(req.body(Full::new(body)).expect("request"))
            .await
            .expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Response {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_is_proxied_and_sluices_own_answers_keep_priority() {
    let origin = Origin::start().await;
    let (sluice, _dir) = start(&origin, "proxy-priority", "").await;

    let json = send(sluice.addr, "GET", "/api/items?page=2", &[], Bytes::new()).await;
    assert_eq!(json.status, StatusCode::OK);
    assert_eq!(json.text(), r#"{"path":"/api/items"}"#);
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(json.header("x-origin"), Some("yes"));
    let seen = origin.seen("/api/items");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/api/items?page=2", "the query is kept");
    assert_eq!(
        seen[0].header("host"),
        ["app.example"],
        "the client's Host is kept"
    );

    // Sluice's own paths, its static files and its routes are not proxied.
    let page = send(sluice.addr, "GET", "/app.js", &[], Bytes::new()).await;
    assert_eq!(page.text(), "// sluice's script");
    let health = send(sluice.addr, "GET", "/healthz", &[], Bytes::new()).await;
    assert_eq!(health.text(), "ok\n");
    let mut stream = h1_stream(sluice.addr, "/rooms/lobby").await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.opened().await;
    let wrong = send(sluice.addr, "DELETE", "/rooms/lobby", &[], Bytes::new()).await;
    assert_eq!(
        wrong.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "a route's path is sluice's"
    );
    let preflight = send(sluice.addr, "OPTIONS", "/rooms/lobby", &[], Bytes::new()).await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    assert!(
        origin.seen("/").is_empty() || origin.seen("/").iter().all(|s| s.path.starts_with("/api/"))
    );

    // What matches none of them is the application's: other methods on a static file, a missing
    // file, an OPTIONS of the application's.
    let post = send(
        sluice.addr,
        "POST",
        "/app.js",
        &[],
        Bytes::from_static(b"x"),
    )
    .await;
    assert_eq!(post.text(), r#"{"path":"/app.js"}"#);
    let missing = send(sluice.addr, "GET", "/nothing.css", &[], Bytes::new()).await;
    assert_eq!(missing.text(), r#"{"path":"/nothing.css"}"#);
    let options = send(sluice.addr, "OPTIONS", "/api/items", &[], Bytes::new()).await;
    assert_eq!(options.text(), r#"{"path":"/api/items"}"#);
    assert_eq!(origin.seen("/api/items").len(), 2);
    assert_eq!(origin.seen("/app.js")[0].method, "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_passed_whole_in_each_framing_and_protocol() {
    let origin = Origin::start().await;
    let (sluice, _dir) = start(&origin, "proxy-bodies", "").await;
    let json = Bytes::from_static(br#"{"name":"sluice"}"#);
    let echoed = send(
        sluice.addr,
        "POST",
        "/echo",
        &[("content-type", "application/json")],
        json.clone(),
    )
    .await;
    assert_eq!(
        (echoed.status, echoed.body.clone()),
        (StatusCode::OK, json.clone())
    );
    assert_eq!(echoed.header("content-type"), Some("application/json"));
    let seen = origin.seen("/echo");
    assert_eq!(seen[0].header("content-length"), ["17"]);

    // A large body sent in chunks by the client goes up in chunks, whole and in order.
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = big
        .chunks(64 * 1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let resp = within("a chunked upload", async {
        let io = TokioIo::new(TcpStream::connect(sluice.addr).await.expect("connect"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::post("/echo")
            .header("host", "app.example")
            .body(StreamBody::new(futures::stream::iter(chunks)))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        resp.into_body().collect().await.expect("body").to_bytes()
    })
    .await;
    assert_eq!(resp.len(), big.len());
    assert!(resp == big, "the echo differs");
    let seen = origin.seen("/echo");
    assert_eq!(seen[1].header("transfer-encoding"), ["chunked"]);
    assert!(seen[1].header("content-length").is_empty());

    // HTTP/2 from the client: a body of unknown length goes up chunked, the response comes back.
    let resp = within("an h2c upload", async {
        let io = TokioIo::new(TcpStream::connect(sluice.addr).await.expect("connect"));
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2c handshake");
        tokio::spawn(conn);
        let pieces = vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"first,"))),
            Ok(Frame::data(Bytes::from_static(b"second"))),
        ];
        let req = Request::put(format!("http://{}/echo?h2", sluice.addr))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(StreamBody::new(futures::stream::iter(pieces)))
            .expect("request");
        let resp = sender.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.expect("body").to_bytes()
    })
    .await;
    assert_eq!(resp, Bytes::from_static(b"first,second"));
    let seen = origin.seen("/echo?h2");
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(
        seen[0].header("host"),
        [sluice.addr.to_string()],
        "from :authority"
    );
    assert_eq!(
        seen[0].header("cookie"),
        ["a=1; b=2"],
        "HTTP/2 cookies joined"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_event_stream_is_flushed_event_by_event_over_h1_and_h2c() {
    let origin = Origin::start().await;
    let (sluice, _dir) = start(&origin, "proxy-events", "").await;
    let h2 = H2::h2c(sluice.addr).await;
    for protocol in ["h1", "h2c"] {
        let events = origin.events(protocol);
        let path = format!("/events/{protocol}");
        events
            .send(Bytes::from_static(b"retry: 1000\n\n"))
            .expect("origin stream");
        let mut stream = match protocol {
            "h1" => h1_stream(sluice.addr, &path).await,
            _ => h2.stream(&path).await,
        };
        assert_eq!(stream.status, StatusCode::OK, "{protocol}");
        assert_eq!(stream.header("content-type"), Some("text/event-stream"));
        // Each event is written only once the previous one came through sluice: a buffered
        // event would never arrive.
        for n in 0..5 {
            let event = format!("id: {n}\nevent: tick\ndata: {protocol} {n}\n\n");
            events.send(Bytes::from(event)).expect("origin stream");
            let got = stream.next_event().await;
            assert_eq!(got.data, format!("{protocol} {n}"), "{protocol}");
            assert_eq!(got.event, "tick");
            assert_eq!(
                stream.last_event_id.as_deref(),
                Some(n.to_string().as_str())
            );
        }
        // The origin ends its stream: the client's ends too.
        drop(events);
        let rest = stream.until_end().await;
        assert!(rest.is_empty(), "{protocol}: {rest:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive() {
    let origin = Origin::start().await;
    let (sluice, _dir) = start(&origin, "proxy-keepalive", "").await;
    const REQUESTS: usize = 10;
    for n in 0..REQUESTS {
        let path = format!("/api/keep/{n}");
        let resp = send(sluice.addr, "GET", &path, &[], Bytes::new()).await;
        assert_eq!(resp.status, StatusCode::OK);
    }
    let seen = origin.seen("/api/keep/");
    assert_eq!(seen.len(), REQUESTS);
    // One connection would carry them all, but pingora's pool can miss an idle connection that
    // its idle watcher is handing back at that instant (it logs "failed to acquire reusable
    // stream") and open another: so most, not all, requests ride a reused connection.
    let connections = origin.connections();
    assert!(
        connections <= REQUESTS / 2,
        "{connections} connections for {REQUESTS} requests"
    );
    let most = (1..=connections)
        .map(|c| seen.iter().filter(|s| s.connection == c).count())
        .max();
    assert!(most >= Some(2), "no connection was reused: {seen:?}");
}

/// Writes `raw` on a new connection and reads everything sluice sends until it closes.
async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    within("a raw exchange", async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(raw).await.expect("write");
        let mut answer = Vec::new();
        // Sluice closes every connection here: after a refusal, after a request whose framing
        // forbids reuse, or after the `connection: close` each test sends last.
        let _ = tcp.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
}

/// The status codes of the responses in a raw answer, in order.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| answer.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_go_and_forwarding_headers_are_sluices() {
    let origin = Origin::start().await;
    let (sluice, _dir) = start(&origin, "proxy-headers", "").await;
    let request = "GET /hops HTTP/1.1\r\n\
        Host: app.example\r\n\
        X-Forwarded-For: 6.6.6.6\r\n\
        X-Forwarded-For: 7.7.7.7\r\n\
        Forwarded: for=6.6.6.6;proto=https\r\n\
        X-Forwarded-Proto: https\r\n\
        X-Forwarded-Host: evil.example\r\n\
        X-Real-IP: 6.6.6.6\r\n\
        Connection: close, X-Private\r\n\
        X-Private: do-not-forward\r\n\
        Keep-Alive: timeout=100\r\n\
        Proxy-Connection: keep-alive\r\n\
        Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        TE: trailers\r\n\
        Upgrade: websocket\r\n\
        Authorization: Bearer kept\r\n\
        \r\n";
    let answer = raw_exchange(sluice.addr, request.as_bytes()).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = &origin.seen("/hops")[0];
    for gone in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(
            seen.header(gone).is_empty(),
            "{gone} was passed on: {seen:?}"
        );
    }
    assert_eq!(seen.header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(seen.header("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.header("x-forwarded-host"), ["app.example"]);
    assert_eq!(
        seen.header("forwarded"),
        ["for=127.0.0.1;proto=http;host=\"app.example\""]
    );
    assert_eq!(seen.header("authorization"), ["Bearer kept"]);
    assert_eq!(seen.header("host"), ["app.example"]);
    // The response's own hop-by-hop headers do not reach the client either.
    let answer = answer.to_ascii_lowercase();
    assert!(answer.contains("x-origin: yes"), "{answer}");
    for gone in ["keep-alive: timeout", "x-origin-private"] {
        assert!(!answer.contains(gone), "{gone}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_framings_are_refused_or_passed_one_way() {
    let origin = Origin::start().await;
    let (sluice, _dir) = start(&origin, "proxy-smuggling", "").await;
    let next = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // Each head is followed by a body that, read another way, would hold a second request.
    let refused = [
        // Two different lengths.
        format!("POST /s/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd{next}"),
        format!("POST /s/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 40\r\n\r\nabcd{next}"),
        // A length that is not a plain number.
        format!("POST /s/3 HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd{next}"),
        // A transfer coding other than a final chunked, or more than one.
        format!("POST /s/4 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n{next}"),
        format!("POST /s/5 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{next}"),
        format!("POST /s/6 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{next}"),
        // Header folding (obs-fold), on a plain header and on the framing header.
        format!("POST /s/7 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\nContent-Length: 4\r\n\r\nabcd{next}"),
        format!("POST /s/8 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{next}"),
        // Whitespace before the colon.
        format!("POST /s/9 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\nabcd{next}"),
        // HTTP/1.0 has no transfer codings.
        format!("POST /s/10 HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{next}"),
    ];
    for raw in &refused {
        let answer = raw_exchange(sluice.addr, raw.as_bytes()).await;
        let first = raw.lines().next().unwrap_or_default();
        assert_eq!(statuses(&answer), [400], "{first}: {answer}");
    }
    assert!(origin.seen("/s/").is_empty(), "{:?}", origin.seen("/s/"));

    // Both a length and chunks: the chunks frame the body (the length is dropped) and the
    // connection closes after the response, so what follows the body is never a request.
    let both = format!("POST /s/both HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n{next}");
    let answer = raw_exchange(sluice.addr, both.as_bytes()).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = origin.seen("/s/both");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, Bytes::from_static(b"abcd"));
    assert_eq!(seen[0].header("transfer-encoding"), ["chunked"]);
    assert!(seen[0].header("content-length").is_empty());

    // A chunked body holding what looks like a request stays one body.
    let inner = format!("POST /s/inner HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{next}\r\n0\r\n\r\n", next.len());
    let answer = raw_exchange(sluice.addr, inner.as_bytes()).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert_eq!(origin.seen("/s/inner")[0].body, Bytes::from(next));

    // A length-framed body, then a second request: two requests one after the other, each
    // passed on whole, or the second refused; never a body read as a request.
    let pipelined = "POST /s/cl HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcdGET /s/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(sluice.addr, pipelined.as_bytes()).await;
    assert_eq!(
        origin.seen("/s/cl")[0].body,
        Bytes::from_static(b"abcd"),
        "{answer}"
    );
    assert!(origin.seen("/s/after").len() <= 1);
    assert!(
        origin.seen("/smuggled").is_empty(),
        "{:?}",
        origin.seen("/smuggled")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_fails_is_a_502_or_504_that_says_nothing_of_it() {
    // Nothing listens on the upstream's port.
    let nowhere: SocketAddr = format!("127.0.0.1:{}", sluice_testkit::free_port())
        .parse()
        .expect("address");
    let dir = static_folder("proxy-down");
    let sluice = Sluice::start(&config(nowhere, &dir.0, "")).await;
    let down = send(sluice.addr, "GET", "/api/x", &[], Bytes::new()).await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY);
    let detail = nowhere.port().to_string();
    assert!(
        !down.text().contains(&detail) && !down.text().contains("refused"),
        "{}",
        down.text()
    );

    // An upstream that takes the request and never answers: 504 after read_timeout.
    let origin = Origin::start().await;
    let (sluice, _dir) = start(&origin, "proxy-hang", "read_timeout = \"300ms\"").await;
    let hung = send(sluice.addr, "GET", "/hang", &[], Bytes::new()).await;
    assert_eq!(hung.status, StatusCode::GATEWAY_TIMEOUT);
    let text = hung.text();
    assert!(
        !text.contains(&origin.addr.port().to_string()) && !text.contains("imed"),
        "{text}"
    );
    // A slow event stream is not cut by that timeout once it has started.
    let events = origin.events("slow");
    let mut stream = h1_stream(sluice.addr, "/events/slow").await;
    assert_eq!(stream.status, StatusCode::OK);
    let quiet = tokio::time::Instant::now();
    // Quieter than read_timeout, twice over, then an event: the stream is still there.
    let _ = stream
        .try_next_event(std::time::Duration::from_millis(700))
        .await;
    assert!(quiet.elapsed() >= std::time::Duration::from_millis(600));
    events
        .send(Bytes::from_static(b"data: late\n\n"))
        .expect("origin stream");
    assert_eq!(stream.next_event().await.data, "late");

    // An upstream that fails within its response: the client's response is cut short, not
    // completed as if it were whole.
    for h2 in [false, true] {
        let name = if h2 { "midway-h2" } else { "midway" };
        let cut = origin.cut(name);
        cut.send(Bytes::from_static(b"first part"))
            .expect("origin stream");
        let rest = within("a cut response", async {
            let mut resp = cut_request(sluice.addr, name, h2).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let first = resp.body_mut().frame().await;
            let first = first.expect("a first piece").expect("first piece");
            assert_eq!(
                first.into_data().ok(),
                Some(Bytes::from_static(b"first part"))
            );
            drop(cut);
            resp.into_body().collect().await
        })
        .await;
        // Over HTTP/1.1 the connection is closed, over HTTP/2 the stream reset.
        assert!(rest.is_err(), "a cut response read as complete (h2: {h2})");
    }

    // The connection to the upstream is still good for the next request.
    let after = send(sluice.addr, "GET", "/api/after", &[], Bytes::new()).await;
    assert_eq!(after.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_uploads_over_h1_and_h2c_with_expect_continue() {
    let origin = Origin::start().await;
    let (sluice, dir) = start(&origin, "proxy-curl", "").await;
    // Large enough for curl to ask with `Expect: 100-continue` over HTTP/1.1.
    let upload: Vec<u8> = (0..2 * 1024 * 1024)
        .map(|i: u32| b'a' + (i % 26) as u8)
        .collect();
    let file = dir.0.join("upload.bin");
    std::fs::write(&file, &upload).expect("write upload");
    for (n, protocol) in ["--http1.1", "--http2-prior-knowledge"]
        .into_iter()
        .enumerate()
    {
        let url = format!("http://{}/echo?curl={n}", sluice.addr);
        let output = within("curl", async {
            tokio::process::Command::new("curl")
                .args([
                    "--silent",
                    "--show-error",
                    "--fail",
                    "--max-time",
                    "60",
                    protocol,
                ])
                .args(["-H", "content-type: application/octet-stream"])
                .arg("--data-binary")
                .arg(format!("@{}", file.display()))
                .arg(&url)
                .output()
                .await
                .expect("curl runs")
        })
        .await;
        assert!(
            output.status.success(),
            "{protocol}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.stdout == upload, "{protocol}: the echo differs");
        let seen = origin.seen(&format!("/echo?curl={n}"));
        assert_eq!(seen.len(), 1, "{protocol}");
        assert_eq!(
            seen[0].header("content-length"),
            [upload.len().to_string()],
            "{protocol}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_proxy_to_another_upstream() {
    let (first, second) = (Origin::start().await, Origin::start().await);
    let dir = static_folder("proxy-reload");
    let sluice = Sluice::start_logged(&config(first.addr, &dir.0, "")).await;
    let before = send(sluice.addr, "GET", "/api/which", &[], Bytes::new()).await;
    assert_eq!(before.status, StatusCode::OK);
    assert!(
        sluice.reload(&config(second.addr, &dir.0, "")).await,
        "reload refused"
    );
    let after = send(sluice.addr, "GET", "/api/which", &[], Bytes::new()).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(
        (
            first.seen("/api/which").len(),
            second.seen("/api/which").len()
        ),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_with_its_ca_file() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    let origin = Origin::start_tls(&cert.cert.pem(), cert.key_pair.serialize_der()).await;
    let dir = static_folder("proxy-https");
    let ca = dir.0.join("origin-ca.pem");
    std::fs::write(&ca, cert.cert.pem()).expect("write CA");
    let https = |extra: &str| config(origin.addr, &dir.0, extra).replace("\"http://", "\"https://");
    let sluice = Sluice::start(&https(&format!("ca_file = \"{}\"", ca.display()))).await;
    let resp = send(
        sluice.addr,
        "POST",
        "/echo",
        &[],
        Bytes::from_static(b"over TLS"),
    )
    .await;
    assert_eq!(
        (resp.status, resp.body),
        (StatusCode::OK, Bytes::from_static(b"over TLS"))
    );

    // Without the CA file, the system's CAs do not know the origin's certificate: 502.
    let sluice = Sluice::start(&https("")).await;
    let resp = send(sluice.addr, "GET", "/api/untrusted", &[], Bytes::new()).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert!(origin.seen("/api/untrusted").is_empty());
}

/// `GET /cut/NAME` on a fresh connection, HTTP/1.1 or h2c; returns the response head.
async fn cut_request(
    addr: SocketAddr,
    name: &str,
    h2: bool,
) -> hyper::Response<hyper::body::Incoming> {
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    // HTTP/2 names the authority in the target, HTTP/1.1 in a `host` header.
    let request = if h2 {
        Request::get(format!("http://{addr}/cut/{name}"))
    } else {
        Request::get(format!("/cut/{name}")).header("host", "x")
    };
    let request = request.body(Full::new(Bytes::new())).expect("request");
    if h2 {
        let handshake = hyper::client::conn::http2::handshake(TokioExecutor::new(), io);
        let (mut sender, conn) = handshake.await.expect("h2c handshake");
        tokio::spawn(conn);
        sender.send_request(request).await.expect("response head")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        tokio::spawn(conn);
        sender.send_request(request).await.expect("response head")
    }
}
