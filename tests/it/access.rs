//! Who may open which stream: JWT auth (header, cookie, query; HS256 and ES256), topic grants, token
//! expiry, CORS, multi-topic streams with `?topic=`, connection limits and hostile requests.

use crate::support::*;
use http::StatusCode;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "a-test-secret-of-decent-length";

const ROUTES: &str = r#"
max_connections_per_ip = 3
request_timeout = "1s"

[server.cors]
allow_origins = ["https://dash.example.com"]
allow_credentials = true

[auth]
jwt_secret_env = "TEST_JWT_SECRET"

[brokers.plant]
type = "memory"

[[routes]]
path = "/sensors/{site}/{sensor}"
broker = "plant"
topic = "sensors/{site}/{sensor}"
publish = true
auth = true

[[routes]]
path = "/open/{site}"
broker = "plant"
topic = "sensors/{site}/open"
publish = true

[[routes]]
path = "/stream"
broker = "plant"
topics = ["sensors/+/temp", "sensors/+/humidity"]
max_topics = 3
auth = true

[[routes]]
path = "/json"
broker = "plant"
topics = ["sensors/#"]
envelope = true
"#;

async fn start() -> Sluice {
    Sluice::start_opts(
        ROUTES,
        Options {
            env: vec![("TEST_JWT_SECRET".into(), SECRET.into())],
            capture_log: true,
            log_level: "debug".into(),
            ..Options::default()
        },
    )
    .await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An HS256 token valid for `ttl` seconds granting `subscribe` and `publish` patterns.
fn token(ttl: i64, subscribe: &[&str], publish: &[&str]) -> String {
    let claims = serde_json::json!({
        "exp": (now() as i64 + ttl),
        "sluice": {"subscribe": subscribe, "publish": publish},
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode token")
}

async fn get_with(sluice: &Sluice, path: &str, headers: &[(&str, &str)]) -> Response {
    raw_request(sluice.addr, "GET", path, headers, "").await
}

/// One request on a fresh HTTP/1.1 connection, with any headers; only the head is read for streams.
async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut stream = h1_stream_with_method(addr, method, path, headers, body).await;
    let status = stream.status;
    let headers = stream.headers.clone();
    let body = if status == StatusCode::OK {
        bytes::Bytes::new()
    } else {
        stream.until_end().await;
        bytes::Bytes::from(stream.raw.clone())
    };
    Response {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn tokens_from_header_cookie_or_query_open_granted_topics_only() {
    let sluice = start().await;
    let good = token(600, &["sensors/a/+"], &[]);
    let bearer = format!("Bearer {good}");
    let cookie = format!("theme=dark; sluice_token={good}");
    let query = format!("/sensors/a/temp?access_token={good}");
    for (path, headers) in [
        ("/sensors/a/temp", vec![("authorization", bearer.as_str())]),
        ("/sensors/a/temp", vec![("cookie", cookie.as_str())]),
        (query.as_str(), vec![]),
    ] {
        let mut stream = h1_stream_with(sluice.addr, path, &headers).await;
        assert_eq!(stream.status, StatusCode::OK, "{headers:?}");
        stream.opened().await;
        publish(sluice.addr, "/open/a", "warm").await;
        drop(stream);
    }

    let missing = get_with(&sluice, "/sensors/a/temp", &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"sluice\"")
    );
    let forbidden = get_with(&sluice, "/sensors/b/temp", &[("authorization", &bearer)]).await;
    assert_eq!(
        forbidden.status,
        StatusCode::FORBIDDEN,
        "{}",
        forbidden.text()
    );

    let expired = format!("Bearer {}", token(-600, &["#"], &[]));
    let forged = format!(
        "Bearer {}",
        encode(
            &Header::default(),
            &serde_json::json!({"exp": now() + 600, "sluice": {"subscribe": ["#"]}}),
            &EncodingKey::from_secret(b"not-the-secret"),
        )
        .expect("encode")
    );
    for bad in [expired.as_str(), forged.as_str(), "Bearer garbage"] {
        let resp = get_with(&sluice, "/sensors/a/temp", &[("authorization", bad)]).await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{bad}");
    }

    // A refused request is logged with its request line, and the query token is redacted there.
    let refused = get_with(
        &sluice,
        &format!("/sensors/b/temp?access_token={good}"),
        &[],
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let log = eventually("the refusal is logged", || async {
        let log = sluice.log();
        log.contains("access_token=REDACTED").then_some(log)
    })
    .await;
    assert!(!log.contains(&good), "the token was logged");
}

#[tokio::test]
async fn publishing_needs_a_publish_grant() {
    let sluice = start().await;
    let reader = format!("Bearer {}", token(600, &["sensors/#"], &[]));
    let writer = format!(
        "Bearer {}",
        token(600, &["sensors/#"], &["sensors/a/valve"])
    );
    let mut stream = h1_stream_with(
        sluice.addr,
        "/sensors/a/valve",
        &[("authorization", reader.as_str())],
    )
    .await;
    stream.opened().await;
    let refused = raw_request(
        sluice.addr,
        "POST",
        "/sensors/a/valve",
        &[("authorization", &reader)],
        "open",
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let accepted = raw_request(
        sluice.addr,
        "POST",
        "/sensors/a/valve",
        &[("authorization", &writer)],
        "open",
    )
    .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    assert_eq!(stream.next_event().await.data, "open");
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let sluice = start().await;
    let short = format!("Bearer {}", token(2, &["sensors/#"], &[]));
    let mut stream =
        h1_stream_with(sluice.addr, "/sensors/a/temp", &[("authorization", &short)]).await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.opened().await;
    // The stream is closed by the server at expiry (the browser then reconnects with a new token).
    stream.until_end().await;
    assert!(stream.ended);
}

#[tokio::test]
async fn es256_public_keys_verify_tokens() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let dir = TempDir::new("es256");
    std::fs::write(dir.0.join("jwt.pem"), key.public_key_pem()).expect("write key");
    let body = format!(
        r#"
[auth]
jwt_public_key = "{}"

[brokers.m]
type = "memory"

[[routes]]
path = "/s/{{x}}"
broker = "m"
topic = "s/{{x}}"
auth = true
"#,
        dir.0.join("jwt.pem").display()
    );
    let sluice = Sluice::start(&body).await;
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("signing key");
    let claims = serde_json::json!({"exp": now() + 600, "sluice": {"subscribe": ["s/+"]}});
    let good = encode(&Header::new(Algorithm::ES256), &claims, &signing).expect("encode");
    let ok = get_with(
        &sluice,
        "/s/a",
        &[("authorization", &format!("Bearer {good}"))],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    // An HS256 token cannot pass for an ES256 one (no algorithm confusion).
    let hs = token(600, &["s/+"], &[]);
    let refused = get_with(
        &sluice,
        "/s/a",
        &[("authorization", &format!("Bearer {hs}"))],
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn cors_echoes_listed_origins_with_credentials_only() {
    let sluice = start().await;
    let listed = get_with(
        &sluice,
        "/open/a",
        &[("origin", "https://dash.example.com")],
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(
        listed.header("access-control-allow-origin"),
        Some("https://dash.example.com")
    );
    assert_eq!(
        listed.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(listed.header("vary"), Some("origin"));

    let other = get_with(&sluice, "/open/a", &[("origin", "https://evil.example")]).await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    assert_eq!(other.header("access-control-allow-credentials"), None);

    let preflight = raw_request(
        sluice.addr,
        "OPTIONS",
        "/sensors/a/temp",
        &[
            ("origin", "https://dash.example.com"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "last-event-id"),
        ],
        "",
    )
    .await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://dash.example.com")
    );
    assert!(preflight
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("last-event-id")));
}

#[tokio::test]
async fn multi_topic_streams_take_allowed_topics_from_the_query() {
    let sluice = start().await;
    let grant = format!("Bearer {}", token(600, &["sensors/a/+"], &[]));
    let auth = [("authorization", grant.as_str())];
    let mut stream = h1_stream_with(
        sluice.addr,
        "/stream?topic=sensors/a/temp&topic=sensors%2Fa%2Fhumidity",
        &auth,
    )
    .await;
    assert_eq!(stream.status, StatusCode::OK);
    stream.opened().await;
    let mut json = h1_stream(sluice.addr, "/json?topic=sensors/%2B/temp").await;
    json.opened().await;
    // Publish on the stream's topics through the authorized single-topic route.
    let writer = format!("Bearer {}", token(600, &[], &["sensors/#"]));
    for (topic, value) in [("sensors/a/temp", "21.5"), ("sensors/a/humidity", "40")] {
        let resp = raw_request(
            sluice.addr,
            "POST",
            &format!("/{topic}"),
            &[("authorization", &writer)],
            value,
        )
        .await;
        assert_eq!(resp.status, StatusCode::ACCEPTED);
    }
    let first = stream.next_event().await;
    let second = stream.next_event().await;
    assert_eq!(
        [
            (first.event.as_str(), first.data.as_str()),
            (second.event.as_str(), second.data.as_str())
        ],
        [("sensors/a/temp", "21.5"), ("sensors/a/humidity", "40")]
    );
    let enveloped = json.next_event().await;
    assert_eq!(enveloped.event, "message");
    let value: serde_json::Value = serde_json::from_str(&enveloped.data).expect("JSON data");
    assert_eq!(
        value,
        serde_json::json!({"topic": "sensors/a/temp", "data": "21.5"})
    );

    for (path, status) in [
        ("/stream", StatusCode::BAD_REQUEST),
        ("/stream?topic=other/a/temp", StatusCode::BAD_REQUEST),
        ("/stream?topic=sensors/%23", StatusCode::BAD_REQUEST),
        (
            "/stream?topic=sensors/a/temp&topic=sensors/b/temp&topic=sensors/c/temp&topic=sensors/d/temp",
            StatusCode::BAD_REQUEST,
        ),
        // Allowed by the route, not by the token.
        ("/stream?topic=sensors/b/temp", StatusCode::FORBIDDEN),
        ("/stream?topic=sensors/%2B/temp", StatusCode::FORBIDDEN),
    ] {
        let resp = get_with(&sluice, path, &auth).await;
        assert_eq!(resp.status, status, "{path}: {}", resp.text());
    }
}

#[tokio::test]
async fn limits_refuse_with_503_and_hostile_requests_get_clear_errors() {
    let sluice = start().await;
    // max_connections_per_ip = 3: a fourth connection with a stream is refused, a freed one admitted.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = h1_stream(sluice.addr, "/open/l").await;
        s.opened().await;
        streams.push(s);
    }
    let refused = get_with(&sluice, "/open/l", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.header("retry-after"), Some("5"));
    drop(streams.pop());
    eventually("a freed connection slot", || async {
        (get_with(&sluice, "/open/l", &[]).await.status == StatusCode::OK).then_some(())
    })
    .await;
    drop(streams);

    let long = format!("/open/{}", "a".repeat(9000));
    assert_eq!(
        get_with(&sluice, &long, &[]).await.status,
        StatusCode::URI_TOO_LONG
    );
    let big = "b".repeat(17 * 1024);
    assert_eq!(
        get_with(&sluice, "/open/h", &[("x-big", &big)])
            .await
            .status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );

    // A client that never finishes its request head is dropped after request_timeout (1 s).
    let mut slow = tokio::net::TcpStream::connect(sluice.addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /open/s HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("partial request");
    let mut buf = [0u8; 64];
    let read = within("slow client dropped", slow.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn mint_token_signs_what_the_server_accepts() {
    let sluice = start().await;
    let out = std::process::Command::new(sluice_bin())
        .arg("--config")
        .arg(sluice.dir.0.join("config.toml"))
        .args(["--mint-token", "--subscribe", "sensors/a/+", "--ttl", "10m"])
        .env("TEST_JWT_SECRET", SECRET)
        .output()
        .expect("run --mint-token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).expect("utf-8");
    let bearer = format!("Bearer {}", minted.trim());
    let ok = get_with(&sluice, "/sensors/a/temp", &[("authorization", &bearer)]).await;
    assert_eq!(ok.status, StatusCode::OK);
    let denied = get_with(&sluice, "/sensors/b/temp", &[("authorization", &bearer)]).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
}

/// An HS256 token with exactly these claims.
fn signed(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode token")
}

#[tokio::test]
async fn hostile_time_claims_are_refused_with_a_reason_and_nothing_breaks() {
    let sluice = start().await;
    let later = now() + 600;
    let grant = serde_json::json!({"subscribe": ["sensors/#"]});
    for (claim, claims) in [
        // exp >= 2^63 once panicked the request: the client got an empty reply.
        (
            "exp",
            serde_json::json!({"exp": 1u64 << 63, "sluice": grant}),
        ),
        ("exp", serde_json::json!({"exp": u64::MAX, "sluice": grant})),
        (
            "exp",
            serde_json::json!({"exp": "2030-01-01", "sluice": grant}),
        ),
        // An nbf that is not a number was ignored, and the token accepted.
        (
            "nbf",
            serde_json::json!({"exp": later, "nbf": "2999-01-01", "sluice": grant}),
        ),
        (
            "nbf",
            serde_json::json!({"exp": later, "nbf": 1.8446744073709552e19, "sluice": grant}),
        ),
        (
            "iat",
            serde_json::json!({"exp": later, "iat": [1], "sluice": grant}),
        ),
    ] {
        let bearer = format!("Bearer {}", signed(claims.clone()));
        let resp = get_with(&sluice, "/sensors/a/temp", &[("authorization", &bearer)]).await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{claims}");
        assert!(
            resp.text().contains("invalid token") && resp.text().contains(claim),
            "{claims}: {}",
            resp.text()
        );
    }
    let good = format!("Bearer {}", token(600, &["sensors/#"], &[]));
    let ok = get_with(&sluice, "/sensors/a/temp", &[("authorization", &good)]).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn invalid_grant_patterns_grant_nothing() {
    let sluice = start().await;
    // `sensors/#/x` is not a valid MQTT filter; it once granted all of `sensors/#`.
    let bad = format!(
        "Bearer {}",
        token(600, &["sensors/#/x", "sensors/+a"], &["sensors/#/x"])
    );
    for path in ["/sensors/a/temp", "/sensors/a/x"] {
        let resp = get_with(&sluice, path, &[("authorization", &bad)]).await;
        assert_eq!(
            resp.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            resp.text()
        );
    }
    let publish = raw_request(
        sluice.addr,
        "POST",
        "/sensors/a/x",
        &[("authorization", &bad)],
        "open",
    )
    .await;
    assert_eq!(publish.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_configured_audience_is_required_in_every_token() {
    let sluice = Sluice::start_opts(
        r#"
[auth]
jwt_secret_env = "TEST_JWT_SECRET"
audience = "dashboards"

[brokers.m]
type = "memory"

[[routes]]
path = "/s/{x}"
broker = "m"
topic = "s/{x}"
auth = true
"#,
        Options {
            env: vec![("TEST_JWT_SECRET".into(), SECRET.into())],
            ..Options::default()
        },
    )
    .await;
    let grant = serde_json::json!({"subscribe": ["s/+"]});
    let later = now() + 600;
    for (claims, status) in [
        (
            serde_json::json!({"exp": later, "sluice": grant}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            serde_json::json!({"exp": later, "aud": 7, "sluice": grant}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            serde_json::json!({"exp": later, "aud": "other", "sluice": grant}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            serde_json::json!({"exp": later, "aud": "dashboards", "sluice": grant}),
            StatusCode::OK,
        ),
        (
            serde_json::json!({"exp": later, "aud": ["x", "dashboards"], "sluice": grant}),
            StatusCode::OK,
        ),
    ] {
        let bearer = format!("Bearer {}", signed(claims.clone()));
        let resp = get_with(&sluice, "/s/a", &[("authorization", &bearer)]).await;
        assert_eq!(resp.status, status, "{claims}: {}", resp.text());
    }
}

#[test]
fn mint_token_refuses_absurd_lifetimes() {
    let dir = TempDir::new("mint");
    let config = dir.0.join("sluice.toml");
    std::fs::write(
        &config,
        "[auth]\njwt_secret_env = \"TEST_JWT_SECRET\"\n[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\n",
    )
    .expect("write config");
    for ttl in ["500000000000y", "2y", "0s"] {
        let out = std::process::Command::new(sluice_bin())
            .arg("--config")
            .arg(&config)
            .args(["--mint-token", "--subscribe", "#", "--ttl", ttl])
            .env("TEST_JWT_SECRET", SECRET)
            .output()
            .expect("run --mint-token");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{ttl}: {stderr}");
        assert!(out.stdout.is_empty(), "{ttl}: a token was printed");
        assert!(stderr.contains("1year"), "{ttl}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_memory_new_streams_and_publishes_get_503_and_the_rest_goes_on() {
    const MAX_MEMORY: u64 = 48 * 1024 * 1024;
    let config = format!(
        r#"
max_memory = {MAX_MEMORY}
heartbeat = "300ms"

[brokers.mem]
type = "memory"

[[routes]]
path = "/room/{{r}}"
broker = "mem"
topic = "room/{{r}}"
publish = true
replay = 5000
"#
    );
    let sluice = Sluice::start(&config).await;
    let addr = sluice.addr;
    assert!(
        sluice.rss_kib() * 1024 < MAX_MEMORY,
        "sluice starts below max_memory ({} KiB)",
        sluice.rss_kib()
    );
    let mut watcher = h1_stream(addr, "/room/a").await;
    watcher.opened().await;
    // Reads as the room fills (so its queue never overflows) until it has every accepted event, then
    // waits for a heartbeat: the stream is still open after them.
    let (accepted_tx, mut accepted_rx) = tokio::sync::oneshot::channel::<usize>();
    let watching = tokio::spawn(async move {
        let (mut seen, mut accepted) = (0usize, None);
        while accepted != Some(seen) {
            tokio::select! {
                _ = watcher.next_event() => seen += 1,
                count = &mut accepted_rx, if accepted.is_none() => {
                    accepted = Some(count.expect("the accepted count"));
                }
            }
        }
        let comments = watcher.comments;
        watcher.comments_at_least(comments + 1).await;
        (seen, watcher.ended)
    });
    // Fill the room's replay buffer (64 KiB events) until sluice refuses.
    let payload = bytes::Bytes::from("x".repeat(64 * 1024));
    let mut accepted = 0;
    let refused = within("a publish is refused past max_memory", async {
        loop {
            let resp = request(addr, "POST", "/room/a", payload.clone())
                .await
                .expect("publish request");
            if resp.status != StatusCode::ACCEPTED {
                return resp;
            }
            accepted += 1;
        }
    })
    .await;
    accepted_tx.send(accepted).expect("the watcher waits");
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert!(refused.header("retry-after").is_some());
    assert!(refused.text().contains("max_memory"), "{}", refused.text());
    let stream = raw_request(addr, "GET", "/room/b", &[], "").await;
    assert_eq!(stream.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(stream.header("retry-after").is_some());
    // Nothing else stops: the health check answers, the open stream got its events and is open.
    let health = get(addr, "/healthz").await.expect("healthz");
    assert_eq!(health.status, StatusCode::OK);
    let (seen, ended) = within("the watcher", watching).await.expect("watcher");
    assert!(
        seen == accepted && seen > 0 && !ended,
        "seen {seen} of {accepted}, ended {ended}"
    );
}

#[tokio::test]
async fn past_max_new_streams_per_second_clients_are_told_to_come_back_later() {
    let body = r#"max_new_streams_per_second = 3

[brokers.m]
type = "memory"

[[routes]]
path = "/room/{name}"
broker = "m"
topic = "room/{name}"
"#;
    let sluice = Sluice::start(body).await;
    // A full bucket: one second's worth gets in at once.
    let mut open = Vec::new();
    for n in 0..3 {
        let stream = h1_stream(sluice.addr, &format!("/room/{n}")).await;
        assert_eq!(stream.status, StatusCode::OK);
        open.push(stream);
    }
    // An EventSource (it asks for text/event-stream) gets a stream that ends at once with a retry:
    // it reconnects by itself then; an error status would end it for good.
    let mut refused = h1_stream(sluice.addr, "/room/late").await;
    assert_eq!(refused.status, StatusCode::OK);
    let events = refused.until_end().await;
    assert!(events.is_empty(), "{events:?}");
    let retry = refused.retry.expect("a retry:");
    assert!((1000..=60_000).contains(&retry), "retry: {retry}");
    // Another client gets 503 and when to come back.
    let plain = get(sluice.addr, "/room/late").await.expect("get");
    assert_eq!(plain.status, StatusCode::SERVICE_UNAVAILABLE);
    let after: u64 = plain
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after in seconds");
    assert!((1..=60).contains(&after), "retry-after: {after}");
    // Tokens come back at the rate: within a second or so a new stream gets in again (a live
    // stream is chunked; a refusal is a complete response with a length).
    let mut back = eventually("a stream admitted again", || async {
        let stream = h1_stream(sluice.addr, "/room/again").await;
        stream.header("content-length").is_none().then_some(stream)
    })
    .await;
    assert_eq!(back.status, StatusCode::OK);
    back.opened().await;
}
