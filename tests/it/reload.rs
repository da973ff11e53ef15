//! Configuration reload (SIGHUP) against the real binary: unchanged routes' streams lose and
//! duplicate nothing across many reloads; changed and removed routes end theirs with a jittered
//! `retry:`; new routes and brokers serve; rotated keys cut their streams; a rotated TLS certificate
//! reaches new handshakes while open streams stay; an invalid file changes nothing.

use crate::support::*;
use sluice_testkit::NatsServer;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Streams held open across the reloads; `SLUICE_RELOAD_STREAMS=1000` runs the issue's full size.
fn streams() -> usize {
    std::env::var("SLUICE_RELOAD_STREAMS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}
/// Events published on each unchanged route while the reloads run, at 100 per second.
const EVENTS: usize = 300;

/// A memory route `name` that takes publishes, with `extra` keys.
fn memory_route(name: &str, extra: &str) -> String {
    format!(
        "[[routes]]\npath = \"/{name}/{{x}}\"\nbroker = \"m\"\ntopic = \"{name}/{{x}}\"\npublish = true\n{extra}\n"
    )
}

/// Reads until `data`, failing if the stream ends first (the stream never reconnected then).
async fn data_until(stream: &mut SseStream, data: &str) -> Vec<String> {
    stream
        .read_until(data)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unchanged_routes_lose_and_duplicate_nothing_across_ten_reloads() {
    let nats = NatsServer::start();
    let brokers = format!(
        "[brokers.m]\ntype = \"memory\"\n\n[brokers.core]\ntype = \"nats\"\nurl = \"{}\"\n",
        nats.url()
    );
    let live = "[[routes]]\npath = \"/live/{x}\"\nbroker = \"core\"\ntopic = \"live.{x}\"\n";
    let replay = memory_route("replay", "replay = 1000");
    let base = format!("{brokers}\n{live}\n{replay}\n");
    let sluice = Sluice::start_logged(&base).await;
    let addr = sluice.addr;

    // Half the streams on a NATS route, half on a memory replay route, over two h2c connections.
    let (h2_live, h2_replay) = (H2::h2c(addr).await, H2::h2c(addr).await);
    let mut streams = Vec::with_capacity(self::streams());
    for n in 0..self::streams() {
        let stream = if n % 2 == 0 {
            h2_live.stream("/live/a").await
        } else {
            h2_replay.stream("/replay/a").await
        };
        assert_eq!(stream.status, 200);
        streams.push(stream);
    }
    let client = within("connect", async_nats::connect(nats.url()))
        .await
        .expect("nats client");
    // Every stream joined before this: once the first stream of a topic has a probe, every stream
    // of the topic is on its live subscription, and the "start" that follows reaches them all.
    let nats_publish = |data: String| {
        let client = client.clone();
        async move {
            client
                .publish("live.a", data.into())
                .await
                .expect("nats publish");
            client.flush().await.expect("flush");
        }
    };
    let http_publish = |data: String| async move { publish(addr, "/replay/a", data).await };
    streams[0]
        .publish_until_received("warm", nats_publish)
        .await;
    streams[1]
        .publish_until_received("warm", http_publish)
        .await;
    nats_publish("start".into()).await;
    http_publish("start".into()).await;
    for stream in &mut streams {
        stream.read_until("start").await;
    }

    // Every stream is read as a browser reads it, all the time.
    let expected: Vec<String> = (0..EVENTS)
        .map(|n| n.to_string())
        .chain(["end".to_owned()])
        .collect();
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let expected = expected.clone();
            tokio::spawn(async move {
                let events = stream.read_until("end").await;
                let got: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
                assert_eq!(got, expected, "every event once, in order, on one stream");
                assert!(!stream.ended);
                // The opening retry only: no stream was told to reconnect.
                let retries = String::from_utf8_lossy(&stream.raw)
                    .matches("retry:")
                    .count();
                assert_eq!(retries, 1);
                events
            })
        })
        .collect();

    // 100 events per second on each route, while the reloads run.
    let sent = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn({
        let (client, sent) = (client.clone(), sent.clone());
        async move {
            let mut http = Publisher::connect(addr).await;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for n in 0..EVENTS {
                tick.tick().await;
                client
                    .publish("live.a", n.to_string().into())
                    .await
                    .expect("nats publish");
                http.publish("/replay/a", n.to_string()).await;
                sent.store(n + 1, Ordering::Relaxed);
            }
            client.flush().await.expect("flush");
        }
    });

    // Ten reloads, spread over the publishing: valid ones that change other routes, brokers and
    // settings, and invalid ones that are refused.
    let other = memory_route("other", "");
    let variants = [
        (format!("{base}\n{other}"), true),
        (
            format!("{base}\n{}", memory_route("other", "buffer = 8")),
            true,
        ),
        (format!("{base}\n{other}\nbogus = 1\n"), false),
        (format!("heartbeat = \"1s\"\nretry = \"3s\"\n{base}"), true),
        (format!("[brokers.z]\ntype = \"memory\"\n{base}"), true),
        (
            base.replace("broker = \"m\"", "broker = \"missing\""),
            false,
        ),
        // A route inserted before the others shifts their places, not their identity.
        (format!("{brokers}\n{other}\n{live}\n{replay}\n"), true),
        (format!("{base}\n[[routes]]\npath = \"/x\"\n"), false),
        (format!("{brokers}\n{replay}\n{live}\n{other}\n"), true),
        (base.clone(), true),
    ];
    for (n, (body, valid)) in variants.iter().enumerate() {
        let due = (n + 1) * EVENTS / (variants.len() + 2);
        eventually("the publisher's progress", || async {
            (sent.load(Ordering::Relaxed) >= due).then_some(())
        })
        .await;
        assert_eq!(sluice.reload(body).await, *valid, "reload {n}:\n{body}");
    }
    within("publisher", publisher).await.expect("publisher");
    nats_publish("end".into()).await;
    http_publish("end".into()).await;

    let mut read = Vec::new();
    for reader in readers {
        read.push(within("reader", reader).await.expect("a reader failed"));
    }

    // The replay route kept its ring through every reload: a client resuming from an event
    // published before most of them gets exactly what followed, with no gap.
    let middle = EVENTS / 4;
    let id = read[1][middle].id.clone().expect("replay events have ids");
    let mut resumed = h1_stream_with(addr, "/replay/a", &[("last-event-id", &id)]).await;
    let got = data_until(&mut resumed, "end").await;
    assert_eq!(got, expected[middle + 1..], "resumed from the same ring");
    let log = sluice.log();
    assert_eq!(log.matches("configuration reloaded").count(), 7, "{log}");
    assert_eq!(log.matches("configuration reload refused").count(), 3);
}

#[tokio::test]
async fn changed_and_removed_routes_end_with_a_jittered_retry_and_new_routes_serve() {
    let brokers = "retry = \"1s\"\n[brokers.m]\ntype = \"memory\"\n";
    let kept = memory_route("kept", "");
    let before = format!(
        "{brokers}\n{}\n{}\n{kept}",
        memory_route("changed", ""),
        memory_route("removed", "")
    );
    let sluice = Sluice::start_logged(&before).await;
    let addr = sluice.addr;
    let mut changed = live_stream(addr, "/changed/a").await;
    let mut removed = live_stream(addr, "/removed/a").await;
    let mut unchanged = live_stream(addr, "/kept/a").await;

    let after = format!(
        "{brokers}\n{}\n{kept}\n{}",
        memory_route("changed", "event = \"v2\""),
        memory_route("added", "")
    );
    assert!(sluice.reload(&after).await);
    for stream in [&mut changed, &mut removed] {
        let events = stream.until_end().await;
        assert!(events.is_empty(), "nothing but the retry: {events:?}");
        let text = String::from_utf8_lossy(&stream.raw).into_owned();
        assert_eq!(text.matches("retry:").count(), 2, "{text}");
        let retry = stream.retry.expect("a retry");
        assert!((1000..=3000).contains(&retry), "1x to 3x retry: {retry}");
    }
    assert_eq!(get(addr, "/removed/a").await.expect("get").status, 404);

    // The client of the changed route reconnects to its new definition.
    let mut again = live_stream(addr, "/changed/a").await;
    publish(addr, "/changed/a", "new").await;
    let event = again.next_event().await;
    assert_eq!((event.event.as_str(), event.data.as_str()), ("v2", "new"));

    let mut added = live_stream(addr, "/added/a").await;
    publish(addr, "/added/a", "hello").await;
    assert_eq!(added.next_event().await.data, "hello");

    publish(addr, "/kept/a", "still").await;
    assert_eq!(unchanged.next_event().await.data, "still");
    assert!(!unchanged.ended);
}

/// The names of sluice's connections to `server`, from its `/connz`.
async fn connection_names(server: &NatsServer) -> Vec<String> {
    let json = nats_monitor(server, "/connz").await;
    json["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_new_broker_connects_and_a_removed_one_lets_go_once_its_streams_are_gone() {
    let nats = NatsServer::start();
    let memory = format!("[brokers.m]\ntype = \"memory\"\n{}", memory_route("m", ""));
    let sluice = Sluice::start_logged(&memory).await;
    let addr = sluice.addr;
    let with_nats = format!(
        "{memory}\n[brokers.core]\ntype = \"nats\"\nurl = \"{}\"\n\n[[routes]]\npath = \"/alerts/{{site}}\"\nbroker = \"core\"\ntopic = \"alerts.{{site}}\"\npublish = true\n",
        nats.url()
    );
    assert!(sluice.reload(&with_nats).await);
    let mut alerts = live_stream(addr, "/alerts/north").await;
    let client = within("connect", async_nats::connect(nats.url()))
        .await
        .expect("nats client");
    client
        .publish("alerts.north", "fire".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    assert_eq!(alerts.next_event().await.data, "fire");
    assert!(connection_names(&nats)
        .await
        .contains(&"sluice/core".to_owned()));

    assert!(sluice.reload(&memory).await);
    alerts.until_end().await;
    eventually("sluice's nats connection closed", || async {
        let names = connection_names(&nats).await;
        (!names.contains(&"sluice/core".to_owned())).then_some(())
    })
    .await;
    assert_eq!(get(addr, "/alerts/north").await.expect("get").status, 404);
}

#[tokio::test]
async fn a_rotated_jwt_secret_cuts_the_streams_it_verified_and_keeps_the_others() {
    let (old, new) = ("reload-secret-old", "reload-secret-new");
    let config = |vars: &str, cookie: &str| {
        format!(
            "[auth]\njwt_secret_env = [{vars}]\ncookie = \"{cookie}\"\n[brokers.m]\ntype = \"memory\"\n{}\n{}",
            memory_route("private", "auth = true"),
            memory_route("public", "")
        )
    };
    let (old_var, new_var) = ("\"SLUICE_RELOAD_OLD\"", "\"SLUICE_RELOAD_NEW\"");
    let sluice = Sluice::start_opts(
        &config(old_var, "a"),
        Options {
            capture_log: true,
            log_level: "info".into(),
            env: vec![
                ("SLUICE_RELOAD_OLD".into(), old.into()),
                ("SLUICE_RELOAD_NEW".into(), new.into()),
            ],
            ..Options::default()
        },
    )
    .await;
    let addr = sluice.addr;
    let path = |secret: &str| {
        let grant = ["private/#".to_owned()];
        let ttl = Duration::from_secs(600);
        let token = sluice::auth::mint(secret.as_bytes(), &grant, &grant, ttl, None);
        format!("/private/a?access_token={}", token.expect("token"))
    };
    let open = |secret: &'static str| {
        let path = path(secret);
        async move {
            let mut stream = h1_stream(addr, &path).await;
            stream.opened().await;
            let probe = |data: String| {
                let path = path.clone();
                async move { publish(addr, &path, data).await }
            };
            stream.publish_until_received("warm", probe).await;
            stream.settle(probe).await;
            stream
        }
    };
    let mut by_old = open(old).await;
    let mut public = live_stream(addr, "/public/a").await;

    // Another cookie name verifies nothing differently; a second key is added: the stream stays.
    let both = format!("{new_var}, {old_var}");
    assert!(sluice.reload(&config(&both, "b")).await);
    let mut by_new = open(new).await;
    publish(addr, &path(old), "both").await;
    // by_old also read by_new's probes: it reads up to the marker.
    by_old.read_until("both").await;
    assert_eq!(by_new.next_event().await.data, "both");

    // The old secret goes: the stream it verified is cut, the others go on.
    assert!(sluice.reload(&config(new_var, "b")).await);
    by_old.until_end().await;
    let retries = String::from_utf8_lossy(&by_old.raw)
        .matches("retry:")
        .count();
    assert_eq!(retries, 2, "a jittered retry: before the end");
    publish(addr, &path(new), "on").await;
    assert_eq!(by_new.next_event().await.data, "on");
    publish(addr, "/public/a", "on").await;
    assert_eq!(public.next_event().await.data, "on");
    let refused = h1_stream(addr, &path(old)).await;
    assert_eq!(refused.status, 401, "the old secret's tokens are refused");
    assert!(!by_new.ended && !public.ended);
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_handshakes_while_an_open_tls_stream_stays() {
    let body = format!("[brokers.m]\ntype = \"memory\"\n{}", memory_route("r", ""));
    let sluice = Sluice::start_opts(
        &body,
        Options {
            tls_listeners: 1,
            capture_log: true,
            log_level: "info".into(),
            ..Options::default()
        },
    )
    .await;
    let (addr, tls_addr) = (sluice.addr, sluice.tls_addr.expect("a TLS listener"));
    let dir = &sluice.dir.0;
    let (cert, old_cert) = (dir.join("cert.pem"), dir.join("old-cert.pem"));
    std::fs::copy(&cert, &old_cert).expect("keep the old certificate");
    let h2 = H2::tls(tls_addr, &old_cert).await;
    let mut stream = h2.stream("/r/a").await;
    stream.opened().await;
    let probe = |data: String| async move { publish(addr, "/r/a", data).await };
    stream.publish_until_received("warm", probe).await;
    stream.settle(probe).await;

    let renewed =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    std::fs::write(&cert, renewed.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), renewed.key_pair.serialize_pem()).expect("write key");
    assert!(sluice.reload(&body).await);
    assert!(sluice.log().contains("TLS certificate replaced"));

    let fresh = try_tls_connect(tls_addr, &cert, b"h2").await;
    assert!(fresh.is_ok(), "a new handshake gets the new certificate");
    let stale = try_tls_connect(tls_addr, &old_cert, b"h2").await;
    assert!(stale.is_err(), "and no longer the old one");
    let mut renewed_stream = H2::tls(tls_addr, &cert).await.stream("/r/a").await;
    renewed_stream.opened().await;

    publish(addr, "/r/a", "after").await;
    assert_eq!(
        stream.next_event().await.data,
        "after",
        "the open stream stays"
    );
    assert_eq!(renewed_stream.next_event().await.data, "after");
}

#[tokio::test]
async fn an_invalid_file_is_refused_with_its_line_and_column_and_nothing_changes() {
    let body = format!("[brokers.m]\ntype = \"memory\"\n{}", memory_route("r", ""));
    let sluice = Sluice::start_logged(&body).await;
    let addr = sluice.addr;
    let mut stream = live_stream(addr, "/r/a").await;

    // Lines 1 and 2 are [server] and its listen: the route's misspelt key is on line 11.
    let invalid = format!(
        "heartbeat = \"1s\"\n[brokers.m]\ntype = \"memory\"\n{}\n{}",
        memory_route("r", "bufer = 3"),
        memory_route("new", "")
    );
    assert!(!sluice.reload(&invalid).await);
    let log = sluice.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("configuration reload refused"))
        .expect("the refusal");
    assert!(refusal.contains("ERROR"), "{refusal}");
    assert!(
        refusal.contains("config.toml:11:1: unknown field `bufer`"),
        "{refusal}"
    );
    assert_eq!(get(addr, "/new/a").await.expect("get").status, 404);
    publish(addr, "/r/a", "same").await;
    assert_eq!(stream.next_event().await.data, "same");
    let retries = String::from_utf8_lossy(&stream.raw)
        .matches("retry:")
        .count();
    assert_eq!(retries, 1, "the stream was not told to reconnect");
}
