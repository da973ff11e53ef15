//! The admin listener (`[admin] listen`), apart from the public ones: Prometheus metrics, health
//! and readiness, and a live status page fed by an SSE stream of its own.
//!
//! - [`metrics`]: the registry, the public metric names, and the handles the hot path records to;
//!   [`hot`]: the per-batch counters, sharded by thread.
//! - [`exposition`]: `/metrics` in Prometheus text 0.0.4, or OpenMetrics when `Accept` asks for it.
//! - [`ready`]: `/readyz` (also on the public listeners).
//! - [`status`]: the JSON snapshot the status page draws, once a second on `/status/events`.
//! - `ui/`: the status page (plain HTML, JS and CSS, built into the binary).

pub mod exposition;
pub mod hot;
pub mod metrics;
pub mod ready;
pub mod status;

use crate::connections::Connections;
use crate::http::Gateway;
use crate::sse;
use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The status page: served from the binary, so the admin listener needs no files on disk.
const PAGE: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("ui/index.html"),
    ),
    (
        "/status.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/status.js"),
    ),
    (
        "/status.css",
        "text/css; charset=utf-8",
        include_str!("ui/status.css"),
    ),
];

/// How long a request head may take, and a response write.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How often `/status/events` sends a snapshot.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// The most admin requests (status streams included) served at once; more are answered `503`.
/// The admin listener is private, but what its clients can make sluice hold is still bounded.
const MAX_REQUESTS: usize = 64;

/// The admin application: reads the gateway's current configuration and the process's metrics.
pub struct Admin {
    gateway: Arc<Gateway>,
    connections: Arc<Connections>,
    options: HttpServerOptions,
    /// Requests being answered now (see [`MAX_REQUESTS`]).
    in_progress: AtomicUsize,
}

/// A request's place under [`MAX_REQUESTS`].
struct InProgress<'a>(&'a AtomicUsize);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admin {
    pub fn new(gateway: Arc<Gateway>, connections: Arc<Connections>) -> Self {
        Self {
            gateway,
            connections,
            options: HttpServerOptions::default(),
            in_progress: AtomicUsize::new(0),
        }
    }

    /// Answers one request; `false` when the connection cannot take another.
    async fn answer(&self, session: &mut ServerSession, shutdown: &ShutdownWatch) -> bool {
        let request = session.req_header();
        let (method, path) = (request.method.clone(), request.uri.path().to_owned());
        if method != Method::GET && method != Method::HEAD {
            return respond(session, 405, "text/plain", "GET or HEAD only\n".into()).await;
        }
        match path.as_str() {
            "/metrics" => {
                exposition::refresh(&self.gateway.routing(), &self.connections);
                let accept = session
                    .req_header()
                    .headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok());
                let (kind, body) = exposition::render(accept);
                respond(session, 200, kind, body.into()).await
            }
            "/healthz" => respond(session, 200, "text/plain", "ok\n".into()).await,
            "/readyz" => {
                let routing = self.gateway.routing();
                let (status, body) = ready::readiness(&routing, self.gateway.draining());
                respond(session, status, "text/plain", body.into()).await
            }
            "/status/events" => {
                self.status_events(session, shutdown).await;
                false
            }
            path => match PAGE.iter().find(|(p, _, _)| *p == path) {
                Some((_, kind, body)) => {
                    respond(session, 200, kind, Bytes::from_static(body.as_bytes())).await
                }
                None => respond(session, 404, "text/plain", "not found\n".into()).await,
            },
        }
    }

    /// Streams a status snapshot every second until the client leaves or the server stops.
    async fn status_events(&self, session: &mut ServerSession, shutdown: &ShutdownWatch) {
        let mut head = match ResponseHeader::build(200, Some(4)) {
            Ok(head) => head,
            Err(_) => return,
        };
        let mut headers = vec![
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ];
        if !session.is_http2() {
            headers.push(("transfer-encoding", "chunked"));
        }
        for (name, value) in headers {
            if head.insert_header(name, value).is_err() {
                return;
            }
        }
        if session.write_response_header(Box::new(head)).await.is_err() {
            return;
        }
        let mut feed = status::Feed::new();
        let mut tick = tokio::time::interval(STATUS_INTERVAL);
        let mut shutdown = shutdown.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // A request body or the client closing: either way this stream is done.
                _ = session.read_body_or_idle(true) => return,
                _ = shutdown.changed() => return,
            }
            let json = feed.snapshot(&self.gateway.routing());
            let frame = sse::encode_event(Some("status"), json.as_bytes());
            let write = session.write_response_body(frame, false);
            if !matches!(tokio::time::timeout(TIMEOUT, write).await, Ok(Ok(()))) {
                return;
            }
        }
    }
}

/// Writes a complete response; `false` when the connection is done.
async fn respond(session: &mut ServerSession, status: u16, kind: &str, body: Bytes) -> bool {
    let Ok(mut head) = ResponseHeader::build(status, Some(3)) else {
        return false;
    };
    let headers = [
        ("content-type", kind.to_owned()),
        ("content-length", body.len().to_string()),
        ("cache-control", "no-cache".to_owned()),
    ];
    for (name, value) in headers {
        if head.insert_header(name, value).is_err() {
            return false;
        }
    }
    let body = if session.req_header().method == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    let write = async {
        session.write_response_header(Box::new(head)).await?;
        session.write_response_body(body, true).await
    };
    matches!(tokio::time::timeout(TIMEOUT, write).await, Ok(Ok(())))
}

#[async_trait]
impl HttpServerApp for Admin {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match tokio::time::timeout(TIMEOUT, session.read_request()).await {
            Ok(Ok(true)) => {}
            _ => return None,
        }
        let place = InProgress(&self.in_progress);
        let answered = if self.in_progress.fetch_add(1, Ordering::Relaxed) >= MAX_REQUESTS {
            respond(&mut session, 503, "text/plain", "busy\n".into()).await
        } else {
            self.answer(&mut session, shutdown).await
        };
        drop(place);
        if !answered {
            return None;
        }
        let settings = pingora::apps::HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}
