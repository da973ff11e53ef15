//! A sluice process on a free port: its configuration, options and log, its memory, its signals.

use super::{eventually, get, DEADLINE};
use http::StatusCode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sluice-it-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running sluice binary, killed (by its PID) on drop.
pub struct Sluice {
    child: Child,
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub tls_addrs: Vec<SocketAddr>,
    pub dir: TempDir,
    /// What follows the body in the configuration file (the TLS section), for rewriting it.
    tls_section: String,
}

/// How to start a [`Sluice`].
pub struct Options {
    /// TLS listeners (with one self-signed certificate for `localhost`).
    pub tls_listeners: usize,
    /// Environment variables for the process.
    pub env: Vec<(String, String)>,
    /// The cleartext listen address (default: a free port).
    pub addr: Option<SocketAddr>,
    /// Write stdout and stderr to a file, read back with [`Sluice::log`].
    pub capture_log: bool,
    /// `RUST_LOG` (unless `SLUICE_TEST_LOG` overrides it).
    pub log_level: String,
    /// Run sluice with this many open files at most (soft and hard limit), as `ulimit -n` does.
    pub file_limit: Option<u64>,
    /// Start sluice by this path (e.g. a symlink to it) instead of [`sluice_bin`].
    pub program: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tls_listeners: 0,
            env: Vec::new(),
            addr: None,
            capture_log: false,
            log_level: "warn".into(),
            file_limit: None,
            program: None,
        }
    }
}

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

impl Sluice {
    /// Starts sluice with `[server] listen` on a free port; `body` follows the `listen` line, so it may
    /// add more `[server]` keys before its own tables.
    pub async fn start(body: &str) -> Self {
        Self::start_opts(body, Options::default()).await
    }

    /// Like [`Self::start`], plus a TLS listener with a fresh self-signed certificate for `localhost`.
    pub async fn start_tls(body: &str) -> Self {
        Self::start_opts(
            body,
            Options {
                tls_listeners: 1,
                ..Options::default()
            },
        )
        .await
    }

    /// Starts sluice with the given [`Options`].
    pub async fn start_opts(body: &str, options: Options) -> Self {
        let dir = TempDir::new("sluice");
        let addr = options.addr.unwrap_or_else(|| {
            let port = sluice_testkit::free_port();
            format!("127.0.0.1:{port}").parse().expect("addr")
        });
        let mut tls_addrs: Vec<SocketAddr> = Vec::new();
        let mut tls_section = String::new();
        if options.tls_listeners > 0 {
            let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
                .expect("self-signed cert");
            std::fs::write(dir.0.join("cert.pem"), cert.cert.pem()).expect("write cert");
            std::fs::write(dir.0.join("key.pem"), cert.key_pair.serialize_pem())
                .expect("write key");
            for _ in 0..options.tls_listeners {
                let tport = sluice_testkit::free_port();
                tls_addrs.push(format!("127.0.0.1:{tport}").parse().expect("addr"));
            }
            let listen: Vec<String> = tls_addrs.iter().map(|a| format!("\"{a}\"")).collect();
            tls_section = format!(
                "\n[server.tls]\nlisten = [{}]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
                listen.join(", ")
            );
        }
        let config = config_text(addr, &tls_addrs, &tls_section, body);
        let path = dir.0.join("config.toml");
        std::fs::write(&path, &config).expect("write config");
        let program = options
            .program
            .clone()
            .unwrap_or_else(|| sluice_bin().into());
        let mut command = match options.file_limit {
            // The shell sets the limit and replaces itself with sluice, which keeps its PID.
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(&program);
                sh
            }
            None => Command::new(&program),
        };
        command
            .arg("--config")
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| options.log_level.clone()),
            )
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if options.capture_log {
            let log = std::fs::File::create(dir.0.join("sluice.log")).expect("log file");
            command
                .stderr(log.try_clone().expect("log file"))
                .stdout(log);
        }
        let child = command.spawn().expect("start sluice");
        let mut sluice = Self {
            child,
            addr,
            tls_addr: tls_addrs.first().copied(),
            tls_addrs,
            dir,
            tls_section,
        };
        sluice.wait_ready().await;
        sluice
    }

    /// Like [`Self::start`], with what sluice logs at info level kept for [`Self::log`].
    pub async fn start_logged(body: &str) -> Self {
        Self::start_opts(
            body,
            Options {
                capture_log: true,
                log_level: "info".into(),
                ..Options::default()
            },
        )
        .await
    }

    /// The resident memory of the sluice process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// What sluice logged, when started with `capture_log`.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("sluice.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let addr = self.addr;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sluice exited during start-up: {status}");
            }
            if let Ok(resp) = get(addr, "/healthz").await {
                if resp.status == StatusCode::OK {
                    break;
                }
            }
            assert!(start.elapsed() < DEADLINE, "sluice did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Rewrites the configuration file with `body`, as [`Self::start_opts`] wrote it (the same
    /// listen addresses and TLS section).
    pub fn write_config(&self, body: &str) {
        let text = config_text(self.addr, &self.tls_addrs, &self.tls_section, body);
        std::fs::write(self.dir.0.join("config.toml"), text).expect("write config");
    }

    /// Sends SIGHUP (reload the configuration) to this sluice, by its PID.
    pub fn send_sighup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Rewrites the configuration with `body`, sends SIGHUP and waits until sluice has logged the
    /// reload's outcome: true when it applied the file, false when it refused it. Needs a sluice
    /// started with its log captured at info level ([`Self::start_logged`]).
    pub async fn reload(&self, body: &str) -> bool {
        let count = |log: &str| {
            (
                log.matches("configuration reloaded").count(),
                log.matches("configuration reload refused").count(),
            )
        };
        let before = count(&self.log());
        self.write_config(body);
        self.send_sighup();
        eventually("the reload's outcome in the log", || async {
            let now = count(&self.log());
            (now != before).then_some(now.0 > before.0)
        })
        .await
    }

    /// The PID of this sluice.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file it was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.0.join("config.toml")
    }

    /// Sends `signal` (a name `kill` knows: QUIT, USR2, ...) to this sluice, by its PID.
    pub fn send_signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Sends SIGTERM (graceful shutdown) and waits for the process to exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.exited().await
    }

    /// Sends SIGTERM to this sluice, by its PID.
    pub fn send_sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "sluice did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends `signal` (a name `kill` knows) to the process `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A configuration file's text: `body` after the `[server] listen` line, then the TLS section. The
/// body may name the TLS ports (e.g. in CORS origins) as TLS_PORT_0, TLS_PORT_1, ...
fn config_text(
    addr: SocketAddr,
    tls_addrs: &[SocketAddr],
    tls_section: &str,
    body: &str,
) -> String {
    let mut config = format!("[server]\nlisten = [\"{addr}\"]\n{body}\n");
    for (n, tls) in tls_addrs.iter().enumerate() {
        config = config.replace(&format!("TLS_PORT_{n}"), &tls.port().to_string());
    }
    config.push_str(tls_section);
    config
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
