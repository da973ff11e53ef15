//! Configurations at the edges of every bound start, serve and shut down; a start-up failure ends the
//! process with its reason instead of leaving it running without its listeners.

use crate::support::*;
use http::StatusCode;
use jsonwebtoken::{encode, EncodingKey, Header};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "a-test-secret-of-decent-length";

/// The upper end of every bounded key (see the bounds in `src/config/mod.rs`).
const AT_THE_TOP: &str = r#"
heartbeat = "1day"
retry = "1day"
write_timeout = "1day"
request_timeout = "1day"
max_publish_bytes = 67108864
max_streams_per_connection = 100000
max_new_streams_per_second = 1000000

[auth]
jwt_secret_env = "TEST_JWT_SECRET"

[brokers.m]
type = "memory"

[[routes]]
path = "/r/{x}"
broker = "m"
topic = "r/{x}"
publish = true
buffer = 1000000
replay = 1000000
linger = "1day"

[[routes]]
path = "/secure/{x}"
broker = "m"
topic = "r/{x}"
auth = true

[simulator]
broker = "m"
devices = 1000
interval = "1day"
"#;

#[tokio::test]
async fn a_config_at_every_upper_bound_starts_serves_and_shuts_down() {
    let mut sluice = Sluice::start_opts(
        AT_THE_TOP,
        Options {
            env: vec![("TEST_JWT_SECRET".into(), SECRET.into())],
            ..Options::default()
        },
    )
    .await;
    let day_ms = 86_400_000;
    let mut stream = h1_stream(sluice.addr, "/r/a").await;
    stream.opened().await;
    let retry = stream.retry.expect("a retry: first");
    assert!((day_ms..day_ms * 3 / 2).contains(&retry), "{retry}");

    // The largest body max_publish_bytes allows goes through whole.
    let body = "x".repeat(1024 * 1024);
    publish(sluice.addr, "/r/a", body.clone()).await;
    assert_eq!(stream.next_event().await.data.len(), body.len());

    // A token expiring at the last NumericDate accepted opens a stream (its expiry timer is far).
    let token = encode(
        &Header::default(),
        &serde_json::json!({"exp": sluice::auth::MAX_NUMERIC_DATE, "sluice": {"subscribe": ["r/+"]}}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    let mut secure = h1_stream_with(
        sluice.addr,
        "/secure/a",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(secure.status, StatusCode::OK);
    secure.opened().await;

    // At SIGTERM every stream gets a retry: of 1x to 3x a day, and the process ends cleanly.
    sluice.send_sigterm();
    stream.until_end().await;
    let retry = stream.retry.expect("a shutdown retry:");
    assert!((day_ms..day_ms * 3).contains(&retry), "{retry}");
    assert!(sluice.exited().await.success());
}

#[tokio::test]
async fn a_config_at_the_lower_bounds_starts_and_serves() {
    let mut sluice = Sluice::start(
        r#"
heartbeat = "1ms"
retry = "1ms"
max_publish_bytes = 1
max_streams_per_connection = 1

[brokers.m]
type = "memory"

[[routes]]
path = "/r/{x}"
broker = "m"
topic = "r/{x}"
publish = true
buffer = 1
replay = 1
linger = "0s"
"#,
    )
    .await;
    let mut stream = h1_stream(sluice.addr, "/r/a").await;
    stream.opened().await;
    assert_eq!(stream.retry, Some(1));
    // Heartbeats come every 1 to 2 ms.
    stream.comments_at_least(20).await;
    publish(sluice.addr, "/r/a", "x").await;
    assert_eq!(stream.next_event().await.data, "x");
    let h2 = H2::h2c(sluice.addr).await;
    let mut one = h2.stream("/r/b").await;
    one.opened().await;
    sluice.send_sigterm();
    stream.until_end().await;
    assert!(sluice.exited().await.success());
}

#[tokio::test]
async fn a_listener_that_cannot_start_ends_the_process_with_the_reason() {
    // The TLS port is taken; the cleartext one is free. sluice must not run on the cleartext port
    // alone: it exits, naming the address.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr");
    let dir = TempDir::new("busy");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::write(dir.0.join("cert.pem"), cert.cert.pem()).expect("write");
    std::fs::write(dir.0.join("key.pem"), cert.key_pair.serialize_pem()).expect("write");
    let port = sluice_testkit::free_port();
    let config = dir.0.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[server.tls]\nlisten = \"{busy_addr}\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
             [brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\n"
        ),
    )
    .expect("write config");
    let mut child = Command::new(sluice_bin())
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        // sluice logs to stdout.
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("sluice kept running with a listener it could not bind");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut log = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        use std::io::Read;
        pipe.read_to_string(&mut log).expect("read the log");
    }
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("cannot listen on {busy_addr}")),
        "{log}"
    );
    drop(busy);
}
