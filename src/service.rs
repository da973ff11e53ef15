//! The pingora HTTP application: routes each request, streams SSE responses, accepts publishes, and
//! is the one place where errors become HTTP statuses.

use crate::auth::{query_param, redacted_request_line, Grant};
use crate::config::{Config, Route, Topics};
use crate::connections::{Busy, Connections};
use crate::error::Error;
use crate::hub::{Hub, Join, Membership, RouteTopics};
use crate::limits::{Admitted, Limits, MemoryGuard, Refused};
use crate::pump::{pump, Feed, H2Wire, PumpSettings, RawH1Wire, SessionWire};
use crate::replay::Retention;
use crate::sse;
use crate::stream::StreamQueue;
use crate::{cors, files};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::Method;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use sluice_bridge::BridgeError;
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// How long a `POST` may wait for its broker before it is answered `503`.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request target (path and query) accepted; `414` past it.
const MAX_URI_BYTES: usize = 8 * 1024;
/// The most request header bytes accepted (names and values); `431` past them.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// What `retry-after` says when a limit refuses a stream, in seconds.
const BUSY_RETRY_AFTER: &str = "5";

/// The gateway application shared by every listener.
pub struct Gateway {
    config: Config,
    hub: Hub,
    /// What the topics of each route share (by route index), with the route's replay budget.
    route_topics: Vec<Arc<RouteTopics>>,
    server_options: HttpServerOptions,
    limits: Arc<Limits>,
    /// Refuses new streams and publishes while resident memory is past `max_memory`.
    memory: MemoryGuard,
    /// Every client connection's place and idle clock; requests and streams keep theirs busy.
    connections: Arc<Connections>,
    /// The timings every stream shares.
    pump_settings: Arc<PumpSettings>,
    /// Starts the one task that closes every stream's queue when the server shuts down.
    shutdown_watcher: Once,
}

/// What to do with a request, decided before any body is read or anything is subscribed.
enum Action<'a> {
    Health,
    Preflight,
    File(PathBuf),
    /// A stream of route number `usize` on these topics.
    Stream(usize, &'a Route, Vec<String>),
    Publish(&'a Route, String),
}

impl Gateway {
    pub fn new(config: Config, hub: Hub, connections: Arc<Connections>) -> Self {
        let mut server_options = HttpServerOptions::default();
        // Cleartext HTTP/2 with prior knowledge on the same port as HTTP/1.1 (pingora peeks the preface).
        server_options.h2c = true;
        let limits = Arc::new(Limits::new(
            config.server.max_connections,
            config.server.max_connections_per_ip,
        ));
        let pump_settings = Arc::new(PumpSettings {
            heartbeat: config.server.heartbeat,
            retry: config.server.retry,
            write_timeout: config.server.write_timeout,
        });
        let route_topics = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, route)| Arc::new(RouteTopics::new(index, route)))
            .collect();
        let memory = MemoryGuard::new(config.server.max_memory);
        Self {
            config,
            hub,
            route_topics,
            memory,
            server_options,
            limits,
            connections,
            pump_settings,
            shutdown_watcher: Once::new(),
        }
    }

    /// Makes sure the hub is shut down with the server. Every request passes here first, and a
    /// stream can only start after a request, so starting it on the first one is early enough.
    fn watch_shutdown(&self, shutdown: &ShutdownWatch) {
        self.shutdown_watcher.call_once(|| {
            let (hub, mut shutdown) = (self.hub.clone(), shutdown.clone());
            tokio::spawn(async move {
                while !*shutdown.borrow_and_update() {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
                hub.shutdown();
            });
        });
    }

    /// Answers an HTTP/1.x request head that does not parse with `400` and a short reason, then
    /// closes: a client sees why, where pingora would just drop the connection. HTTP/2 has its own
    /// protocol errors for this.
    async fn refuse_unparsable(&self, session: ServerSession) {
        let ServerSession::H1(h1) = session else {
            return;
        };
        let mut io = h1.into_inner();
        let body = "bad request: the request head does not parse as HTTP/1.1\n";
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = async {
            io.write_all(response.as_bytes()).await?;
            io.flush().await?;
            io.shutdown().await
        };
        let _ = tokio::time::timeout(self.config.server.write_timeout, answer).await;
    }

    /// Matches method and path to an action, or to the error status that answers it.
    fn route(&self, request: &RequestHeader) -> Result<Action<'_>, Error> {
        let (method, path) = (&request.method, request.uri.path());
        if *method == Method::OPTIONS {
            return Ok(Action::Preflight);
        }
        if path == "/healthz" {
            return match *method {
                Method::GET | Method::HEAD => Ok(Action::Health),
                _ => Err(Error::MethodNotAllowed("GET, HEAD")),
            };
        }
        for (index, route) in self.config.routes.iter().enumerate() {
            let Some(matched) = route.path.matches(path, route.syntax) else {
                continue;
            };
            let allowed = if route.publish { "GET, POST" } else { "GET" };
            let is_publish = match *method {
                Method::GET => false,
                Method::POST if route.publish => true,
                _ => return Err(Error::MethodNotAllowed(allowed)),
            };
            let params = matched.map_err(Error::BadParameter)?;
            let topics = match &route.topic {
                Topics::Template(template) => vec![template.fill(&params)],
                Topics::Query { allowed, max } => {
                    query_topics(route, allowed, *max, request.uri.query().unwrap_or(""))?
                }
            };
            if is_publish {
                // `publish = true` is only allowed with one topic (checked with the config).
                let topic = topics
                    .into_iter()
                    .next()
                    .ok_or(Error::Internal("no topic"))?;
                return Ok(Action::Publish(route, topic));
            }
            return Ok(Action::Stream(index, route, topics));
        }
        if let (Some(dir), &Method::GET | &Method::HEAD) = (&self.config.server.static_dir, method)
        {
            if let Some(file) = files::resolve(dir, path) {
                return Ok(Action::File(file));
            }
        }
        Err(Error::NotFound)
    }

    /// Checks the token of a route with `auth = true` against the topics: `401` without a valid token,
    /// `403` when its claim does not grant every topic.
    fn authorize(
        &self,
        request: &RequestHeader,
        route: &Route,
        topics: &[String],
        publish: bool,
    ) -> Result<Option<Grant>, Error> {
        if !route.auth {
            return Ok(None);
        }
        let auth = self
            .config
            .auth
            .as_ref()
            .ok_or(Error::Internal("auth = true without [auth]"))?;
        let token = auth
            .token(request)
            .ok_or_else(|| Error::Unauthorized(auth.missing()))?;
        let grant = auth.verify(&token).map_err(Error::Unauthorized)?;
        for topic in topics {
            let allowed = if publish {
                grant.may_publish(route.syntax, topic)
            } else {
                grant.may_subscribe(route.syntax, topic)
            };
            if !allowed {
                let verb = if publish {
                    "publish to"
                } else {
                    "subscribe to"
                };
                return Err(Error::Forbidden(format!(
                    "the token may not {verb} {topic:?}"
                )));
            }
        }
        Ok(Some(grant))
    }

    async fn handle(
        &self,
        session: &mut ServerSession,
        cors_headers: &[(&'static str, String)],
    ) -> Result<Reuse, Error> {
        check_sizes(session.req_header())?;
        match self.route(session.req_header())? {
            Action::Health => {
                respond(
                    session,
                    200,
                    "text/plain",
                    Bytes::from_static(b"ok\n"),
                    cors_headers,
                )
                .await?;
                Ok(Reuse::Yes)
            }
            Action::Preflight => {
                let mut headers = cors_headers.to_vec();
                if cors::allows_origin(cors_headers) {
                    headers.extend(cors::preflight_headers());
                }
                respond(session, 204, "text/plain", Bytes::new(), &headers).await?;
                Ok(Reuse::Yes)
            }
            Action::File(file) => {
                let body = std::fs::read(&file).map_err(|_| Error::NotFound)?;
                let mut headers = cors_headers.to_vec();
                headers.push(("cache-control", "no-cache".to_owned()));
                respond(
                    session,
                    200,
                    files::content_type(&file),
                    body.into(),
                    &headers,
                )
                .await?;
                Ok(Reuse::Yes)
            }
            Action::Publish(route, topic) => {
                if self.memory.over() {
                    return Err(Error::Busy("memory use is above max_memory"));
                }
                self.authorize(
                    session.req_header(),
                    route,
                    std::slice::from_ref(&topic),
                    true,
                )?;
                let body = read_body(session, self.config.server.max_publish_bytes).await?;
                let bridge = self
                    .hub
                    .bridge(route.broker)
                    .ok_or(Error::Internal("broker missing"))?;
                // A broker that is away can leave a publish waiting for room in its client's queue.
                tokio::time::timeout(PUBLISH_TIMEOUT, bridge.publish(&topic, body))
                    .await
                    .map_err(|_| {
                        Error::Bridge(BridgeError::Unavailable("publish timed out".into()))
                    })?
                    .map_err(Error::Bridge)?;
                respond(
                    session,
                    202,
                    "text/plain",
                    Bytes::from_static(b"accepted\n"),
                    cors_headers,
                )
                .await?;
                Ok(Reuse::Yes)
            }
            Action::Stream(index, route, topics) => {
                let grant = self.authorize(session.req_header(), route, &topics, false)?;
                Ok(Reuse::Stream(
                    self.open_stream(session, index, route, topics, grant, cors_headers)
                        .await?,
                ))
            }
        }
    }

    /// Pumps an opened stream. HTTP/1.1 and HTTP/2 streams leave pingora's session for a small task
    /// of their own (see [`crate::pump`]): the raw connection, or the h2 stream's send half.
    async fn serve_stream(&self, session: ServerSession, mut feed: Box<StreamFeed>) {
        match session {
            ServerSession::H1(h1) => {
                let chunked = h1.req_header().version != http::Version::HTTP_10;
                let mut wire =
                    RawH1Wire::new(h1.into_inner(), self.config.server.write_timeout, chunked);
                tokio::spawn(async move {
                    // pingora may still hold the head and preamble in its write buffer (TLS).
                    if wire.flush().await.is_ok() {
                        pump(&mut wire, &mut feed).await;
                    }
                    drop(feed);
                });
            }
            ServerSession::H2(mut h2) => {
                let Some(send) = h2.take_response_body_writer() else {
                    return;
                };
                // The request, the response head and the body reader are not needed any more.
                drop(h2);
                let mut wire = H2Wire::new(send);
                tokio::spawn(async move {
                    pump(&mut wire, &mut feed).await;
                    drop(feed);
                });
            }
            mut session => {
                // Never taken by HTTP/1.1 or HTTP/2; boxed so it does not grow every request's future.
                Box::pin(pump(&mut SessionWire(&mut session), &mut feed)).await;
                drop(feed);
            }
        }
    }

    /// Subscribes and answers the head of an SSE stream; the caller then pumps it ([`pump`]).
    async fn open_stream(
        &self,
        session: &mut ServerSession,
        route_index: usize,
        route: &Route,
        topics: Vec<String>,
        grant: Option<Grant>,
        cors_headers: &[(&'static str, String)],
    ) -> Result<Box<StreamFeed>, Error> {
        if self.memory.over() {
            return Err(Error::Busy("memory use is above max_memory"));
        }
        let admitted = match session.client_addr().and_then(|a| a.as_inet()) {
            Some(client) => Some(self.limits.admit(*client, session.is_http2()).map_err(
                |refused| {
                    Error::Busy(match refused {
                        Refused::Connections => "too many connections",
                        Refused::ConnectionsPerIp => "too many connections from this address",
                    })
                },
            )?),
            None => None,
        };
        let queue = Arc::new(StreamQueue::new(route.buffer, route.overflow));
        let last_event_id = match route.retention {
            Retention::Live => None,
            _ => last_event_id(session.req_header()),
        };
        // Subscribe before answering, so a broker error is still a status and nothing published after
        // the headers are sent is missed.
        let route_topics = self
            .route_topics
            .get(route_index)
            .ok_or(Error::Internal("route without topics"))?;
        let mut memberships = Vec::with_capacity(topics.len());
        let mut backlog = None;
        for topic in &topics {
            let join = Join {
                route: route_topics.clone(),
                filter: topic.clone(),
                last_event_id: last_event_id.clone(),
            };
            let joined = self
                .hub
                .join(join, queue.clone())
                .await
                .map_err(Error::Bridge)?;
            memberships.push(joined.membership);
            // Only single-topic routes resume (checked with the config).
            backlog = backlog.or(joined.backlog);
        }

        let mut response =
            ResponseHeader::build(200, Some(4 + cors_headers.len())).map_err(Error::Http)?;
        for (name, value) in [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("x-accel-buffering", "no"),
        ] {
            response.insert_header(name, value).map_err(Error::Http)?;
        }
        for (name, value) in cors_headers {
            response
                .insert_header(*name, value.as_str())
                .map_err(Error::Http)?;
        }
        if session.req_header().version == http::Version::HTTP_10 {
            // HTTP/1.0 knows no chunks: the body runs until the connection closes.
            response
                .insert_header("connection", "close")
                .map_err(Error::Http)?;
        } else if !session.is_http2() {
            // Without it an HTTP/1.1 response is close-delimited; chunks are also flushed one by one.
            response
                .insert_header("transfer-encoding", "chunked")
                .map_err(Error::Http)?;
        }
        session
            .write_response_header(Box::new(response))
            .await
            .map_err(Error::Write)?;
        session
            .write_response_body(sse::preamble(self.config.server.retry), false)
            .await
            .map_err(Error::Write)?;

        // One allocation per stream holds what it needs, so the stream's task stays small (the task
        // of an idle stream is most of what it costs). The topics and the limits are left when the
        // pump ends and this is dropped.
        Ok(Box::new(Feed {
            queue,
            backlog,
            settings: self.pump_settings.clone(),
            topic: topics.join(",").into_boxed_str(),
            expires_at: grant.map(|g| Instant::now() + g.remaining()),
            held: (memberships, admitted, None),
        }))
    }
}

/// A stream whose subscription is live and whose response head and preamble are written: what its
/// pump needs, and what it holds until it ends (its topic memberships, its place under the limits,
/// its connection kept busy).
type StreamFeed = Feed<(Vec<Membership>, Option<Admitted>, Option<Busy>)>;

/// What happens to the connection after a request.
enum Reuse {
    /// Keep the connection for the next request.
    Yes,
    /// An SSE stream was opened: pump it, then close.
    Stream(Box<StreamFeed>),
}

/// The position a client resumes from: the `Last-Event-ID` header a browser sends when it reconnects,
/// or a `last-event-id` query parameter for clients that cannot set headers (the header wins).
fn last_event_id(request: &RequestHeader) -> Option<String> {
    if let Some(value) = request.headers.get("last-event-id") {
        // A value that is not text is still a resume attempt, from an unknown position.
        return Some(value.to_str().unwrap_or("?").to_owned());
    }
    query_param(request.uri.query()?, "last-event-id")
        .next()
        .map(Cow::into_owned)
}

/// The topics of a multi-topic stream: repeated `?topic=` parameters, each a valid filter covered by
/// one of the route's `allowed` patterns, at most `max` of them.
fn query_topics(
    route: &Route,
    allowed: &[String],
    max: usize,
    query: &str,
) -> Result<Vec<String>, Error> {
    let mut topics: Vec<String> = Vec::new();
    for topic in query_param(query, "topic") {
        route
            .syntax
            .check_filter(&topic)
            .map_err(|e| Error::BadParameter(format!("topic {topic:?}: {e}")))?;
        if !allowed.iter().any(|p| route.syntax.covers(p, &topic)) {
            return Err(Error::BadParameter(format!(
                "topic {topic:?} is not allowed on this route (allowed: {})",
                allowed.join(", ")
            )));
        }
        if !topics.iter().any(|t| *t == topic) {
            topics.push(topic.into_owned());
        }
        if topics.len() > max {
            return Err(Error::BadParameter(format!(
                "at most {max} topics per stream"
            )));
        }
    }
    if topics.is_empty() {
        return Err(Error::BadParameter(
            "name the topics to stream with ?topic=...&topic=...".into(),
        ));
    }
    Ok(topics)
}

/// Refuses request targets and headers larger than sluice ever needs.
fn check_sizes(request: &RequestHeader) -> Result<(), Error> {
    let target = request.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Err(Error::UriTooLong(MAX_URI_BYTES));
    }
    let headers: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers > MAX_HEADER_BYTES {
        return Err(Error::HeaderTooLarge(MAX_HEADER_BYTES));
    }
    Ok(())
}

/// Reads a request body up to `limit` bytes.
async fn read_body(session: &mut ServerSession, limit: usize) -> Result<Bytes, Error> {
    if let Some(length) = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if length > limit {
            return Err(Error::PayloadTooLarge(limit));
        }
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await.map_err(Error::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(Error::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Writes a complete small response.
async fn respond(
    session: &mut ServerSession,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&'static str, String)],
) -> Result<(), Error> {
    let mut response = ResponseHeader::build(status, Some(3 + extra.len())).map_err(Error::Http)?;
    response
        .insert_header("content-type", content_type)
        .map_err(Error::Http)?;
    response
        .insert_header("content-length", body.len().to_string())
        .map_err(Error::Http)?;
    for (name, value) in extra {
        response
            .insert_header(*name, value.as_str())
            .map_err(Error::Http)?;
    }
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(response))
        .await
        .map_err(Error::Write)?;
    let body = if head_only { Bytes::new() } else { body };
    session
        .write_response_body(body, true)
        .await
        .map_err(Error::Write)
}

#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.watch_shutdown(shutdown);
        // A client that never finishes its request head (slow loris) is dropped.
        match tokio::time::timeout(self.config.server.request_timeout, session.read_request()).await
        {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return None,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not read a request");
                if *e.etype() == pingora::ErrorType::InvalidHTTPHeader {
                    self.refuse_unparsable(session).await;
                }
                return None;
            }
            Err(_) => {
                tracing::debug!("no complete request head in time; connection dropped");
                return None;
            }
        }
        // From a complete request head until its response ends (or its stream does), the connection
        // is not idle.
        let busy = self.connections.request(&session);
        session.set_write_timeout(Some(self.config.server.write_timeout));
        let cors_headers =
            cors::response_headers(self.config.server.cors.as_ref(), session.req_header());
        let reuse = match self.handle(&mut session, &cors_headers).await {
            Ok(reuse) => reuse,
            Err(error) => {
                if !error.is_response() {
                    tracing::debug!(%error, "connection ended");
                    return None;
                }
                let request = redacted_request_line(
                    session.req_header(),
                    self.config.auth.as_ref().map(|a| a.query.as_str()),
                );
                let status = error.status();
                if status >= 500 {
                    tracing::warn!(%request, %error, "request failed");
                } else {
                    tracing::debug!(%request, %error, "request refused");
                }
                let mut headers = cors_headers;
                match &error {
                    Error::MethodNotAllowed(allow) => headers.push(("allow", (*allow).to_owned())),
                    Error::Unauthorized(_) => {
                        headers.push(("www-authenticate", "Bearer realm=\"sluice\"".to_owned()))
                    }
                    Error::Busy(_) => headers.push(("retry-after", BUSY_RETRY_AFTER.to_owned())),
                    _ => {}
                }
                let body = Bytes::from(format!("{error}\n"));
                if respond(
                    &mut session,
                    status,
                    "text/plain; charset=utf-8",
                    body,
                    &headers,
                )
                .await
                .is_err()
                {
                    return None;
                }
                // A refused body may not have been read: do not reuse the connection then.
                if status == 413 || status == 401 || status == 403 {
                    return None;
                }
                Reuse::Yes
            }
        };
        if let Reuse::Stream(mut feed) = reuse {
            feed.held.2 = busy;
            self.serve_stream(session, feed).await;
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        // pingora's finish() is a large future; boxed, it does not grow every request's future
        // (and with it every stream's start-up allocation).
        match Box::pin(session.finish()).await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }

    fn h2_options(&self) -> Option<H2Options> {
        let mut options = default_h2_options();
        options.max_concurrent_streams(self.config.server.max_streams_per_connection);
        Some(options)
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.server_options)
    }
}
