//! Upstream SSE origins as a broker: each topic is a path on the origin, read through one upstream
//! `GET` however many browsers watch it, and resumed with `Last-Event-ID` after a drop.
//!
//! - [`upstream`]: one upstream stream: connecting, parsing (WHATWG rules, by `eventsource-stream`),
//!   delivering, and reconnecting with backoff.

mod upstream;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::HeaderMap;
use sluice_bridge::{Bridge, BridgeError, BrokerStatus, Sink, Subscription, TopicSyntax};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// How long `subscribe` waits for the origin's first answer. A refusal (`4xx`) in that time is the
/// subscriber's error; past it, or on a `5xx` or a connection error, the stream opens and the
/// upstream is retried in the background.
const FIRST_ANSWER: Duration = Duration::from_secs(5);

/// How one `[brokers.NAME]` of type `sse` reaches its origin (validated by sluice's configuration;
/// two are equal when they reach the same origin the same way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseSettings {
    /// The origin, `http` or `https`, possibly with a path prefix; each topic's path is appended.
    pub url: Url,
    /// Sent with every upstream request (an authorization header, say); values marked sensitive
    /// never show in a debug print.
    pub headers: HeaderMap,
    /// The first reconnection delay; the origin's `retry:` replaces it once sent.
    pub reconnect: Duration,
    /// An upstream stream that brings no byte (not even a comment) for this long is dropped and
    /// resumed: a hung origin, or a connection something between lost, is found.
    pub idle_timeout: Option<Duration>,
    /// A PEM file of certificate authorities trusted for an `https` origin, beside the system's.
    pub ca_file: Option<PathBuf>,
}

/// The broker: an HTTP client shared by every upstream stream of one origin.
pub struct SseBridge {
    name: Arc<str>,
    client: reqwest::Client,
    settings: Arc<SseSettings>,
    counts: Arc<Counts>,
}

/// The bridge's counts, shared with every upstream stream's task.
#[derive(Default)]
struct Counts {
    /// Upstream streams open now (subscriptions).
    streams: AtomicU64,
    /// Upstream streams whose last attempt could not reach the origin (no connection, no TLS
    /// handshake, no answer in time): the origin is down for readiness while any is.
    down: AtomicU64,
    /// Times an upstream stream came back after it was lost.
    reconnects: AtomicU64,
    /// Events received from the origin.
    messages: AtomicU64,
}

impl SseBridge {
    /// Builds the HTTP client (reading the CA file); nothing is connected until a subscription.
    pub fn new(name: &str, settings: &SseSettings) -> Result<Self, BridgeError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A vanished origin (no FIN) is found without waiting for an event that never comes.
            .tcp_keepalive(Duration::from_secs(30))
            // A redirect could carry the configured headers to another host: it counts as a
            // failed answer instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .default_headers(settings.headers.clone());
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                BridgeError::unavailable(format!("cannot read ca_file {}", path.display()), e)
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| BridgeError::broker(format!("ca_file {}", path.display()), e))?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .build()
            .map_err(|e| BridgeError::broker("cannot build the upstream HTTP client", e))?;
        Ok(Self {
            name: Arc::from(name),
            client,
            settings: Arc::new(settings.clone()),
            counts: Arc::default(),
        })
    }

    /// The URL of `path` on the origin: the configured url's path, then the topic's.
    fn url_of(&self, path: &str) -> Result<Url, BridgeError> {
        let base = self.settings.url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}"))
            .map_err(|e| BridgeError::invalid_topic(path, format!("not a valid URL path: {e}")))
    }
}

#[async_trait]
impl Bridge for SseBridge {
    fn syntax(&self) -> TopicSyntax {
        TopicSyntax::Path
    }

    async fn subscribe(&self, filter: &str, sink: Sink) -> Result<Subscription, BridgeError> {
        TopicSyntax::Path.validate_filter(filter)?;
        let url = self.url_of(filter)?;
        let (answered, first) = tokio::sync::oneshot::channel();
        let stream = upstream::Upstream {
            broker: self.name.clone(),
            topic: Arc::from(filter),
            url,
            client: self.client.clone(),
            reconnect: self.settings.reconnect,
            idle_timeout: self.settings.idle_timeout,
            counts: self.counts.clone(),
            sink,
        };
        let task = AbortOnDrop(tokio::spawn(stream.run(answered)));
        match tokio::time::timeout(FIRST_ANSWER, first).await {
            // Refused: the task has ended.
            Ok(Ok(Err(refused))) => Err(refused),
            // Streaming, retrying after a failure, or still waiting: the task carries on.
            _ => Ok(Subscription::new(task)),
        }
    }

    async fn publish(&self, _topic: &str, _payload: Bytes) -> Result<(), BridgeError> {
        Err(BridgeError::Unsupported(
            "an sse broker reads an origin's streams; it cannot publish",
        ))
    }

    fn status(&self) -> BrokerStatus {
        let counts = &self.counts;
        BrokerStatus {
            connected: counts.down.load(Ordering::Relaxed) == 0,
            reconnects: counts.reconnects.load(Ordering::Relaxed),
            messages: counts.messages.load(Ordering::Relaxed),
            subscriptions: counts.streams.load(Ordering::Relaxed),
        }
    }
}

/// Ends an upstream stream's task (and with it the upstream request) when the subscription goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
