//! The status page's data: once a second, per route its open streams, events per second, events
//! dropped and the p99 delivery lag over that second, and per broker its state and reconnects.

use super::metrics::RouteTotals;
use crate::http::Routing;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

#[derive(Serialize)]
struct Snapshot<'a> {
    routes: Vec<RouteStatus<'a>>,
    brokers: Vec<BrokerState<'a>>,
}

#[derive(Serialize)]
struct RouteStatus<'a> {
    route: &'a str,
    broker: &'a str,
    streams: u64,
    events_per_sec: f64,
    /// Events discarded by drop-oldest since the process started.
    dropped: u64,
    lag_p99_ms: f64,
}

#[derive(Serialize)]
struct BrokerState<'a> {
    broker: &'a str,
    up: bool,
    reconnects: u64,
    messages: u64,
    subscriptions: u64,
}

/// One viewer's feed: what it saw last, to turn counters into rates.
pub struct Feed {
    previous: HashMap<Arc<str>, RouteTotals>,
    at: Instant,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

impl Feed {
    pub fn new() -> Self {
        Self {
            previous: HashMap::new(),
            at: Instant::now(),
        }
    }

    /// The snapshot of now, as JSON.
    pub fn snapshot(&mut self, routing: &Routing) -> String {
        let elapsed = self.at.elapsed().as_secs_f64().max(0.001);
        self.at = Instant::now();
        let mut previous = std::mem::take(&mut self.previous);
        let config = &routing.config;
        let routes = config
            .routes
            .iter()
            .zip(&routing.routes)
            .map(|(route, topics)| {
                let metrics = &topics.metrics;
                let now = metrics.totals();
                // A route seen for the first time has no rate yet (not everything since start).
                let before = previous
                    .remove(&metrics.path)
                    .unwrap_or_else(|| now.clone());
                let status = RouteStatus {
                    route: route.path.as_str(),
                    broker: config
                        .brokers
                        .get(route.broker)
                        .map_or("", |b| b.name.as_str()),
                    streams: now.streams,
                    events_per_sec: now.events.saturating_sub(before.events) as f64 / elapsed,
                    dropped: now.dropped,
                    lag_p99_ms: p99_seconds(&before, &now) * 1000.0,
                };
                self.previous.insert(metrics.path.clone(), now);
                status
            })
            .collect();
        let brokers = config
            .brokers
            .iter()
            .zip(&routing.bridges)
            .map(|(broker, bridge)| {
                let status = bridge.status();
                BrokerState {
                    broker: &broker.name,
                    up: status.connected,
                    reconnects: status.reconnects,
                    messages: status.messages,
                    subscriptions: status.subscriptions,
                }
            })
            .collect();
        serde_json::to_string(&Snapshot { routes, brokers }).unwrap_or_default()
    }
}

/// The 99th percentile of the lags observed between two snapshots, as the upper bound of the
/// histogram bucket it falls in (0 when nothing was written; the last bound when it is past it).
fn p99_seconds(before: &RouteTotals, now: &RouteTotals) -> f64 {
    let count = now.lag_count.saturating_sub(before.lag_count);
    if count == 0 {
        return 0.0;
    }
    let target = (count * 99).div_ceil(100);
    let mut last = 0.0;
    for (i, (bound, cumulative)) in now.lag_buckets.iter().enumerate() {
        let earlier = before.lag_buckets.get(i).map_or(0, |b| b.1);
        if cumulative.saturating_sub(earlier) >= target {
            return *bound;
        }
        last = *bound;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(count: u64, buckets: &[(f64, u64)]) -> RouteTotals {
        RouteTotals {
            lag_count: count,
            lag_buckets: buckets.to_vec(),
            ..RouteTotals::default()
        }
    }

    #[test]
    fn p99_is_the_bucket_the_99th_percentile_of_the_last_interval_falls_in() {
        let before = totals(100, &[(0.001, 100), (0.01, 100), (0.1, 100)]);
        // 100 more: 98 under 1 ms, 2 under 100 ms.
        let now = totals(200, &[(0.001, 198), (0.01, 198), (0.1, 200)]);
        assert_eq!(p99_seconds(&before, &now), 0.1);
        assert_eq!(p99_seconds(&now, &now), 0.0);
        let slow = totals(201, &[(0.001, 198), (0.01, 198), (0.1, 200)]);
        assert_eq!(p99_seconds(&now, &slow), 0.1, "past the last bound");
    }
}
