//! The process's Prometheus metrics: one registry, the families of the public metric names, and
//! the handles the hot path records through. A route's handles are looked up once per route, so
//! recording is an atomic add (no lock, no allocation, no label hashing per event); what every
//! written batch records is counted per thread ([`super::hot`]).
//!
//! Labels name a route by its `path` template and a broker by its configured name, never a
//! concrete topic, a client or a token: the label sets are bounded by the configuration.

use super::hot::{BatchCollector, BatchCounters};
use crate::sse::GapReason;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// Why a stream ended, as the `reason` label and the access log's `reason` field say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Client,
    Overflow,
    WriteTimeout,
    TokenExpired,
    BrokerError,
    Shutdown,
    Reload,
}

impl CloseReason {
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Client,
        CloseReason::Overflow,
        CloseReason::WriteTimeout,
        CloseReason::TokenExpired,
        CloseReason::BrokerError,
        CloseReason::Shutdown,
        CloseReason::Reload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Overflow => "overflow",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::BrokerError => "broker_error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Reload => "reload",
        }
    }
}

/// The HTTP version a stream or connection speaks, as the `protocol` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }

    fn index(self) -> usize {
        match self {
            Protocol::Http1 => 0,
            Protocol::Http2 => 1,
        }
    }
}

/// Every metric family of the process.
pub struct Metrics {
    registry: Registry,
    streams_open: IntGaugeVec,
    streams_opened: IntCounterVec,
    streams_closed: IntCounterVec,
    events_dropped: IntCounterVec,
    events_conflated: IntCounterVec,
    gaps_sent: IntCounterVec,
    resumes: IntCounterVec,
    publish_requests: IntCounterVec,
    pub(super) broker_up: IntGaugeVec,
    pub(super) broker_reconnects: IntCounterVec,
    pub(super) broker_messages: IntCounterVec,
    pub(super) broker_subscriptions: IntGaugeVec,
    pub(super) connections_open: IntGaugeVec,
    http_requests: IntCounterVec,
    proxy_requests: IntCounterVec,
    pub(super) config_reloads: IntCounterVec,
    pub(super) config_last_reload_success: Gauge,
    /// Each route's handles by path template: a reload that keeps a path keeps its counters.
    routes: Arc<Mutex<HashMap<Box<str>, Arc<RouteMetrics>>>>,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Registers `metric` in `registry`; the names are constants, so a failure is a bug caught by the
/// tests (and then the metric is still recorded, only not exported).
fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    if let Err(e) = registry.register(Box::new(metric.clone())) {
        tracing::error!(error = %e, "a metric could not be registered");
    }
    metric
}

/// A counter family. The definitions are constants that the tests below export: one that does not
/// pass the crate's checks is a bug in this file, not something an input can cause.
fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels);
    registered(registry, vec.expect("a valid metric definition"))
}

/// A gauge family (see [`counters`]).
fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels);
    registered(registry, vec.expect("a valid metric definition"))
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let metrics = Self {
            streams_open: gauges(
                r,
                "sluice_streams_open",
                "SSE streams open now.",
                &["route", "protocol"],
            ),
            streams_opened: counters(
                r,
                "sluice_streams_opened_total",
                "SSE streams opened.",
                &["route", "protocol"],
            ),
            streams_closed: counters(
                r,
                "sluice_streams_closed_total",
                "SSE streams ended, by why they ended.",
                &["route", "reason"],
            ),
            events_dropped: counters(
                r,
                "sluice_events_dropped_total",
                "Events discarded by the drop-oldest overflow policy.",
                &["route"],
            ),
            events_conflated: counters(
                r,
                "sluice_events_conflated_total",
                "Events a stream skipped for a newer one of the same topic (max_rate).",
                &["route"],
            ),
            gaps_sent: counters(
                r,
                "sluice_gaps_sent_total",
                "gap events sent to streams, by reason.",
                &["route", "reason"],
            ),
            resumes: counters(
                r,
                "sluice_resumes_total",
                "Streams that asked to resume with Last-Event-ID: resumed, or told of a gap.",
                &["route", "outcome"],
            ),
            publish_requests: counters(
                r,
                "sluice_publish_requests_total",
                "POST publish requests, by response status.",
                &["route", "status"],
            ),
            broker_up: gauges(
                r,
                "sluice_broker_up",
                "1 when the broker connection is up, 0 when not.",
                &["broker"],
            ),
            broker_reconnects: counters(
                r,
                "sluice_broker_reconnects_total",
                "Times the broker connection came back after it was lost.",
                &["broker"],
            ),
            broker_messages: counters(
                r,
                "sluice_broker_messages_total",
                "Messages received from the broker for live subscriptions.",
                &["broker"],
            ),
            broker_subscriptions: gauges(
                r,
                "sluice_broker_subscriptions",
                "Broker subscriptions (and JetStream consumers) held now.",
                &["broker"],
            ),
            connections_open: gauges(
                r,
                "sluice_connections_open",
                "Client connections open now, by the protocol of their requests (unknown: no \
                 request yet).",
                &["protocol"],
            ),
            http_requests: counters(
                r,
                "sluice_http_requests_total",
                "Requests answered with a complete response (not streams), by status.",
                &["status"],
            ),
            proxy_requests: counters(
                r,
                "sluice_proxy_requests_total",
                "Requests passed to the [proxy] upstream, by the status of the response sent \
                 (502 and 504 when the upstream failed).",
                &["status"],
            ),
            config_reloads: counters(
                r,
                "sluice_config_reloads_total",
                "Configuration reloads (SIGHUP), by result.",
                &["result"],
            ),
            config_last_reload_success: registered(
                r,
                Gauge::new(
                    "sluice_config_last_reload_success_timestamp_seconds",
                    "When the configuration was last loaded successfully (start or reload), Unix \
                     time.",
                )
                .expect("a valid metric definition"),
            ),
            routes: Arc::new(Mutex::new(HashMap::new())),
            registry,
        };
        // Events and bytes sent, the delivery lag and the queue fill: counted per thread, summed here.
        match BatchCollector::new(metrics.routes.clone()) {
            Ok(batches) => {
                if let Err(e) = metrics.registry.register(Box::new(batches)) {
                    tracing::error!(error = %e, "the batch metrics could not be registered");
                }
            }
            Err(e) => tracing::error!(error = %e, "the batch metrics could not be defined"),
        }
        let process = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = metrics.registry.register(Box::new(process)) {
            tracing::error!(error = %e, "the process metrics could not be registered");
        }
        // Both results exist from the start, so a rate over them is defined before the first reload.
        for result in ["ok", "error"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        metrics
    }

    /// The handles of the route whose path template is `path` (made on first use, then shared).
    pub fn route(&self, path: &str) -> Arc<RouteMetrics> {
        let mut routes = sluice_bridge::lock(&self.routes);
        if let Some(route) = routes.get(path) {
            return route.clone();
        }
        let route = Arc::new(RouteMetrics::new(self, path));
        routes.insert(path.into(), route.clone());
        route
    }

    /// The configuration was loaded (at start, or by a reload).
    pub fn config_loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.config_last_reload_success.set(now);
    }

    /// A reload (SIGHUP) was applied (`ok`) or refused.
    pub fn config_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
        if ok {
            self.config_loaded();
        }
    }

    /// Counts a complete (non-stream) response.
    pub fn http_request(&self, status: u16) {
        let status = status_label(status);
        self.http_requests.with_label_values(&[status]).inc();
    }

    /// A request passed to the `[proxy]` upstream, answered with `status`.
    pub fn proxy_request(&self, status: u16) {
        let status = status_label(status);
        self.proxy_requests.with_label_values(&[status]).inc();
    }

    /// The exposition of every metric in Prometheus text format 0.0.4.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

/// A status code as a label value, without allocating.
fn status_label(status: u16) -> &'static str {
    static LABELS: LazyLock<Vec<String>> =
        LazyLock::new(|| (100..600).map(|s: u16| s.to_string()).collect());
    status
        .checked_sub(100)
        .and_then(|i| LABELS.get(usize::from(i)))
        .map_or("other", String::as_str)
}

/// The gap reasons, in the order of [`RouteMetrics`]' gap counters.
const GAP_REASONS: [GapReason; 6] = [
    GapReason::UnknownId,
    GapReason::Expired,
    GapReason::Overflow,
    GapReason::StreamReplaced,
    GapReason::LateSubscription,
    GapReason::BrokerDisconnected,
];

/// One route's handles: what its streams record through, each a shared atomic.
pub struct RouteMetrics {
    /// The route's path template (the `route` label).
    pub path: Arc<str>,
    streams_open: [IntGauge; 2],
    streams_opened: [IntCounter; 2],
    closed: [IntCounter; CloseReason::ALL.len()],
    /// Events and bytes sent, lag and fill: recorded per batch, so per thread (see [`hot`]).
    pub(super) batches: BatchCounters,
    events_dropped: IntCounter,
    events_conflated: IntCounter,
    resumed: IntCounter,
    resume_gap: IntCounter,
    gaps: [IntCounter; GAP_REASONS.len()],
    publish: IntCounterVec,
}

impl RouteMetrics {
    fn new(metrics: &Metrics, path: &str) -> Self {
        let protocols = [Protocol::Http1, Protocol::Http2];
        Self {
            path: path.into(),
            streams_open: protocols
                .map(|p| metrics.streams_open.with_label_values(&[path, p.as_str()])),
            streams_opened: protocols.map(|p| {
                metrics
                    .streams_opened
                    .with_label_values(&[path, p.as_str()])
            }),
            closed: CloseReason::ALL.map(|reason| {
                metrics
                    .streams_closed
                    .with_label_values(&[path, reason.as_str()])
            }),
            batches: BatchCounters::default(),
            events_dropped: metrics.events_dropped.with_label_values(&[path]),
            events_conflated: metrics.events_conflated.with_label_values(&[path]),
            resumed: metrics.resumes.with_label_values(&[path, "resumed"]),
            resume_gap: metrics.resumes.with_label_values(&[path, "gap"]),
            gaps: GAP_REASONS.map(|reason| {
                metrics
                    .gaps_sent
                    .with_label_values(&[path, reason.as_str()])
            }),
            publish: metrics.publish_requests.clone(),
        }
    }

    /// A stream opened: counted, and open until the returned guard is dropped.
    pub fn opened(self: &Arc<Self>, protocol: Protocol) -> OpenStream {
        self.streams_opened[protocol.index()].inc();
        self.streams_open[protocol.index()].inc();
        OpenStream {
            route: self.clone(),
            protocol,
        }
    }

    /// A stream ended for `reason`.
    pub fn closed(&self, reason: CloseReason) {
        if let Some(i) = CloseReason::ALL.iter().position(|r| *r == reason) {
            self.closed[i].inc();
        }
    }

    /// A batch of `events` events (`bytes` bytes in all, with whatever else the batch held) was
    /// accepted by a client's socket; its oldest message reached sluice `lag` ago, and the batch
    /// filled `fill` of the stream's queue.
    pub fn wrote(&self, events: u64, bytes: u64, lag: Option<std::time::Duration>, fill: f64) {
        self.batches.record(events, bytes, lag, fill);
    }

    /// `n` events were discarded by the drop-oldest policy.
    pub fn dropped(&self, n: u64) {
        self.events_dropped.inc_by(n);
    }

    /// `n` events were replaced by newer ones of their topic (`max_rate`).
    pub fn conflated(&self, n: u64) {
        self.events_conflated.inc_by(n);
    }

    /// `n` gap events for `reason` were queued to streams.
    pub fn gaps(&self, reason: GapReason, n: u64) {
        if let Some(i) = GAP_REASONS.iter().position(|r| *r == reason) {
            self.gaps[i].inc_by(n);
        }
    }

    /// A stream that asked to resume did (`true`), or was told of a gap first.
    pub fn resume(&self, resumed: bool) {
        if resumed {
            self.resumed.inc();
        } else {
            self.resume_gap.inc();
        }
    }

    /// A publish request was answered `status`.
    pub fn publish(&self, status: u16) {
        let labels = [&*self.path, status_label(status)];
        self.publish.with_label_values(&labels).inc();
    }

    /// What the status page shows of the route: events sent, events dropped, open streams.
    pub fn totals(&self) -> RouteTotals {
        let batches = self.batches.totals();
        let open: i64 = self.streams_open.iter().map(IntGauge::get).sum();
        RouteTotals {
            streams: u64::try_from(open).unwrap_or(0),
            events: batches.events,
            dropped: self.events_dropped.get(),
            lag_count: batches.lag_count(),
            lag_buckets: batches.lag_buckets(),
        }
    }
}

/// A snapshot of a route's counters (see [`RouteMetrics::totals`]).
#[derive(Clone, Debug, Default)]
pub struct RouteTotals {
    pub streams: u64,
    pub events: u64,
    pub dropped: u64,
    /// Batches whose delivery lag was observed.
    pub lag_count: u64,
    /// The delivery lag histogram: cumulative counts by upper bound (seconds).
    pub lag_buckets: Vec<(f64, u64)>,
}

/// An open stream's place in `sluice_streams_open`, given back when dropped.
pub struct OpenStream {
    route: Arc<RouteMetrics>,
    protocol: Protocol,
}

impl OpenStream {
    pub fn route(&self) -> &Arc<RouteMetrics> {
        &self.route
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.route.streams_open[self.protocol.index()].dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_public_name_is_exported() {
        let metrics = global();
        let route = metrics.route("/t/{id}");
        let open = route.opened(Protocol::Http2);
        route.wrote(3, 120, Some(std::time::Duration::from_millis(2)), 0.5);
        route.gaps(GapReason::Overflow, 1);
        route.resume(true);
        route.publish(202);
        route.closed(CloseReason::Reload);
        metrics.http_request(404);
        let text = String::from_utf8(metrics.encode()).unwrap_or_default();
        for name in [
            "sluice_streams_open{protocol=\"http2\",route=\"/t/{id}\"} 1",
            "sluice_streams_opened_total{protocol=\"http2\",route=\"/t/{id}\"} 1",
            "sluice_streams_closed_total{reason=\"reload\",route=\"/t/{id}\"} 1",
            "sluice_events_sent_total{route=\"/t/{id}\"} 3",
            "sluice_bytes_sent_total{route=\"/t/{id}\"} 120",
            "sluice_gaps_sent_total{reason=\"overflow\",route=\"/t/{id}\"} 1",
            "sluice_delivery_lag_seconds_bucket{route=\"/t/{id}\",le=\"0.0025\"} 1",
            "sluice_queue_fill_ratio_count{route=\"/t/{id}\"} 1",
            "sluice_resumes_total{outcome=\"resumed\",route=\"/t/{id}\"} 1",
            "sluice_publish_requests_total{route=\"/t/{id}\",status=\"202\"} 1",
            "sluice_http_requests_total{status=\"404\"}",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_cpu_seconds_total ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        drop(open);
        let text = String::from_utf8(metrics.encode()).unwrap_or_default();
        assert!(text.contains("sluice_streams_open{protocol=\"http2\",route=\"/t/{id}\"} 0"));
        assert!(Arc::ptr_eq(&route, &metrics.route("/t/{id}")));
    }
}
