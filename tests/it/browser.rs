//! Real-browser tests with headless chromium: the dashboard renders live values and never runs a
//! device's markup; a page on another origin streams over TLS HTTP/2 with a cookie token; the
//! browser's own reconnection resumes from JetStream across a sluice restart; and an `EventSource`
//! on a gzip route gets each event at once; an upstream SSE origin's event types and ids reach the
//! browser as the origin sent them.

use crate::cdp::Browser;
use crate::support::*;
use serde_json::json;
use sluice_testkit::NatsServer;
use std::time::{SystemTime, UNIX_EPOCH};

/// A test page that opens `EventSource(location.hash)` and records what happens in `window.results`.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>test page</title></head><body>
<script>
const results = { events: [], times: [], gaps: 0, opens: 0, errors: 0, state: null, denied: null };
window.results = results;
const target = new URL(location.hash.slice(1));
const source = new EventSource(target, { withCredentials: true });
source.onopen = () => { results.opens += 1; };
source.onmessage = (e) => { results.events.push(e.data); results.times.push(Date.now()); };
source.addEventListener("gap", () => { results.gaps += 1; });
source.onerror = () => { results.errors += 1; results.state = source.readyState; };
const forbidden = target.searchParams.get("forbidden");
if (forbidden) {
  const denied = new EventSource(new URL(forbidden, target), { withCredentials: true });
  denied.onerror = () => { results.denied = denied.readyState; };
}
</script></body></html>
"#;

/// A folder holding the test page, for `static_dir`.
fn page_dir() -> TempDir {
    let dir = TempDir::new("page");
    std::fs::write(dir.0.join("page.html"), PAGE).expect("write page");
    dir
}

/// Opens the test page at `url` and waits until its stream is open.
async fn open_test_page(browser: &mut Browser, url: &str) {
    browser.navigate(url).await;
    browser
        .wait_for(
            "the stream open",
            "window.results && window.results.opens >= 1",
        )
        .await;
}

fn dashboard_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_live_values_and_never_runs_device_markup() {
    let body = format!(
        r#"
static_dir = "{}"

[brokers.demo]
type = "memory"

[simulator]
broker = "demo"
devices = 3
interval = "200ms"

[[routes]]
path = "/devices"
broker = "demo"
topic = "devices/#"
envelope = true
replay = 200

[[routes]]
path = "/devices-in/{{device}}/{{metric}}"
broker = "demo"
topic = "devices/{{device}}/{{metric}}"
publish = true
"#,
        dashboard_dir()
    );
    let sluice = Sluice::start(&body).await;
    let mut browser = Browser::launch().await;
    browser.navigate(&format!("http://{}/", sluice.addr)).await;
    browser
        .wait_for(
            "three devices with live readings",
            r#"document.getElementById("connection").dataset.state === "live"
               && document.querySelectorAll(".device").length === 3
               && [...document.querySelectorAll(".device .temperature .value")]
                    .every((v) => /^-?\d+\.\d$/.test(v.textContent))
               && [...document.querySelectorAll(".device .chart polyline")]
                    .every((p) => p.getAttribute("points").split(" ").length >= 2)"#,
        )
        .await;
    let shot = browser.screenshot().await;
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
    // SLUICE_SCREENSHOT=docs/dashboard.png refreshes the README's picture, once the charts filled.
    if let Ok(path) = std::env::var("SLUICE_SCREENSHOT") {
        browser
            .wait_for(
                "fuller charts",
                r#"[...document.querySelectorAll(".device .chart polyline")]
                    .every((p) => p.getAttribute("points").split(" ").length >= 25)"#,
            )
            .await;
        std::fs::write(path, browser.screenshot().await).expect("write screenshot");
    }

    // A device publishes markup as its status: it is shown as text and nothing runs.
    let hostile = r#"<img src=x onerror="window.pwned=1;document.title='pwned'"><script>window.pwned=2</script>"#;
    publish(sluice.addr, "/devices-in/intruder/status", hostile).await;
    let shown = browser
        .wait_for(
            "the hostile status shown",
            r#"document.querySelector('[data-device="intruder"] .status')?.textContent"#,
        )
        .await;
    assert_eq!(shown, json!(hostile));
    let injected = browser
        .eval(
            r##"({ elements: document.querySelectorAll("#devices img, #devices script").length,
                  pwned: typeof window.pwned, title: document.title })"##,
        )
        .await;
    assert_eq!(
        injected,
        json!({"elements": 0, "pwned": "undefined", "title": "sluice · live devices"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_streams_over_tls_h2_with_a_cookie_token() {
    const SECRET: &str = "browser-test-secret";
    let pages = page_dir();
    let body = format!(
        r#"
static_dir = "{}"

[server.cors]
allow_origins = ["https://localhost:TLS_PORT_0"]
allow_credentials = true

[auth]
jwt_secret_env = "BROWSER_JWT_SECRET"

[brokers.plant]
type = "memory"

[[routes]]
path = "/sensors/{{site}}/{{sensor}}"
broker = "plant"
topic = "sensors/{{site}}/{{sensor}}"
publish = true

[[routes]]
path = "/secure/{{site}}/{{sensor}}"
broker = "plant"
topic = "sensors/{{site}}/{{sensor}}"
auth = true
"#,
        pages.0.display()
    );
    let sluice = Sluice::start_opts(
        &body,
        Options {
            tls_listeners: 2,
            env: vec![("BROWSER_JWT_SECRET".into(), SECRET.into())],
            ..Options::default()
        },
    )
    .await;
    let (page_origin, stream_origin) = (
        format!("https://localhost:{}", sluice.tls_addrs[0].port()),
        format!("https://localhost:{}", sluice.tls_addrs[1].port()),
    );
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"exp": exp, "sluice": {"subscribe": ["sensors/a/+"]}}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token");

    let mut browser = Browser::launch().await;
    // The login step of a real site: a cookie for the stream's origin (EventSource sends no headers).
    browser
        .set_cookie(&format!("{stream_origin}/"), "sluice_token", &token)
        .await;
    open_test_page(
        &mut browser,
        &format!("{page_origin}/page.html#{stream_origin}/secure/a/temp?forbidden=/secure/b/temp"),
    )
    .await;
    // The stream is open, so its subscription is live: one publish (on a route without auth) arrives.
    publish(sluice.addr, "/sensors/a/temp", "21.5").await;
    let events = browser
        .wait_for(
            "the event",
            "window.results.events.length > 0 && window.results.events",
        )
        .await;
    assert_eq!(events, json!(["21.5"]));
    let protocol = browser
        .eval(r#"performance.getEntriesByType("navigation")[0].nextHopProtocol"#)
        .await;
    assert_eq!(protocol, json!("h2"), "the page talks HTTP/2 to sluice");
    // The forbidden topic's 403 makes that EventSource give up (readyState CLOSED).
    browser
        .wait_for(
            "the forbidden stream refused",
            "window.results.denied === 2",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_resumes_from_jetstream_across_a_sluice_restart() {
    let server = NatsServer::start();
    let js = crate::jetstream::orders_stream(&server).await;
    let pages = page_dir();
    let body = format!(
        r#"
retry = "300ms"
static_dir = "{}"

[brokers.core]
type = "nats"
url = "{}"

[[routes]]
path = "/orders"
broker = "core"
topic = "orders.>"
jetstream = "ORDERS"
"#,
        pages.0.display(),
        server.url()
    );
    let mut before = Sluice::start(&body).await;
    let addr = before.addr;
    let mut browser = Browser::launch().await;
    open_test_page(
        &mut browser,
        &format!("http://{addr}/page.html#http://{addr}/orders"),
    )
    .await;
    let publish = |range: std::ops::Range<usize>| {
        let js = js.clone();
        async move {
            for n in range {
                js.publish(format!("orders.{}", n % 2), n.to_string().into())
                    .await
                    .expect("publish")
                    .await
                    .expect("stored");
            }
        }
    };
    publish(0..50).await;
    browser
        .wait_for("the first 50 orders", "window.results.events.length >= 50")
        .await;
    // Sluice goes away (SIGTERM: every stream gets a short retry), orders keep coming, and a new
    // sluice process takes over the same address.
    assert!(before.terminate().await.success());
    publish(50..80).await;
    let _after = Sluice::start_opts(
        &body,
        Options {
            addr: Some(addr),
            ..Options::default()
        },
    )
    .await;
    publish(80..100).await;
    browser
        .wait_for(
            "all 100 orders",
            "window.results.events.length >= 100 && window.results.opens >= 2",
        )
        .await;
    let results = browser.eval("window.results").await;
    let expected: Vec<String> = (0..100).map(|n| n.to_string()).collect();
    assert_eq!(
        results["events"],
        json!(expected),
        "every order once, in order"
    );
    assert_eq!(results["gaps"], json!(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_source_on_a_gzip_route_gets_each_event_within_500_ms() {
    let pages = page_dir();
    let body = format!(
        r#"
static_dir = "{}"

[brokers.demo]
type = "memory"

[[routes]]
path = "/g/{{room}}"
broker = "demo"
topic = "g/{{room}}"
publish = true
compress = ["gzip"]
"#,
        pages.0.display()
    );
    let sluice = Sluice::start(&body).await;
    let origin = format!("http://{}", sluice.addr);
    let mut browser = Browser::launch().await;
    open_test_page(&mut browser, &format!("{origin}/page.html#{origin}/g/room")).await;
    // What the browser itself received: the same request, with its own Accept-Encoding.
    let encoding = browser
        .eval(
            r#"fetch(location.hash.slice(1)).then(async (r) => {
                 const encoding = r.headers.get("content-encoding");
                 await r.body.cancel();
                 return encoding;
               })"#,
        )
        .await;
    assert_eq!(encoding, json!("gzip"));
    let now = || {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        since.as_millis() as f64
    };
    // The stream is open, so its subscription is live. One event at a time: an event held in the
    // compressor would wait for the next write (a heartbeat, 15 s later).
    for n in 0..5 {
        let sent = now();
        publish(sluice.addr, "/g/room", format!("reading-{n}")).await;
        let received = browser
            .wait_for(
                "the event",
                &format!("window.results.events.length > {n} && window.results.times[{n}]"),
            )
            .await;
        let took = received.as_f64().expect("a time") - sent;
        assert!(took < 500.0, "event {n} took {took} ms");
    }
    let events = browser.eval("window.results.events").await;
    let expected: Vec<String> = (0..5).map(|n| format!("reading-{n}")).collect();
    assert_eq!(events, json!(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_decodes_each_encoding_across_idle_periods() {
    let pages = page_dir();
    let mut routes = String::new();
    for encoding in ["gzip", "br", "zstd"] {
        routes.push_str(&format!(
            "\n[[routes]]\npath = \"/{encoding}/{{{{room}}}}\"\nbroker = \"demo\"\ntopic = \"{encoding}/{{{{room}}}}\"\npublish = true\ncompress = [\"{encoding}\"]\n"
        ));
    }
    // A short heartbeat: the idle periods below each hold one, after which a gzip or zstd stream
    // gives its compressor back and the next event continues the body with a fresh one.
    let body = format!(
        "static_dir = \"{}\"\nheartbeat = \"100ms\"\n\n[brokers.demo]\ntype = \"memory\"\n{}",
        pages.0.display(),
        routes.replace("{{", "{").replace("}}", "}")
    );
    let sluice = Sluice::start_opts(
        &body,
        Options {
            tls_listeners: 1,
            ..Options::default()
        },
    )
    .await;
    let origin = format!("https://localhost:{}", sluice.tls_addrs[0].port());
    let mut browser = Browser::launch().await;
    for encoding in ["gzip", "br", "zstd"] {
        let stream = format!("{origin}/{encoding}/room");
        open_test_page(&mut browser, &format!("{origin}/page.html#{stream}")).await;
        let received = browser
            .eval(&format!(
                r#"fetch("{stream}").then(async (r) => {{
                     const encoding = r.headers.get("content-encoding");
                     await r.body.cancel();
                     return encoding;
                   }})"#
            ))
            .await;
        assert_eq!(received, json!(encoding), "what Chromium was sent");
        for n in 0..3 {
            publish(
                sluice.addr,
                &format!("/{encoding}/room"),
                format!("reading-{n}"),
            )
            .await;
            browser
                .wait_for("the event", &format!("window.results.events.length > {n}"))
                .await;
            // Idle past a heartbeat (100 to 200 ms of silence): the scenario, not a wait for it.
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        }
        let events = browser
            .eval("[window.results.events, window.results.errors]")
            .await;
        assert_eq!(
            events,
            json!([["reading-0", "reading-1", "reading-2"], 0]),
            "{encoding}: every event, no error"
        );
    }
}

/// A page that records every event's type, data and `lastEventId` from `EventSource(location.hash)`.
const TYPED_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>typed events</title></head><body>
<script>
const results = { events: [], opens: 0 };
window.results = results;
const source = new EventSource(new URL(location.hash.slice(1)));
source.onopen = () => { results.opens += 1; };
const record = (e) => results.events.push([e.type, e.data, e.lastEventId]);
source.onmessage = record;
source.addEventListener("progress", record);
</script></body></html>
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_gets_an_upstream_origins_event_types_and_ids_through_sluice() {
    let origin = Origin::start().await;
    let pages = TempDir::new("typed-page");
    std::fs::write(pages.0.join("typed.html"), TYPED_PAGE).expect("write page");
    let body = format!(
        r#"
static_dir = "{}"

[brokers.app]
type = "sse"
url = "{}"

[[routes]]
path = "/builds/{{id}}/log"
broker = "app"
topic = "/builds/{{id}}/log"
"#,
        pages.0.display(),
        origin.url()
    );
    let sluice = Sluice::start(&body).await;
    let addr = sluice.addr;
    let mut browser = Browser::launch().await;
    browser
        .navigate(&format!(
            "http://{addr}/typed.html#http://{addr}/builds/7/log"
        ))
        .await;
    browser
        .wait_for(
            "the stream open",
            "window.results && window.results.opens >= 1",
        )
        .await;
    eventually("the upstream stream", || async {
        (origin.open_streams() == 1).then_some(())
    })
    .await;
    origin.send(
        "event: progress\nid: 41\ndata: half\ndata: way\n\ndata: plain\n\nid: 42\ndata: done\n\n",
    );
    browser
        .wait_for("three events", "window.results.events.length >= 3")
        .await;
    let results = browser.eval("window.results.events").await;
    assert_eq!(
        results,
        json!([
            ["progress", "half\nway", "41"],
            ["message", "plain", "41"],
            ["message", "done", "42"]
        ])
    );
}
