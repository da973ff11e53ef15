//! The pingora HTTP application: reads each request, answers it by what it asks for, and hands
//! opened streams to their wires; every error becomes its response through [`crate::error`].
//!
//! - [`request`]: routing, request size limits, topics, resume positions and the token check.
//! - [`session`]: opening a stream (limits, subscribing, the response head) and serving it.
//! - [`publish`]: a `POST` published to its broker; [`crate::proxy`] passes what no route,
//!   static file or sluice path answers to the `[proxy]` upstream.
//! - [`respond`]: complete small responses, and the raw `400` for a head that does not parse.
//! - [`wire`]: the HTTP/1.x and HTTP/2 wires a stream is written to; [`compressed`]: the wire in
//!   front of them that compresses a stream.
//! - [`routing`]: the configuration snapshot every request reads, which a reload swaps whole.

mod compressed;
mod publish;
mod request;
mod respond;
pub mod routing;
mod session;
pub mod wire;

use crate::admission::Admission;
use crate::auth::redacted_request_line;
use crate::connections::Connections;
use crate::error::Error;
use crate::hub::Hub;
use crate::limits::{Limits, MemoryGuard};
use crate::pump::PumpSettings;
use crate::{cors, files};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use request::{authorize, check_sizes, route, Action};
use respond::{refuse_unparsable, respond};
pub use routing::Routing;
use session::StreamFeed;
use std::sync::{Arc, Once};

/// The gateway application shared by every listener.
pub struct Gateway {
    /// The configuration and route table; each request reads one snapshot of it (see [`routing`]).
    routing: ArcSwap<Routing>,
    hub: Hub,
    server_options: HttpServerOptions,
    limits: Arc<Limits>,
    /// Refuses new streams and publishes while resident memory is past `max_memory`.
    memory: MemoryGuard,
    /// Every client connection's place and idle clock; requests and streams keep theirs busy.
    connections: Arc<Connections>,
    /// The timings every stream shares (a reload updates them in place).
    pump_settings: Arc<PumpSettings>,
    /// New streams per second (`max_new_streams_per_second`).
    admission: Admission,
    /// Starts the one task that closes every stream's queue when the server shuts down.
    shutdown_watcher: Once,
    /// Passes what sluice does not answer to the `[proxy]` upstream.
    proxy: crate::proxy::Proxy,
}

/// A stream refused by admission control, told when to come back. An `EventSource` (it asks for
/// `text/event-stream`) does not reconnect after an error status, so it gets an empty stream that
/// ends at once with a `retry:` of that delay: it reconnects by itself then, with its
/// `Last-Event-ID`. Other clients get `503` with `retry-after`.
async fn throttled(
    session: &mut ServerSession,
    wait: std::time::Duration,
    cors_headers: &[(&'static str, String)],
) -> Result<Reuse, Error> {
    let accept = session.req_header().headers.get("accept");
    let event_stream = accept
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if !event_stream {
        return Err(Error::Throttled(wait.as_secs().max(1)));
    }
    let mut headers = cors_headers.to_vec();
    headers.push(("cache-control", "no-cache".to_owned()));
    let body = format!(
        ": too many new streams; reconnect later\nretry: {}\n\n",
        wait.as_millis()
    );
    respond(session, 200, "text/event-stream", body.into(), &headers).await?;
    Ok(Reuse::Yes)
}

/// What happens to the connection after a request.
enum Reuse {
    /// Keep the connection for the next request.
    Yes,
    /// An SSE stream was opened: pump it, then close.
    Stream(Box<StreamFeed>),
    /// The response is complete but the connection cannot serve another request (a proxied
    /// request whose body was not read whole).
    Close,
}

impl Gateway {
    pub fn new(routing: Routing, hub: Hub, connections: Arc<Connections>) -> Self {
        let mut server_options = HttpServerOptions::default();
        // Cleartext HTTP/2 with prior knowledge on the same port as HTTP/1.1 (pingora peeks the preface).
        server_options.h2c = true;
        let server = &routing.config.server;
        let limits = Arc::new(Limits::new(
            server.max_connections,
            server.max_connections_per_ip,
        ));
        let pump_settings = Arc::new(PumpSettings::new(
            server.heartbeat,
            server.retry,
            server.write_timeout,
        ));
        let memory = MemoryGuard::new(server.max_memory);
        let admission = Admission::new(server.max_new_streams_per_second);
        crate::compress::encoder::set_max_active(server.max_compressors);
        Self {
            admission,
            routing: ArcSwap::from_pointee(routing),
            hub,
            memory,
            server_options,
            limits,
            connections,
            pump_settings,
            shutdown_watcher: Once::new(),
            proxy: crate::proxy::Proxy::default(),
        }
    }

    /// Whether the server is draining (shutting down, or handing over to an upgrade): `/readyz`
    /// answers `503` then.
    pub fn draining(&self) -> bool {
        crate::shutdown::draining() || self.hub.is_shutting_down()
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

    async fn handle(
        &self,
        routing: &Routing,
        session: &mut ServerSession,
        cors_headers: &[(&'static str, String)],
        shutdown: &ShutdownWatch,
    ) -> Result<Reuse, Error> {
        check_sizes(session.req_header())?;
        match route(&routing.config, session.req_header())? {
            Action::Health => {
                let ok = Bytes::from_static(b"ok\n");
                respond(session, 200, "text/plain", ok, cors_headers).await?;
                Ok(Reuse::Yes)
            }
            Action::Ready => {
                let (status, body) = crate::admin::ready::readiness(routing, self.draining());
                respond(session, status, "text/plain", body.into(), cors_headers).await?;
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
                let kind = files::content_type(&file);
                respond(session, 200, kind, body.into(), &headers).await?;
                Ok(Reuse::Yes)
            }
            Action::Publish(index, route, topic) => {
                let published = self.publish(routing, session, route, topic, cors_headers);
                let published = published.await;
                let status = published.as_ref().map_or_else(Error::status, |_| 202);
                if let Some(topics) = routing.routes.get(index) {
                    topics.metrics.publish(status);
                }
                published
            }
            Action::Stream(index, route, topics) => {
                if let Err(wait) = self.admission.admit() {
                    return throttled(session, wait, cors_headers).await;
                }
                let auth = routing.config.auth.as_ref();
                let grant = authorize(auth, session.req_header(), route, &topics, false)?;
                let at = (index, route);
                let opened = self.open_stream(routing, session, at, topics, grant, cors_headers);
                Ok(Reuse::Stream(opened.await?))
            }
            Action::Proxy => {
                let upstream = routing.config.proxy.as_ref();
                let upstream = upstream.ok_or(Error::Internal("proxied without [proxy]"))?;
                let forwarded = self.proxy.forward(upstream, session, shutdown).await;
                match forwarded {
                    Ok(true) => Ok(Reuse::Yes),
                    Ok(false) => Ok(Reuse::Close),
                    Err(error) => {
                        if error.is_response() {
                            crate::admin::metrics::global().proxy_request(error.status());
                        }
                        Err(error)
                    }
                }
            }
        }
    }

    /// Answers `error` (logged by its status) on `session`; false when the connection cannot serve
    /// another request after it.
    async fn answer_error(
        &self,
        routing: &Routing,
        session: &mut ServerSession,
        error: Error,
        cors_headers: Vec<(&'static str, String)>,
    ) -> bool {
        if !error.is_response() {
            tracing::debug!(%error, "connection ended");
            if let Error::Cut(_) = error {
                // A response cut short must not look complete: an HTTP/2 stream is reset (an
                // HTTP/1.1 connection is closed, as the caller does next).
                session.shutdown().await;
            }
            return false;
        }
        let request = redacted_request_line(
            session.req_header(),
            routing.config.auth.as_ref().map(|a| a.query.as_str()),
        );
        let status = error.status();
        if status >= 500 {
            tracing::warn!(%request, %error, "request failed");
        } else {
            tracing::debug!(%request, %error, "request refused");
        }
        let mut headers = cors_headers;
        headers.extend(error.headers());
        let body = Bytes::from(format!("{error}\n"));
        let text = "text/plain; charset=utf-8";
        if respond(session, status, text, body, &headers)
            .await
            .is_err()
        {
            return false;
        }
        error.keeps_connection()
    }
}

#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.watch_shutdown(shutdown);
        // The configuration this request is served by, whole, even if a reload swaps it meanwhile.
        let routing = self.routing.load_full();
        let server = &routing.config.server;
        // A client that never finishes its request head (slow loris) is dropped.
        match tokio::time::timeout(server.request_timeout, session.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return None,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not read a request");
                if *e.etype() == pingora::ErrorType::InvalidHTTPHeader {
                    refuse_unparsable(session, server.write_timeout).await;
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
        session.set_write_timeout(Some(server.write_timeout));
        let cors_headers = cors::response_headers(server.cors.as_ref(), session.req_header());
        let handled = self.handle(&routing, &mut session, &cors_headers, shutdown);
        let reuse = match handled.await {
            Ok(reuse) => reuse,
            Err(error) => {
                let answered = self.answer_error(&routing, &mut session, error, cors_headers);
                if !answered.await {
                    return None;
                }
                Reuse::Yes
            }
        };
        if let Reuse::Stream(mut feed) = reuse {
            feed.held.busy = busy;
            let write_timeout = server.write_timeout;
            // A stream does not keep the configuration it was opened with: it would hold every
            // replaced configuration in memory for as long as it runs.
            drop(routing);
            self.serve_stream(session, feed, write_timeout).await;
            return None;
        }
        if let Reuse::Close = reuse {
            // pingora would read what is left of the body to reuse the connection: close instead.
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
        // Read for each new HTTP/2 connection: a reloaded value applies to the next one.
        let routing = self.routing.load();
        options.max_concurrent_streams(routing.config.server.max_streams_per_connection);
        Some(options)
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.server_options)
    }
}
