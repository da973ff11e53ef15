//! The reconnect storm (`--storm N`): N HTTP/1.1 streams on one JetStream route while 100 msg/s are
//! published; sluice is restarted (SIGTERM, then a new process on the same port) and every client
//! comes back as a browser does, after the `retry:` it was sent, with its `Last-Event-ID`. Reports
//! how long until every stream has resumed, what was lost or duplicated, what the storm cost the
//! NATS server (JetStream API requests, consumers) and sluice's peak memory and CPU.

use crate::procfs;
use async_nats::jetstream::{self, stream};
use sluice_testkit::{free_port, NatsServer};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// What every client counts.
struct Counts {
    /// Streams answered 200 (first connections and resumes).
    opened: AtomicU64,
    /// Events received once each, in order.
    received: AtomicU64,
    duplicated: AtomicU64,
    /// Events skipped over (a later sequence arrived first).
    lost: AtomicU64,
    /// Clients whose stream the old process ended and that reconnected with a 200 since.
    resumed: AtomicU64,
    /// Clients at the last published sequence.
    done: AtomicU64,
    /// Refused or failed connection attempts (reconnected after a second).
    failed: AtomicU64,
    /// Per client: the last sequence it got, and whether a stream is open now (for the report on
    /// clients that never reach the end).
    last_seen: Vec<AtomicU64>,
    connected: Vec<std::sync::atomic::AtomicBool>,
}

impl Counts {
    /// Waits until `n` streams have opened on `on` (the clients' first connections).
    async fn wait_open(&self, n: usize, on: &str) {
        wait_for("every stream open", Duration::from_secs(120), || {
            self.opened.load(Ordering::Relaxed) >= n as u64
        })
        .await;
        eprintln!("  {n} streams open on {on}");
    }

    /// The totals, on stderr beside the table.
    fn summary(&self) {
        eprintln!(
            "  received {}, done {}, failed attempts {}",
            self.received.load(Ordering::Relaxed),
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        );
    }

    fn new(n: usize) -> Self {
        Self {
            opened: AtomicU64::new(0),
            received: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_seen: (0..n).map(|_| AtomicU64::new(0)).collect(),
            connected: (0..n)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        }
    }
}

/// What one client knows and does as `EventSource` would, whatever carries its stream: its last
/// id and `retry:`, and the events it reads (counted into [`Counts`]).
struct Progress {
    index: usize,
    last_id: Option<u64>,
    retry: Duration,
    /// Its stream ended (it reconnects next): the next stream that opens is a resume.
    ended: bool,
    partial: Vec<u8>,
}

impl Progress {
    fn new(index: usize) -> Self {
        Self {
            index,
            last_id: None,
            retry: Duration::from_secs(1),
            ended: false,
            partial: Vec::new(),
        }
    }

    /// The request's `Last-Event-ID`, once it has one.
    fn last_event_id(&self) -> Option<String> {
        self.last_id.map(|id| id.to_string())
    }

    /// A refusal (an error status, or admission control's empty stream with a length and a
    /// `retry:`): it comes back after the retry it was given.
    fn refused(&mut self, body: &[u8], counts: &Counts) {
        counts.failed.fetch_add(1, Ordering::Relaxed);
        let body = String::from_utf8_lossy(body);
        if let Some(ms) = body.split("retry: ").nth(1).and_then(|r| r.lines().next()) {
            self.retry = ms.trim().parse().map_or(self.retry, Duration::from_millis);
        }
    }

    fn opened(&mut self, counts: &Counts) {
        counts.opened.fetch_add(1, Ordering::Relaxed);
        counts.connected[self.index].store(true, Ordering::Relaxed);
        if std::mem::take(&mut self.ended) {
            counts.resumed.fetch_add(1, Ordering::Relaxed);
        }
        self.partial.clear();
    }

    /// Reads SSE lines: `retry:` and `data: SEQ` (chunk-size lines of HTTP/1.1 never look like
    /// either).
    fn feed(&mut self, data: &[u8], counts: &Counts, last: &AtomicU64) {
        self.partial.extend_from_slice(data);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            if let Some(ms) = line.strip_prefix("retry: ") {
                if let Ok(ms) = ms.parse() {
                    self.retry = Duration::from_millis(ms);
                }
            } else if let Some(seq) = line.strip_prefix("data: ") {
                let Ok(seq) = seq.parse::<u64>() else {
                    continue;
                };
                match self.last_id {
                    Some(prev) if seq <= prev => {
                        counts.duplicated.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Some(prev) if seq > prev + 1 => {
                        counts.lost.fetch_add(seq - prev - 1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                self.last_id = Some(seq);
                counts.last_seen[self.index].store(seq, Ordering::Relaxed);
                counts.received.fetch_add(1, Ordering::Relaxed);
                if seq == last.load(Ordering::Relaxed) {
                    counts.done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn stream_ended(&mut self, counts: &Counts) {
        self.ended = true;
        counts.connected[self.index].store(false, Ordering::Relaxed);
    }
}

/// One HTTP/1.1 client on a socket of its own, reconnecting after each end as `EventSource` does:
/// to `targets[0]` first, then always to `targets[1]` (a load balancer sending it elsewhere once its
/// instance went away; the same address for a restart in place).
async fn browser(
    index: usize,
    source: IpAddr,
    targets: [SocketAddr; 2],
    counts: Arc<Counts>,
    last: Arc<AtomicU64>,
) {
    let mut progress = Progress::new(index);
    let mut buf = vec![0u8; 8192];
    let mut server = targets[0];
    loop {
        let resume = progress
            .last_event_id()
            .map_or(String::new(), |id| format!("last-event-id: {id}\r\n"));
        let attempt = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let mut socket = socket.connect(server).await?;
            let request = format!(
                "GET /storm HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n{resume}\r\n"
            );
            socket.write_all(request.as_bytes()).await?;
            std::io::Result::Ok(socket)
        };
        let Ok(mut socket) = attempt.await else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            server = targets[1];
            tokio::time::sleep(progress.retry).await;
            continue;
        };
        let mut head = Vec::new();
        let mut open = false;
        loop {
            let n = match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if open {
                progress.feed(&buf[..n], &counts, &last);
                continue;
            }
            head.extend_from_slice(&buf[..n]);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            if !text.starts_with("http/1.1 200") || text.contains("content-length:") {
                progress.refused(&head[end + 4..], &counts);
                break;
            }
            open = true;
            progress.opened(&counts);
            progress.feed(&head[end + 4..], &counts, &last);
        }
        if open {
            progress.stream_ended(&counts);
        }
        server = targets[1];
        tokio::time::sleep(progress.retry).await;
    }
}

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// The HTTP/2 connection a group of clients shares, made again when it has gone.
async fn h2_sender(
    shared: &tokio::sync::Mutex<Option<H2Sender>>,
    source: IpAddr,
    server: SocketAddr,
) -> Option<H2Sender> {
    let mut current = shared.lock().await;
    if let Some(sender) = current.as_ref().filter(|s| !s.is_closed()) {
        return Some(sender.clone());
    }
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    let socket = socket.connect(server).await.ok()?;
    let io = hyper_util::rt::TokioIo::new(socket);
    let executor = hyper_util::rt::TokioExecutor::new();
    let (sender, connection) = hyper::client::conn::http2::handshake(executor, io)
        .await
        .ok()?;
    tokio::spawn(connection);
    *current = Some(sender.clone());
    Some(sender)
}

/// One client whose stream is one of the HTTP/2 streams of a shared connection.
async fn h2_browser(
    index: usize,
    shared: Arc<tokio::sync::Mutex<Option<H2Sender>>>,
    source: IpAddr,
    server: SocketAddr,
    counts: Arc<Counts>,
    last: Arc<AtomicU64>,
) {
    use http_body_util::BodyExt;
    let mut progress = Progress::new(index);
    loop {
        let Some(mut sender) = h2_sender(&shared, source, server).await else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(progress.retry).await;
            continue;
        };
        let mut request = http::Request::get(format!("http://{server}/storm"))
            .header("accept", "text/event-stream");
        if let Some(id) = progress.last_event_id() {
            request = request.header("last-event-id", id);
        }
        let Ok(request) = request.body(http_body_util::Empty::new()) else {
            return;
        };
        let response = match sender.ready().await {
            Ok(()) => sender.send_request(request).await,
            Err(e) => Err(e),
        };
        let Ok(response) = response else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(progress.retry).await;
            continue;
        };
        let refused = response.status() != 200 || response.headers().contains_key("content-length");
        let mut body = response.into_body();
        if refused {
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            progress.refused(&body, &counts);
        } else {
            progress.opened(&counts);
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    progress.feed(&data, &counts, &last);
                }
            }
            progress.stream_ended(&counts);
        }
        tokio::time::sleep(progress.retry).await;
    }
}

/// A sluice process on `addr` serving `/storm` from the JetStream stream `STORM`.
/// Sends `signal` to a sluice this harness started (by its PID) and waits for it to exit.
fn stop(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// A sluice process on `addr`; `urls`: the broker's `url` value as TOML (a string or a list).
fn start_sluice(bin: &Path, dir: &Path, addr: SocketAddr, urls: &str, rate: Option<u32>) -> Child {
    let admission = rate.map_or(String::new(), |r| {
        format!("max_new_streams_per_second = {r}\n")
    });
    let config = format!(
        "[server]\nlisten = \"{addr}\"\nretry = \"1s\"\nheartbeat = \"30s\"\n{admission}\n\
         [brokers.b]\ntype = \"nats\"\nurl = {urls}\n\n\
         [[routes]]\npath = \"/storm\"\nbroker = \"b\"\ntopic = \"storm.x\"\njetstream = \"STORM\"\n"
    );
    let path = dir.join(format!("storm-{}.toml", addr.port()));
    let _ = std::fs::write(&path, config);
    Command::new(bin)
        .arg("--config")
        .arg(&path)
        // `SLUICE_STORM_LOG=debug` shows what sluice did during the storm (on stderr).
        .env(
            "RUST_LOG",
            std::env::var("SLUICE_STORM_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()))
}

async fn wait_for(
    what: &str,
    deadline: Duration,
    mut done: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > deadline {
            eprintln!("  (gave up waiting: {what})");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(start.elapsed())
}

/// The JetStream API requests the server has answered, and the consumers it holds now.
async fn jetstream_load(nats: &NatsServer) -> (u64, u64) {
    let url = nats.monitor_url("/jsz");
    let body = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", &url])
            .output()
            .map(|o| o.stdout)
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let number = |key: &str| {
        text.split(key)
            .nth(1)
            .and_then(|rest| {
                rest.trim_start_matches([':', ' ', '"'])
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (number("\"total\""), number("\"consumers\""))
}

/// The PIDs of this process's children called `name` (read from /proc, never signalled).
fn children_named(name: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `PID (COMM) STATE PPID ...`
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((comm, rest)) = stat.split_once(") ") else {
                return false;
            };
            let parent = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
            comm.ends_with(&format!("({name}")) && parent == Some(me)
        })
        .collect()
}

/// The storm's publisher: 100 msg/s on `storm.x`, each acknowledged by the stream, numbered from 1.
struct Publisher {
    task: tokio::task::JoinHandle<()>,
    published: Arc<AtomicU64>,
    publishing: Arc<std::sync::atomic::AtomicBool>,
}

impl Publisher {
    fn start(js: &jetstream::Context) -> Self {
        let published = Arc::new(AtomicU64::new(0));
        let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let task = {
            let (js, published, publishing) = (js.clone(), published.clone(), publishing.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let mut seq = 0u64;
                while publishing.load(Ordering::Relaxed) {
                    tick.tick().await;
                    seq += 1;
                    if let Ok(ack) = js.publish("storm.x", seq.to_string().into()).await {
                        let _ = ack.await;
                    }
                    published.store(seq, Ordering::Relaxed);
                }
            })
        };
        Self {
            task,
            published,
            publishing,
        }
    }

    /// Publishes 2 s more, stops, publishes one last event (the clients count themselves done when
    /// they see it) and waits until every client has; returns its sequence.
    async fn finish(
        self,
        js: &jetstream::Context,
        last: &AtomicU64,
        counts: &Counts,
        n: usize,
    ) -> u64 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.publishing.store(false, Ordering::Relaxed);
        let _ = self.task.await;
        let final_seq = self.published.load(Ordering::Relaxed) + 1;
        last.store(final_seq, Ordering::Relaxed);
        if let Ok(ack) = js.publish("storm.x", final_seq.to_string().into()).await {
            let _ = ack.await;
        }
        wait_for(
            "every client at the last event",
            Duration::from_secs(60),
            || counts.done.load(Ordering::Relaxed) >= n as u64,
        )
        .await;
        final_seq
    }
}

/// How the storm's clients reach sluice.
#[derive(Clone, Copy)]
pub enum Transport {
    /// A connection per client.
    H1,
    /// `connections` HTTP/2 connections carrying `streams` clients each.
    H2 { connections: usize, streams: usize },
}

/// Runs the storm with `n` clients; `rate`: the new sluice's `max_new_streams_per_second`.
pub async fn storm(
    n: usize,
    transport: Transport,
    rate: Option<u32>,
    bin_dir: PathBuf,
    scratch: PathBuf,
) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    js.get_or_create_stream(stream::Config {
        name: "STORM".into(),
        subjects: vec!["storm.>".into()],
        max_messages: 1_000_000,
        ..Default::default()
    })
    .await?;
    let nats_pids = children_named("nats-server");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let bin = bin_dir.join("sluice");
    let url = format!("\"{}\"", nats.url());
    let mut sluice = start_sluice(&bin, &scratch, addr, &url, None);

    let counts = Arc::new(Counts::new(n));
    let last = Arc::new(AtomicU64::new(u64::MAX));
    let source = |i: usize| IpAddr::V4(Ipv4Addr::new(127, 40, (i / 20_000) as u8, 2));
    match transport {
        Transport::H1 => {
            for i in 0..n {
                tokio::spawn(browser(
                    i,
                    source(i),
                    [addr, addr],
                    counts.clone(),
                    last.clone(),
                ));
            }
        }
        Transport::H2 {
            connections,
            streams,
        } => {
            for c in 0..connections {
                let shared = Arc::new(tokio::sync::Mutex::new(None));
                for s in 0..streams {
                    let i = c * streams + s;
                    let (counts, last) = (counts.clone(), last.clone());
                    tokio::spawn(h2_browser(i, shared.clone(), source(c), addr, counts, last));
                }
            }
        }
    }
    counts.wait_open(n, "the first process").await;

    // 100 msg/s from now to the end, each acknowledged by the stream.
    let publisher = Publisher::start(&js);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (api_before, _) = jetstream_load(&nats).await;
    let nats_cpu_before = procfs::cpu_seconds(&nats_pids);
    stop(&mut sluice, "TERM");
    let restarted = Instant::now();
    let mut sluice = start_sluice(&bin, &scratch, addr, &url, rate);
    let pid = sluice.id();
    let mut listening = None;
    while listening.is_none() && restarted.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(addr).is_ok() {
            listening = Some(restarted.elapsed());
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let listening_at = Instant::now();
    // Peak consumers and sluice's peak memory, sampled while the clients come back.
    let mut peak_consumers = 0;
    let mut peak_rss = 0;
    let resumed_in = loop {
        let (_, consumers) = jetstream_load(&nats).await;
        peak_consumers = peak_consumers.max(consumers);
        peak_rss = peak_rss.max(procfs::rss_kib(&[pid]));
        if counts.resumed.load(Ordering::Relaxed) >= n as u64 {
            break Some(listening_at.elapsed());
        }
        if listening_at.elapsed() > Duration::from_secs(120) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (api_after, _) = jetstream_load(&nats).await;
    let sluice_cpu = procfs::cpu_seconds(&[pid]);
    let nats_cpu = procfs::cpu_seconds(&nats_pids) - nats_cpu_before;

    let final_seq = publisher.finish(&js, &last, &counts, n).await;
    stop(&mut sluice, "TERM");

    let label = match transport {
        Transport::H1 => "h1".to_owned(),
        Transport::H2 {
            connections,
            streams,
        } => format!("h2 {connections}x{streams}"),
    };
    println!("| storm | proto | clients | new process listening after | every stream resumed after | lost | duplicated | JetStream API requests | peak consumers | sluice peak RSS | sluice CPU s | nats-server CPU s | admission |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| restart (SIGTERM, new process) | {label} | {n} | {} | {} | {} | {} | {} | {} | {} MiB | {:.1} | {:.1} | {} |",
        listening.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        resumed_in.map_or("not all".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        counts.lost.load(Ordering::Relaxed),
        counts.duplicated.load(Ordering::Relaxed),
        api_after.saturating_sub(api_before),
        peak_consumers,
        peak_rss / 1024,
        sluice_cpu,
        nats_cpu,
        rate.map_or("none".into(), |r| format!("{r}/s")),
    );
    let behind: Vec<String> = (0..n)
        .filter(|i| counts.last_seen[*i].load(Ordering::Relaxed) < final_seq)
        .take(10)
        .map(|i| {
            let connected = counts.connected[i].load(Ordering::Relaxed);
            format!(
                "#{i} at {} ({})",
                counts.last_seen[i].load(Ordering::Relaxed),
                if connected {
                    "stream open"
                } else {
                    "reconnecting"
                }
            )
        })
        .collect();
    if !behind.is_empty() {
        eprintln!(
            "  short of the last event ({final_seq}): {}",
            behind.join(", ")
        );
    }
    counts.summary();
    Ok(())
}

/// The JetStream API requests a cluster's nodes have answered, and the consumers they hold now
/// (summed over the nodes; a replicated consumer counts once per node that holds it).
fn cluster_load(cluster: &sluice_testkit::NatsCluster) -> (u64, u64) {
    (0..cluster.len())
        .filter_map(|n| cluster.monitor(n, "/jsz"))
        .map(|jsz| {
            let api = jsz["api"]["total"].as_u64().unwrap_or(0);
            (api, jsz["consumers"].as_u64().unwrap_or(0))
        })
        .fold((0, 0), |(a, c), (api, consumers)| (a + api, c + consumers))
}

/// The storm across instances (`--storm-across N`): a 3-node NATS cluster with an R3 stream, three
/// sluice instances with the same configuration, N clients on instance A; A is killed (SIGKILL)
/// and its clients come back on B and C, alternately, with their `Last-Event-ID`.
pub async fn storm_across(n: usize, bin_dir: PathBuf, scratch: PathBuf) -> anyhow::Result<()> {
    let cluster = sluice_testkit::NatsCluster::start();
    let js = jetstream::new(async_nats::connect(cluster.urls()).await?);
    let config = stream::Config {
        name: "STORM".into(),
        subjects: vec!["storm.>".into()],
        num_replicas: 3,
        max_messages: 1_000_000,
        ..Default::default()
    };
    let started = Instant::now();
    while js.get_or_create_stream(config.clone()).await.is_err() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "no R3 stream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let urls = format!("[{}]", urls.join(", "));
    let bin = bin_dir.join("sluice");
    let mut instances = Vec::new();
    for _ in 0..3 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        instances.push((addr, start_sluice(&bin, &scratch, addr, &urls, None)));
    }
    for (addr, _) in &instances {
        let addr = *addr;
        wait_for("an instance listening", Duration::from_secs(30), || {
            std::net::TcpStream::connect(addr).is_ok()
        })
        .await;
    }
    let [a, b, c] = [instances[0].0, instances[1].0, instances[2].0];
    let counts = Arc::new(Counts::new(n));
    let last = Arc::new(AtomicU64::new(u64::MAX));
    for i in 0..n {
        let source = IpAddr::V4(Ipv4Addr::new(127, 41, (i / 20_000) as u8, 2));
        let elsewhere = if i % 2 == 0 { b } else { c };
        tokio::spawn(browser(
            i,
            source,
            [a, elsewhere],
            counts.clone(),
            last.clone(),
        ));
    }
    counts.wait_open(n, "instance A").await;
    let publisher = Publisher::start(&js);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (api_before, _) = cluster_load(&cluster);
    stop(&mut instances[0].1, "KILL");
    let killed = Instant::now();
    let mut peak_consumers = 0;
    let mut peak_rss = 0;
    let survivors = [instances[1].1.id(), instances[2].1.id()];
    let resumed_in = loop {
        peak_consumers = peak_consumers.max(cluster_load(&cluster).1);
        peak_rss = peak_rss.max(procfs::rss_kib(&survivors));
        if counts.resumed.load(Ordering::Relaxed) >= n as u64 {
            break Some(killed.elapsed());
        }
        if killed.elapsed() > Duration::from_secs(120) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (api_after, _) = cluster_load(&cluster);
    let cpu = procfs::cpu_seconds(&survivors);
    publisher.finish(&js, &last, &counts, n).await;
    for (_, child) in &mut instances[1..] {
        stop(child, "TERM");
    }
    println!("| storm | clients | every stream resumed after the kill | lost | duplicated | JetStream API requests (3 nodes) | peak consumers (3 nodes) | B+C peak RSS | B+C CPU s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| instance A killed, clients to B and C | {n} | {} | {} | {} | {} | {} | {} MiB | {:.1} |",
        resumed_in.map_or("not all".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        counts.lost.load(Ordering::Relaxed),
        counts.duplicated.load(Ordering::Relaxed),
        api_after.saturating_sub(api_before),
        peak_consumers,
        peak_rss / 1024,
        cpu,
    );
    counts.summary();
    Ok(())
}
