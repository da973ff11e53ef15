//! The end-to-end load harness: starts each server under test, connects N SSE subscribers over
//! HTTP/1.1 or HTTP/2, publishes timestamped messages, and prints one table of delivered events/s,
//! latency, loss, CPU per million events and memory per idle subscriber.
//!
//! Run it through `benches/load.sh`, which builds in release mode and installs the peers.

mod compression;
mod nginx;
mod origin;
mod procfs;
mod publish;
mod servers;
mod sse;
mod stats;
mod storm;
mod subscribers;

use clap::Parser;
use publish::{payload, Publisher};
use servers::{Kind, Running};
use stats::Stats;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

#[derive(Parser)]
#[command(
    about = "sluice vs nginx+Nchan vs an ideal fan-out server (--origin: vs nginx proxy_pass), on 127.0.0.1"
)]
struct Cli {
    /// A short smoke run: 200 subscribers, short phases.
    #[arg(long)]
    quick: bool,
    /// Servers to run: ideal, sluice-memory, sluice-nats, sluice-mqtt, nchan-1w, nchan-2w.
    #[arg(long, value_delimiter = ',')]
    servers: Option<Vec<String>>,
    /// HTTP/1.1 subscriber counts.
    #[arg(long, value_delimiter = ',')]
    subscribers: Option<Vec<usize>>,
    /// Seconds of publishing at 100 msg/s per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// HTTP/2 shapes (sluice only), CONNECTIONSxSTREAMS.
    #[arg(long, value_delimiter = ',', default_value = "1000x100,1000x200")]
    h2: Vec<String>,
    /// Skip the saturation ramp.
    #[arg(long)]
    no_saturation: bool,
    /// Skip the stalled-subscriber (overload) runs.
    #[arg(long)]
    no_overload: bool,
    /// Skip the resume storm (clients resuming at once from a big replay buffer, never reading).
    #[arg(long)]
    no_resume_storm: bool,
    /// The metrics benchmark instead of everything else: the saturation ramp on sluice's memory
    /// route at 1,000 HTTP/1.1 subscribers, with no admin listener and with `/metrics` scraped
    /// every second, alternately, this many times each; prints both and the ratio of the medians.
    #[arg(long, value_name = "REPEATS")]
    metrics_cost: Option<usize>,
    /// The reconnect storm instead of everything else: this many HTTP/1.1 streams on a JetStream
    /// route, sluice restarted under them (see the README's Performance section).
    #[arg(long, value_name = "STREAMS")]
    storm: Option<usize>,
    /// With --storm: HTTP/2 instead, CONNECTIONSxSTREAMS (e.g. 100x100; the total replaces --storm's).
    #[arg(long, value_name = "CxS")]
    storm_h2: Option<String>,
    /// The storm across instances instead of everything else: this many HTTP/1.1 clients on one of
    /// three instances on a 3-node NATS cluster; it is killed and they move to the two others.
    #[arg(long, value_name = "STREAMS")]
    storm_across: Option<usize>,
    /// The compression benchmark instead of everything else: 1,000 HTTP/1.1 subscribers on
    /// sluice's memory route, plain and with each encoding in turn, this many times each: wire
    /// bytes per event, idle memory per subscriber, p99 latency at 100 msg/s and the saturation
    /// ceiling; prints medians and the ratios to the plain stream.
    #[arg(long, value_name = "REPEATS")]
    compression_cost: Option<usize>,
    /// With --compression-cost: the encodings compared with the plain stream.
    #[arg(long, value_delimiter = ',', default_value = "gzip,br,zstd")]
    encodings: Vec<String>,
    /// The SSE-origin benchmark instead of everything else: this many HTTP/1.1 subscribers (10,000
    /// if no number is given; 200 with --quick) on one upstream SSE stream of the ideal server, read
    /// through sluice's `sse` broker, then through nginx `proxy_pass` (unbuffered) with 2 and 1
    /// workers (1 only if its connections fit its file limit): the origin's open connections and
    /// CPU beside each row.
    #[arg(long, value_name = "SUBSCRIBERS", num_args = 0..=1)]
    origin: Option<Option<usize>>,
    /// With --storm: the new process's `max_new_streams_per_second`.
    #[arg(long, value_name = "PER_SECOND")]
    storm_rate: Option<u32>,
}

#[derive(Clone, Copy)]
pub(crate) enum Proto {
    H1,
    H2 { connections: usize, streams: usize },
}

impl Proto {
    fn label(self) -> String {
        match self {
            Proto::H1 => "h1".into(),
            Proto::H2 {
                connections,
                streams,
            } => format!("h2 {connections}x{streams}"),
        }
    }
}

/// One line of the result table.
#[derive(Clone, Default)]
pub(crate) struct Row {
    test: String,
    server: String,
    proto: String,
    subscribers: usize,
    rate: String,
    delivered_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    lost: i64,
    out_of_order: u64,
    cpu_per_million: f64,
    rss_per_sub_kib: f64,
    note: String,
    /// Body bytes received per event by HTTP/1.1 subscribers, as sent (not printed in the table).
    wire_bytes_per_event: f64,
    /// The load generator's own CPU seconds per million events (not printed in the table): it
    /// shares the machine's cores with the server.
    client_cpu_per_million: f64,
    /// Messages published in the phase, and for how long (not printed).
    sent: u64,
    publish_seconds: f64,
}

impl Row {
    /// This row's measured columns with the identity columns (and memory) of `base`.
    fn over(self, base: &Row) -> Row {
        Row {
            test: base.test.clone(),
            server: base.server.clone(),
            proto: base.proto.clone(),
            subscribers: base.subscribers,
            rate: base.rate.clone(),
            rss_per_sub_kib: base.rss_per_sub_kib,
            note: base.note.clone(),
            ..self
        }
    }
}

/// Each run connects from its own 127.x.y.0/24 source addresses, so TIME_WAIT sockets of one run
/// never exhaust the ephemeral ports of the next.
fn source_ip(run: u8, index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 10 + run, (index / 20_000) as u8, 2))
}

static RUN: AtomicU8 = AtomicU8::new(0);

/// Parallel publishers in the saturation ramp for servers published over HTTP, where each message
/// waits for its response. NATS and MQTT clients publish without waiting, so one is enough (four
/// parallel MQTT publishers lost about half of their QoS 0 messages on the way through mosquitto,
/// with no sluice stream closed; one publisher is lossless up to the ceiling).
const HTTP_SATURATION_PUBLISHERS: usize = 4;

fn parse_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "ideal" => Kind::Ideal,
        "sluice-memory" => Kind::SluiceMemory,
        "sluice-nats" => Kind::SluiceNats,
        "sluice-mqtt" => Kind::SluiceMqtt,
        "nchan-1w" => Kind::Nchan { workers: 1 },
        "nchan-2w" => Kind::Nchan { workers: 2 },
        _ => return None,
    })
}

async fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > deadline {
            eprintln!("  (gave up waiting: {what})");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Publishes `count` messages of `epoch` at `rate` per second; returns how many were sent.
async fn publish_at_rate(publisher: &mut Publisher, epoch: u64, rate: f64, count: u64) -> u64 {
    let start = Instant::now();
    let mut sent = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while sent < count {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(count);
        while sent < due {
            sent += 1;
            if let Err(e) = publisher.send(payload(epoch, sent)).await {
                eprintln!("  publish failed: {e}");
                return sent - 1;
            }
        }
    }
    sent
}

/// Waits until `expected` events arrived or nothing arrived for two seconds; returns the time of
/// the last progress.
async fn drain(stats: &Stats, expected: u64) -> Instant {
    let mut last = stats.received.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    loop {
        let now = stats.received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_progress = Instant::now();
        }
        if now >= expected || last_progress.elapsed() > Duration::from_secs(2) {
            return last_progress;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn latency_ms(stats: &Stats) -> (f64, f64, f64) {
    match stats.latency.lock() {
        Ok(h) if !h.is_empty() => (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
        ),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}

/// Publishes `count` messages of `epoch` at `rate` per second, spread over `publishers`, waits for
/// them to arrive at `readers` subscribers, and returns the measured columns and the RSS after.
async fn measure(
    stats: &Stats,
    pids: &[u32],
    publishers: &mut [Publisher],
    epoch: u64,
    rate: f64,
    count: u64,
    readers: u64,
) -> (Row, u64) {
    stats.begin(epoch);
    let cpu0 = procfs::cpu_seconds(pids);
    let client_cpu0 = procfs::cpu_seconds(&[std::process::id()]);
    let t0 = Instant::now();
    let shares = publishers.len().max(1) as u64;
    let sent: u64 = futures::future::join_all(
        publishers
            .iter_mut()
            .map(|p| publish_at_rate(p, epoch, rate / shares as f64, count / shares)),
    )
    .await
    .into_iter()
    .sum();
    let publish_seconds = t0.elapsed().as_secs_f64();
    let end = drain(stats, sent * readers).await;
    let received = stats.received.load(Ordering::Relaxed);
    let (p50_ms, p99_ms, max_ms) = latency_ms(stats);
    let row = Row {
        sent,
        publish_seconds,
        delivered_per_s: received as f64 / end.duration_since(t0).as_secs_f64(),
        p50_ms,
        p99_ms,
        max_ms,
        lost: (sent * readers) as i64 - received as i64,
        out_of_order: stats.out_of_order.load(Ordering::Relaxed),
        cpu_per_million: (procfs::cpu_seconds(pids) - cpu0) / (received as f64 / 1e6),
        wire_bytes_per_event: stats.body_bytes.load(Ordering::Relaxed) as f64
            / received.max(1) as f64,
        client_cpu_per_million: (procfs::cpu_seconds(&[std::process::id()]) - client_cpu0)
            / (received as f64 / 1e6),
        ..Row::default()
    };
    (row, procfs::rss_kib(pids))
}

pub(crate) struct Phases {
    /// Messages of the 1 msg/s latency phase.
    latency_messages: u64,
    /// Seconds of the 100 msg/s throughput phase (0: skip it).
    rate_seconds: u64,
    /// Fraction of subscribers that never read.
    stalled_fraction: f64,
}

/// Spawns `n` HTTP/1.1 subscribers (the first `stalled` never read), 500 at a time, each batch
/// connected before the next so the server's accept backlog never overflows.
async fn spawn_h1(
    tasks: &mut JoinSet<()>,
    server: &Running,
    run: u8,
    n: usize,
    stalled: usize,
    stats: &Arc<Stats>,
) {
    for i in 0..n {
        tasks.spawn(subscribers::h1(
            i,
            source_ip(run, i),
            server.addr,
            server.sub_path.clone(),
            stats.clone(),
            i < stalled,
        ));
        if i % 500 == 499 {
            let target = (i + 1) as u64;
            wait_until("subscribers connect", Duration::from_secs(30), || {
                stats.ready.load(Ordering::Relaxed) >= target
            })
            .await;
        }
    }
}

/// Publishes an event of the warm-up epoch (0) every 200 ms until every one of `readers`
/// subscribers has seen one (all broker subscriptions are live), for at most a minute.
async fn warm_up(stats: &Stats, publisher: &mut Publisher, readers: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut seq = 0;
    while stats.warm.load(Ordering::Relaxed) < readers && start.elapsed() < Duration::from_secs(60)
    {
        seq += 1;
        publisher.send(payload(0, seq)).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Connects `n` subscribers to a fresh server and runs the phases; returns up to two rows.
pub(crate) async fn fan_out(
    kind: Kind,
    proto: Proto,
    n: usize,
    phases: &Phases,
) -> anyhow::Result<Vec<Row>> {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let mut server = Running::start(kind).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids = server.pids();
    let rss_before = procfs::rss_kib(&pids);
    let stats = Arc::new(Stats::new());
    let mut tasks = JoinSet::new();
    let stalled = (n as f64 * phases.stalled_fraction) as usize;
    match proto {
        Proto::H1 => spawn_h1(&mut tasks, &server, run, n, stalled, &stats).await,
        Proto::H2 {
            connections,
            streams,
        } => {
            for c in 0..connections {
                tasks.spawn(subscribers::h2(
                    c,
                    source_ip(run, c),
                    server.addr,
                    server.sub_path.clone(),
                    streams,
                    stats.clone(),
                ));
                if c % 20 == 19 {
                    let target = ((c + 1) * streams) as u64;
                    wait_until("h2 streams open", Duration::from_secs(60), || {
                        stats.ready.load(Ordering::Relaxed) >= target
                    })
                    .await;
                }
            }
        }
    }
    let n_ready = wait_until("all subscribers ready", Duration::from_secs(120), || {
        stats.ready.load(Ordering::Relaxed) >= n as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = procfs::rss_kib(&pids);
    let rss_per_sub = (rss_idle.saturating_sub(rss_before)) as f64 / n as f64;
    let mut publisher = server.publisher().await?;
    let readers = (n - stalled) as u64;
    warm_up(&stats, &mut publisher, readers).await?;
    let base = Row {
        server: kind.label(),
        proto: proto.label(),
        subscribers: n,
        rss_per_sub_kib: rss_per_sub,
        note: if n_ready {
            String::new()
        } else {
            format!("only {} ready", stats.ready.load(Ordering::Relaxed))
        },
        ..Row::default()
    };
    let mut rows = Vec::new();

    let mut publishers = [publisher];
    if phases.latency_messages > 0 {
        let (row, _) = measure(
            &stats,
            &pids,
            &mut publishers,
            1,
            1.0,
            phases.latency_messages,
            readers,
        )
        .await;
        rows.push(Row {
            test: "latency".into(),
            rate: "1/s".into(),
            ..row.over(&base)
        });
    }
    if phases.rate_seconds > 0 {
        let (row, rss_after) = measure(
            &stats,
            &pids,
            &mut publishers,
            2,
            100.0,
            100 * phases.rate_seconds,
            readers,
        )
        .await;
        let (test, note) = if stalled > 0 {
            (
                "overload",
                format!("{stalled} stalled; RSS after {} MiB", rss_after / 1024),
            )
        } else {
            ("fan-out", base.note.clone())
        };
        rows.push(Row {
            test: test.into(),
            rate: "100/s".into(),
            note,
            ..row.over(&base)
        });
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    server.stop();
    Ok(rows)
}

/// The events of the replay ring in the resume storm: `epoch` 9 (never measured), 1 KiB each.
fn ring_payload(seq: u64) -> bytes::Bytes {
    let mut text = format!("9 {seq} {} ", stats::now_micros());
    text.extend(std::iter::repeat_n(
        'r',
        1024usize.saturating_sub(text.len()),
    ));
    bytes::Bytes::from(text)
}

/// `resumers` clients resume at once with an unknown id on a replay route holding `replay` events of
/// 1 KiB, and never read, while `live` streams get 100 msg/s: RSS growth against the ring's own size,
/// and the live streams' p99 against the same run just before the storm.
async fn resume_storm(
    live: usize,
    resumers: usize,
    replay: usize,
    seconds: u64,
) -> anyhow::Result<Vec<Row>> {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let routes = format!(
        "[[routes]]\npath = \"/replay/{{t}}\"\nbroker = \"b\"\ntopic = \"replay/{{t}}\"\npublish = true\nreplay = {replay}\n"
    );
    // Stalled resumers stay until the measurement is over (they are not dropped by the write timeout).
    let mut server =
        Running::start_with(Kind::SluiceMemory, "write_timeout = \"600s\"", &routes).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids = server.pids();
    let stats = Arc::new(Stats::new());
    let mut tasks = JoinSet::new();
    spawn_h1(&mut tasks, &server, run, live, 0, &stats).await;
    wait_until("live subscribers ready", Duration::from_secs(60), || {
        stats.ready.load(Ordering::Relaxed) >= live as u64
    })
    .await;
    let mut publisher = server.publisher().await?;
    let mut warm_seq = 0;
    let warm_start = Instant::now();
    while stats.warm.load(Ordering::Relaxed) < live as u64
        && warm_start.elapsed() < Duration::from_secs(60)
    {
        warm_seq += 1;
        publisher.send(payload(0, warm_seq)).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Fill the ring, with one reading stream on the room keeping its topic alive.
    let keeper = Arc::new(Stats::new());
    keeper.begin(9);
    tasks.spawn(subscribers::h1(
        1,
        source_ip(run, live + 1),
        server.addr,
        "/replay/room".into(),
        keeper.clone(),
        false,
    ));
    wait_until("the ring's keeper ready", Duration::from_secs(30), || {
        keeper.ready.load(Ordering::Relaxed) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_empty = procfs::rss_kib(&pids);
    let mut filler = Publisher::http(server.addr, "/replay/room").await?;
    for seq in 1..=replay as u64 {
        filler.send(ring_payload(seq)).await?;
    }
    wait_until("the keeper read the ring", Duration::from_secs(60), || {
        keeper.received.load(Ordering::Relaxed) >= replay as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_ring = procfs::rss_kib(&pids);
    let ring_kib = rss_ring.saturating_sub(rss_empty).max(1);

    let mut publishers = [publisher];
    let count = 100 * seconds;
    let (calm, _) = measure(&stats, &pids, &mut publishers, 2, 100.0, count, live as u64).await;

    let storm = Arc::new(Stats::new());
    let before_storm = procfs::rss_kib(&pids);
    for i in 0..resumers {
        tasks.spawn(subscribers::stalled_resume(
            source_ip(run, live + 2 + i),
            server.addr,
            "/replay/room".into(),
            "unknown".into(),
            storm.clone(),
        ));
    }
    let all_in = wait_until("every resume answered", Duration::from_secs(60), || {
        storm.ready.load(Ordering::Relaxed) >= resumers as u64
    })
    .await;
    let (stormy, rss_after) =
        measure(&stats, &pids, &mut publishers, 3, 100.0, count, live as u64).await;
    let grown = rss_after.saturating_sub(before_storm);
    let p99_ratio = stormy.p99_ms / calm.p99_ms;
    let base = Row {
        server: Kind::SluiceMemory.label(),
        proto: "h1".into(),
        subscribers: live,
        rate: "100/s".into(),
        ..Row::default()
    };
    let rows = vec![
        Row {
            test: "resume storm".into(),
            note: format!("before the storm; ring of {replay} x 1 KiB: RSS +{ring_kib} KiB"),
            ..calm.over(&base)
        },
        Row {
            test: "resume storm".into(),
            note: format!(
                "{resumers} stalled resumes{}: RSS +{grown} KiB = {:.2}x the ring; p99 {:.2}x before",
                if all_in { "" } else { " (not all answered)" },
                grown as f64 / ring_kib as f64,
                p99_ratio
            ),
            ..stormy.over(&base)
        },
    ];
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    server.stop();
    Ok(rows)
}

/// Raises the publish rate at 1,000 subscribers until delivered events/s stops growing.
/// Whether a saturation run has sluice's admin listener scraped.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scrape {
    /// No admin listener at all.
    Off,
    /// `/metrics` fetched every second through the run.
    EverySecond,
}

/// The saturation ramp (see the README), or with `fixed_rate` one step at that publish rate.
pub(crate) async fn saturation(
    kind: Kind,
    n: usize,
    step_seconds: u64,
    scrape: Scrape,
    fixed_rate: Option<f64>,
) -> anyhow::Result<Row> {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let admin: SocketAddr = format!("127.0.0.1:{}", sluice_testkit::free_port()).parse()?;
    let mut server = match scrape {
        Scrape::Off => Running::start(kind).await?,
        Scrape::EverySecond => {
            let section = format!("\n[admin]\nlisten = \"{admin}\"\n");
            Running::start_with(kind, "", &section).await?
        }
    };
    let scraper = (scrape == Scrape::EverySecond).then(|| tokio::spawn(scrape_metrics(admin)));
    let pids = server.pids();
    let stats = Arc::new(Stats::new());
    let mut tasks = JoinSet::new();
    spawn_h1(&mut tasks, &server, run, n, 0, &stats).await;
    wait_until("subscribers ready", Duration::from_secs(60), || {
        stats.ready.load(Ordering::Relaxed) >= n as u64
    })
    .await;
    // Several publishers in parallel, so the publish side (an HTTP round trip per message for
    // sluice's memory route, Nchan and the ideal server) is not what limits the ramp. Their
    // messages interleave, so order is not checked here.
    let mut publishers = Vec::new();
    let parallel = match kind {
        Kind::SluiceNats | Kind::SluiceMqtt => 1,
        _ => HTTP_SATURATION_PUBLISHERS,
    };
    for _ in 0..parallel {
        publishers.push(server.publisher().await?);
    }
    let warm_start = Instant::now();
    let mut seq = 0;
    while stats.warm.load(Ordering::Relaxed) < n as u64
        && warm_start.elapsed() < Duration::from_secs(60)
    {
        // Every publisher takes part, so each one's connection is up before the ramp starts.
        for publisher in &mut publishers {
            seq += 1;
            publisher.send(payload(0, seq)).await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut best = Row {
        test: "saturation".into(),
        server: kind.label(),
        proto: "h1".into(),
        subscribers: n,
        note: if parallel > 1 {
            "order not checked (parallel publishers)".into()
        } else {
            String::new()
        },
        ..Row::default()
    };
    let mut rate = fixed_rate.unwrap_or(500.0);
    for epoch in 10.. {
        let count = (rate * step_seconds as f64) as u64;
        let (row, _) = measure(&stats, &pids, &mut publishers, epoch, rate, count, n as u64).await;
        let achieved = row.sent as f64 / row.publish_seconds;
        eprintln!(
            "  {} rate {rate}/s (achieved {achieved:.0}/s): {:.0} events/s, lost {}, streams closed {}, {:.3} CPU s/M",
            kind.label(),
            row.delivered_per_s,
            row.lost,
            stats.closed.load(Ordering::Relaxed),
            row.cpu_per_million
        );
        if fixed_rate.is_some() {
            best = Row {
                test: "fixed rate".into(),
                rate: format!("{achieved:.0}/s"),
                ..row.over(&best)
            };
            break;
        }
        // The ceiling is the best lossless step (at most 0.1% lost).
        let lossless = row.lost <= (row.sent * n as u64 / 1000) as i64;
        let improved = row.delivered_per_s > best.delivered_per_s * 1.05;
        if lossless && row.delivered_per_s > best.delivered_per_s {
            best = Row {
                rate: format!("{achieved:.0}/s"),
                out_of_order: if parallel > 1 { 0 } else { row.out_of_order },
                ..row.over(&best)
            };
        }
        if !improved || !lossless || rate >= 128_000.0 {
            break;
        }
        rate *= 2.0;
    }
    if let Some(scraper) = scraper {
        scraper.abort();
        let scrapes = SCRAPES.swap(0, Ordering::Relaxed);
        best.note = format!("/metrics scraped every 1 s ({scrapes} scrapes)");
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    server.stop();
    Ok(best)
}

/// Fetches `/metrics` from `admin` once a second, reading each body whole (as Prometheus does),
/// until aborted; counts the scrapes that succeeded in [`SCRAPES`].
async fn scrape_metrics(admin: SocketAddr) {
    use http_body_util::{BodyExt, Empty};
    let mut scrapes = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let fetched = async {
            let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(admin).await?);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            let request = http::Request::get("/metrics")
                .header("host", admin.to_string())
                .body(Empty::<bytes::Bytes>::new())?;
            let body = sender.send_request(request).await?.into_body();
            let bytes = body.collect().await?.to_bytes();
            anyhow::Ok(bytes.len())
        };
        if matches!(fetched.await, Ok(len) if len > 0) {
            scrapes += 1;
            SCRAPES.store(scrapes, Ordering::Relaxed);
        }
    }
}

/// Scrapes done by the running [`scrape_metrics`].
static SCRAPES: AtomicU64 = AtomicU64::new(0);

/// The metrics benchmark (see `--metrics-cost`): rows of both variants, then their medians.
///
/// Each run publishes as fast as the publishers manage (asking for 2,000 msg/s to 1,000
/// subscribers, about the ceiling on 2 cores) for one step, and reads the server's CPU seconds per
/// million delivered events: the ceiling of a CPU-bound server is its cores over that, and unlike
/// the ramp's best step it does not swing with how the publishers were scheduled.
async fn metrics_cost(repeats: usize, quick: bool) -> Vec<Row> {
    let (n, step) = if quick { (200, 2) } else { (1000, 10) };
    let mut rows = Vec::new();
    let mut runs: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..repeats {
        for (i, scrape) in [Scrape::Off, Scrape::EverySecond].into_iter().enumerate() {
            eprintln!("metrics cost, round {}: scrape {}", round + 1, i == 1);
            match saturation(Kind::SluiceMemory, n, step, scrape, Some(2000.0)).await {
                Ok(mut row) => {
                    if scrape == Scrape::Off {
                        row.note = "no admin listener".into();
                    }
                    runs[i].push((row.delivered_per_s, row.cpu_per_million));
                    report(&mut rows, vec![row]);
                }
                Err(e) => eprintln!("  failed: {e:#}"),
            }
        }
    }
    let median = |runs: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    let [off, on] = [&runs[0], &runs[1]].map(|r| (median(r, |x| x.0), median(r, |x| x.1)));
    eprintln!(
        "metrics cost: median {:.0} ev/s at {:.3} CPU s/M without an admin listener; {:.0} ev/s at \
         {:.3} CPU s/M with /metrics scraped every second: {:.3}x the CPU per event",
        off.0,
        off.1,
        on.0,
        on.1,
        on.1 / off.1.max(f64::MIN_POSITIVE)
    );
    rows
}

/// Prints a finished row at once (to stderr), so an interrupted run still shows what it measured.
pub(crate) fn report(rows: &mut Vec<Row>, new: Vec<Row>) {
    for row in &new {
        eprintln!(
            "  => {} {} {} x{} {}: {:.0} ev/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, lost {}, {:.2} CPU s/M, {:.2} KiB/sub {}",
            row.test, row.server, row.proto, row.subscribers, row.rate, row.delivered_per_s, row.p50_ms,
            row.p99_ms, row.max_ms, row.lost, row.cpu_per_million, row.rss_per_sub_kib, row.note
        );
    }
    rows.extend(new);
}

fn print_table(rows: &[Row]) {
    println!(
        "| test | server | proto | subs | rate | delivered ev/s | p50 ms | p99 ms | max ms | lost | ooo | CPU s/M ev | RSS KiB/idle sub | vs nchan 1w | vs ideal | note |"
    );
    println!("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        let peer = |server: &str| {
            rows.iter().find(|r| {
                r.server == server
                    && r.test == row.test
                    && r.proto == row.proto
                    && r.subscribers == row.subscribers
            })
        };
        // Throughput rows compare delivered events/s (higher is better); latency rows compare p99
        // (lower is better).
        let metric = |r: &Row| {
            if r.test == "latency" {
                r.p99_ms
            } else {
                r.delivered_per_s
            }
        };
        let ratio = |other: Option<&Row>| match other {
            Some(o) if metric(o) > 0.0 && row.server != o.server => {
                let prefix = if row.test == "latency" { "p99 " } else { "" };
                format!("{prefix}{:.2}x", metric(row) / metric(o))
            }
            _ => "".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} | {:.2} | {} | {} | {} |",
            row.test,
            row.server,
            row.proto,
            row.subscribers,
            row.rate,
            row.delivered_per_s,
            row.p50_ms,
            row.p99_ms,
            row.max_ms,
            row.lost,
            row.out_of_order,
            row.cpu_per_million,
            row.rss_per_sub_kib,
            ratio(peer("nchan 1w")),
            ratio(peer("ideal")),
            row.note
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // On Ctrl-C the run is dropped, and with it every server it started (stopped by PID).
    tokio::select! {
        result = run(cli) => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: stopping the servers");
            Ok(())
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (soft, hard) = rlimit::increase_nofile_limit(u64::MAX)
        .map(|l| (l, l))
        .unwrap_or((0, 0));
    eprintln!("open files limit: {soft} (hard {hard})");
    if let Some(n) = cli.storm_across {
        let scratch = std::env::temp_dir().join(format!("sluice-storm-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let result = storm::storm_across(n, servers::bin_dir()?, scratch.clone()).await;
        let _ = std::fs::remove_dir_all(&scratch);
        return result;
    }
    if let Some(n) = cli.storm {
        let scratch = std::env::temp_dir().join(format!("sluice-storm-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let (n, transport) = match &cli.storm_h2 {
            None => (n, storm::Transport::H1),
            Some(shape) => {
                let (c, s) = shape
                    .split_once('x')
                    .and_then(|(c, s)| Some((c.parse::<usize>().ok()?, s.parse::<usize>().ok()?)))
                    .ok_or_else(|| {
                        anyhow::anyhow!("--storm-h2 {shape:?}: expected CxS, e.g. 100x100")
                    })?;
                (
                    c * s,
                    storm::Transport::H2 {
                        connections: c,
                        streams: s,
                    },
                )
            }
        };
        let bin = servers::bin_dir()?;
        let result = storm::storm(n, transport, cli.storm_rate, bin, scratch.clone()).await;
        let _ = std::fs::remove_dir_all(&scratch);
        return result;
    }
    if let Some(n) = cli.origin {
        let phases = Phases {
            latency_messages: if cli.quick { 3 } else { 10 },
            rate_seconds: if cli.quick { 2 } else { cli.seconds },
            stalled_fraction: 0.0,
        };
        let n = n.unwrap_or(if cli.quick { 200 } else { 10_000 });
        let rows = origin::compare(n, &phases).await;
        print_table(&rows);
        return Ok(());
    }
    if let Some(repeats) = cli.compression_cost {
        let rows = compression::cost(repeats.max(1), cli.quick, &cli.encodings).await;
        print_table(&rows);
        return Ok(());
    }
    if let Some(repeats) = cli.metrics_cost {
        let rows = metrics_cost(repeats.max(1), cli.quick).await;
        print_table(&rows);
        return Ok(());
    }
    let kinds: Vec<Kind> = match &cli.servers {
        Some(names) => names.iter().filter_map(|n| parse_kind(n)).collect(),
        None => vec![
            Kind::Ideal,
            Kind::SluiceMemory,
            Kind::SluiceNats,
            Kind::SluiceMqtt,
            Kind::Nchan { workers: 1 },
            Kind::Nchan { workers: 2 },
        ],
    };
    let counts = cli.subscribers.clone().unwrap_or(if cli.quick {
        vec![200]
    } else {
        vec![1000, 10_000, 15_000]
    });
    let phases = Phases {
        latency_messages: if cli.quick { 3 } else { 10 },
        rate_seconds: if cli.quick { 2 } else { cli.seconds },
        stalled_fraction: 0.0,
    };
    let mut rows = Vec::new();
    for &n in &counts {
        for &kind in &kinds {
            eprintln!("fan-out: {} h1 x {n}", kind.label());
            match fan_out(kind, Proto::H1, n, &phases).await {
                Ok(r) => report(&mut rows, r),
                Err(e) => eprintln!("  failed: {e:#}"),
            }
        }
    }
    if !cli.no_overload {
        for &kind in kinds
            .iter()
            .filter(|k| matches!(k, Kind::SluiceMemory | Kind::Ideal))
        {
            let n = if cli.quick { 200 } else { 1000 };
            eprintln!("overload: {} h1 x {n}, 10% stalled", kind.label());
            let stalled = Phases {
                latency_messages: 0,
                stalled_fraction: 0.1,
                ..phases
            };
            match fan_out(kind, Proto::H1, n, &stalled).await {
                Ok(r) => report(&mut rows, r),
                Err(e) => eprintln!("  failed: {e:#}"),
            }
        }
    }
    if !cli.no_resume_storm && kinds.contains(&Kind::SluiceMemory) {
        let (live, resumers, replay) = if cli.quick {
            (200, 200, 2000)
        } else {
            (1000, 1000, 10_000)
        };
        eprintln!("resume storm: {resumers} stalled resumes of {replay} x 1 KiB, {live} live h1");
        match resume_storm(live, resumers, replay, phases.rate_seconds.max(2)).await {
            Ok(r) => report(&mut rows, r),
            Err(e) => eprintln!("  failed: {e:#}"),
        }
    }
    if !cli.no_saturation {
        for &kind in &kinds {
            eprintln!("saturation: {} h1 x 1000", kind.label());
            match saturation(
                kind,
                if cli.quick { 200 } else { 1000 },
                if cli.quick { 1 } else { 3 },
                Scrape::Off,
                None,
            )
            .await
            {
                Ok(r) => report(&mut rows, vec![r]),
                Err(e) => eprintln!("  failed: {e:#}"),
            }
        }
    }
    for shape in &cli.h2 {
        let Some((c, s)) = shape
            .split_once('x')
            .and_then(|(c, s)| Some((c.parse::<usize>().ok()?, s.parse::<usize>().ok()?)))
        else {
            eprintln!("bad h2 shape {shape:?}: expected CONNECTIONSxSTREAMS");
            continue;
        };
        let (c, s): (usize, usize) = if cli.quick { (c.min(10), s) } else { (c, s) };
        for &kind in kinds
            .iter()
            .filter(|k| k.supports_h2() && **k == Kind::SluiceMemory)
        {
            eprintln!("h2: {} {c}x{s}", kind.label());
            let h2_phases = Phases {
                latency_messages: if cli.quick { 2 } else { 5 },
                rate_seconds: 0,
                stalled_fraction: 0.0,
            };
            match fan_out(
                kind,
                Proto::H2 {
                    connections: c,
                    streams: s,
                },
                c * s,
                &h2_phases,
            )
            .await
            {
                Ok(r) => report(&mut rows, r),
                Err(e) => eprintln!("  failed: {e:#}"),
            }
        }
    }
    print_table(&rows);
    Ok(())
}
