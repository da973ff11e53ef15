//! Criterion micro-benchmarks: SSE encoding by payload size and shape, and the hub's fan-out of one
//! message to 1, 100 and 10,000 stream queues (encode once, share the bytes).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::hub::{Hub, Join, RouteTopics};
use sluice::sse::encode_event;
use sluice::stream::{Overflow, StreamQueue};
use sluice_bridge::Bridge;
use sluice_memory::MemoryBridge;
use std::sync::Arc;

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for size in [32usize, 1024, 8192] {
        let single = vec![b'a'; size];
        // One line break every 64 bytes.
        let multi: Vec<u8> = (0..size)
            .map(|i| if i % 64 == 63 { b'\n' } else { b'a' })
            .collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("single-line", size), &single, |b, p| {
            b.iter(|| encode_event(Some("reading"), p))
        });
        group.bench_with_input(BenchmarkId::new("multi-line", size), &multi, |b, p| {
            b.iter(|| encode_event(Some("reading"), p))
        });
    }
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("fan-out");
    for streams in [1usize, 100, 10_000] {
        let memory = Arc::new(MemoryBridge::new());
        let hub = Hub::new();
        let route = Arc::new(RouteTopics::live(memory.clone()));
        // drop-oldest with a small buffer keeps memory flat while nothing drains the queues.
        let memberships: Vec<_> = (0..streams)
            .map(|_| {
                let queue = Arc::new(StreamQueue::new(8, Overflow::DropOldest));
                runtime
                    .block_on(hub.join(Join::live(&route, "bench/topic"), queue))
                    .expect("join")
            })
            .collect();
        let payload = Bytes::from(vec![b'x'; 128]);
        group.throughput(Throughput::Elements(streams as u64));
        group.bench_function(BenchmarkId::from_parameter(streams), |b| {
            b.iter(|| {
                runtime
                    .block_on(memory.publish("bench/topic", payload.clone()))
                    .expect("publish")
            })
        });
        drop(memberships);
    }
    group.finish();
}

criterion_group!(benches, encoding, fan_out);
criterion_main!(benches);
