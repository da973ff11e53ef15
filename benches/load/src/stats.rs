//! Shared counters of one measurement phase: events, order, latency, readiness.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (publisher and subscribers share this machine's clock).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub struct Stats {
    /// The phase being measured; events of other epochs only count as "alive".
    pub epoch: AtomicU64,
    pub received: AtomicU64,
    pub out_of_order: AtomicU64,
    /// Subscribers whose response headers arrived.
    pub ready: AtomicU64,
    /// Subscribers that received at least one event of the warm-up epoch (0).
    pub warm: AtomicU64,
    /// Streams that ended while they should be open.
    pub closed: AtomicU64,
    /// Body bytes received as sent (compressed, for a compressed stream), of HTTP/1.1 streams.
    pub body_bytes: AtomicU64,
    pub latency: Mutex<Histogram<u64>>,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            epoch: AtomicU64::new(u64::MAX),
            received: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            warm: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            // 1 µs to 2 minutes, 3 significant digits: constant bounds that are always valid.
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            ),
        }
    }

    /// Starts measuring a new epoch: resets the counters.
    pub fn begin(&self, epoch: u64) {
        self.received.store(0, Ordering::SeqCst);
        self.body_bytes.store(0, Ordering::SeqCst);
        self.out_of_order.store(0, Ordering::SeqCst);
        if let Ok(mut h) = self.latency.lock() {
            h.reset();
        }
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// Records one event seen by a subscriber whose own position is `sub_epoch` / `last_seq`.
    pub fn record(
        &self,
        epoch: u64,
        seq: u64,
        micros: u64,
        sub_epoch: &mut u64,
        last_seq: &mut u64,
        sample: bool,
    ) {
        if epoch != *sub_epoch {
            if epoch == 0 {
                self.warm.fetch_add(1, Ordering::Relaxed);
            }
            *sub_epoch = epoch;
            *last_seq = 0;
        }
        if epoch != self.epoch.load(Ordering::Relaxed) {
            return;
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        if seq <= *last_seq {
            self.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        *last_seq = seq;
        if sample {
            let latency = now_micros().saturating_sub(micros).max(1);
            if let Ok(mut h) = self.latency.lock() {
                let _ = h.record(latency);
            }
        }
    }
}
