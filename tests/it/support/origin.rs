//! An upstream SSE origin for the tests (hyper, HTTP/1.1, plain or TLS, on a free port): the test sends events to
//! every open stream, drops them, or makes the origin answer with a status; the origin records each
//! request (path and `Last-Event-ID`) and counts its open streams.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// One request the origin received.
#[derive(Clone, Debug)]
pub struct OriginRequest {
    pub path: String,
    pub last_event_id: Option<String>,
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
struct State {
    /// Answer every request with this status instead of a stream.
    status: Mutex<Option<u16>>,
    streams: Mutex<Vec<mpsc::UnboundedSender<Bytes>>>,
    requests: Mutex<Vec<OriginRequest>>,
    open: AtomicUsize,
    /// TCP connections accepted.
    connections: AtomicUsize,
}

/// The origin; its accept loop ends when it is dropped.
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts an open stream until hyper drops its body (the connection closed or was dropped).
struct Open(Arc<State>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(
    state: Arc<State>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    locked(&state.requests).push(OriginRequest {
        path: path.clone(),
        last_event_id: header("last-event-id"),
        headers: request
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
    });
    let status = *locked(&state.status);
    if let Some(status) = status {
        let body = Full::new(Bytes::from("origin says no\n")).boxed();
        let response = hyper::Response::builder().status(status).body(body);
        return Ok(response.unwrap_or_else(|_| hyper::Response::new(Body::default())));
    }
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    locked(&state.streams).push(tx);
    state.open.fetch_add(1, Ordering::SeqCst);
    let open = Open(state.clone());
    let frames = futures::stream::unfold((rx, open), |(mut rx, open)| async move {
        let bytes = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(Frame::data(bytes)),
            (rx, open),
        ))
    });
    let body = BodyExt::boxed(StreamBody::new(frames));
    let response = hyper::Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body);
    Ok(response.unwrap_or_else(|_| hyper::Response::new(Body::default())))
}

/// Serves one connection (plain or TLS, HTTP/1.1 or HTTP/2) with the origin's answers.
async fn serve<IO>(io: IO, state: Arc<State>, h2: bool)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| answer(state.clone(), request));
    let io = TokioIo::new(io);
    let _ = if h2 {
        let executor = hyper_util::rt::TokioExecutor::new();
        hyper::server::conn::http2::Builder::new(executor)
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await
    };
}

impl Origin {
    /// A cleartext origin.
    pub async fn start() -> Self {
        Self::listen(None).await
    }

    /// An `https` origin for `localhost` (HTTP/2 or HTTP/1.1 by ALPN), with a fresh self-signed
    /// certificate written to `dir/origin.pem` (for a broker's `ca_file`).
    pub async fn start_tls(dir: &std::path::Path) -> (Self, std::path::PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("self-signed cert");
        let pem = dir.join("origin.pem");
        std::fs::write(&pem, cert.cert.pem()).expect("write origin cert");
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key.into())
        .expect("origin certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (Self::listen(Some(acceptor)).await, pem)
    }

    async fn listen(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let state = Arc::new(State::default());
        let accepting = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (state, tls) = (accepting.clone(), tls.clone());
                state.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    match tls {
                        None => serve(socket, state, false).await,
                        Some(tls) => {
                            if let Ok(socket) = tls.accept(socket).await {
                                let h2 = socket.get_ref().1.alpn_protocol() == Some(b"h2");
                                serve(socket, state, h2).await;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`, for a broker's `url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://localhost:PORT`, the name its certificate holds.
    pub fn tls_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Writes `frame` (raw event-stream text) to every open stream.
    pub fn send(&self, frame: &str) {
        let bytes = Bytes::from(frame.to_owned());
        locked(&self.state.streams).retain(|tx| tx.send(bytes.clone()).is_ok());
    }

    /// Ends every open stream (its body ends: the connection stays usable).
    pub fn drop_streams(&self) {
        locked(&self.state.streams).clear();
    }

    /// Answers every request with `status` (`None`: with a stream again).
    pub fn answer_with(&self, status: Option<u16>) {
        *locked(&self.state.status) = status;
    }

    /// The streams open now.
    pub fn open_streams(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// The TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<OriginRequest> {
        locked(&self.state.requests).clone()
    }
}
