//! Requests that would break a broker's own rules are refused before they reach the shared broker
//! connection, and a bridge never lets one refused subscribe or publish cut it off in a loop. Real
//! mosquitto and nats-server processes: the tests count the broker's own connections.

use crate::support::*;
use http::StatusCode;
use sluice_testkit::{Mosquitto, NatsServer};
use std::net::SocketAddr;

/// A status without opening a stream: streams are dropped once their head arrived.
async fn status(addr: SocketAddr, method: &str, path: &str, body: &str) -> StatusCode {
    let stream = h1_stream_with_method(addr, method, path, &[], body).await;
    stream.status
}

/// The value of `field` in nats-server's `/varz` (e.g. `total_connections`).
async fn varz(server: &NatsServer, field: &str) -> u64 {
    let url = server.monitor_url("/varz");
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("monitor address");
    let resp = get(addr, "/varz").await.expect("varz");
    let json: serde_json::Value = serde_json::from_slice(&resp.body).expect("varz json");
    json[field].as_u64().expect("a number")
}

fn mqtt_routes(url: &str) -> String {
    format!(
        r#"
[brokers.plant]
type = "mqtt"
url = "{url}"
qos = 1

[[routes]]
path = "/mq/{{site}}"
broker = "plant"
topic = "sensors/{{site}}/temp"
publish = true
"#
    )
}

#[tokio::test]
async fn mqtt_noncharacters_are_refused_and_the_connection_stays_up() {
    let broker = Mosquitto::start();
    let sluice = Sluice::start_logged(&mqtt_routes(&broker.url())).await;
    let addr = sluice.addr;
    let mut healthy = live_stream(sluice.addr, "/mq/ok").await;

    // U+FFFE, U+FFFF, U+FDD0, U+1FFFF, U+0085 (a C1 control): mosquitto drops a connection for each.
    for bad in [
        "%EF%BF%BE",
        "%EF%BF%BF",
        "%EF%B7%90",
        "%F0%9F%BF%BF",
        "%C2%85",
    ] {
        let path = format!("/mq/{bad}");
        assert_eq!(
            status(addr, "POST", &path, "x").await,
            StatusCode::BAD_REQUEST,
            "POST {path}"
        );
        assert_eq!(
            status(addr, "GET", &path, "").await,
            StatusCode::BAD_REQUEST,
            "GET {path}"
        );
    }

    publish(addr, "/mq/ok", "after").await;
    let event = healthy.next_event().await;
    assert_eq!(event.data, "after");
    let log = sluice.log();
    assert_eq!(
        log.matches("mqtt connected").count(),
        1,
        "sluice's broker connection was never dropped:\n{log}"
    );
}

#[tokio::test]
async fn mqtt_a_broker_that_takes_qos_0_only_gets_qos_0() {
    // mosquitto drops a client that publishes above the maximum QoS of its CONNACK.
    let broker = Mosquitto::start_with("max_qos 0");
    let sluice = Sluice::start_logged(&mqtt_routes(&broker.url())).await;
    let addr = sluice.addr;
    let mut stream = live_stream(sluice.addr, "/mq/ok").await;
    for n in 0..5 {
        publish(addr, "/mq/ok", format!("n{n}")).await;
        assert_eq!(stream.next_event().await.data, format!("n{n}"));
    }
    let log = sluice.log();
    assert_eq!(log.matches("mqtt connected").count(), 1, "{log}");
}

#[tokio::test]
async fn mqtt_a_publish_the_broker_refuses_is_given_up_not_resent_forever() {
    let mut broker = Mosquitto::start();
    let sluice = Sluice::start_logged(&mqtt_routes(&broker.url())).await;
    let addr = sluice.addr;
    // A stream on the topic, so sluice is subscribed when the fault comes.
    let _first = live_stream(sluice.addr, "/mq/ok").await;

    // Accepted while the broker is away (checked against the limits it announced before), then
    // too large for the broker that comes back: it can never be sent, and the QoS 1 session would
    // re-send it on every reconnect.
    broker.stop_gracefully();
    publish(addr, "/mq/ok", "x".repeat(2000)).await;
    broker.start_again_with("max_packet_size 1000");
    eventually("sluice gives the refused publish up", || async {
        sluice.log().contains("giving up").then_some(())
    })
    .await;

    // The connection is stable again: a new stream gets messages, with no more reconnections.
    let mut fresh = h1_stream(addr, "/mq/ok").await;
    fresh.opened().await;
    let probe = |data| async move { publish(addr, "/mq/ok", data).await };
    fresh.publish_until_received("after", probe).await;
    fresh.settle(probe).await;
    let reconnects = sluice.log().matches("mqtt connected").count();
    assert!(
        reconnects < 10,
        "gave up after a few reconnects, not {reconnects}"
    );
    for n in 0..5 {
        publish(addr, "/mq/ok", format!("n{n}")).await;
        assert_eq!(fresh.next_event().await.data, format!("n{n}"));
    }
    // The broker's new limit is now checked up front.
    assert_eq!(
        status(addr, "POST", "/mq/ok", &"x".repeat(2000)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        sluice.log().matches("mqtt connected").count(),
        reconnects,
        "no reconnection after giving up:\n{}",
        sluice.log()
    );
}

fn nats_routes(url: &str, extra: &str) -> String {
    format!(
        r#"
max_publish_bytes = 2000000

[brokers.core]
type = "nats"
url = "{url}"
{extra}

[[routes]]
path = "/alerts/{{site}}"
broker = "core"
topic = "alerts.{{site}}"
publish = true

[[routes]]
path = "/multi"
broker = "core"
topics = ["alerts.>"]
"#
    )
}

#[tokio::test]
async fn nats_subjects_past_the_control_line_and_payloads_past_max_payload_are_refused() {
    let server = NatsServer::start();
    let sluice = Sluice::start(&nats_routes(&server.url(), "")).await;
    let addr = sluice.addr;
    let mut healthy = live_stream(sluice.addr, "/alerts/ok").await;
    let connections = varz(&server, "total_connections").await;

    let long = "a".repeat(5000);
    assert_eq!(
        status(addr, "GET", &format!("/alerts/{long}"), "").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        status(addr, "POST", &format!("/alerts/{long}"), "x").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        status(addr, "GET", &format!("/multi?topic=alerts.{long}"), "").await,
        StatusCode::BAD_REQUEST
    );
    // The server's max_payload is 1 MiB (announced in its INFO).
    let big = "x".repeat(1_100_000);
    assert_eq!(
        status(addr, "POST", "/alerts/ok", &big).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Just under the limits still works.
    let fits = "b".repeat(3000);
    let mut near = h1_stream(addr, &format!("/alerts/{fits}")).await;
    assert_eq!(near.status, StatusCode::OK);
    near.opened().await;

    publish(addr, "/alerts/ok", "after").await;
    assert_eq!(healthy.next_event().await.data, "after");
    assert_eq!(
        varz(&server, "total_connections").await,
        connections,
        "sluice never had to reconnect"
    );
}

#[tokio::test]
async fn nats_a_subscription_the_server_refuses_is_given_up_not_resent_forever() {
    let server = NatsServer::start();
    // Configured above the server's real limit (4096): the first line lets a long subject through.
    let sluice =
        Sluice::start_logged(&nats_routes(&server.url(), "max_control_line = 16384")).await;
    let addr = sluice.addr;
    let mut healthy = live_stream(sluice.addr, "/alerts/ok").await;

    let long = "a".repeat(5000);
    let mut refused = h1_stream(addr, &format!("/alerts/{long}")).await;
    // The server drops the connection for it; sluice halves its limit and gives the subject up,
    // which ends the stream, and does not send it again.
    refused.until_end().await;
    eventually("sluice reconnects", || async {
        let log = sluice.log();
        (log.matches("nats connected").count() >= 2).then_some(())
    })
    .await;
    let probe = |data| async move { publish(addr, "/alerts/ok", data).await };
    healthy.publish_until_received("after", probe).await;
    healthy.settle(probe).await;
    let connections = varz(&server, "total_connections").await;
    for n in 0..5 {
        publish(addr, "/alerts/ok", format!("n{n}")).await;
        assert_eq!(healthy.next_event().await.data, format!("n{n}"));
    }
    assert_eq!(
        varz(&server, "total_connections").await,
        connections,
        "no more reconnections once the subject was given up:\n{}",
        sluice.log()
    );
    // And the lowered limit now refuses it up front.
    assert_eq!(
        status(addr, "GET", &format!("/alerts/{long}"), "").await,
        StatusCode::BAD_REQUEST
    );
}
