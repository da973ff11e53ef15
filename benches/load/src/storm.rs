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

/// One client: connects, reads events (`data: SEQ`, `id: SEQ`), and when its stream ends comes back
/// after the last `retry:` with `Last-Event-ID`, as `EventSource` does, until it has `last`.
async fn browser(
    index: usize,
    source: IpAddr,
    server: SocketAddr,
    counts: Arc<Counts>,
    last: Arc<AtomicU64>,
) {
    let mut last_id: Option<u64> = None;
    let mut retry = Duration::from_secs(1);
    let mut ended_once = false;
    let mut buf = vec![0u8; 8192];
    loop {
        let attempt = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let mut socket = socket.connect(server).await?;
            let resume = last_id.map_or(String::new(), |id| format!("last-event-id: {id}\r\n"));
            let request = format!(
                "GET /storm HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n{resume}\r\n"
            );
            socket.write_all(request.as_bytes()).await?;
            std::io::Result::Ok(socket)
        };
        let Ok(mut socket) = attempt.await else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(retry).await;
            continue;
        };
        let mut text = Vec::new();
        let mut head_done = false;
        loop {
            let n = match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            text.extend_from_slice(&buf[..n]);
            if !head_done {
                let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&text[..end]).to_ascii_lowercase();
                // A refusal (503, or admission control's empty stream with a length and a retry:)
                // is not a resume: the client comes back after the retry it was given.
                if !head.starts_with("http/1.1 200") || head.contains("content-length:") {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    let body = String::from_utf8_lossy(&text[end + 4..]).into_owned();
                    if let Some(ms) = body.split("retry: ").nth(1).and_then(|r| r.lines().next()) {
                        retry = ms.trim().parse().map_or(retry, Duration::from_millis);
                    }
                    break;
                }
                head_done = true;
                counts.opened.fetch_add(1, Ordering::Relaxed);
                counts.connected[index].store(true, Ordering::Relaxed);
                if ended_once {
                    counts.resumed.fetch_add(1, Ordering::Relaxed);
                    ended_once = false;
                }
                text.drain(..end + 4);
            }
            // Chunk sizes are lines of hex digits: they never look like the fields read here.
            while let Some(end) = text.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = text.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end();
                if let Some(ms) = line.strip_prefix("retry: ") {
                    if let Ok(ms) = ms.parse() {
                        retry = Duration::from_millis(ms);
                    }
                } else if let Some(seq) = line.strip_prefix("data: ") {
                    let Ok(seq) = seq.parse::<u64>() else {
                        continue;
                    };
                    match last_id {
                        Some(prev) if seq <= prev => {
                            counts.duplicated.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Some(prev) if seq > prev + 1 => {
                            counts.lost.fetch_add(seq - prev - 1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    last_id = Some(seq);
                    counts.last_seen[index].store(seq, Ordering::Relaxed);
                    counts.received.fetch_add(1, Ordering::Relaxed);
                    if seq == last.load(Ordering::Relaxed) {
                        counts.done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if head_done {
            ended_once = true;
            counts.connected[index].store(false, Ordering::Relaxed);
        }
        tokio::time::sleep(retry).await;
    }
}

/// A sluice process on `addr` serving `/storm` from the JetStream stream `STORM`.
fn start_sluice(bin: &Path, dir: &Path, addr: SocketAddr, nats: &str, rate: Option<u32>) -> Child {
    let admission = rate.map_or(String::new(), |r| {
        format!("max_new_streams_per_second = {r}\n")
    });
    let config = format!(
        "[server]\nlisten = \"{addr}\"\nretry = \"1s\"\nheartbeat = \"30s\"\n{admission}\n\
         [brokers.b]\ntype = \"nats\"\nurl = \"{nats}\"\n\n\
         [[routes]]\npath = \"/storm\"\nbroker = \"b\"\ntopic = \"storm.x\"\njetstream = \"STORM\"\n"
    );
    let path = dir.join("storm.toml");
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

/// Runs the storm with `n` clients; `rate`: the new sluice's `max_new_streams_per_second`.
pub async fn storm(
    n: usize,
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
    let mut sluice = start_sluice(&bin, &scratch, addr, &nats.url(), None);

    let counts = Arc::new(Counts::new(n));
    let last = Arc::new(AtomicU64::new(u64::MAX));
    for i in 0..n {
        let source = IpAddr::V4(Ipv4Addr::new(127, 40, (i / 20_000) as u8, 2));
        tokio::spawn(browser(i, source, addr, counts.clone(), last.clone()));
    }
    wait_for("every stream open", Duration::from_secs(120), || {
        counts.opened.load(Ordering::Relaxed) >= n as u64
    })
    .await;
    eprintln!("  {n} streams open on the first process");

    // 100 msg/s from now to the end, each acknowledged by the stream.
    let published = Arc::new(AtomicU64::new(0));
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publisher = {
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
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (api_before, _) = jetstream_load(&nats).await;
    let nats_cpu_before = procfs::cpu_seconds(&nats_pids);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(sluice.id().to_string())
        .status();
    let _ = sluice.wait();
    let restarted = Instant::now();
    let mut sluice = start_sluice(&bin, &scratch, addr, &nats.url(), rate);
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

    tokio::time::sleep(Duration::from_secs(2)).await;
    publishing.store(false, Ordering::Relaxed);
    let _ = publisher.await;
    last.store(published.load(Ordering::Relaxed), Ordering::Relaxed);
    // A client already past the end counts as done when it sees the last event: publish one more.
    let final_seq = published.load(Ordering::Relaxed) + 1;
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
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = sluice.wait();

    println!("| storm | clients | new process listening after | every stream resumed after | lost | duplicated | JetStream API requests | peak consumers | sluice peak RSS | sluice CPU s | nats-server CPU s | admission |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| restart (SIGTERM, new process) | {n} | {} | {} | {} | {} | {} | {} | {} MiB | {:.1} | {:.1} | {} |",
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
    eprintln!(
        "  received {}, done {}, failed attempts {}",
        counts.received.load(Ordering::Relaxed),
        counts.done.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed)
    );
    Ok(())
}
