//! Graceful upgrade against the real binary: `--upgrade` plus SIGQUIT, and SIGUSR2 in place, hand the
//! listening sockets over without refusing a connection; JetStream streams resume on the new process.

use crate::jetstream::{orders_stream, publish_acked};
use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use sluice_testkit::NatsServer;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpStream, UnixDatagram};

/// `[server]` keys (they follow the `listen` line) and a memory route, `/ticks`.
const SERVER: &str = r#"upgrade_socket = "upgrade.sock"
retry = "200ms"

[brokers.local]
type = "memory"

[[routes]]
path = "/ticks"
broker = "local"
topic = "ticks"
publish = true
"#;

/// The same, plus a JetStream route `/orders` on the stream `ORDERS` of the NATS server at `url`.
fn with_orders(url: &str) -> String {
    format!(
        r#"{SERVER}
[brokers.core]
type = "nats"
url = "{url}"

[[routes]]
path = "/orders"
broker = "core"
topic = "orders.>"
jetstream = "ORDERS"
"#
    )
}

/// A socket that receives what sluice tells systemd (`NOTIFY_SOCKET`).
struct Notifications {
    socket: UnixDatagram,
    _dir: TempDir,
    path: String,
}

impl Notifications {
    fn bind() -> Self {
        let dir = TempDir::new("notify");
        let path = dir.0.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Self {
            socket,
            path: path.to_string_lossy().into_owned(),
            _dir: dir,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("NOTIFY_SOCKET".to_owned(), self.path.clone())]
    }

    /// Reads notifications until one holds the line `variable=VALUE`; returns VALUE.
    async fn next(&self, variable: &str) -> String {
        within(&format!("{variable}= notified"), async {
            let mut buf = vec![0; 4096];
            loop {
                let n = self.socket.recv(&mut buf).await.expect("notify socket");
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let prefix = format!("{variable}=");
                if let Some(value) = text.lines().find_map(|l| l.strip_prefix(&prefix)) {
                    return value.to_owned();
                }
            }
        })
        .await
    }
}

/// A process the test did not start as its child (or started with `--upgrade`), ended by its PID:
/// SIGTERM first; SIGKILL on drop if it is still there.
struct ByPid(u32);

impl ByPid {
    fn alive(&self) -> bool {
        // A zombie (its parent gone, nobody reaping it) has ended as far as the test cares.
        std::fs::read_to_string(format!("/proc/{}/stat", self.0)).is_ok_and(|stat| {
            stat.rsplit(") ")
                .next()
                .is_some_and(|s| !s.starts_with('Z'))
        })
    }

    fn is_sluice(&self) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", self.0))
            .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains("sluice"))
    }

    async fn terminate(&self) {
        send_signal(self.0, "TERM");
        eventually("the new sluice exits on SIGTERM", || async {
            (!self.alive()).then_some(())
        })
        .await;
    }
}

impl Drop for ByPid {
    fn drop(&mut self) {
        if self.alive() && self.is_sluice() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// Starts `sluice --config PATH --upgrade` for `old`'s configuration, logging to `new.log` there.
fn start_upgrade(old: &Sluice, env: &[(String, String)]) -> Child {
    let log = std::fs::File::create(old.dir.0.join("new.log")).expect("log file");
    Command::new(sluice_bin())
        .arg("--config")
        .arg(old.config_path())
        .arg("--upgrade")
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stderr(log.try_clone().expect("log file"))
        .stdout(log)
        .spawn()
        .expect("start sluice --upgrade")
}

/// Opens a stream on `/ticks` on a fresh connection and waits for its response head: the error when
/// the connection is refused or reset first, or when the status is not 200.
async fn open_once(addr: SocketAddr) -> Result<(), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let request = Request::get("/ticks")
        .header("host", addr.to_string())
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("before the response head: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    Ok(())
}

/// Opens a new stream every 10 ms until stopped; returns how many opened, and every failure.
fn open_streams_every_10ms(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let mut attempts = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            attempts.push(tokio::spawn(within(
                "a stream's response head",
                open_once(addr),
            )));
        }
        let mut failures = Vec::new();
        let opened = attempts.len();
        for attempt in attempts {
            if let Err(e) = attempt.await.expect("attempt task") {
                failures.push(e);
            }
        }
        (opened, failures)
    })
}

/// One client of `/orders`: reads events; when its stream ends, reconnects with `Last-Event-ID` as a
/// browser does; stops at the event `end`. Returns every event's data before it, and how many of its
/// streams ended with a `retry:` (beyond the one every stream opens with).
async fn follow_orders(addr: SocketAddr, mut stream: SseStream) -> (Vec<String>, usize) {
    let (mut seen, mut retried_ends) = (Vec::new(), 0);
    // The id of the last event across reconnections: a stream may end before its first event (one
    // that reached the old process just before it stopped).
    let mut last = stream.last_event_id.clone();
    loop {
        match stream.try_next_event(DEADLINE).await {
            Some(event) if event.data == "end" => return (seen, retried_ends),
            Some(event) => {
                assert_eq!(event.event, "message", "no gap: {}", event.data);
                seen.push(event.data);
                last.clone_from(&stream.last_event_id);
            }
            None => {
                assert!(stream.ended, "no event within {DEADLINE:?}");
                let raw = String::from_utf8_lossy(&stream.raw);
                if raw.matches("retry:").count() >= 2 {
                    retried_ends += 1;
                }
                let last = last.as_deref().expect("an event before the end");
                stream = h1_stream_with(addr, "/orders", &[("last-event-id", last)]).await;
                assert_eq!(stream.status, StatusCode::OK, "reconnect");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_refuses_no_connection_and_jetstream_streams_resume_exactly_once() {
    let nats = NatsServer::start();
    let js = orders_stream(&nats).await;
    let notify = Notifications::bind();
    let mut old = Sluice::start_opts(
        &with_orders(&nats.url()),
        Options {
            capture_log: true,
            log_level: "info".into(),
            env: notify.env(),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(notify.next("READY").await, "1", "the old process is ready");
    let addr = old.addr;

    // Streams open on the old process, each live (order 0 arrived).
    const CLIENTS: usize = 8;
    let mut streams = Vec::new();
    for _ in 0..CLIENTS {
        let mut stream = h1_stream(addr, "/orders").await;
        stream.opened().await;
        streams.push(stream);
    }
    publish_acked(&js, "orders.0".into(), "0".into()).await;
    let mut clients = Vec::new();
    for mut stream in streams {
        assert_eq!(stream.next_event().await.data, "0");
        clients.push(tokio::spawn(async move {
            let (mut seen, ends) = follow_orders(addr, stream).await;
            seen.insert(0, "0".to_owned());
            (seen, ends)
        }));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let opener = open_streams_every_10ms(addr, stop.clone());
    // Orders 1, 2, ... every 10 ms until the old process is gone, then 20 more and `end`.
    let old_gone = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (js, old_gone) = (js.clone(), old_gone.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let (mut n, mut after) = (1, 0);
            while after < 20 {
                tick.tick().await;
                publish_acked(&js, format!("orders.{}", n % 3), n.to_string()).await;
                n += 1;
                if old_gone.load(Ordering::Relaxed) {
                    after += 1;
                }
            }
            publish_acked(&js, "orders.end".into(), "end".into()).await;
            n
        })
    };

    // A load balancer's health check on a kept-alive connection to the old process.
    let mut probe = KeptAlive::connect(addr).await;
    assert_eq!(
        probe.readyz().await,
        (200, "ready\nbroker core: up\nbroker local: up\n".to_owned())
    );

    let mut new = start_upgrade(&old, &notify.env());
    let new_pid = new.id();
    let _new_guard = ByPid(new_pid);
    old.send_signal("QUIT");
    // From the signal on, the old process tells health checks to stop sending it clients.
    let (status, body) = within("/readyz answers 503 on the old process", async {
        loop {
            let answer = probe.readyz().await;
            if answer.0 != 200 {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready\ndraining"), "{body}");
    assert_eq!(
        notify.next("MAINPID").await,
        new_pid.to_string(),
        "the new process tells systemd it is the main process now"
    );
    assert_eq!(notify.next("READY").await, "1", "the new process is ready");
    let status = old.exited().await;
    assert!(
        status.success(),
        "the old process exits by itself: {status}"
    );
    old_gone.store(true, Ordering::Relaxed);
    let orders = within("the burst published", publisher)
        .await
        .expect("publisher");

    for client in clients {
        let (seen, retried_ends) = within("a client reaches the end", client)
            .await
            .expect("client");
        let expected: Vec<String> = (0..orders).map(|n| n.to_string()).collect();
        assert_eq!(seen.len(), expected.len(), "every order, once");
        assert_eq!(seen, expected, "every order once, in order");
        assert!(
            retried_ends >= 1,
            "the old process ended the stream with a retry:"
        );
    }

    stop.store(true, Ordering::Relaxed);
    let (opened, failures) = within("the opener stops", opener).await.expect("opener");
    assert!(
        failures.is_empty(),
        "{} of {opened} streams failed during the upgrade: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(opened >= 200, "streams were opened throughout: {opened}");
    eprintln!("upgrade: {opened} streams opened every 10 ms, none refused; {CLIENTS} JetStream clients resumed {orders} orders");

    // The new process keeps serving, alone.
    assert!(matches!(new.try_wait(), Ok(None)), "the new process runs");
    let mut fresh = live_stream(addr, "/ticks").await;
    publish(addr, "/ticks", "after").await;
    assert_eq!(fresh.next_event().await.data, "after");
    let log = old.log();
    assert!(
        log.contains("SIGQUIT: handing the listening sockets over"),
        "{log}"
    );
    send_signal(new_pid, "TERM");
    let status = within("the new process exits", async {
        loop {
            if let Ok(Some(status)) = new.try_wait() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        status.success(),
        "the new process shuts down cleanly: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_the_installed_binary_which_takes_over() {
    // Installed as a symlink, so that "installing" a new version replaces the file at that path
    // while the running process keeps its own (what /proc/self/exe would name).
    let install = TempDir::new("installed");
    let installed = install.0.join("sluice");
    std::os::unix::fs::symlink(sluice_bin(), &installed).expect("install");
    let notify = Notifications::bind();
    let mut old = Sluice::start_opts(
        SERVER,
        Options {
            capture_log: true,
            log_level: "info".into(),
            env: notify.env(),
            tls_listeners: 1,
            program: Some(installed.clone()),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(notify.next("READY").await, "1");
    let addr = old.addr;
    let mut open = live_stream(addr, "/ticks").await;

    // The new version: a script that notes its PID and becomes sluice (exec keeps the PID).
    let marker = install.0.join("new-version-started");
    let script = install.0.join("sluice.new");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho $$ > '{}'\nexec '{}' \"$@\"\n",
            marker.display(),
            sluice_bin()
        ),
    )
    .expect("write the new version");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::rename(&script, &installed).expect("install the new version");

    old.send_signal("USR2");
    let new = ByPid(
        notify
            .next("MAINPID")
            .await
            .parse()
            .expect("MAINPID is a PID"),
    );
    assert_ne!(new.0, old.pid(), "a new process took over");
    assert!(new.is_sluice(), "the new process is sluice");
    let started = std::fs::read_to_string(&marker).expect("the installed new version was started");
    assert_eq!(
        started.trim(),
        new.0.to_string(),
        "by the path sluice was started as"
    );
    assert_eq!(notify.next("READY").await, "1");

    open.until_end().await;
    let raw = String::from_utf8_lossy(&open.raw).into_owned();
    assert!(
        raw.matches("retry:").count() >= 2,
        "ended with a retry: {raw}"
    );
    let status = old.exited().await;
    assert!(
        status.success(),
        "the old process exits by itself: {status}"
    );

    // The ports are served by the new process alone now, the TLS one included.
    assert!(new.alive(), "the new process runs");
    let log = old.log();
    assert!(
        log.contains(&format!("took the listening sockets over (pid {})", new.0)),
        "{log}"
    );
    let mut fresh = live_stream(addr, "/ticks").await;
    let tls_addr = old.tls_addr.expect("a TLS listener");
    let mut tls = tls_h1_stream(tls_addr, &old.dir.0.join("cert.pem"), "/ticks").await;
    assert_eq!(tls.status, StatusCode::OK);
    tls.opened().await;
    publish(addr, "/ticks", "after").await;
    assert_eq!(fresh.next_event().await.data, "after");
    assert_eq!(tls.next_event().await.data, "after");
    new.terminate().await;
}

#[tokio::test]
async fn upgrade_without_an_upgrade_socket_is_refused_at_once() {
    let dir = TempDir::new("no-upgrade-socket");
    let config = dir.0.join("config.toml");
    let body = SERVER.replace("upgrade_socket = \"upgrade.sock\"\n", "");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:1\"\n{body}"),
    )
    .expect("write");
    let output = run_sluice(&["--config", &config.to_string_lossy(), "--upgrade"]).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--upgrade: [server] upgrade_socket is not set"),
        "{stderr}"
    );

    // A folder that does not exist would only fail deep inside pingora: refused here too.
    let missing = format!("upgrade_socket = {:?}\n", dir.0.join("missing/u.sock"));
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:1\"\n{missing}{body}"),
    )
    .expect("write");
    let output = run_sluice(&["--config", &config.to_string_lossy(), "--upgrade"]).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no such folder"), "{stderr}");
}

#[tokio::test]
async fn sigquit_without_an_upgrade_socket_shuts_down_as_sigterm_does() {
    let body = SERVER.replace("upgrade_socket = \"upgrade.sock\"\n", "");
    let mut sluice = Sluice::start_logged(&body).await;
    let mut open = live_stream(sluice.addr, "/ticks").await;
    sluice.send_signal("QUIT");
    open.until_end().await;
    let status = sluice.exited().await;
    assert!(status.success(), "{status}");
    assert!(sluice
        .log()
        .contains("SIGQUIT without [server] upgrade_socket"));
}

/// Runs sluice with `args` to its end.
/// One HTTP/1.1 connection kept alive across requests, as a load balancer's health checker keeps it.
struct KeptAlive(hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>);

impl KeptAlive {
    async fn connect(addr: SocketAddr) -> Self {
        let io = hyper_util::rt::TokioIo::new(
            tokio::net::TcpStream::connect(addr).await.expect("connect"),
        );
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Self(sender)
    }

    /// `GET /readyz` on this connection: status and body.
    async fn readyz(&mut self) -> (u16, String) {
        use http_body_util::BodyExt;
        let request = http::Request::get("/readyz")
            .header("host", "sluice")
            .body(http_body_util::Empty::new())
            .expect("request");
        within("/readyz", async {
            self.0.ready().await.expect("the connection stays open");
            let response = self.0.send_request(request).await.expect("a response");
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.expect("a body");
            (
                status,
                String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            )
        })
        .await
    }
}

async fn run_sluice(args: &[&str]) -> std::process::Output {
    let mut command = Command::new(sluice_bin());
    command.args(args).stdin(Stdio::null());
    within(
        "sluice exits",
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("join")
    .expect("run sluice")
}
