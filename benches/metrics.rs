//! Criterion micro-benchmarks of what metrics add to the hot path, beside what they are added to:
//! recording one written batch (`RouteMetrics::wrote`), alone and with another thread recording
//! on the same route at once (the cache lines bounce between cores then), against the write of a
//! small batch to a socket, which every recorded batch comes with.

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::admin::metrics::global;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn recording(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics");
    let route = global().route("/bench/{t}");
    let lag = Some(Duration::from_micros(350));
    group.bench_function("wrote one batch", |b| {
        b.iter(|| route.wrote(1, 160, lag, 1.0 / 1024.0))
    });

    // Another core records on the same route meanwhile, as streams of one route on two pingora
    // threads do under load.
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (route, stop) = (route.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                route.wrote(1, 160, lag, 1.0 / 1024.0);
            }
        })
    };
    group.bench_function("wrote one batch, contended", |b| {
        b.iter(|| route.wrote(1, 160, lag, 1.0 / 1024.0))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();

    // What each recorded batch comes with at the least: one small write to a socket (the bytes of
    // one event, read back by the peer so the buffer never fills).
    let (mut tx, mut rx) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    let frame = [b'x'; 160];
    let mut sink = [0u8; 4096];
    group.bench_function("write one event to a socket", |b| {
        b.iter(|| {
            tx.write_all(&frame).expect("write");
            rx.read_exact(&mut sink[..frame.len()]).expect("read");
        })
    });
    group.finish();
}

criterion_group!(benches, recording);
criterion_main!(benches);
