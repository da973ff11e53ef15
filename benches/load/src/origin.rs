//! The SSE-origin benchmark (`--origin N`): N browsers on one upstream stream, via sluice vs nginx.
//!
//! The ideal server is the origin (an SSE application: `GET /sub`, `POST /pub`). In front of it,
//! sluice reads `/sub` once through an `sse` broker; nginx `proxy_pass` opens one upstream stream per
//! browser. Beside each row: the connections the origin has open to the server during the phase
//! (from /proc/net/tcp) and the origin's CPU seconds per million delivered events.

use crate::servers::{Kind, Running};
use crate::stats::Stats;
use crate::{measure, procfs, report, spawn_h1, wait_until, warm_up, Phases, Row, RUN};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;

/// The harness publishes to the origin from this address, so its connection is not counted as the
/// server's (the servers connect from 127.0.0.1, subscribers from 127.10+.x.2).
pub const PUBLISHER_IP: Ipv4Addr = Ipv4Addr::new(127, 9, 0, 1);

/// File descriptors a process needs besides its connections (listeners, logs, epoll, pipes).
const FD_MARGIN: usize = 100;

/// sluice, then nginx with 2 workers and with 1, each in front of a fresh origin with `n`
/// subscribers. nginx with `w` workers holds 2n/w connections per worker (browsers and upstream
/// streams): a worker count whose connections do not fit the file limit is skipped.
pub(crate) async fn compare(n: usize, phases: &Phases) -> Vec<Row> {
    let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |l| l.0) as usize;
    let mut rows = Vec::new();
    for workers in [None, Some(2u8), Some(1)] {
        if let Some(w) = workers {
            let per_worker = 2 * n.div_ceil(w as usize) + FD_MARGIN;
            if per_worker > nofile {
                eprintln!(
                    "origin: nginx proxy_pass {w}w skipped: {per_worker} fds per worker > the file limit {nofile}"
                );
                continue;
            }
        }
        eprintln!("origin: {} h1 x {n}", kind(workers, 0).label());
        match one(workers, n, phases).await {
            Ok(r) => report(&mut rows, r),
            Err(e) => eprintln!("  failed: {e:#}"),
        }
    }
    rows
}

/// sluice (`None`) or nginx with that many workers, in front of the origin on port `origin`.
fn kind(workers: Option<u8>, origin: u16) -> Kind {
    match workers {
        None => Kind::SluiceSse { origin },
        Some(workers) => Kind::NginxProxy { workers, origin },
    }
}

/// The fewest and the most connections the origin had open to the server, sampled every second.
type Seen = Arc<Mutex<(usize, usize)>>;

/// Connections to the origin on 127.0.0.1:`port` not from the publisher.
fn server_connections(port: u16) -> usize {
    procfs::established_peers(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .into_iter()
        .filter(|peer| *peer.ip() != PUBLISHER_IP)
        .count()
}

fn sample(port: u16, seen: &Seen) {
    let now = server_connections(port);
    if let Ok(mut s) = seen.lock() {
        *s = (s.0.min(now), s.1.max(now));
    }
}

/// One server in front of a fresh origin: the latency and throughput phases, as `fan_out` runs them.
async fn one(workers: Option<u8>, n: usize, phases: &Phases) -> anyhow::Result<Vec<Row>> {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let mut origin = Running::start(Kind::Ideal).await?;
    let port = origin.addr.port();
    let kind = kind(workers, port);
    let mut server = Running::start(kind).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids = server.pids();
    let origin_pids = origin.pids();
    let rss_before = procfs::rss_kib(&pids);
    let stats = Arc::new(Stats::new());
    let mut tasks = JoinSet::new();
    spawn_h1(&mut tasks, &server, run, n, 0, &stats).await;
    let all_ready = wait_until("all subscribers ready", Duration::from_secs(120), || {
        stats.ready.load(Ordering::Relaxed) >= n as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_per_sub = procfs::rss_kib(&pids).saturating_sub(rss_before) as f64 / n as f64;
    let mut publishers = [server.publisher().await?];
    warm_up(&stats, &mut publishers[0], n as u64).await?;
    let base = Row {
        server: kind.label(),
        proto: "h1".into(),
        subscribers: n,
        rss_per_sub_kib: rss_per_sub,
        ..Row::default()
    };
    let mut rows = Vec::new();
    let phases = [
        ("origin latency", 1, 1.0, phases.latency_messages),
        ("origin fan-out", 2, 100.0, 100 * phases.rate_seconds),
    ];
    for (test, epoch, rate, count) in phases {
        if count == 0 {
            continue;
        }
        let seen: Seen = Arc::new(Mutex::new((usize::MAX, 0)));
        sample(port, &seen);
        let sampler = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    sample(port, &seen);
                }
            }
        });
        let origin_cpu0 = procfs::cpu_seconds(&origin_pids);
        let (row, _) = measure(&stats, &pids, &mut publishers, epoch, rate, count, n as u64).await;
        let origin_cpu = procfs::cpu_seconds(&origin_pids) - origin_cpu0;
        sampler.abort();
        sample(port, &seen);
        let (fewest, most) = seen.lock().map_or((0, 0), |s| *s);
        let received = (row.sent * n as u64) as f64 - row.lost as f64;
        let connections = if fewest == most {
            format!("{most}")
        } else {
            format!("{fewest} to {most}")
        };
        let mut note = format!(
            "origin: {connections} conns from the server (+1 publisher), {origin_cpu:.2} CPU s = {:.2} s/M ev",
            origin_cpu / (received / 1e6).max(f64::MIN_POSITIVE)
        );
        if !all_ready {
            note = format!("only {} ready; {note}", stats.ready.load(Ordering::Relaxed));
        }
        if workers.is_none() && (most != 1 || fewest != 1 || row.lost != 0) {
            eprintln!(
                "  !!! sluice sse: expected exactly 1 origin connection and nothing lost; saw {connections} and {} lost",
                row.lost
            );
        }
        rows.push(Row {
            test: test.into(),
            rate: format!("{rate}/s"),
            note,
            ..row.over(&base)
        });
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    server.stop();
    origin.stop();
    Ok(rows)
}
