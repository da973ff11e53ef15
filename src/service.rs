//! The pingora HTTP application: routes each request, streams SSE responses, accepts publishes, and
//! is the one place where errors become HTTP statuses.

use crate::config::{Config, Route};
use crate::error::Error;
use crate::hub::{Hub, Membership};
use crate::pump::{pump, Feed, H2Wire, PumpSettings, RawH1Wire, SessionWire};
use crate::sse;
use crate::stream::StreamQueue;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::Method;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use sluice_bridge::BridgeError;
use std::sync::{Arc, Once};
use std::time::Duration;

/// How long a `POST` may wait for its broker before it is answered `503`.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The gateway application shared by every listener.
pub struct Gateway {
    config: Config,
    hub: Hub,
    server_options: HttpServerOptions,
    /// The timings every stream shares.
    pump_settings: Arc<PumpSettings>,
    /// Starts the one task that closes every stream's queue when the server shuts down.
    shutdown_watcher: Once,
}

/// What to do with a request, decided before any body is read or anything is subscribed.
enum Action<'a> {
    Health,
    Stream(&'a Route, String),
    Publish(&'a Route, String),
}

impl Gateway {
    pub fn new(config: Config, hub: Hub) -> Self {
        let mut server_options = HttpServerOptions::default();
        // Cleartext HTTP/2 with prior knowledge on the same port as HTTP/1.1 (pingora peeks the preface).
        server_options.h2c = true;
        let pump_settings = Arc::new(PumpSettings {
            heartbeat: config.server.heartbeat,
            retry: config.server.retry,
            write_timeout: config.server.write_timeout,
        });
        Self {
            config,
            hub,
            server_options,
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

    /// Matches method and path to an action, or to the error status that answers it.
    fn route(&self, method: &Method, path: &str) -> Result<Action<'_>, Error> {
        if path == "/healthz" {
            return match *method {
                Method::GET | Method::HEAD => Ok(Action::Health),
                _ => Err(Error::MethodNotAllowed("GET, HEAD")),
            };
        }
        for route in &self.config.routes {
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
            let topic = route.topic.fill(&params);
            return Ok(if is_publish {
                Action::Publish(route, topic)
            } else {
                Action::Stream(route, topic)
            });
        }
        Err(Error::NotFound)
    }

    async fn handle(&self, session: &mut ServerSession) -> Result<Reuse, Error> {
        let header = session.req_header();
        let method = header.method.clone();
        let path = header.uri.path().to_owned();
        match self.route(&method, &path)? {
            Action::Health => {
                respond(session, 200, "text/plain", Bytes::from_static(b"ok\n"), &[]).await?;
                Ok(Reuse::Yes)
            }
            Action::Publish(route, topic) => {
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
                    &[],
                )
                .await?;
                Ok(Reuse::Yes)
            }
            Action::Stream(route, topic) => Ok(Reuse::Stream(Box::new(
                self.open_stream(session, route, topic).await?,
            ))),
        }
    }

    /// Pumps an opened stream. HTTP/1.1 and HTTP/2 streams leave pingora's session for a small task
    /// of their own (see [`crate::pump`]): the raw connection, or the h2 stream's send half.
    async fn serve_stream(&self, session: ServerSession, subscribed: Subscribed) {
        let Subscribed {
            queue,
            membership,
            topic,
        } = subscribed;
        let feed = Feed {
            queue,
            settings: self.pump_settings.clone(),
            topic,
        };
        match session {
            ServerSession::H1(h1) => {
                let mut wire = RawH1Wire::new(h1.into_inner(), self.config.server.write_timeout);
                tokio::spawn(async move {
                    // pingora may still hold the head and preamble in its write buffer (TLS).
                    if wire.flush().await.is_ok() {
                        pump(&mut wire, &feed).await;
                    }
                    drop(membership);
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
                    pump(&mut wire, &feed).await;
                    drop(membership);
                });
            }
            mut session => {
                // Never taken by HTTP/1.1 or HTTP/2; boxed so it does not grow every request's future.
                Box::pin(pump(&mut SessionWire(&mut session), &feed)).await;
                drop(membership);
            }
        }
    }

    /// Subscribes and answers the head of an SSE stream; the caller then pumps it ([`pump`]).
    async fn open_stream(
        &self,
        session: &mut ServerSession,
        route: &Route,
        topic: String,
    ) -> Result<Subscribed, Error> {
        let queue = Arc::new(StreamQueue::new(route.buffer, route.overflow));
        // Subscribe before answering, so a broker error is still a status and nothing published after
        // the headers are sent is missed.
        let membership = self
            .hub
            .join(
                route.broker,
                topic.clone(),
                route.event.clone(),
                queue.clone(),
            )
            .await
            .map_err(Error::Bridge)?;

        let mut response = ResponseHeader::build(200, Some(5)).map_err(Error::Http)?;
        for (name, value) in [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("x-accel-buffering", "no"),
        ] {
            response.insert_header(name, value).map_err(Error::Http)?;
        }
        if !session.is_http2() {
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

        Ok(Subscribed {
            queue,
            membership,
            topic: topic.into_boxed_str(),
        })
    }
}

/// A stream whose subscription is live and whose response head and preamble are written.
struct Subscribed {
    queue: Arc<StreamQueue>,
    membership: Membership,
    /// For log lines only.
    topic: Box<str>,
}

/// What happens to the connection after a request.
enum Reuse {
    /// Keep the connection for the next request.
    Yes,
    /// An SSE stream was opened: pump it, then close.
    Stream(Box<Subscribed>),
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
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "could not read a request");
                return None;
            }
        }
        session.set_write_timeout(Some(self.config.server.write_timeout));
        let reuse = match self.handle(&mut session).await {
            Ok(reuse) => reuse,
            Err(error) => {
                if error.is_response() {
                    let status = error.status();
                    let body = Bytes::from(format!("{error}\n"));
                    let extra: Vec<(&'static str, String)> = match &error {
                        Error::MethodNotAllowed(allow) => vec![("allow", (*allow).to_owned())],
                        _ => Vec::new(),
                    };
                    if status >= 500 {
                        tracing::warn!(request = %session.request_summary(), %error, "request failed");
                    } else {
                        tracing::debug!(request = %session.request_summary(), %error, "request refused");
                    }
                    if respond(
                        &mut session,
                        status,
                        "text/plain; charset=utf-8",
                        body,
                        &extra,
                    )
                    .await
                    .is_err()
                    {
                        return None;
                    }
                    // A refused body may not have been read: do not reuse the connection then.
                    if matches!(error, Error::PayloadTooLarge(_)) {
                        return None;
                    }
                    Reuse::Yes
                } else {
                    tracing::debug!(%error, "connection ended");
                    return None;
                }
            }
        };
        if let Reuse::Stream(subscribed) = reuse {
            self.serve_stream(session, *subscribed).await;
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
