//! Test support: a sluice process on a free port, real HTTP clients (HTTP/1.1, h2c, TLS h2) and an
//! SSE reader that follows the WHATWG parsing rules.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice::sse::Parser;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Awaits `f` or fails the test after [`DEADLINE`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {DEADLINE:?}: {what}"),
    }
}

/// Polls `check` until it returns `Some`, or fails the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > DEADLINE {
            panic!("condition not met within {DEADLINE:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sluice-it-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running sluice binary, killed (by its PID) on drop.
pub struct Sluice {
    child: Child,
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub tls_addrs: Vec<SocketAddr>,
    pub dir: TempDir,
}

/// How to start a [`Sluice`].
pub struct Options {
    /// TLS listeners (with one self-signed certificate for `localhost`).
    pub tls_listeners: usize,
    /// Environment variables for the process.
    pub env: Vec<(String, String)>,
    /// The cleartext listen address (default: a free port).
    pub addr: Option<SocketAddr>,
    /// Write stdout and stderr to a file, read back with [`Sluice::log`].
    pub capture_log: bool,
    /// `RUST_LOG` (unless `SLUICE_TEST_LOG` overrides it).
    pub log_level: String,
    /// Run sluice with this many open files at most (soft and hard limit), as `ulimit -n` does.
    pub file_limit: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tls_listeners: 0,
            env: Vec::new(),
            addr: None,
            capture_log: false,
            log_level: "warn".into(),
            file_limit: None,
        }
    }
}

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

impl Sluice {
    /// Starts sluice with `[server] listen` on a free port; `body` follows the `listen` line, so it may
    /// add more `[server]` keys before its own tables.
    pub async fn start(body: &str) -> Self {
        Self::start_opts(body, Options::default()).await
    }

    /// Like [`Self::start`], plus a TLS listener with a fresh self-signed certificate for `localhost`.
    pub async fn start_tls(body: &str) -> Self {
        Self::start_opts(
            body,
            Options {
                tls_listeners: 1,
                ..Options::default()
            },
        )
        .await
    }

    /// Starts sluice with the given [`Options`].
    pub async fn start_opts(body: &str, options: Options) -> Self {
        let dir = TempDir::new("sluice");
        let addr = options.addr.unwrap_or_else(|| {
            let port = sluice_testkit::free_port();
            format!("127.0.0.1:{port}").parse().expect("addr")
        });
        let mut config = format!("[server]\nlisten = [\"{addr}\"]\n{body}\n");
        let mut tls_addrs: Vec<SocketAddr> = Vec::new();
        if options.tls_listeners > 0 {
            let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
                .expect("self-signed cert");
            std::fs::write(dir.0.join("cert.pem"), cert.cert.pem()).expect("write cert");
            std::fs::write(dir.0.join("key.pem"), cert.key_pair.serialize_pem())
                .expect("write key");
            for _ in 0..options.tls_listeners {
                let tport = sluice_testkit::free_port();
                tls_addrs.push(format!("127.0.0.1:{tport}").parse().expect("addr"));
            }
            // The body may name the TLS ports (e.g. in CORS origins) as TLS_PORT_0, TLS_PORT_1, ...
            for (n, tls) in tls_addrs.iter().enumerate() {
                config = config.replace(&format!("TLS_PORT_{n}"), &tls.port().to_string());
            }
            let listen: Vec<String> = tls_addrs.iter().map(|a| format!("\"{a}\"")).collect();
            config.push_str(&format!(
                "\n[server.tls]\nlisten = [{}]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
                listen.join(", ")
            ));
        }
        let path = dir.0.join("config.toml");
        std::fs::write(&path, &config).expect("write config");
        let mut command = match options.file_limit {
            // The shell sets the limit and replaces itself with sluice, which keeps its PID.
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(sluice_bin());
                sh
            }
            None => Command::new(sluice_bin()),
        };
        command
            .arg("--config")
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| options.log_level.clone()),
            )
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if options.capture_log {
            let log = std::fs::File::create(dir.0.join("sluice.log")).expect("log file");
            command
                .stderr(log.try_clone().expect("log file"))
                .stdout(log);
        }
        let child = command.spawn().expect("start sluice");
        let mut sluice = Self {
            child,
            addr,
            tls_addr: tls_addrs.first().copied(),
            tls_addrs,
            dir,
        };
        sluice.wait_ready().await;
        sluice
    }

    /// Like [`Self::start`], with what sluice logs at info level kept for [`Self::log`].
    pub async fn start_logged(body: &str) -> Self {
        Self::start_opts(
            body,
            Options {
                capture_log: true,
                log_level: "info".into(),
                ..Options::default()
            },
        )
        .await
    }

    /// The resident memory of the sluice process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// What sluice logged, when started with `capture_log`.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("sluice.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let addr = self.addr;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sluice exited during start-up: {status}");
            }
            if let Ok(resp) = get(addr, "/healthz").await {
                if resp.status == StatusCode::OK {
                    break;
                }
            }
            assert!(start.elapsed() < DEADLINE, "sluice did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM (graceful shutdown) and waits for the process to exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.exited().await
    }

    /// Sends SIGTERM to this sluice, by its PID.
    pub fn send_sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "sluice did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A complete (non-streaming) response.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(body))?;
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

pub async fn get(
    addr: SocketAddr,
    path: &str,
) -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
    request(addr, "GET", path, Bytes::new()).await
}

/// POSTs `body` and expects `202 Accepted`.
pub async fn publish(addr: SocketAddr, path: &str, body: impl Into<Bytes>) {
    let resp = within("publish", request(addr, "POST", path, body.into()))
        .await
        .expect("publish request");
    assert_eq!(
        resp.status,
        StatusCode::ACCEPTED,
        "publish to {path}: {}",
        resp.text()
    );
}

/// One server-sent event as a browser dispatches it.
pub use sluice::sse::parser::Event;

/// A streaming SSE response, read and parsed incrementally (by sluice's reference parser).
pub struct SseStream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    parser: Parser,
    /// Every byte received, for assertions on the wire format.
    pub raw: Vec<u8>,
    /// The id of the last event taken (with [`Self::next_event`] and friends), as a browser keeps it
    /// for its `Last-Event-ID` when it reconnects.
    pub last_event_id: Option<String>,
    /// The last `retry:` received.
    pub retry: Option<u64>,
    /// The comment lines received (the preamble's and heartbeats).
    pub comments: usize,
    pub ended: bool,
}

impl SseStream {
    pub fn new(resp: hyper::Response<Incoming>) -> Self {
        let (parts, body) = resp.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
            parser: Parser::new(),
            raw: Vec::new(),
            last_event_id: None,
            retry: None,
            comments: 0,
            ended: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Reads one more chunk from the network. False when the stream ended.
    async fn read_more(&mut self) -> bool {
        loop {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.raw.extend_from_slice(&data);
                        self.parser.feed(&data);
                        assert!(!self.parser.invalid_utf8(), "stream is UTF-8");
                        self.retry = self.parser.retry();
                        self.comments = self.parser.comments();
                        return true;
                    }
                }
                Some(Err(_)) | None => {
                    self.ended = true;
                    return false;
                }
            }
        }
    }

    /// Takes the oldest parsed event, remembering its id.
    fn pop_event(&mut self) -> Option<Event> {
        let event = self.parser.next_event()?;
        if event.id.is_some() {
            self.last_event_id.clone_from(&event.id);
        }
        Some(event)
    }

    /// The next event; fails the test after [`DEADLINE`] or if the stream ends first.
    pub async fn next_event(&mut self) -> Event {
        within("next SSE event", async {
            loop {
                if let Some(event) = self.pop_event() {
                    return event;
                }
                if !self.read_more().await {
                    panic!("stream ended while waiting for an event");
                }
            }
        })
        .await
    }

    /// The next event if one arrives within `wait`.
    pub async fn try_next_event(&mut self, wait: Duration) -> Option<Event> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(event) = self.pop_event() {
                    return Some(event);
                }
                if !self.read_more().await {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Publishes `prefix-N` with `publish` (N counting up) until the stream receives one, and returns
    /// the events up to and including it. For a subscription that is still being set up, or a broker
    /// that is coming back: what a broker does not deliver while it is away cannot be waited for.
    pub async fn publish_until_received<F, Fut>(
        &mut self,
        prefix: &str,
        mut publish: F,
    ) -> Vec<Event>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let start = Instant::now();
        let mut seen = Vec::new();
        for n in 0.. {
            assert!(
                start.elapsed() < DEADLINE,
                "no {prefix}-N event arrived within {DEADLINE:?}"
            );
            publish(format!("{prefix}-{n}")).await;
            while let Some(event) = self.try_next_event(Duration::from_millis(100)).await {
                let done = event.data.starts_with(&format!("{prefix}-"));
                seen.push(event);
                if done {
                    return seen;
                }
            }
        }
        unreachable!()
    }

    /// Reads what the stream still receives of the probes [`Self::publish_until_received`] sent, so
    /// the events that follow are exactly what a test publishes next.
    pub async fn settle(&mut self) {
        while self
            .try_next_event(Duration::from_millis(200))
            .await
            .is_some()
        {}
    }

    /// Reads until the preamble (`retry:` and the first comment) has arrived.
    pub async fn opened(&mut self) {
        within("stream preamble", async {
            while self.comments == 0 {
                assert!(self.read_more().await, "stream ended before its preamble");
            }
        })
        .await;
    }

    /// Reads until the server ends the stream; returns the events that came before the end.
    pub async fn until_end(&mut self) -> Vec<Event> {
        within("end of stream", async { while self.read_more().await {} }).await;
        std::iter::from_fn(|| self.parser.next_event()).collect()
    }

    /// Waits until `n` comment lines (the preamble's included) have arrived.
    pub async fn comments_at_least(&mut self, n: usize) {
        within("heartbeat comments", async {
            while self.comments < n {
                assert!(self.read_more().await, "stream ended");
            }
        })
        .await;
    }
}

/// Opens an HTTP/1.1 stream on `path`, a route with `publish = true`, and returns it once its
/// subscription is live (a probe POSTed to `path` arrived) and every probe was read away.
pub async fn live_stream(addr: SocketAddr, path: &str) -> SseStream {
    let mut stream = h1_stream(addr, path).await;
    stream.opened().await;
    stream
        .publish_until_received(
            "warm",
            |data| async move { publish(addr, path, data).await },
        )
        .await;
    stream.settle().await;
    stream
}

/// Opens an SSE stream over HTTP/1.1 on its own connection.
pub async fn h1_stream(addr: SocketAddr, path: &str) -> SseStream {
    h1_stream_with(addr, path, &[]).await
}

/// Opens an SSE stream over HTTP/1.1 with extra request headers (e.g. `last-event-id`).
pub async fn h1_stream_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseStream {
    h1_stream_with_method(addr, "GET", path, headers, "").await
}

/// Sends any request on its own HTTP/1.1 connection and reads the answer as a stream.
pub async fn h1_stream_with_method(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> SseStream {
    within("open HTTP/1.1 stream", async {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        SseStream::new(sender.send_request(req).await.expect("response"))
    })
    .await
}

/// Publishes over one kept-alive HTTP/1.1 connection (for bursts of thousands of events).
pub struct Publisher {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authority: String,
}

impl Publisher {
    pub async fn connect(addr: SocketAddr) -> Self {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Self {
            sender,
            authority: addr.to_string(),
        }
    }

    /// POSTs `body` to `path` and expects `202 Accepted`.
    pub async fn publish(&mut self, path: &str, body: impl Into<Bytes>) {
        let req = Request::post(path)
            .header("host", &self.authority)
            .body(Full::new(body.into()))
            .expect("request");
        // The connection takes the next request only once it has finished with the last one.
        within("publisher ready", self.sender.ready())
            .await
            .expect("publisher connection");
        let resp = within("publish", self.sender.send_request(req))
            .await
            .expect("publish response");
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "publish to {path}");
        let _ = resp.into_body().collect().await;
    }
}

/// An HTTP/2 connection on which many streams can be opened.
#[derive(Clone)]
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    authority: String,
    scheme: &'static str,
}

impl H2 {
    /// Cleartext HTTP/2 with prior knowledge.
    pub async fn h2c(addr: SocketAddr) -> Self {
        within("h2c handshake", async {
            let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2c handshake");
            tokio::spawn(conn);
            Self {
                sender,
                authority: addr.to_string(),
                scheme: "http",
            }
        })
        .await
    }

    /// HTTP/2 over TLS, negotiated by ALPN, trusting the certificate in `cert_pem`.
    pub async fn tls(addr: SocketAddr, cert_pem: &std::path::Path) -> Self {
        within("TLS h2 handshake", async {
            let tls = tls_connect(addr, cert_pem, b"h2").await;
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .expect("h2 handshake");
            tokio::spawn(conn);
            Self {
                sender,
                authority: format!("localhost:{}", addr.port()),
                scheme: "https",
            }
        })
        .await
    }

    /// Opens one more stream on this connection.
    pub async fn stream(&self, path: &str) -> SseStream {
        let mut sender = self.sender.clone();
        let req = Request::get(format!("{}://{}{path}", self.scheme, self.authority))
            .header("accept", "text/event-stream")
            .body(Empty::<Bytes>::new())
            .expect("request");
        within("open h2 stream", async {
            sender.ready().await.expect("connection ready");
            SseStream::new(sender.send_request(req).await.expect("h2 response"))
        })
        .await
    }
}

/// A TLS connection to `addr` as `localhost`, trusting `cert_pem`, that negotiated `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    cert_pem: &std::path::Path,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let pem = std::fs::read(cert_pem).expect("read cert");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).expect("add root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn), "ALPN outcome");
    tls
}

/// Opens an SSE stream over HTTP/1.1 on a TLS connection (ALPN `http/1.1`).
pub async fn tls_h1_stream(addr: SocketAddr, cert_pem: &std::path::Path, path: &str) -> SseStream {
    within("open HTTP/1.1 stream over TLS", async {
        let tls = tls_connect(addr, cert_pem, b"http/1.1").await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", format!("localhost:{}", addr.port()))
            .header("accept", "text/event-stream")
            .body(Empty::<Bytes>::new())
            .expect("request");
        SseStream::new(sender.send_request(req).await.expect("response"))
    })
    .await
}

/// Parses the certificates of a PEM file (the few lines of base64 between the markers).
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.expect("valid PEM certificate"))
        .collect()
}
