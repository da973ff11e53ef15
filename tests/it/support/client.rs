//! HTTP clients (hyper): one-off HTTP/1.1 requests, publishing, SSE streams over HTTP/1.1, h2c and
//! TLS (h2 or HTTP/1.1 by ALPN).

use super::{within, SseStream};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

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

/// A JSON page of a nats-server's monitoring endpoint (`/connz?subs=1`, `/varz`, ...).
pub async fn nats_monitor(server: &sluice_testkit::NatsServer, path: &str) -> serde_json::Value {
    let url = server.monitor_url(path);
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host")
        .parse()
        .expect("addr");
    let resp = get(addr, path).await.expect("nats monitoring");
    serde_json::from_slice(&resp.body).expect("nats monitoring json")
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
        self.stream_with(path, &[]).await
    }

    /// Opens one more stream on this connection, with extra request headers.
    pub async fn stream_with(&self, path: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut sender = self.sender.clone();
        let mut req = Request::get(format!("{}://{}{path}", self.scheme, self.authority))
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Empty::<Bytes>::new()).expect("request");
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
    let tls = try_tls_connect(addr, cert_pem, alpn)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn), "ALPN outcome");
    tls
}

/// Like [`tls_connect`], with the handshake's error (e.g. a certificate `cert_pem` does not trust).
pub async fn try_tls_connect(
    addr: SocketAddr,
    cert_pem: &std::path::Path,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
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
    connector.connect(name, tcp).await
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
