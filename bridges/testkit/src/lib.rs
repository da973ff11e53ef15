//! Test-only broker processes: `nats-server` (alone or as a 3-node [`cluster`]) and `mosquitto` on
//! free loopback ports, killed on Drop.
//! Also the waits for published messages that every test shares ([`listen`]: probes until a
//! subscription is live, markers instead of quiet periods), and for the bridge crates' own tests a
//! sink that records what a bridge delivers ([`bridge`]).
//!
//! Each guard starts its own process and stops only that process, by its PID. A missing binary is a
//! test failure with an install hint, never a silent skip.

pub mod bridge;
pub mod cluster;
pub mod listen;

pub use cluster::NatsCluster;
pub use listen::{Listener, DEADLINE};

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a broker may take to come up before the test fails.
const START_DEADLINE: Duration = Duration::from_secs(20);

fn spawn(program: &str, args: &[String], package: &str) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {program}: {e}; install it with `apt-get install -y {package}` (scripts/test does this)")
        })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Asks a child to stop (SIGTERM, by its PID) and waits for it; kills it if it takes too long.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + START_DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(child);
}

/// Sends `signal` (e.g. `-STOP`) to this child only, by its PID.
fn signal_pid(child: &Child, signal: &str, program: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {program}");
    // `kill` returns once the signal is sent; a busy machine may let the process run on a moment.
    // A test that pauses a broker must not race its last answers, so wait for the state to change.
    let want_stopped = signal == "-STOP";
    let deadline = Instant::now() + START_DEADLINE;
    while process_stopped(child.id()) != Some(want_stopped) {
        assert!(
            Instant::now() < deadline,
            "{program} did not {} in time",
            if want_stopped { "stop" } else { "continue" }
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether every thread of process `pid` is stopped by a signal (state `T` in its stat file).
fn process_stopped(pid: u32) -> Option<bool> {
    let mut all = true;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // The state follows the command name, which is in parentheses and may hold spaces.
        let state = stat.get(stat.rfind(')')? + 2..)?.chars().next()?;
        all &= state == 'T';
    }
    Some(all)
}

/// A fresh private directory under the system temp dir, removed by the guard that owns it.
fn scratch_dir(kind: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-test-{kind}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A port that was free a moment ago (the OS picks it; we release it for the child to bind).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Polls until a TCP connect to `port` succeeds.
fn wait_for_port(port: u16, child: &mut Child, program: &str) {
    let deadline = Instant::now() + START_DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{program} exited during start-up: {status}");
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{program} did not listen on port {port} within {START_DEADLINE:?}");
}

/// Starts `nats-server` with `args` and returns it with the client and monitoring ports it logged,
/// once it accepts clients; `None` if it exited first (e.g. a port it was given was taken).
fn spawn_nats(args: &[String]) -> Option<(Child, u16, u16)> {
    let mut child = spawn("nats-server", args, "nats-server");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let (mut client, mut monitor) = (None, None);
    // nats-server logs the ports it bound; read them back (as nats.rs's own test harness does).
    while client.is_none() || monitor.is_none() {
        let Some(Ok(line)) = lines.next() else {
            kill(&mut child);
            return None;
        };
        if let Some(addr) = line.split("client connections on ").nth(1) {
            client = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok());
        }
        if let Some(addr) = line.split("Starting http monitor on ").nth(1) {
            monitor = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok());
        }
    }
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    // The loop above ends only once both are read.
    let (client, monitor) = (client.expect("client port"), monitor.expect("monitor port"));
    wait_for_port(client, &mut child, "nats-server");
    Some((child, client, monitor))
}

/// A `nats-server` process of this test's own, with JetStream and HTTP monitoring.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    dir: PathBuf,
}

impl NatsServer {
    /// Starts a server on free ports (the server picks them: `-p -1 -m -1`) and waits until it listens.
    pub fn start() -> Self {
        Self::start_on_port("-1")
    }

    /// Starts a server on a given client port (for a client that was configured before it started).
    pub fn start_on(port: u16) -> Self {
        Self::start_on_port(&port.to_string())
    }

    fn start_on_port(port: &str) -> Self {
        let dir = scratch_dir("nats");
        let mut server = Self {
            child: None,
            port: 0,
            monitor_port: 0,
            dir,
        };
        server.launch(port, "-1");
        server
    }

    fn launch(&mut self, port: &str, monitor_port: &str) {
        let args: Vec<String> = [
            "-a",
            "127.0.0.1",
            "-p",
            port,
            "-m",
            monitor_port,
            "-js",
            "-sd",
            &self.dir.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let Some((child, client, monitor)) = spawn_nats(&args) else {
            panic!("nats-server exited before reporting its ports");
        };
        self.port = client;
        self.monitor_port = monitor;
        self.child = Some(child);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The monitoring endpoint (`/subsz`, `/connz?subs=1`, ...).
    pub fn monitor_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.monitor_port)
    }

    /// Kills the server process (a crash, as far as clients can tell).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Freezes the server (SIGSTOP, by its PID): its connections stay open and nothing answers, as
    /// with a server that hangs.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            signal_pid(child, signal, "nats-server");
        }
    }

    /// Starts the server again on the same ports, keeping its JetStream store.
    pub fn restart(&mut self) {
        self.stop();
        let (port, monitor) = (self.port.to_string(), self.monitor_port.to_string());
        self.launch(&port, &monitor);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `mosquitto` process of this test's own, anonymous access on one loopback port.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// More lines for its configuration file.
    extra: String,
}

impl Mosquitto {
    /// Starts mosquitto on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Like [`Self::start`], with more lines for mosquitto's configuration (e.g. `max_qos 0`).
    pub fn start_with(extra: &str) -> Self {
        let dir = scratch_dir("mosquitto");
        let mut broker = Self {
            child: None,
            port: 0,
            dir,
            extra: extra.to_owned(),
        };
        // The port is chosen before mosquitto binds it; another process may win the race, so retry.
        for _ in 0..5 {
            broker.port = free_port();
            if broker.launch() {
                return broker;
            }
        }
        panic!("mosquitto could not bind a free port in 5 tries");
    }

    fn launch(&mut self) -> bool {
        // Started as root, mosquitto drops to its own user: let that user write its persistence file.
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o777));
        let config = self.dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nlog_dest stderr\n{}\n",
                self.port,
                self.dir.display(),
                self.extra,
            ),
        )
        .expect("write mosquitto.conf");
        let args = vec!["-c".to_owned(), config.to_string_lossy().into_owned()];
        let mut child = spawn("mosquitto", &args, "mosquitto");
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(&mut child);
        panic!(
            "mosquitto did not listen on port {} within {START_DEADLINE:?}",
            self.port
        );
    }

    /// Starts mosquitto on a given port (for a client that was configured before it started).
    pub fn start_on(port: u16) -> Self {
        let mut broker = Self {
            child: None,
            port,
            dir: scratch_dir("mosquitto"),
            extra: String::new(),
        };
        assert!(broker.launch(), "mosquitto could not bind port {port}");
        broker
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Freezes mosquitto (SIGSTOP, by its PID): its connections stay open, the kernel still accepts
    /// new ones and buffers what clients send, and nothing answers, as with a broker that hangs.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused mosquitto go on (SIGCONT): it then reads everything that was buffered meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            signal_pid(child, signal, "mosquitto");
        }
    }

    /// Stops mosquitto with SIGTERM, so it saves its sessions and queued messages, and starts it again
    /// on the same port with them.
    pub fn restart_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        assert!(
            self.launch(),
            "mosquitto failed to restart on port {}",
            self.port
        );
    }

    /// Stops mosquitto with SIGTERM, so it saves its sessions and queued messages.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    /// Starts a stopped mosquitto again on the same port (with the sessions it saved), with `extra`
    /// as its additional configuration.
    pub fn start_again_with(&mut self, extra: &str) {
        self.extra = extra.to_owned();
        assert!(
            self.launch(),
            "mosquitto failed to restart on port {}",
            self.port
        );
    }

    /// Starts mosquitto again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.launch(),
            "mosquitto failed to restart on port {}",
            self.port
        );
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
