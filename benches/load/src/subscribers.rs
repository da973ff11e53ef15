//! SSE subscribers for the load generator: raw HTTP/1.1 sockets (one stream each) and HTTP/2
//! connections carrying many streams, each counting what it receives into shared [`Stats`].

use crate::compression::{self, Decoder};
use crate::sse::{Dechunker, EventCounter};
use crate::stats::Stats;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::task::JoinSet;

/// Every how many subscribers one records latencies (keeps the shared histogram's lock cold).
const LATENCY_SAMPLE_EVERY: usize = 8;

/// Connects from `source` (a loopback address of its own, so runs never exhaust one address's
/// ephemeral ports) to `server`.
async fn connect(
    source: IpAddr,
    server: SocketAddr,
    recv_buffer: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.connect(server).await
}

/// One HTTP/1.1 subscriber; runs until the server closes the stream or the task is aborted.
/// A `stalled` subscriber sends its request and then never reads (a tiny receive buffer).
pub async fn h1(
    index: usize,
    source: IpAddr,
    server: SocketAddr,
    path: String,
    stats: Arc<Stats>,
    stalled: bool,
) {
    let Ok(mut socket) = connect(source, server, stalled.then_some(4096)).await else {
        stats.closed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = socket.set_nodelay(true);
    let accept = compression::encoding()
        .map(|e| format!("accept-encoding: {e}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n{accept}\r\n");
    if socket.write_all(request.as_bytes()).await.is_err() {
        stats.closed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if stalled {
        stats.ready.fetch_add(1, Ordering::Relaxed);
        std::future::pending::<()>().await;
    }
    let sample = index.is_multiple_of(LATENCY_SAMPLE_EVERY);
    let mut head = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut chunked = None::<Dechunker>;
    let mut decoder = None::<Decoder>;
    let mut decoded = Vec::new();
    let mut counter = EventCounter::default();
    loop {
        let n = match socket.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // The first body bytes come after the response head, in the same read or a later one.
        let rest;
        let body = if chunked.is_none() {
            head.extend_from_slice(&buf[..n]);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            if !text.starts_with("http/1.1 200") {
                break;
            }
            stats.ready.fetch_add(1, Ordering::Relaxed);
            let is_chunked = text.contains("transfer-encoding: chunked");
            decoder = Decoder::for_head(&text);
            chunked = Some(if is_chunked {
                Dechunker::default()
            } else {
                Dechunker::passthrough()
            });
            rest = head[end + 4..].to_vec();
            &rest[..]
        } else {
            &buf[..n]
        };
        let mut reading = Reading {
            dechunker: chunked.as_mut(),
            decoder: decoder.as_mut(),
            decoded: &mut decoded,
            counter: &mut counter,
        };
        if !reading.count(body, &stats, sample) {
            break;
        }
    }
    stats.closed.fetch_add(1, Ordering::Relaxed);
}

/// A client that resumes on `path` with `last_event_id` and then never reads (a tiny receive
/// buffer): what a stalled resume costs the server.
pub async fn stalled_resume(
    source: IpAddr,
    server: SocketAddr,
    path: String,
    last_event_id: String,
    stats: Arc<Stats>,
) {
    let Ok(mut socket) = connect(source, server, Some(4096)).await else {
        stats.closed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\nlast-event-id: {last_event_id}\r\n\r\n"
    );
    if socket.write_all(request.as_bytes()).await.is_err() {
        stats.closed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // Ready once the server has started to answer: the resume has been taken in.
    let mut probe = [0u8; 1];
    if socket.peek(&mut probe).await.is_ok() {
        stats.ready.fetch_add(1, Ordering::Relaxed);
    }
    std::future::pending::<()>().await;
}

/// What one HTTP/1.1 subscriber reads its body with.
struct Reading<'a> {
    dechunker: Option<&'a mut Dechunker>,
    decoder: Option<&'a mut Decoder>,
    decoded: &'a mut Vec<u8>,
    counter: &'a mut EventCounter,
}

impl Reading<'_> {
    /// Dechunks, decodes (a compressed stream) and counts `input`, and its bytes as they came on
    /// the wire (the body, before decoding); false when the body does not decode.
    fn count(&mut self, input: &[u8], stats: &Stats, sample: bool) -> bool {
        let Some(d) = self.dechunker.as_mut() else {
            return true;
        };
        self.decoded.clear();
        d.feed(input, self.decoded);
        stats
            .body_bytes
            .fetch_add(self.decoded.len() as u64, Ordering::Relaxed);
        if let Some(decoder) = self.decoder.as_mut() {
            let body = std::mem::take(self.decoded);
            if !decoder.decode(&body, self.decoded) {
                return false;
            }
        }
        self.counter.feed(self.decoded, stats, sample);
        true
    }
}

/// One HTTP/2 (h2c prior knowledge) connection carrying `streams` subscriptions to `path`.
pub async fn h2(
    index: usize,
    source: IpAddr,
    server: SocketAddr,
    path: String,
    streams: usize,
    stats: Arc<Stats>,
) {
    let Ok(socket) = connect(source, server, None).await else {
        stats.closed.fetch_add(streams as u64, Ordering::Relaxed);
        return;
    };
    let _ = socket.set_nodelay(true);
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.max_concurrent_reset_streams(0);
    let Ok((sender, conn)) = builder
        .handshake::<_, Empty<Bytes>>(TokioIo::new(socket))
        .await
    else {
        stats.closed.fetch_add(streams as u64, Ordering::Relaxed);
        return;
    };
    let connection = tokio::spawn(conn);
    let mut tasks = JoinSet::new();
    for s in 0..streams {
        let mut sender = sender.clone();
        let stats = stats.clone();
        let uri = format!("http://{server}{path}");
        let sample = (index * streams + s).is_multiple_of(LATENCY_SAMPLE_EVERY);
        tasks.spawn(async move {
            let Ok(request) = http::Request::get(uri).body(Empty::<Bytes>::new()) else {
                return;
            };
            if sender.ready().await.is_err() {
                stats.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let Ok(response) = sender.send_request(request).await else {
                stats.closed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if response.status() != 200 {
                stats.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            stats.ready.fetch_add(1, Ordering::Relaxed);
            let mut body = response.into_body();
            let mut counter = EventCounter::default();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    counter.feed(&data, &stats, sample);
                }
            }
            stats.closed.fetch_add(1, Ordering::Relaxed);
        });
    }
    while tasks.join_next().await.is_some() {}
    connection.abort();
}
