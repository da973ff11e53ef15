//! Generated hostile requests against sluice in front of real brokers: path parameters, `?topic=`
//! filters, POST bodies and `Last-Event-ID`s drawn with a good share of what brokers refuse. Every
//! request must be answered (never a 5xx), and the brokers must never have dropped sluice's
//! connection: the shared connection counts on the broker side stay what they were.

use crate::support::*;
use http::StatusCode;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use sluice_testkit::{Mosquitto, NatsServer};
use std::net::SocketAddr;

/// Requests per run; each is a fresh HTTP/1.1 connection.
const CASES: usize = 150;

/// Text with a good share of what brokers refuse (see `tests/fuzz.rs` for the pure properties).
fn hostile_text() -> impl Strategy<Value = String> {
    let special = proptest::sample::select(vec![
        '\u{FFFE}',
        '\u{FFFF}',
        '\u{FDD0}',
        '\u{1FFFE}',
        '\u{85}',
        '\u{7F}',
        '\0',
        '\t',
        ' ',
        '+',
        '#',
        '/',
        '.',
        '*',
        '>',
        '\u{FFFD}',
        'é',
        '%',
    ]);
    let short = proptest::collection::vec(
        prop_oneof![3 => any::<char>(), 2 => special, 3 => Just('a')],
        0..24,
    )
    .prop_map(|chars| chars.into_iter().collect::<String>());
    // Some are long: past NATS's control line, up to the request target limit.
    prop_oneof![8 => short, 1 => (3000usize..7000).prop_map(|n| "b".repeat(n))]
}

/// One generated request.
#[derive(Debug)]
struct Case {
    text: String,
    body: Vec<u8>,
    id: String,
}

fn cases(seed: u8) -> Vec<Case> {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(Default::default(), &[seed; 32]),
    );
    let strategy = (
        hostile_text(),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            (0usize..3).prop_map(|k| vec![b'z'; [70_000, 1_100_000, 2_000_000][k]]),
        ],
        "\\PC{0,40}",
    );
    (0..CASES)
        .map(|_| {
            let (text, body, id) = strategy.new_tree(&mut runner).expect("a value").current();
            Case { text, body, id }
        })
        .collect()
}

fn encode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Sends every case as a stream (with the id), a multi-topic stream and a publish; no answer may be a
/// server error.
async fn send_all(addr: SocketAddr, cases: &[Case], stream: &str, topics: &str) {
    let acceptable =
        |status: StatusCode| !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE;
    for case in cases {
        let param = encode(&case.text);
        let id = case.id.replace(['\r', '\n'], "");
        for path in [
            format!("{stream}/{param}"),
            format!("{topics}?topic={param}"),
        ] {
            let mut headers = vec![];
            if !id.is_empty() && id.is_ascii() {
                headers.push(("last-event-id", id.as_str()));
            }
            let answer = h1_stream_with_method(addr, "GET", &path, &headers, "").await;
            assert!(
                acceptable(answer.status),
                "GET {path:.80} -> {}",
                answer.status
            );
        }
        let path = format!("{stream}/{param}");
        match request(addr, "POST", &path, case.body.clone().into()).await {
            Ok(answer) => assert!(
                acceptable(answer.status),
                "POST {path:.80} -> {}",
                answer.status
            ),
            // Refused before its body was read (a bad topic, too large): sluice answers and closes,
            // and a client still sending a large body may see the close first.
            Err(e) => assert!(case.body.len() > 64 * 1024, "POST {path:.80}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_never_cut_sluice_off_from_mosquitto() {
    let broker = Mosquitto::start();
    let config = format!(
        r##"
max_publish_bytes = 3000000

[brokers.plant]
type = "mqtt"
url = "{}"
qos = 1

[[routes]]
path = "/mq/{{site}}"
broker = "plant"
topic = "sensors/{{site}}/temp"
publish = true
replay = 10

[[routes]]
path = "/multi"
broker = "plant"
topics = ["#"]
"##,
        broker.url()
    );
    let sluice = Sluice::start_logged(&config).await;
    let addr = sluice.addr;
    let mut healthy = live_stream(addr, "/mq/ok").await;
    send_all(addr, &cases(1), "/mq", "/multi").await;
    publish(addr, "/mq/ok", "after").await;
    let after = within("the healthy stream goes on", async {
        loop {
            let event = healthy.next_event().await;
            if event.data == "after" {
                return event;
            }
        }
    })
    .await;
    assert_eq!(after.data, "after");
    let log = sluice.log();
    assert_eq!(
        log.matches("mqtt connected").count(),
        1,
        "mosquitto never dropped sluice's connection:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_never_cut_sluice_off_from_nats() {
    let server = NatsServer::start();
    let config = format!(
        r#"
max_publish_bytes = 3000000

[brokers.core]
type = "nats"
url = "{}"

[[routes]]
path = "/alerts/{{site}}"
broker = "core"
topic = "alerts.{{site}}"
publish = true
replay = 10

[[routes]]
path = "/multi"
broker = "core"
topics = [">"]
"#,
        server.url()
    );
    let sluice = Sluice::start(&config).await;
    let addr = sluice.addr;
    let mut healthy = live_stream(addr, "/alerts/ok").await;
    let url = server.monitor_url("/varz");
    let monitor: SocketAddr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("monitor address");
    let connections = || async move {
        let varz = get(monitor, "/varz").await.expect("varz");
        let json: serde_json::Value = serde_json::from_slice(&varz.body).expect("json");
        json["total_connections"].as_u64().expect("a count")
    };
    let before = connections().await;
    send_all(addr, &cases(2), "/alerts", "/multi").await;
    publish(addr, "/alerts/ok", "after").await;
    within("the healthy stream goes on", async {
        while healthy.next_event().await.data != "after" {}
    })
    .await;
    assert_eq!(
        connections().await,
        before,
        "nats-server never dropped sluice's connection"
    );
}
