//! Opening a stream (limits, subscribing, the response head and preamble) and serving it (handing
//! it to its wire and the pump).

use super::compressed::Compressed;
use super::request::last_event_id;
use super::wire::{H2Wire, RawH1Wire, SessionWire};
use super::{Gateway, Routing};
use crate::admin::metrics::{OpenStream, Protocol};
use crate::auth::Grant;
use crate::compress::{self, Encoder};
use crate::config::Route;
use crate::connections::Busy;
use crate::error::Error;
use crate::hub::{Join, Membership};
use crate::limits::{Admitted, Refused};
use crate::pump::{pump, End, Feed, Sent, Wire};
use crate::replay::Retention;
use crate::sse;
use crate::stream::StreamQueue;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What a stream holds until it ends, and lets go of when it does (each by its `Drop`).
pub(super) struct Held {
    /// Its places on its topics (the last one to leave a topic drops its broker subscription).
    _memberships: Vec<Membership>,
    /// Its place under the connection limits.
    _admitted: Option<Admitted>,
    /// Its connection, kept from counting as idle.
    pub(super) busy: Option<Busy>,
    /// Its place in `sluice_streams_open`; with its route and protocol for the access line.
    open: OpenStream,
    /// The rest of its access line.
    client: Option<std::net::SocketAddr>,
    started: Instant,
    resumed: bool,
    /// Its encoder, when the stream is compressed (taken by its wire).
    encoder: Option<Encoder>,
}

/// Counts a stream's end and writes its access line (the one info line a stream gets; no token
/// or URL is in it).
fn ended(feed: &StreamFeed, end: &End) {
    let reason = end.reason();
    let held = &feed.held;
    let route = held.open.route();
    route.closed(reason);
    let Sent { events, bytes } = feed.sent;
    let client = held.client.map(|c| c.to_string()).unwrap_or_default();
    tracing::info!(
        route = %route.path,
        topics = %feed.topic,
        protocol = held.open.protocol().as_str(),
        client,
        duration_ms = u64::try_from(held.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        events,
        bytes,
        reason = reason.as_str(),
        resumed = held.resumed,
        "stream ended"
    );
}

/// A stream whose subscription is live and whose response head and preamble are written: what its
/// pump needs, and what it holds.
pub(super) type StreamFeed = Feed<Held>;

impl Gateway {
    /// Pumps an opened stream. HTTP/1.1 and HTTP/2 streams leave pingora's session for a small task
    /// of their own (see [`crate::pump`]): the raw connection, or the h2 stream's send half.
    pub(super) async fn serve_stream(
        &self,
        session: ServerSession,
        mut feed: Box<StreamFeed>,
        write_timeout: Duration,
    ) {
        let encoder = feed.held.encoder.take();
        match session {
            ServerSession::H1(h1) => {
                let chunked = h1.req_header().version != http::Version::HTTP_10;
                let mut wire = RawH1Wire::new(h1.into_inner(), write_timeout, chunked);
                tokio::spawn(async move {
                    // pingora may still hold the head and preamble in its write buffer (TLS).
                    let end = match wire.flush().await {
                        Ok(()) => pump_to(wire, encoder, &mut feed).await,
                        Err(e) => End::WriteFailed(e),
                    };
                    ended(&feed, &end);
                    drop(feed);
                });
            }
            ServerSession::H2(mut h2) => {
                let Some(send) = h2.take_response_body_writer() else {
                    return;
                };
                // The request, the response head and the body reader are not needed any more.
                drop(h2);
                let wire = H2Wire::new(send);
                tokio::spawn(async move {
                    let end = pump_to(wire, encoder, &mut feed).await;
                    ended(&feed, &end);
                    drop(feed);
                });
            }
            mut session => {
                // Never taken by HTTP/1.1 or HTTP/2; boxed so it does not grow every request's future.
                let wire = SessionWire(&mut session);
                let end = Box::pin(pump_to(wire, encoder, &mut feed)).await;
                ended(&feed, &end);
                drop(feed);
            }
        }
    }

    /// Subscribes and answers the head of an SSE stream; the caller then pumps it ([`pump`]).
    pub(super) async fn open_stream(
        &self,
        routing: &Routing,
        session: &mut ServerSession,
        (route_index, route): (usize, &Route),
        topics: Vec<String>,
        grant: Option<Grant>,
        cors_headers: &[(&'static str, String)],
    ) -> Result<Box<StreamFeed>, Error> {
        if self.memory.over() {
            return Err(Error::Busy("memory use is above max_memory"));
        }
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        let admitted = match client {
            Some(client) => Some(self.limits.admit(client, session.is_http2()).map_err(
                |refused| {
                    Error::Busy(match refused {
                        Refused::Connections => "too many connections",
                        Refused::ConnectionsPerIp => "too many connections from this address",
                    })
                },
            )?),
            None => None,
        };
        let queue = Arc::new(match route.max_rate {
            Some(interval) => StreamQueue::conflating(route.buffer, route.overflow, interval),
            None => StreamQueue::new(route.buffer, route.overflow),
        });
        let last_event_id = match route.retention {
            Retention::Live => None,
            _ => last_event_id(session.req_header()),
        };
        let resumed = last_event_id.is_some();
        // Subscribe before answering, so a broker error is still a status and nothing published after
        // the headers are sent is missed.
        let route_topics = routing
            .routes
            .get(route_index)
            .ok_or(Error::Internal("route without topics"))?;
        let mut memberships = Vec::with_capacity(topics.len());
        let mut backlog = None;
        let key = grant.as_ref().map(|g| g.key);
        for topic in &topics {
            let join = Join {
                route: route_topics.clone(),
                filter: topic.clone(),
                last_event_id: last_event_id.clone(),
                key,
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

        let encoding = match route.compress.as_slice() {
            [] => None,
            offered => compress::negotiate(&accept_encoding(session), offered),
        };
        let mut response =
            ResponseHeader::build(200, Some(6 + cors_headers.len())).map_err(Error::Http)?;
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
        if !route.compress.is_empty() {
            // Compressed or not, the response depends on the request's Accept-Encoding.
            response
                .insert_header("vary", "accept-encoding")
                .map_err(Error::Http)?;
        }
        if let Some(encoding) = encoding {
            response
                .insert_header("content-encoding", encoding.token())
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
        let preamble = sse::preamble(routing.config.server.retry);
        let mut encoder =
            encoding.map(|e| Encoder::new(e, &routing.config.server.compression_level));
        let preamble = match &mut encoder {
            // No event yet: the encoder rests until the first one.
            Some(encoder) => encoder
                .encode(&[preamble], true)
                .map_err(|e| Error::Internal(compress_failed(e)))?,
            None => preamble,
        };
        session
            .write_response_body(preamble, false)
            .await
            .map_err(Error::Write)?;
        let protocol = if session.is_http2() {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let open = route_topics.metrics.opened(protocol);

        // One allocation per stream holds what it needs, so the stream's task stays small (the task
        // of an idle stream is most of what it costs). The topics and the limits are left when the
        // pump ends and this is dropped.
        Ok(Box::new(Feed {
            queue,
            backlog,
            settings: self.pump_settings.clone(),
            topic: topics.join(",").into_boxed_str(),
            expires_at: grant.map(|g| Instant::now() + g.remaining()),
            metrics: route_topics.metrics.clone(),
            sent: Sent::default(),
            held: Held {
                _memberships: memberships,
                _admitted: admitted,
                busy: None,
                open,
                client,
                started: Instant::now(),
                resumed,
                encoder,
            },
        }))
    }
}

/// Pumps `feed` to `wire`, through its encoder when the stream is compressed.
async fn pump_to(mut wire: impl Wire, encoder: Option<Encoder>, feed: &mut StreamFeed) -> End {
    match encoder {
        Some(encoder) => pump(&mut Compressed::new(wire, encoder), feed).await,
        None => pump(&mut wire, feed).await,
    }
}

/// The request's `Accept-Encoding` values, joined as one list.
fn accept_encoding(session: &ServerSession) -> String {
    let values = session
        .req_header()
        .headers
        .get_all(http::header::ACCEPT_ENCODING);
    let values: Vec<&str> = values.iter().filter_map(|v| v.to_str().ok()).collect();
    values.join(",")
}

fn compress_failed(e: std::io::Error) -> &'static str {
    tracing::warn!(error = %e, "compressing a stream's preamble failed");
    "compressing the stream failed"
}
