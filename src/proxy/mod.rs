//! Pass-through proxying: every request that sluice does not answer itself (no sluice path, no
//! route, no static file) goes to the application configured in `[proxy]`.
//!
//! Built on pingora's own proxy ([`pingora::proxy::HttpProxy`] with a [`ProxyHttp`] of ours): the
//! gateway has already read the request head, so each request runs pingora's proxy pipeline as a
//! *subrequest* on a copy of that head, and [`pipe`] connects it to the client's session.
//!
//! - [`headers`]: hop-by-hop headers out both ways, `x-forwarded-*` / `forwarded` set by sluice,
//!   and the framing of each message (pure).
//! - [`forward`]: the [`ProxyHttp`]: the upstream of the request's configuration, its head.
//! - [`pipe`]: the request body up, the response down (event streams flushed chunk by chunk),
//!   the upstream's silence bounded, failures as `502` / `504`.
//!
//! Upstream connections are kept alive in pingora's pool. The upstream, its timeouts and its CA
//! file are read from the configuration each request is served by, so a reload applies them to
//! the next request; a new CA file makes a new pool.
//!
//! [`ProxyHttp`]: pingora::proxy::ProxyHttp

mod forward;
pub mod headers;
mod pipe;

use crate::error::Error;
use arc_swap::ArcSwapOption;
use forward::{Forward, Target};
use headers::Client;
use http::header;
use pingora::protocols::http::ServerSession;
use pingora::proxy::subrequest::{BodyMode, Ctx};
use pingora::proxy::{HttpProxy, SubrequestSpawner};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A request that fails on a pooled connection the upstream had closed meanwhile is tried once
/// more on a new one (pingora retries only idempotent requests).
const MAX_TRIES: usize = 2;
/// Idle upstream connections kept per worker thread.
const POOL_PER_THREAD: usize = 128;

/// `[proxy]`, validated: the application behind sluice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// As written in the file (for logs).
    pub url: String,
    /// `https://`: TLS to the upstream, its certificate verified.
    pub tls: bool,
    /// A name or an IP address (IPv6 without brackets); also the TLS server name.
    pub host: String,
    pub port: u16,
    /// The CA certificates an `https://` upstream is verified with, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// TCP and TLS connection to the upstream.
    pub connect_timeout: Duration,
    /// The longest the upstream may stay silent: before its response head, or within a body
    /// that is not an event stream.
    pub read_timeout: Duration,
}

impl Upstream {
    /// The host as a `Host` header writes it (IPv6 in brackets).
    pub fn host_for_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

/// pingora's proxy with its pool of upstream connections, for one CA file.
struct Pool {
    ca_file: Option<PathBuf>,
    app: Arc<HttpProxy<Forward>>,
}

/// The gateway's proxy: the pool of the CA file in use, made when first needed.
#[derive(Default)]
pub struct Proxy {
    pool: ArcSwapOption<Pool>,
}

impl Proxy {
    /// pingora's proxy for `upstream`'s CA file: the one in use, or a new one (with a new pool).
    fn app(&self, upstream: &Upstream) -> Result<Arc<HttpProxy<Forward>>, Error> {
        if let Some(pool) = self.pool.load_full() {
            if pool.ca_file == upstream.ca_file {
                return Ok(pool.app.clone());
            }
        }
        let conf = ServerConf {
            ca_file: upstream
                .ca_file
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            max_retries: MAX_TRIES,
            upstream_keepalive_pool_size: POOL_PER_THREAD,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            ..ServerConf::default()
        };
        // pingora's connector panics on a CA file it cannot load. The file was checked when the
        // configuration was loaded; should it have changed since, the requests fail, not sluice.
        let built = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut proxy = HttpProxy::new(Forward, Arc::new(conf));
            proxy.handle_init_modules();
            proxy
        }));
        let Ok(proxy) = built else {
            tracing::error!(ca_file = ?upstream.ca_file, "[proxy] cannot load its CA certificates");
            return Err(Error::BadGateway);
        };
        let app = Arc::new(proxy);
        self.pool.store(Some(Arc::new(Pool {
            ca_file: upstream.ca_file.clone(),
            app: app.clone(),
        })));
        Ok(app)
    }

    /// Proxies the request of `session` (its head read) to `upstream`, and its response back.
    /// Returns whether the connection may serve another request.
    pub async fn forward(
        &self,
        upstream: &Arc<Upstream>,
        session: &mut ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Result<bool, Error> {
        if !headers::plain_framing(session.req_header()) {
            return Err(Error::Framing(
                "transfer-encoding other than a single \"chunked\" is not supported",
            ));
        }
        let chunked = as_http1(session)?;
        let client = Client {
            ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            https: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        };
        let target = Target {
            upstream: upstream.clone(),
            client,
            chunked,
        };
        let app = self.app(upstream)?;
        let ctx = Ctx::builder()
            .body_mode(BodyMode::ExpectBody)
            .user_ctx(Box::new(target))
            .build();
        let (prepared, handle) = SubrequestSpawner::new(app).create_subrequest(session, ctx);
        pipe::pipe(session, prepared, handle, upstream.read_timeout, shutdown).await
    }
}

/// Makes the request head one that pingora's HTTP/1.1 parser reads back the same (a subrequest
/// starts from the head written as HTTP/1.1), and says whether its body goes in chunks.
///
/// An HTTP/1.1 head is used as it arrived. An HTTP/2 head is turned into its HTTP/1.1 equivalent:
/// the version, a `Host` from `:authority`, cookies joined into one header (RFC 9113 section
/// 8.2.3), and a body of unknown length sent in chunks (HTTP/2 has no `transfer-encoding`).
fn as_http1(session: &mut ServerSession) -> Result<bool, Error> {
    if !session.is_http2() {
        return Ok(session
            .req_header()
            .headers
            .contains_key(header::TRANSFER_ENCODING));
    }
    let has_body = !session.is_body_empty();
    let request = session.req_header_mut();
    request.set_version(http::Version::HTTP_11);
    if !request.headers.contains_key(header::HOST) {
        if let Some(authority) = request.uri.authority().map(|a| a.as_str().to_owned()) {
            request
                .insert_header(header::HOST, authority)
                .map_err(Error::Http)?;
        }
    }
    let cookies: Vec<String> = request
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    if cookies.len() > 1 {
        request
            .insert_header(header::COOKIE, cookies.join("; "))
            .map_err(Error::Http)?;
    }
    let chunked = has_body && !request.headers.contains_key(header::CONTENT_LENGTH);
    if chunked {
        request
            .insert_header(header::TRANSFER_ENCODING, "chunked")
            .map_err(Error::Http)?;
    }
    Ok(chunked)
}
