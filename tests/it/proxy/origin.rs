//! The application behind sluice in the proxy tests: a hyper HTTP/1.1 server on a free port that
//! records every request it gets (head, body, connection) and answers by path.
//!
//! - `/events/NAME`: an event stream whose pieces the test writes one at a time ([`Origin::events`]).
//! - `/cut/NAME`: like an event stream, but the connection drops when the test stops writing.
//! - `/hang`: never answers. `/hops`: sends hop-by-hop headers of its own.
//! - `/echo`: the request body back, with the request's `content-type`.
//! - anything else: `{"path": ...}` as JSON.

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// One request as the origin received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Which of the origin's connections it came on (from 1).
    pub connection: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    streams: Mutex<HashMap<String, mpsc::UnboundedReceiver<Bytes>>>,
}

pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Origin {
    /// Cleartext HTTP/1.1.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// HTTP/1.1 over TLS, with this certificate (PEM) and key (PKCS#8 DER).
    pub async fn start_tls(cert_pem: &str, key_der: Vec<u8>) -> Self {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate");
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key_der).into();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("certificate and key");
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin address");
        let state = Arc::new(State::default());
        let shared = state.clone();
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    // Counted once it speaks HTTP (a refused TLS handshake is no connection).
                    let service = |connection| {
                        let state = state.clone();
                        hyper::service::service_fn(move |req| {
                            answer(req, state.clone(), connection)
                        })
                    };
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let connection = shared_count(&state);
                            let _ = http
                                .serve_connection(TokioIo::new(tcp), service(connection))
                                .await;
                        }
                        Some(tls) => {
                            let Ok(tcp) = tls.accept(tcp).await else {
                                return;
                            };
                            let connection = shared_count(&state);
                            let _ = http
                                .serve_connection(TokioIo::new(tcp), service(connection))
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            state,
            server,
        }
    }

    /// What the origin received on paths that start with `prefix`.
    pub fn seen(&self, prefix: &str) -> Vec<Seen> {
        let seen = self.state.seen.lock().expect("lock");
        seen.iter()
            .filter(|s| s.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Connections the origin accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The writer of the event stream `/events/NAME` (ask for it before the request comes).
    pub fn events(&self, name: &str) -> mpsc::UnboundedSender<Bytes> {
        self.stream(&format!("/events/{name}"))
    }

    /// The writer of the response `/cut/NAME`, cut when the writer is dropped.
    pub fn cut(&self, name: &str) -> mpsc::UnboundedSender<Bytes> {
        self.stream(&format!("/cut/{name}"))
    }

    fn stream(&self, path: &str) -> mpsc::UnboundedSender<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut streams = self.state.streams.lock().expect("lock");
        streams.insert(path.to_owned(), rx);
        tx
    }
}

/// Counts one more connection; returns its number.
fn shared_count(state: &State) -> usize {
    state.connections.fetch_add(1, Ordering::SeqCst) + 1
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<State>,
    connection: usize,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let streaming = path.starts_with("/events/") || path.starts_with("/cut/") || path == "/hang";
    // A streaming path's request is recorded before its answer starts; others with their body.
    let body = if streaming {
        Bytes::new()
    } else {
        body.collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default()
    };
    state.seen.lock().expect("lock").push(Seen {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or(path.clone(), |p| p.to_string()),
        headers: parts.headers.clone(),
        body: body.clone(),
        connection,
    });
    let response = Response::builder();
    let response = match path.as_str() {
        "/hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/hops" => response
            .header("connection", "keep-alive, x-origin-private")
            .header("keep-alive", "timeout=5")
            .header("x-origin-private", "1")
            .header("x-origin", "yes")
            .body(full("hops")),
        "/echo" => {
            let kind = parts.headers.get("content-type").cloned();
            let response = match kind {
                Some(kind) => response.header("content-type", kind),
                None => response,
            };
            response.body(full(body))
        }
        streamed if streamed.starts_with("/events/") || streamed.starts_with("/cut/") => {
            let rx = state.streams.lock().expect("lock").remove(streamed);
            let cut = streamed.starts_with("/cut/");
            // Each piece the test writes; then the end, or (`/cut/`) an error: hyper drops the
            // connection without the last chunk.
            let pieces = futures::stream::unfold(rx, move |rx| async move {
                let mut rx = rx?;
                match rx.recv().await {
                    Some(piece) => Some((Ok(Frame::data(piece)), Some(rx))),
                    None if cut => Some((Err(std::io::Error::other("origin cuts")), None)),
                    None => None,
                }
            });
            let kind = if cut {
                "text/plain"
            } else {
                "text/event-stream"
            };
            response
                .header("content-type", kind)
                .header("cache-control", "no-cache")
                .body(StreamBody::new(Box::pin(pieces)).boxed_unsync())
        }
        _ => response
            .header("content-type", "application/json")
            .header("x-origin", "yes")
            .body(full(format!("{{\"path\":{path:?}}}"))),
    };
    Ok(response.expect("a valid response"))
}
