//! Third-party SSE clients against the real binary: Python httpx with 100 streams on one HTTP/2
//! connection (h2c and TLS h2), driven by `tests/clients/httpx_streams.py`.

use crate::support::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A 30 s heartbeat, as in the report: a stream that only gets its event when some heartbeat
/// fires is far outside the script's 2 s bound.
const MEMORY: &str = r#"
heartbeat = "30s"

[brokers.mem]
type = "memory"

[[routes]]
path = "/t/{name}"
broker = "mem"
topic = "t/{name}"
publish = true
"#;

const RUNS: usize = 20;

/// A backstop for the whole script; it fails by itself at the first run that misses its deadlines
/// (10 s for the preambles, 2 s per message), and 20 good runs take a few seconds.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);

/// Runs the httpx script with `args` and fails the test unless all its runs passed.
/// `SLUICE_HTTPX_STOCK=1` runs httpcore unpatched, to see whether its HTTP/2 read wake-ups (see the
/// script) still lose events.
async fn httpx_streams(args: &[&str]) {
    let ready = Command::new("python3")
        .args(["-c", "import httpx, h2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        ready.is_ok_and(|s| s.success()),
        "python3 with httpx[http2] is needed: `python3 -m pip install 'httpx[http2]'` \
         (scripts/test does this)"
    );
    let dir = TempDir::new("httpx");
    let log = dir.0.join("httpx.log");
    let out = std::fs::File::create(&log).expect("log file");
    let mut command = Command::new("python3");
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/httpx_streams.py"
        ))
        .args(args)
        .args(["--streams", "100", "--within", "2", "--runs"])
        .arg(RUNS.to_string())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out);
    if std::env::var_os("SLUICE_HTTPX_STOCK").is_some() {
        command.arg("--stock-httpcore");
    }
    let mut child = command.spawn().expect("start python3");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python3") {
            break status;
        }
        if start.elapsed() > SCRIPT_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "httpx_streams.py still running after {SCRIPT_DEADLINE:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "httpx_streams.py: {status}\n{output}");
    let runs = output.lines().filter(|l| l.starts_with("run ")).count();
    assert_eq!(runs, RUNS, "every run reports itself:\n{output}");
}

#[tokio::test]
async fn httpx_h2c_a_hundred_streams_get_every_event_within_2s() {
    let sluice = Sluice::start(MEMORY).await;
    let origin = format!("http://{}", sluice.addr);
    httpx_streams(&["--url", &origin, "--publish", &origin]).await;
}

#[tokio::test]
async fn httpx_tls_h2_a_hundred_streams_get_every_event_within_2s() {
    let sluice = Sluice::start_tls(MEMORY).await;
    let tls_addr = sluice.tls_addr.expect("tls listener");
    let cert = sluice.dir.0.join("cert.pem");
    httpx_streams(&[
        "--url",
        &format!("https://localhost:{}", tls_addr.port()),
        "--publish",
        &format!("http://{}", sluice.addr),
        "--cacert",
        cert.to_str().expect("UTF-8 temp path"),
    ])
    .await;
}
