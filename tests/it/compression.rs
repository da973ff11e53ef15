//! Compressed streams: gzip, Brotli and zstd over HTTP/1.1, h2c and TLS h2, read with a real
//! decoder (hyper) and with curl, each event decodable before the next one is published; resume
//! compressed; multi-topic streams with envelopes; `identity` or no `Accept-Encoding` gets the
//! plain stream.

use crate::support::*;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

const ROUTES: &str = r#"
[brokers.demo]
type = "memory"

[[routes]]
path = "/z/{room}"
broker = "demo"
topic = "z/{room}"
publish = true
replay = 100
compress = true

[[routes]]
path = "/many"
broker = "demo"
topics = ["z/+"]
envelope = true
compress = true

[[routes]]
path = "/plain/{room}"
broker = "demo"
topic = "z/{room}"
"#;

const ENCODINGS: [&str; 3] = ["gzip", "br", "zstd"];

/// A telemetry reading, as dashboards get them.
fn reading(n: usize) -> String {
    format!(
        r#"{{"device":"sensor-{}","temperature":{}.5,"n":{n}}}"#,
        n % 3,
        20 + n % 4
    )
}

/// Warms `stream` up on `path`, then publishes five readings one at a time, each only once the
/// previous one was decoded: a stream that held an event back in its compressor fails here.
async fn lockstep(stream: &mut SseStream, addr: std::net::SocketAddr, path: &str) {
    stream.opened().await;
    let probe = |data| async move { publish(addr, path, data).await };
    stream.publish_until_received("warm", probe).await;
    stream.settle(probe).await;
    for n in 0..5 {
        publish(addr, path, reading(n)).await;
        assert_eq!(stream.next_event().await.data, reading(n), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_decodes_before_the_next_over_h1_h2c_and_tls_h2() {
    let sluice = Sluice::start_tls(ROUTES).await;
    let tls_addr = sluice.tls_addr.expect("a TLS listener");
    let h2c = H2::h2c(sluice.addr).await;
    let tls = H2::tls(tls_addr, &sluice.dir.0.join("cert.pem")).await;
    for encoding in ENCODINGS {
        let accept = [("accept-encoding", encoding)];
        for protocol in ["h1", "h2c", "tls-h2"] {
            let path = format!("/z/{encoding}-{protocol}");
            let mut stream = match protocol {
                "h1" => h1_stream_with(sluice.addr, &path, &accept).await,
                "h2c" => h2c.stream_with(&path, &accept).await,
                _ => tls.stream_with(&path, &accept).await,
            };
            assert_eq!(stream.header("content-encoding"), Some(encoding));
            assert_eq!(stream.header("vary"), Some("accept-encoding"));
            lockstep(&mut stream, sluice.addr, &path).await;
            // The decoder took every byte (it fails on anything else); the body is not plain SSE.
            assert!(
                !stream.raw.starts_with(b"retry:"),
                "{encoding} over {protocol}: the bytes on the wire are encoded"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_compressors_each_write_is_compressed_on_its_own_and_still_decodes() {
    let sluice = Sluice::start(&format!("max_compressors = 0\n{ROUTES}")).await;
    for encoding in ENCODINGS {
        let path = format!("/z/spare-{encoding}");
        let mut stream = h1_stream_with(sluice.addr, &path, &[("accept-encoding", encoding)]).await;
        assert_eq!(stream.header("content-encoding"), Some(encoding));
        lockstep(&mut stream, sluice.addr, &path).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_stream_resumes_from_its_last_event_id() {
    let sluice = Sluice::start(ROUTES).await;
    for encoding in ENCODINGS {
        let path = format!("/z/resume-{encoding}");
        let accept = ("accept-encoding", encoding);
        let mut first = h1_stream_with(sluice.addr, &path, &[accept]).await;
        lockstep(&mut first, sluice.addr, &path).await;
        let id = first.last_event_id.clone().expect("an id");
        drop(first);
        for n in 5..8 {
            publish(sluice.addr, &path, reading(n)).await;
        }
        let headers = [accept, ("last-event-id", id.as_str())];
        let mut back = h1_stream_with(sluice.addr, &path, &headers).await;
        assert_eq!(back.header("content-encoding"), Some(encoding));
        for n in 5..8 {
            assert_eq!(back.next_event().await.data, reading(n), "{encoding}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_or_no_accept_encoding_gets_the_plain_stream() {
    let sluice = Sluice::start(ROUTES).await;
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("/z/identity", &[("accept-encoding", "identity")]),
        ("/z/none", &[]),
        (
            "/z/refused",
            &[("accept-encoding", "gzip;q=0, br;q=0, zstd;q=0")],
        ),
        // A route without `compress` ignores the header (and does not vary on it).
        ("/plain/gzip", &[("accept-encoding", "gzip, br, zstd")]),
    ];
    for (path, headers) in cases {
        let mut stream = h1_stream_with(sluice.addr, path, headers).await;
        assert_eq!(stream.header("content-encoding"), None, "{path}");
        let vary = path.starts_with("/z/").then_some("accept-encoding");
        assert_eq!(stream.header("vary"), vary, "{path}");
        let publish_to = path.replace("/plain/", "/z/");
        lockstep(&mut stream, sluice.addr, &publish_to).await;
        let plain = format!("data: {}\n\n", reading(4));
        assert!(
            stream
                .raw
                .windows(plain.len())
                .any(|w| w == plain.as_bytes()),
            "{path}: plain bytes"
        );
    }
}

/// curl, one process per stream, reading its decoded output line by line.
struct Curl {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Curl {
    fn start(args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new("curl")
            .args([
                "--silent",
                "--no-buffer",
                "--compressed",
                "--max-time",
                "60",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("curl runs");
        let stdout = child.stdout.take().expect("curl's stdout");
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// Reads until the line `line` (failing after the deadline or at the end of the output).
    async fn read_until(&mut self, line: &str) {
        within(line, async {
            loop {
                match self.lines.next_line().await.expect("curl output") {
                    Some(l) if l.trim_end_matches('\r') == line => return,
                    Some(_) => {}
                    None => panic!("curl ended before {line:?}"),
                }
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_decodes_each_event_before_the_next_over_h1_h2c_and_tls_h2() {
    let sluice = Sluice::start_tls(ROUTES).await;
    let tls_addr = sluice.tls_addr.expect("a TLS listener");
    let cert = sluice.dir.0.join("cert.pem");
    let cert = cert.to_str().expect("a UTF-8 path");
    for encoding in ENCODINGS {
        for protocol in ["h1", "h2c", "tls-h2"] {
            let path = format!("/z/curl-{encoding}-{protocol}");
            let header = format!("accept-encoding: {encoding}");
            let url = match protocol {
                "tls-h2" => format!("https://localhost:{}{path}", tls_addr.port()),
                _ => format!("http://{}{path}", sluice.addr),
            };
            // The response head first (`-D -`): curl decoded what sluice said it encoded.
            let mut args = vec!["-H", &header, "-D", "-"];
            match protocol {
                "h1" => args.push("--http1.1"),
                "h2c" => args.push("--http2-prior-knowledge"),
                _ => args.extend(["--http2", "--cacert", cert]),
            }
            args.push(&url);
            let mut curl = Curl::start(&args);
            curl.read_until(&format!("content-encoding: {encoding}"))
                .await;
            // Warm up until the stream is live, then one event at a time.
            let mut n = 0;
            loop {
                publish(sluice.addr, &path, format!("warm-{n}")).await;
                let warm = format!("data: warm-{n}");
                let got = tokio::time::timeout(
                    std::time::Duration::from_millis(300),
                    curl.read_until(&warm),
                )
                .await;
                if got.is_ok() {
                    break;
                }
                n += 1;
            }
            for n in 0..5 {
                publish(sluice.addr, &path, reading(n)).await;
                curl.read_until(&format!("data: {}", reading(n))).await;
            }
            let _ = curl.child.start_kill();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_topic_envelope_stream_is_compressed_like_any_other() {
    let sluice = Sluice::start(ROUTES).await;
    for encoding in ENCODINGS {
        let (a, b) = (format!("/z/{encoding}-a"), format!("/z/{encoding}-b"));
        let path = format!("/many?topic=z/{encoding}-a&topic=z/{encoding}-b");
        let accept = [("accept-encoding", encoding)];
        let mut stream = h1_stream_with(sluice.addr, &path, &accept).await;
        assert_eq!(stream.header("content-encoding"), Some(encoding));
        stream.opened().await;
        // Live once a probe on each topic has come back (probes that come late are skipped below);
        // then one event on each topic.
        for topic in [&a, &b] {
            within("a probe back", async {
                for n in 0.. {
                    publish(sluice.addr, topic, format!("warm-{n}")).await;
                    let wait = std::time::Duration::from_millis(300);
                    if stream.try_next_event(wait).await.is_some() {
                        return;
                    }
                }
            })
            .await;
        }
        let is_probe = |data: &str| data.starts_with("warm-");
        publish(sluice.addr, &a, reading(1)).await;
        publish(sluice.addr, &b, reading(2)).await;
        let mut got = Vec::new();
        while got.len() < 2 {
            let event = stream.next_event().await;
            let value: serde_json::Value = serde_json::from_str(&event.data).expect("JSON data");
            let data = value["data"].as_str().expect("data").to_owned();
            if !is_probe(&data) {
                got.push((value["topic"].as_str().expect("topic").to_owned(), data));
            }
        }
        assert_eq!(
            got,
            [
                (format!("z/{encoding}-a"), reading(1)),
                (format!("z/{encoding}-b"), reading(2))
            ],
            "{encoding}"
        );
    }
}
