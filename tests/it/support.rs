//! Test support, one job per module, all re-exported here: [`process`] starts sluice (its options,
//! log and memory), [`client`] makes HTTP requests (HTTP/1.1, h2c, TLS h2, publishing), [`sse`]
//! reads event streams and [`origin`] is an upstream SSE origin; the waits every test shares are
//! below.

mod client;
mod origin;
mod process;
mod sse;

pub use client::*;
pub use origin::*;
pub use process::*;
pub use sse::*;

use std::future::Future;
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails.
pub use sluice_testkit::DEADLINE;

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
