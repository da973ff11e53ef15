//! An upstream SSE origin as a broker (`type = "sse"`): one upstream stream for any number of
//! browsers, the origin's event types and ids kept, resumed with `Last-Event-ID` after a drop, a
//! `gap` after the origin failed, sluice's own ids with `replay`, and path parameters that cannot
//! reach another resource on the origin.

use crate::support::*;

fn config(origin: &Origin) -> String {
    format!(
        r#"
[brokers.app]
type = "sse"
url = "{}"
reconnect = "20ms"
headers = {{ authorization = "Bearer ${{ORIGIN_TEST_TOKEN}}" }}

[[routes]]
path = "/builds/{{id}}/log"
broker = "app"
topic = "/builds/{{id}}/log"

[[routes]]
path = "/replayed/{{id}}"
broker = "app"
topic = "/builds/{{id}}/log"
replay = 100
"#,
        origin.url()
    )
}

async fn start(origin: &Origin) -> Sluice {
    let options = Options {
        env: vec![("ORIGIN_TEST_TOKEN".into(), "t0k".into())],
        capture_log: true,
        ..Options::default()
    };
    Sluice::start_opts(&config(origin), options).await
}

/// A browser's stream on `path`, once its upstream stream is the origin's only one.
async fn watch(sluice: &Sluice, origin: &Origin, path: &str) -> SseStream {
    let mut browser = h1_stream(sluice.addr, path).await;
    browser.opened().await;
    upstreams(origin, 1).await;
    browser
}

/// Waits until the origin has exactly `n` open streams.
async fn upstreams(origin: &Origin, n: usize) {
    let what = format!("{n} open upstream streams");
    eventually(&what, || async {
        (origin.open_streams() == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_stream_serves_a_hundred_browsers() {
    let origin = Origin::start().await;
    let sluice = start(&origin).await;
    let h2 = H2::h2c(sluice.addr).await;
    let mut browsers = Vec::new();
    for i in 0..100 {
        let mut stream = if i % 2 == 0 {
            h2.stream("/builds/42/log").await
        } else {
            h1_stream(sluice.addr, "/builds/42/log").await
        };
        assert_eq!(stream.status, 200);
        stream.opened().await;
        browsers.push(stream);
    }
    upstreams(&origin, 1).await;
    origin.send("event: progress\nid: 7\ndata: one\ndata: two\n\n: a comment\ndata: plain\n\n");
    for browser in &mut browsers {
        let first = browser.next_event().await;
        assert_eq!(
            (
                first.event.as_str(),
                first.data.as_str(),
                first.id.as_deref()
            ),
            ("progress", "one\ntwo", Some("7"))
        );
        // No id of its own: the browser's last event id stays the origin's last one.
        let second = browser.next_event().await;
        assert_eq!(
            (second.event.as_str(), second.data.as_str()),
            ("message", "plain")
        );
        assert_eq!(browser.last_event_id.as_deref(), Some("7"));
    }
    let requests = origin.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request.path, "/builds/42/log");
    assert_eq!(request.last_event_id, None);
    let header = |name: &str| {
        let found = request.headers.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_str())
    };
    assert_eq!(header("authorization"), Some("Bearer t0k"));
    assert_eq!(header("accept"), Some("text/event-stream"));
    // The upstream stream closes with the last browser.
    drop(browsers);
    drop(h2);
    upstreams(&origin, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_upstream_is_resumed_with_the_last_event_id() {
    let origin = Origin::start().await;
    let sluice = start(&origin).await;
    let mut browser = watch(&sluice, &origin, "/builds/1/log").await;
    origin.send("id: a1\ndata: first\n\n");
    assert_eq!(browser.next_event().await.data, "first");
    origin.drop_streams();
    eventually("a second upstream request", || async {
        (origin.requests().len() == 2 && origin.open_streams() == 1).then_some(())
    })
    .await;
    assert_eq!(origin.requests()[1].last_event_id.as_deref(), Some("a1"));
    origin.send("id: a2\ndata: second\n\n");
    // The origin resumed from the id: nothing was missed, and the browser is told nothing.
    let next = browser.next_event().await;
    assert_eq!(
        (next.data.as_str(), next.id.as_deref()),
        ("second", Some("a2"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_fails_is_retried_and_the_browsers_get_a_gap() {
    let origin = Origin::start().await;
    let sluice = start(&origin).await;
    let mut browser = watch(&sluice, &origin, "/builds/2/log").await;
    origin.send("id: b1\ndata: one\n\n");
    assert_eq!(browser.next_event().await.data, "one");
    origin.answer_with(Some(500));
    origin.drop_streams();
    eventually("retries answered 500", || async {
        (origin.requests().len() >= 3).then_some(())
    })
    .await;
    origin.answer_with(None);
    upstreams(&origin, 1).await;
    let requests = origin.requests();
    let last = requests.last().map(|r| r.last_event_id.clone());
    assert_eq!(
        last,
        Some(Some("b1".to_owned())),
        "resumed from the last id"
    );
    origin.send("id: b3\ndata: three\n\n");
    let gap = browser.next_event().await;
    assert_eq!(gap.event, "gap");
    assert!(gap.data.contains("broker-disconnected"), "{}", gap.data);
    assert_eq!(browser.next_event().await.data, "three");
    // The gap has no id: the browser still resumes from the origin's last id.
    assert_eq!(browser.last_event_id.as_deref(), Some("b3"));
    let log = sluice.log();
    assert!(log.contains("500 Internal Server Error"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replay_sluice_gives_its_own_ids_and_resumes_browsers() {
    let origin = Origin::start().await;
    let sluice = start(&origin).await;
    let mut browser = watch(&sluice, &origin, "/replayed/9").await;
    origin.send("id: u1\ndata: one\n\nid: u2\ndata: two\n\n");
    let one = browser.next_event().await;
    assert_eq!(one.data, "one");
    let id = one.id.clone().expect("an id");
    assert_ne!(id, "u1", "sluice's replay ids, not the origin's");
    assert_eq!(browser.next_event().await.data, "two");
    drop(browser);
    // The topic lingers: the upstream stream stays open for a returning browser.
    origin.send("id: u3\ndata: three\n\n");
    let mut back = h1_stream_with(sluice.addr, "/replayed/9", &[("last-event-id", &id)]).await;
    assert_eq!(back.next_event().await.data, "two");
    assert_eq!(back.next_event().await.data, "three");
    assert_eq!(origin.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_parameter_cannot_reach_another_resource_on_the_origin() {
    let origin = Origin::start().await;
    let sluice = start(&origin).await;
    for path in [
        "/builds/..%2Fadmin/log",
        "/builds/%2e%2e/log",
        "/builds/../log",
        "/builds/./log",
        "/builds/a%3Fx=1/log",
        "/builds/a%23b/log",
        "/builds/%252F/log",
        "/builds/a%20b/log",
        "/builds/a%5Cb/log",
        "/builds/a%26b%3D1/log",
        "/builds/%0Aa/log",
    ] {
        let response = get(sluice.addr, path).await.expect("answer");
        assert_eq!(response.status, 400, "{path}: {}", response.text());
    }
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_refuses_a_stream_is_a_bad_gateway() {
    let origin = Origin::start().await;
    origin.answer_with(Some(404));
    let sluice = start(&origin).await;
    let browser = h1_stream(sluice.addr, "/builds/404/log").await;
    assert_eq!(browser.status, 502);
    assert_eq!(origin.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_upstream_event_is_cut_off_and_the_stream_resumed() {
    let origin = Origin::start().await;
    let sluice = start(&origin).await;
    let mut browser = watch(&sluice, &origin, "/builds/3/log").await;
    origin.send("id: c1\ndata: small\n\n");
    assert_eq!(browser.next_event().await.data, "small");
    // Over a MiB with no line end: sluice does not hold it, it reconnects.
    let chunk = format!("data: {}", "x".repeat(64 * 1024));
    for _ in 0..20 {
        origin.send(&chunk);
    }
    eventually("a reconnection", || async {
        (origin.requests().len() == 2 && origin.open_streams() == 1).then_some(())
    })
    .await;
    assert_eq!(origin.requests()[1].last_event_id.as_deref(), Some("c1"));
    origin.send("id: c2\ndata: after\n\n");
    // The event that was cut off is not silently lost.
    assert_eq!(browser.next_event().await.event, "gap");
    assert_eq!(browser.next_event().await.data, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_origin_is_verified_against_the_ca_file() {
    let dir = TempDir::new("origin-tls");
    let (origin, ca) = Origin::start_tls(&dir.0).await;
    let broker = |ca_file: &str| {
        format!(
            "[brokers.app]\ntype = \"sse\"\nurl = \"{}\"\nreconnect = \"20ms\"\n{ca_file}\n\
             [[routes]]\npath = \"/t\"\nbroker = \"app\"\ntopic = \"/t\"\n\
             [[routes]]\npath = \"/u\"\nbroker = \"app\"\ntopic = \"/u\"\n",
            origin.tls_url()
        )
    };
    // Trusted through ca_file: events flow, and two upstream streams share one HTTP/2 connection.
    let ca_file = format!("ca_file = {:?}", ca.display().to_string());
    let trusted = Sluice::start(&broker(&ca_file)).await;
    let mut browser = h1_stream(trusted.addr, "/t").await;
    browser.opened().await;
    let mut other = h1_stream(trusted.addr, "/u").await;
    other.opened().await;
    upstreams(&origin, 2).await;
    origin.send("data: over tls\n\n");
    assert_eq!(browser.next_event().await.data, "over tls");
    assert_eq!(other.next_event().await.data, "over tls");
    assert_eq!(origin.connections(), 1, "one connection for both streams");
    drop((browser, other));
    upstreams(&origin, 0).await;
    // Without it the certificate is not trusted: no stream is ever opened on the origin, and the
    // log says why.
    let options = Options {
        capture_log: true,
        ..Options::default()
    };
    let untrusted = Sluice::start_opts(&broker(""), options).await;
    let mut browser = h1_stream(untrusted.addr, "/t").await;
    browser.opened().await;
    eventually("a refused handshake logged", || async {
        untrusted.log().contains("certificate").then_some(())
    })
    .await;
    assert_eq!(origin.open_streams(), 0);
    // An origin that cannot be reached makes the instance not ready; one that answers, ready.
    let ready = get(untrusted.addr, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(
        ready.text().contains("broker app: down"),
        "{}",
        ready.text()
    );
    let ready = get(trusted.addr, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_upstream_without_ids_is_a_gap() {
    let origin = Origin::start().await;
    let sluice = start(&origin).await;
    let mut browser = watch(&sluice, &origin, "/builds/5/log").await;
    origin.send("data: no id\n\n");
    assert_eq!(browser.next_event().await.data, "no id");
    origin.drop_streams();
    eventually("a second upstream request", || async {
        (origin.requests().len() == 2 && origin.open_streams() == 1).then_some(())
    })
    .await;
    assert_eq!(origin.requests()[1].last_event_id, None);
    origin.send("data: later\n\n");
    // Nothing to resume from: what the origin sent meanwhile may be lost, and the browser is told.
    assert_eq!(browser.next_event().await.event, "gap");
    assert_eq!(browser.next_event().await.data, "later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_is_resumed_after_its_idle_timeout_and_comments_keep_it() {
    let origin = Origin::start().await;
    let body = format!(
        "[brokers.app]\ntype = \"sse\"\nurl = \"{}\"\nreconnect = \"20ms\"\nidle_timeout = \"150ms\"\n\
         [[routes]]\npath = \"/quiet\"\nbroker = \"app\"\ntopic = \"/quiet\"\n",
        origin.url()
    );
    let sluice = Sluice::start(&body).await;
    let mut browser = watch(&sluice, &origin, "/quiet").await;
    origin.send("id: q1\ndata: before\n\n");
    assert_eq!(browser.next_event().await.data, "before");
    // Heartbeat comments for four idle timeouts: the stream is not idle.
    for _ in 0..12 {
        origin.send(":\n\n");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(origin.requests().len(), 1, "comments count as traffic");
    // Then nothing: the stream is dropped and resumed from its last id.
    eventually("a resumed upstream stream", || async {
        (origin.requests().len() == 2).then_some(())
    })
    .await;
    assert_eq!(origin.requests()[1].last_event_id.as_deref(), Some("q1"));
    upstreams(&origin, 1).await;
    origin.send("id: q2\ndata: after\n\n");
    // Resumed from an id: no gap.
    assert_eq!(browser.next_event().await.data, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_browsers_arriving_at_once_open_one_upstream_stream() {
    let origin = Origin::start().await;
    let sluice = start(&origin).await;
    let h2 = H2::h2c(sluice.addr).await;
    // All at once, before the origin has answered the first.
    let opening = (0..100).map(|_| h2.stream("/builds/herd/log"));
    let mut browsers = futures::future::join_all(opening).await;
    for browser in &mut browsers {
        assert_eq!(browser.status, 200);
        browser.opened().await;
    }
    upstreams(&origin, 1).await;
    assert_eq!(origin.requests().len(), 1, "{:?}", origin.requests());
    origin.send("data: everyone\n\n");
    for browser in &mut browsers {
        assert_eq!(browser.next_event().await.data, "everyone");
    }
}
