//! A `POST` on a route with `publish = true`: the body, bounded, published to the route's broker.

use super::request::authorize;
use super::respond::respond;
use super::{Gateway, Reuse, Routing};
use crate::config::Route;
use crate::error::Error;
use bytes::{Bytes, BytesMut};
use pingora::protocols::http::ServerSession;
use sluice_bridge::BridgeError;
use std::time::Duration;

/// How long a `POST` may wait for its broker before it is answered `503`.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

impl Gateway {
    /// Publishes the request's body to `topic` and answers `202`.
    pub(super) async fn publish(
        &self,
        routing: &Routing,
        session: &mut ServerSession,
        route: &Route,
        topic: String,
        cors_headers: &[(&'static str, String)],
    ) -> Result<Reuse, Error> {
        if self.memory.over() {
            return Err(Error::Busy("memory use is above max_memory"));
        }
        authorize(
            routing.config.auth.as_ref(),
            session.req_header(),
            route,
            std::slice::from_ref(&topic),
            true,
        )?;
        let body = read_body(session, routing.config.server.max_publish_bytes).await?;
        let bridge = routing
            .bridges
            .get(route.broker)
            .ok_or(Error::Internal("broker missing"))?;
        // A broker that is away can leave a publish waiting for room in its client's queue.
        tokio::time::timeout(PUBLISH_TIMEOUT, bridge.publish(&topic, body))
            .await
            .map_err(|_| Error::Bridge(BridgeError::unavailable_says("publish timed out")))?
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
