//! Waiting for what is published to come back, for anything that receives it one at a time (an SSE
//! stream, a bridge's sink): probes until a subscription is live, and markers instead of quiet
//! periods.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// How long a probe may take to come back before the next one is published.
const PROBE_WAIT: Duration = Duration::from_millis(100);

/// Something that receives published messages in order: an SSE stream, a bridge's sink.
pub trait Listener {
    type Item;
    /// The next item; fails the test after [`DEADLINE`] or if nothing more can come.
    fn next(&mut self) -> impl Future<Output = Self::Item>;
    /// The next item if one comes within `wait`.
    fn next_within(&mut self, wait: Duration) -> impl Future<Output = Option<Self::Item>>;
    /// The published data an item carries (`None` for anything else, such as a notice of loss).
    fn data(item: &Self::Item) -> Option<&str>;
}

/// Reads until an item with `data` arrives; returns every item read, that one included.
pub async fn read_until<L: Listener>(listener: &mut L, data: &str) -> Vec<L::Item> {
    let mut read = Vec::new();
    loop {
        let item = listener.next().await;
        let done = L::data(&item) == Some(data);
        read.push(item);
        if done {
            return read;
        }
    }
}

/// Publishes `prefix-N` with `publish` (N counting up) until one comes back, and returns the items
/// up to and including it. For a subscription that is still being set up, or a broker that is
/// coming back: what a broker does not deliver while it is away cannot be waited for.
pub async fn publish_until_received<L, F, Fut>(
    listener: &mut L,
    prefix: &str,
    mut publish: F,
) -> Vec<L::Item>
where
    L: Listener,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let start = Instant::now();
    let probe = format!("{prefix}-");
    let mut read = Vec::new();
    for n in 0.. {
        assert!(
            start.elapsed() < DEADLINE,
            "no {prefix}-N came back within {DEADLINE:?}"
        );
        publish(format!("{prefix}-{n}")).await;
        while let Some(item) = listener.next_within(PROBE_WAIT).await {
            let done = L::data(&item).is_some_and(|d| d.starts_with(&probe));
            read.push(item);
            if done {
                return read;
            }
        }
    }
    unreachable!()
}

/// Publishes a marker with `publish` and reads until it comes back; returns the items read before
/// it. A broker keeps the order of what one publisher sends on a topic, so whatever was published
/// before (late probes of [`publish_until_received`], copies a broker sends again after a
/// reconnect) has been read, and what a test publishes next is the next item.
pub async fn settle<L, F, Fut>(listener: &mut L, mut publish: F) -> Vec<L::Item>
where
    L: Listener,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = ()>,
{
    static MARKERS: AtomicU64 = AtomicU64::new(0);
    let marker = format!("settled-{}", MARKERS.fetch_add(1, Ordering::Relaxed));
    publish(marker.clone()).await;
    let mut read = read_until(listener, &marker).await;
    read.pop();
    read
}
