//! The [`ProxyHttp`] that pingora runs for each proxied request: where it goes (the upstream of
//! the configuration the request was read with), its head as the upstream sees it, and errors
//! handed back to the pipe instead of answered here.

use super::headers::{self, Client};
use super::Upstream;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;
use std::time::Duration;

/// How long an unused upstream connection waits in the pool for the next request.
const POOLED_IDLE: Duration = Duration::from_secs(60);

/// What one proxied request carries into pingora's pipeline (the subrequest's user context).
pub struct Target {
    pub upstream: Arc<Upstream>,
    pub client: Client,
    /// The request body is sent in chunks (it was chunked, or is an HTTP/2 body of unknown length).
    pub chunked: bool,
}

/// The pingora proxy application; it holds nothing of its own: each request's [`Target`] says all.
pub struct Forward;

fn target(session: &Session) -> Result<&Target> {
    session
        .subrequest_ctx
        .as_ref()
        .and_then(|ctx| ctx.user_ctx())
        .and_then(|user| user.downcast_ref::<Target>())
        .ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "a proxied request without its target",
            )
        })
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let upstream = target(session)?.upstream.clone();
        // Resolved for each request (the system resolver caches), so a name that moves is followed.
        let address = tokio::net::lookup_host((upstream.host.as_str(), upstream.port))
            .await
            .ok()
            .and_then(|mut addresses| addresses.next())
            .ok_or_else(|| {
                let why = format!("cannot resolve {}", upstream.host);
                Error::explain(ErrorType::ConnectNoRoute, why).into_up()
            })?;
        let mut peer = HttpPeer::new(address, upstream.tls, upstream.host.clone());
        let options = &mut peer.options;
        options.connection_timeout = Some(upstream.connect_timeout);
        options.total_connection_timeout = Some(upstream.connect_timeout);
        options.idle_timeout = Some(POOLED_IDLE);
        // No read timeout here: the pipe bounds the upstream's silence, except within an event
        // stream, which may be quiet for as long as it likes.
        options.read_timeout = None;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        let target = target(session)?;
        let authority = format!(
            "{}:{}",
            target.upstream.host_for_header(),
            target.upstream.port
        );
        headers::upstream_request(upstream_request, &target.client, target.chunked, &authority)
    }

    /// Writes nothing: the pipe reads the error and answers the client (see `pipe`), so every
    /// error response comes from one place and says nothing about the upstream.
    async fn fail_to_proxy(&self, _session: &mut Session, e: &Error, _ctx: &mut ()) -> FailToProxy {
        FailToProxy {
            error_code: super::pipe::status_of(e),
            can_reuse_downstream: false,
        }
    }

    /// The pipe logs the outcome of each proxied request once.
    fn suppress_error_log(&self, _session: &Session, _ctx: &(), _error: &Error) -> bool {
        true
    }
}
