//! Operating sluice: the admin listener's metrics follow real streams, publishes and requests (read
//! with curl, in both exposition formats); readiness follows a real NATS server; every stream
//! leaves one access line, and a query token appears nowhere in the log; the status page shows
//! streams open and close in Chromium; the Grafana dashboard asks only for metrics that are served.

use crate::cdp::Browser;
use crate::support::*;
use sluice_testkit::NatsServer;
use std::net::SocketAddr;

/// An `[admin]` section on a free port, and its address.
fn admin_section() -> (String, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", sluice_testkit::free_port())
        .parse()
        .expect("addr");
    (format!("\n[admin]\nlisten = \"{addr}\"\n"), addr)
}

/// `GET /metrics` with curl (a second client stack beside hyper): content type and body.
async fn scrape(admin: SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut curl = std::process::Command::new("curl");
    curl.args(["-s", "-D", "-", "--max-time", "10"]);
    if let Some(accept) = accept {
        curl.args(["-H", &format!("accept: {accept}")]);
    }
    curl.arg(format!("http://{admin}/metrics"));
    let out = within(
        "curl /metrics",
        tokio::task::spawn_blocking(move || curl.output()),
    )
    .await
    .expect("curl ran")
    .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let kind = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .expect("a content type");
    (kind, body.to_owned())
}

/// The value of the sample written exactly `series` (name and labels as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `/metrics` until `series` has `value`.
async fn until_sample(admin: SocketAddr, series: &str, value: f64) -> String {
    eventually(&format!("{series} = {value}"), || async {
        let (_, text) = scrape(admin, None).await;
        (sample(&text, series) == Some(value)).then_some(text)
    })
    .await
}

const ROUTE: &str = r#"
[brokers.m]
type = "memory"

[[routes]]
path = "/rooms/{room}"
broker = "m"
topic = "rooms/{room}"
publish = true
replay = 100
"#;

#[tokio::test]
async fn metrics_follow_streams_publishes_and_requests() {
    let (admin, admin_addr) = admin_section();
    let sluice = Sluice::start(&format!("{admin}{ROUTE}")).await;
    let route = "route=\"/rooms/{room}\"";

    let mut h1 = h1_stream(sluice.addr, "/rooms/lobby").await;
    let h2 = H2::h2c(sluice.addr).await;
    let mut h2_stream = h2.stream("/rooms/lobby").await;
    until_sample(
        admin_addr,
        &format!("sluice_streams_open{{protocol=\"http2\",{route}}}"),
        1.0,
    )
    .await;
    for n in 0..3 {
        publish(sluice.addr, "/rooms/lobby", format!("m{n}")).await;
    }
    for stream in [&mut h1, &mut h2_stream] {
        for n in 0..3 {
            assert_eq!(stream.next_event().await.data, format!("m{n}"));
        }
    }
    let text = until_sample(
        admin_addr,
        &format!("sluice_events_sent_total{{{route}}}"),
        6.0,
    )
    .await;
    for (series, value) in [
        (
            format!("sluice_streams_open{{protocol=\"http1\",{route}}}"),
            1.0,
        ),
        (
            format!("sluice_streams_opened_total{{protocol=\"http2\",{route}}}"),
            1.0,
        ),
        (
            format!("sluice_publish_requests_total{{{route},status=\"202\"}}"),
            3.0,
        ),
        ("sluice_broker_up{broker=\"m\"}".to_owned(), 1.0),
        ("sluice_broker_subscriptions{broker=\"m\"}".to_owned(), 1.0),
        (
            "sluice_connections_open{protocol=\"http2\"}".to_owned(),
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, &series), Some(value), "{series} in\n{text}");
    }
    let lag = sample(
        &text,
        &format!("sluice_delivery_lag_seconds_count{{{route}}}"),
    );
    assert!(
        lag.is_some_and(|n| n >= 2.0),
        "a lag per written batch: {lag:?}"
    );
    let bytes = sample(&text, &format!("sluice_bytes_sent_total{{{route}}}"));
    assert!(
        bytes.is_some_and(|b| b >= 6.0 * 8.0),
        "bytes sent: {bytes:?}"
    );
    assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|b| b > 0.0));
    assert!(sample(&text, "process_open_fds").is_some_and(|n| n > 0.0));
    // Labels name the route template, never the concrete topic.
    assert!(
        !text.contains("lobby"),
        "a concrete topic in a label:\n{text}"
    );

    // A resume from an id this process never made: a gap, counted as such.
    let mut resumed = h1_stream_with(
        sluice.addr,
        "/rooms/lobby",
        &[("last-event-id", "nonsense")],
    )
    .await;
    assert_eq!(resumed.next_event().await.event, "gap");
    let text = until_sample(
        admin_addr,
        &format!("sluice_resumes_total{{outcome=\"gap\",{route}}}"),
        1.0,
    )
    .await;
    let gaps = format!("sluice_gaps_sent_total{{reason=\"unknown-id\",{route}}}");
    assert_eq!(sample(&text, &gaps), Some(1.0));

    // A client that leaves: counted by its reason, and no longer open.
    drop(h1);
    drop(resumed);
    until_sample(
        admin_addr,
        &format!("sluice_streams_closed_total{{reason=\"client\",{route}}}"),
        2.0,
    )
    .await;
    until_sample(
        admin_addr,
        &format!("sluice_streams_open{{protocol=\"http1\",{route}}}"),
        0.0,
    )
    .await;

    // Complete answers by status.
    assert_eq!(get(sluice.addr, "/nowhere").await.expect("get").status, 404);
    until_sample(
        admin_addr,
        "sluice_http_requests_total{status=\"404\"}",
        1.0,
    )
    .await;

    // Prometheus asks for OpenMetrics first; curl's */* gets the 0.0.4 text format.
    let prometheus =
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let (kind, open) = scrape(admin_addr, Some(prometheus)).await;
    assert!(
        kind.starts_with("application/openmetrics-text; version=1.0.0"),
        "{kind}"
    );
    assert!(open.ends_with("# EOF\n"));
    assert!(open.contains("# TYPE sluice_streams_opened counter\n"));
    assert!(open
        .contains("sluice_streams_opened_total{protocol=\"http2\",route=\"/rooms/{room}\"} 1\n"));
    let (kind, text) = scrape(admin_addr, None).await;
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    assert!(text.contains("# TYPE sluice_streams_opened_total counter\n"));
    assert!(!text.contains("# EOF"));

    // The admin endpoints are not on the public listener, and the public routes not on the admin.
    assert_eq!(get(sluice.addr, "/metrics").await.expect("get").status, 404);
    assert_eq!(
        get(admin_addr, "/rooms/lobby").await.expect("get").status,
        404
    );
}

#[tokio::test]
async fn readiness_follows_the_broker_a_route_uses() {
    let mut nats = NatsServer::start();
    let (admin, admin_addr) = admin_section();
    let body = format!(
        r#"{admin}
[brokers.bus]
type = "nats"
url = "{}"

[brokers.spare]
type = "memory"

[[routes]]
path = "/t/{{name}}"
broker = "bus"
topic = "t.{{name}}"
"#,
        nats.url()
    );
    let sluice = Sluice::start(&body).await;
    for addr in [sluice.addr, admin_addr] {
        let ready = get(addr, "/readyz").await.expect("readyz");
        assert_eq!(ready.status, 200, "{}", ready.text());
        assert_eq!(
            ready.text(),
            "ready\nbroker bus: up\nbroker spare: up (no route uses it)\n"
        );
    }
    nats.stop();
    let down = eventually("/readyz answers 503 with the broker down", || async {
        let ready = get(sluice.addr, "/readyz").await.ok()?;
        (ready.status == 503).then_some(ready)
    })
    .await;
    assert!(
        down.text().starts_with("not ready\nbroker bus: down\n"),
        "{}",
        down.text()
    );
    // /healthz is about the process only.
    assert_eq!(
        get(sluice.addr, "/healthz").await.expect("healthz").status,
        200
    );
    let text = until_sample(admin_addr, "sluice_broker_up{broker=\"bus\"}", 0.0).await;
    assert_eq!(
        sample(&text, "sluice_broker_up{broker=\"spare\"}"),
        Some(1.0)
    );

    nats.restart();
    eventually("/readyz answers 200 once the broker is back", || async {
        let ready = get(admin_addr, "/readyz").await.ok()?;
        (ready.status == 200).then_some(())
    })
    .await;
    until_sample(
        admin_addr,
        "sluice_broker_reconnects_total{broker=\"bus\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn every_stream_leaves_one_access_line_and_the_token_appears_nowhere() {
    const SECRET: &str = "operations-test-secret";
    let body = r#"
[auth]
jwt_secret_env = "OPS_JWT_SECRET"
query = "access_token"

[log]
format = "json"

[brokers.m]
type = "memory"

[[routes]]
path = "/rooms/{room}"
broker = "m"
topic = "rooms/{room}"
auth = true
publish = true
"#;
    let mut sluice = Sluice::start_opts(
        body,
        Options {
            env: vec![("OPS_JWT_SECRET".into(), SECRET.into())],
            capture_log: true,
            log_level: "debug".into(),
            ..Options::default()
        },
    )
    .await;
    let minted = std::process::Command::new(sluice_bin())
        .arg("--config")
        .arg(sluice.dir.0.join("config.toml"))
        .args([
            "--mint-token",
            "--subscribe",
            "rooms/#",
            "--publish",
            "rooms/#",
        ])
        .env("OPS_JWT_SECRET", SECRET)
        .output()
        .expect("run --mint-token");
    let token = String::from_utf8(minted.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(token.len() > 20, "a token: {token:?}");

    let path = format!("/rooms/lobby?access_token={token}");
    let mut stream = h1_stream(sluice.addr, &path).await;
    assert_eq!(stream.status, 200);
    let posted = request(sluice.addr, "POST", &path, "hello".into()).await;
    assert_eq!(posted.expect("publish").status, 202);
    assert_eq!(stream.next_event().await.data, "hello");
    // Refused requests carry the token too: their log lines must not.
    let refused = get(sluice.addr, &format!("/nowhere?access_token={token}")).await;
    assert_eq!(refused.expect("get").status, 404);
    drop(stream);

    let line = eventually("the access line", || async {
        sluice
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["fields"]["message"] == "stream ended")
    })
    .await;
    let fields = &line["fields"];
    assert_eq!(line["level"], "INFO");
    assert_eq!(fields["route"], "/rooms/{room}");
    assert_eq!(fields["topics"], "rooms/lobby");
    assert_eq!(fields["protocol"], "http1");
    assert!(fields["client"]
        .as_str()
        .is_some_and(|c| c.starts_with("127.0.0.1:")));
    assert!(fields["duration_ms"].as_u64().is_some());
    assert_eq!(fields["events"], 1);
    assert!(fields["bytes"].as_u64().is_some_and(|b| b > 10));
    assert_eq!(fields["reason"], "client");
    assert_eq!(fields["resumed"], false);

    sluice.terminate().await;
    let log = sluice.log();
    assert!(log.lines().count() > 3, "a debug log: {log}");
    // The token's signature is the part no other text shares.
    let signature = token.rsplit('.').next().expect("a JWT");
    assert!(!log.contains(signature), "the token is in the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_streams_open_and_close() {
    let (admin, admin_addr) = admin_section();
    let sluice = Sluice::start(&format!("{admin}{ROUTE}")).await;
    let mut browser = Browser::launch().await;
    browser.navigate(&format!("http://{admin_addr}/")).await;
    let cell = r#"(document.querySelector('#routes tr[data-route="/rooms/{room}"] td.streams') || {}).textContent"#;
    browser
        .wait_for("the route drawn with no stream", &format!("{cell} === '0'"))
        .await;
    browser
        .wait_for(
            "the broker drawn as up",
            r#"(document.querySelector('#brokers tr[data-broker="m"] .up') || {}).textContent === 'up'"#,
        )
        .await;

    let h2 = H2::h2c(sluice.addr).await;
    let mut streams = Vec::new();
    for room in ["a", "b", "c"] {
        streams.push(h2.stream(&format!("/rooms/{room}")).await);
    }
    browser
        .wait_for("three streams drawn", &format!("{cell} === '3'"))
        .await;
    for n in 0..20 {
        publish(sluice.addr, "/rooms/a", format!("m{n}")).await;
    }
    streams[0].read_until("m19").await;
    if let Ok(path) = std::env::var("SLUICE_STATUS_SCREENSHOT") {
        // For the README (an absolute path): `SLUICE_STATUS_SCREENSHOT=$PWD/docs/status-page.png
        // cargo test --test it operations::the_status_page`. Traffic for a few seconds first, so
        // the rates and the sparkline have something to draw.
        let addr = sluice.addr;
        let traffic = tokio::spawn(async move {
            for n in 0.. {
                publish(addr, "/rooms/a", format!("{{\"n\":{n}}}")).await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        let rate = r#"Number(document.querySelector('#routes tr[data-route="/rooms/{room}"] td:nth-child(4)').textContent)"#;
        browser
            .wait_for("a rate drawn", &format!("{rate} > 10"))
            .await;
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        std::fs::write(path, browser.screenshot().await).expect("write the screenshot");
        traffic.abort();
    }
    streams.clear();
    drop(h2);
    browser
        .wait_for("the closed streams gone", &format!("{cell} === '0'"))
        .await;
}

#[tokio::test]
async fn the_grafana_dashboard_asks_only_for_served_metrics() {
    let dashboard = include_str!("../../deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(dashboard).expect("valid JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard's queries: {exprs:?}");
    let mut names: Vec<String> = exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name)
                .to_owned()
        })
        .collect();
    names.sort();
    names.dedup();

    let (admin, admin_addr) = admin_section();
    let sluice = Sluice::start(&format!("{admin}{ROUTE}")).await;
    // Families with labels appear once they have a series: make one of each kind.
    publish(sluice.addr, "/rooms/lobby", "x").await;
    assert_eq!(get(sluice.addr, "/nowhere").await.expect("get").status, 404);
    let (_, text) = scrape(admin_addr, None).await;
    let served: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for name in &names {
        assert!(
            served.contains(&name.as_str()),
            "the dashboard queries {name}, which /metrics does not serve:\n{text}"
        );
    }
    // And the dashboard covers every metric sluice itself defines.
    for name in served.iter().filter(|n| n.starts_with("sluice_")) {
        assert!(names.iter().any(|n| n == name), "no panel shows {name}");
    }
}

/// Every `expr` string in the dashboard.
fn collect_exprs(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => into.push(expr.clone()),
                    _ => collect_exprs(value, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, into)),
        _ => {}
    }
}

/// The metric names a PromQL expression reads (identifiers starting `sluice_` or `process_`).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("sluice_") || word.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}
