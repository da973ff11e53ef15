//! The counters every written batch records (events and bytes sent, delivery lag, queue fill): one
//! set per route, split into per-thread shards so that two cores never write the same cache line,
//! and summed only when scraped. Recording is a few relaxed adds on the thread's own shard: no
//! lock, no allocation, no compare-and-swap loop.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Shards per route: as many as the cores a small server has; threads beyond share them.
const SHARDS: usize = 8;

/// Delivery lag bucket bounds, in nanoseconds (from a quarter of a millisecond to the 10 s a
/// stalled client may take before its write timeout).
const LAG_BOUNDS_NS: [u64; 15] = [
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// Queue fill bucket bounds, in millionths of the route's `buffer`.
const FILL_BOUNDS_PPM: [u64; 8] = [
    10_000, 50_000, 100_000, 250_000, 500_000, 750_000, 900_000, 1_000_000,
];

/// One thread's share of a route's counters, on cache lines of its own.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    events: AtomicU64,
    bytes: AtomicU64,
    /// Per bucket (not cumulative), the last one past every bound.
    lag: [AtomicU64; LAG_BOUNDS_NS.len() + 1],
    lag_sum_ns: AtomicU64,
    fill: [AtomicU64; FILL_BOUNDS_PPM.len() + 1],
    fill_sum_ppm: AtomicU64,
}

/// The shard of the calling thread: threads take the next one as they first record.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// Where `value` falls among `bounds` (`bounds.len()`: past them all).
fn bucket(bounds: &[u64], value: u64) -> usize {
    bounds.partition_point(|bound| *bound < value)
}

/// One route's batch counters.
#[derive(Default)]
pub struct BatchCounters {
    shards: [Shard; SHARDS],
}

impl BatchCounters {
    /// A batch of `events` events and `bytes` bytes was written; with a `lag` (its oldest live
    /// message) and how full it left the queue (`fill`, 0 to 1), for live batches.
    pub fn record(&self, events: u64, bytes: u64, lag: Option<Duration>, fill: f64) {
        let Some(shard) = self.shards.get(shard_index()) else {
            return;
        };
        if events > 0 {
            shard.events.fetch_add(events, Ordering::Relaxed);
        }
        shard.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(lag) = lag {
            let ns = u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX);
            if let Some(b) = shard.lag.get(bucket(&LAG_BOUNDS_NS, ns)) {
                b.fetch_add(1, Ordering::Relaxed);
            }
            shard.lag_sum_ns.fetch_add(ns, Ordering::Relaxed);
            // A share in millionths: exact enough for a ratio, and an integer add.
            let ppm = (fill.clamp(0.0, 1.0) * 1e6) as u64;
            if let Some(b) = shard.fill.get(bucket(&FILL_BOUNDS_PPM, ppm)) {
                b.fetch_add(1, Ordering::Relaxed);
            }
            shard.fill_sum_ppm.fetch_add(ppm, Ordering::Relaxed);
        }
    }

    /// The sums over every shard.
    pub fn totals(&self) -> BatchTotals {
        let sum = |f: &dyn Fn(&Shard) -> &AtomicU64| {
            self.shards
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .sum()
        };
        let per_bucket = |n: usize, f: &dyn Fn(&Shard, usize) -> &AtomicU64| {
            (0..n).map(|i| sum(&|s| f(s, i))).collect::<Vec<u64>>()
        };
        BatchTotals {
            events: sum(&|s| &s.events),
            bytes: sum(&|s| &s.bytes),
            lag: per_bucket(LAG_BOUNDS_NS.len() + 1, &|s, i| &s.lag[i]),
            lag_sum_ns: sum(&|s| &s.lag_sum_ns),
            fill: per_bucket(FILL_BOUNDS_PPM.len() + 1, &|s, i| &s.fill[i]),
            fill_sum_ppm: sum(&|s| &s.fill_sum_ppm),
        }
    }
}

/// A route's batch counters summed (see [`BatchCounters::totals`]).
#[derive(Clone, Debug, Default)]
pub struct BatchTotals {
    pub events: u64,
    pub bytes: u64,
    /// Per bucket, not cumulative; the last past every bound.
    lag: Vec<u64>,
    lag_sum_ns: u64,
    fill: Vec<u64>,
    fill_sum_ppm: u64,
}

impl BatchTotals {
    /// Batches whose lag was observed.
    pub fn lag_count(&self) -> u64 {
        self.lag.iter().sum()
    }

    /// The lag histogram: cumulative counts by upper bound, in seconds (without `+Inf`).
    pub fn lag_buckets(&self) -> Vec<(f64, u64)> {
        cumulative(&LAG_BOUNDS_NS, &self.lag, 1e9)
    }
}

/// Cumulative counts by bound, each bound divided by `unit` (dividing keeps 2,500,000 ns exactly
/// 0.0025 s, where multiplying by 1e-9 would not).
fn cumulative(bounds: &[u64], counts: &[u64], unit: f64) -> Vec<(f64, u64)> {
    let mut total = 0;
    bounds
        .iter()
        .zip(counts)
        .map(|(bound, count)| {
            total += count;
            (*bound as f64 / unit, total)
        })
        .collect()
}

/// The four families of the batch counters, for every route, read when scraped.
pub struct BatchCollector {
    descs: Vec<Desc>,
    /// Each route's counters by path template.
    routes: Arc<Mutex<HashMap<Box<str>, Arc<super::metrics::RouteMetrics>>>>,
}

const FAMILIES: [(&str, &str); 4] = [
    (
        "sluice_events_sent_total",
        "Event frames written to clients (events and gaps; not heartbeats).",
    ),
    (
        "sluice_bytes_sent_total",
        "Body bytes written to clients (events, gaps, heartbeats), compressed on compressed streams.",
    ),
    (
        "sluice_delivery_lag_seconds",
        "From a message reaching sluice to its bytes being accepted by the client's socket (the \
         oldest message of each written batch).",
    ),
    (
        "sluice_queue_fill_ratio",
        "Queued events over the route's buffer when a batch is written.",
    ),
];

impl BatchCollector {
    pub fn new(
        routes: Arc<Mutex<HashMap<Box<str>, Arc<super::metrics::RouteMetrics>>>>,
    ) -> prometheus::Result<Self> {
        let descs = FAMILIES
            .iter()
            .map(|(name, help)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    vec!["route".to_owned()],
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(Self { descs, routes })
    }
}

fn labelled(route: &str) -> Metric {
    let mut label = LabelPair::default();
    label.set_name("route".to_owned());
    label.set_value(route.to_owned());
    let mut metric = Metric::default();
    metric.set_label(vec![label]);
    metric
}

fn counter(route: &str, value: u64) -> Metric {
    let mut metric = labelled(route);
    let mut counter = Counter::default();
    counter.set_value(value as f64);
    metric.set_counter(counter);
    metric
}

fn histogram(route: &str, bounds: &[u64], unit: f64, counts: &[u64], sum: f64) -> Metric {
    let mut metric = labelled(route);
    let mut histogram = Histogram::default();
    histogram.set_sample_count(counts.iter().sum());
    histogram.set_sample_sum(sum);
    let buckets = cumulative(bounds, counts, unit)
        .into_iter()
        .map(|(bound, count)| {
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(bound);
            bucket.set_cumulative_count(count);
            bucket
        })
        .collect();
    histogram.set_bucket(buckets);
    metric.set_histogram(histogram);
    metric
}

impl Collector for BatchCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut routes: Vec<(Box<str>, BatchTotals)> = sluice_bridge::lock(&self.routes)
            .iter()
            .map(|(path, route)| (path.clone(), route.batches.totals()))
            .collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        let family = |index: usize, kind: MetricType, metrics: Vec<Metric>| {
            let (name, help) = FAMILIES[index];
            let mut family = MetricFamily::default();
            family.set_name(name.to_owned());
            family.set_help(help.to_owned());
            family.set_field_type(kind);
            family.set_metric(metrics);
            family
        };
        let each = |f: &dyn Fn(&str, &BatchTotals) -> Metric| {
            routes.iter().map(|(path, t)| f(path, t)).collect()
        };
        vec![
            family(0, MetricType::COUNTER, each(&|p, t| counter(p, t.events))),
            family(1, MetricType::COUNTER, each(&|p, t| counter(p, t.bytes))),
            family(
                2,
                MetricType::HISTOGRAM,
                each(&|p, t| histogram(p, &LAG_BOUNDS_NS, 1e9, &t.lag, t.lag_sum_ns as f64 / 1e9)),
            ),
            family(
                3,
                MetricType::HISTOGRAM,
                each(&|p, t| {
                    let sum = t.fill_sum_ppm as f64 / 1e6;
                    histogram(p, &FILL_BOUNDS_PPM, 1e6, &t.fill, sum)
                }),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_holds_them() {
        assert_eq!(bucket(&LAG_BOUNDS_NS, 0), 0);
        assert_eq!(bucket(&LAG_BOUNDS_NS, 250_000), 0);
        assert_eq!(bucket(&LAG_BOUNDS_NS, 250_001), 1);
        assert_eq!(bucket(&LAG_BOUNDS_NS, u64::MAX), LAG_BOUNDS_NS.len());
    }

    #[test]
    fn shards_of_every_thread_are_summed() {
        let counters = Arc::new(BatchCounters::default());
        let threads: Vec<_> = (0..2 * SHARDS)
            .map(|_| {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        counters.record(2, 10, Some(Duration::from_millis(3)), 0.5);
                    }
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().is_ok());
        }
        let totals = counters.totals();
        let n = 2 * SHARDS as u64 * 100;
        assert_eq!((totals.events, totals.bytes), (2 * n, 10 * n));
        assert_eq!(totals.lag_count(), n);
        // 3 ms falls under the 5 ms bound, not under 2.5 ms.
        let under = |bound: f64| {
            totals
                .lag_buckets()
                .iter()
                .find(|b| b.0 == bound)
                .map(|b| b.1)
        };
        assert_eq!(under(0.0025), Some(0));
        assert_eq!(under(0.005), Some(n));
    }
}
