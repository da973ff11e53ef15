//! Property tests with thousands of arbitrary inputs: the route matcher and path-parameter checks, the
//! SSE encoder and the reference SSE parser, the query and id parsers, topic grants and token checks, and configuration values. No
//! input may panic, forge an event or widen a subscription; a token is accepted only when every claim
//! is well-formed; a config value is either usable at runtime or refused at its line.

use jsonwebtoken::{encode, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Value};
use sluice::auth::{AuthConfig, JwtKey, MAX_NUMERIC_DATE};
use sluice::config::{
    parse, DURATION_RANGE, MAX_MEMORY_RANGE, PUBLISH_BYTES_RANGE, REPLAY_BYTES_RANGE,
    SIMULATED_DEVICES_RANGE, STREAMS_PER_CONNECTION_RANGE,
};
use sluice::replay::{parse_memory_id, parse_sequence, Retention};
use sluice::route::{query_param, PathTemplate, TopicTemplate};
use sluice::sse::{encode_event, encode_event_with_id, Parser, BASE64_SUFFIX};
use sluice_bridge::TopicSyntax;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// mosquitto's rules for a topic (`mosquitto_validate_utf8` and the length prefix), written from the
/// broker's documentation rather than from sluice's code: well-formed UTF-8 (no overlong forms, no
/// surrogates), no U+0000, no control characters U+0001 to U+001F and U+007F to U+009F, no
/// noncharacters (U+FDD0 to U+FDEF, U+xFFFE and U+xFFFF), at most 65,535 bytes.
fn mosquitto_accepts(topic: &[u8]) -> bool {
    if topic.is_empty() || topic.len() > 65_535 {
        return false;
    }
    let mut i = 0;
    while i < topic.len() {
        let b = topic[i];
        let (len, min, mut cp) = match b {
            0x00..=0x7f => (1, 0, u32::from(b)),
            0xc0..=0xdf => (2, 0x80, u32::from(b & 0x1f)),
            0xe0..=0xef => (3, 0x800, u32::from(b & 0x0f)),
            0xf0..=0xf7 => (4, 0x10000, u32::from(b & 0x07)),
            _ => return false,
        };
        if i + len > topic.len() {
            return false;
        }
        for &c in &topic[i + 1..i + len] {
            if c & 0xc0 != 0x80 {
                return false;
            }
            cp = (cp << 6) | u32::from(c & 0x3f);
        }
        if cp < min || cp > 0x10ffff || (0xd800..=0xdfff).contains(&cp) {
            return false;
        }
        if cp == 0 || cp <= 0x1f || (0x7f..=0x9f).contains(&cp) {
            return false;
        }
        if (0xfdd0..=0xfdef).contains(&cp) || cp & 0xfffe == 0xfffe {
            return false;
        }
        i += len;
    }
    true
}

/// What nats-server's protocol parser takes as one subject argument: no argument separators (space,
/// tab) or line ends, and, to subscribe, no empty tokens.
fn nats_server_accepts(subject: &[u8]) -> bool {
    !subject.is_empty()
        && !subject
            .iter()
            .any(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        && !subject.starts_with(b".")
        && !subject.ends_with(b".")
        && !subject.windows(2).any(|w| w == b"..")
}

/// Text with a good share of what brokers refuse: noncharacters, C0 and C1 controls, separators and
/// wildcards of both brokers.
fn hostile_text() -> impl Strategy<Value = String> {
    let special = proptest::sample::select(vec![
        '\u{FFFE}',
        '\u{FFFF}',
        '\u{FDD0}',
        '\u{FDEF}',
        '\u{1FFFE}',
        '\u{10FFFF}',
        '\u{85}',
        '\u{9F}',
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
        '\u{A0}',
        'é',
        '\u{2028}',
    ]);
    proptest::collection::vec(
        prop_oneof![3 => any::<char>(), 2 => special, 3 => "[a-z0-9]"
        .prop_map(|s| s.chars().next().unwrap_or('a'))],
        0..24,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn auth(audience: Option<&str>) -> AuthConfig {
    AuthConfig {
        keys: vec![JwtKey::secret(b"secret")],
        cookie: "sluice_token".into(),
        query: "access_token".into(),
        audience: audience.map(str::to_owned),
        secret_env: None,
    }
}

fn signed(claims: &Value) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(b"secret"),
    )
    .expect("encode")
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as f64
}

/// What a hostile or broken issuer might put in a time claim (`None`: the claim is left out). Values
/// near now are included so that well-formed tokens are accepted often enough to matter.
fn time_claim() -> impl Strategy<Value = Option<Value>> {
    let now = now() as i64;
    prop_oneof![
        4 => Just(None),
        6 => (-100_000i64..100_000).prop_map(move |d| Some(json!(now + d))),
        2 => (-100_000f64..100_000.0).prop_map(move |d| Some(json!(now as f64 + d))),
        1 => any::<u64>().prop_map(|n| Some(json!(n))),
        1 => any::<i64>().prop_map(|n| Some(json!(n))),
        1 => (0u32..64).prop_map(|p| Some(json!(1u64 << p))),
        1 => (MAX_NUMERIC_DATE - 2..MAX_NUMERIC_DATE + 2).prop_map(|n| Some(json!(n))),
        1 => any::<f64>().prop_map(|f| Some(json!(f))),
        1 => Just(Some(json!(1.8446744073709552e19))),
        1 => "\\PC{0,20}".prop_map(|t| Some(json!(t))),
        1 => Just(Some(Value::Null)),
        1 => any::<bool>().prop_map(|b| Some(json!(b))),
        1 => Just(Some(json!([now + 60]))),
        1 => Just(Some(json!({"at": now + 60}))),
    ]
}

/// The model: is a time claim a NumericDate in range, and what is it?
fn numeric_date(value: &Option<Value>) -> Result<Option<f64>, ()> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(secs) if (0.0..=MAX_NUMERIC_DATE as f64).contains(&secs) => Ok(Some(secs)),
            _ => Err(()),
        },
        Some(_) => Err(()),
    }
}

/// The model of a token sluice must accept at time `now` (with 5 s of skew), audience "dash".
fn acceptable(
    exp: &Option<Value>,
    nbf: &Option<Value>,
    iat: &Option<Value>,
    aud: &Option<Value>,
    now: f64,
) -> bool {
    let (Ok(Some(exp)), Ok(nbf), Ok(_)) = (numeric_date(exp), numeric_date(nbf), numeric_date(iat))
    else {
        return false;
    };
    let aud_ok = match aud {
        Some(Value::String(a)) => a == "dash",
        Some(Value::Array(list)) => {
            list.iter().any(|a| a == "dash") && list.iter().all(Value::is_string)
        }
        _ => false,
    };
    exp + 5.0 >= now && nbf.is_none_or(|nbf| nbf <= now + 5.0) && aud_ok
}

/// A duration as someone might write one: plausible, at the bounds, absurd, or not a duration.
fn duration_text() -> impl Strategy<Value = String> {
    let units = || {
        proptest::sample::select(vec![
            "ns", "us", "ms", "s", "m", "h", "d", "day", "days", "w", "M", "y",
        ])
    };
    prop_oneof![
        (0u64..5000, units()).prop_map(|(n, unit)| format!("{n}{unit}")),
        (any::<u64>(), units()).prop_map(|(n, unit)| format!("{n}{unit}")),
        (0u64..100, units(), 0u64..100, units()).prop_map(|(a, u, b, v)| format!("{a}{u} {b}{v}")),
        proptest::sample::select(vec![
            "0",
            "0s",
            "1ms",
            "999us",
            "1day",
            "24h",
            "1day 1ms",
            "86401s",
            "300000000000y",
            "600000000000y",
            "",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,12}",
    ]
}

/// A memory route (line 5 on) and a simulator (line 12 on) after two lines of `[server]`.
fn config_text(server_line: &str, route_line: &str, simulator_line: &str) -> String {
    format!(
        "[server]\n{server_line}\n[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\nreplay = 1\n{route_line}\n[simulator]\nbroker = \"m\"\n{simulator_line}\n"
    )
}

/// True when a duration survives what sluice does with it: deadlines (now + 3x) and `retry:` in ms.
fn usable(d: Duration) -> bool {
    Instant::now().checked_add(d.saturating_mul(3)).is_some()
        && d.as_millis()
            .checked_mul(3)
            .is_some_and(|ms| u64::try_from(ms).is_ok())
}

/// True when `[::]:P` also takes IPv4 port P here (`net.ipv6.bindv6only = 0`, Linux's default).
fn dual_stack() -> bool {
    let Ok(v6) = TcpListener::bind("[::]:0") else {
        return false;
    };
    v6.local_addr()
        .is_ok_and(|a| TcpListener::bind(("0.0.0.0", a.port())).is_err())
}

/// Two ports free on every address (their holders are dropped before they are used).
fn free_ports() -> [u16; 2] {
    let take = || {
        TcpListener::bind("[::]:0")
            .or_else(|_| TcpListener::bind("0.0.0.0:0"))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    };
    [take(), take()]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 4000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the path, a match fills the topic with exactly one plain level per parameter.
    #[test]
    fn paths_never_widen_an_mqtt_subscription(path in "\\PC*", raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        let template = PathTemplate::parse("/sensors/{site}/{sensor}").expect("path");
        let topic = TopicTemplate::parse("sensors/{site}/{sensor}/reading", TopicSyntax::Mqtt, &["site", "sensor"]).expect("topic");
        let encoded: String = raw.iter().map(|b| format!("%{b:02X}")).collect();
        for candidate in [path.clone(), format!("/sensors/{path}/x"), format!("/sensors/{encoded}/x")] {
            if let Some(Ok(params)) = template.matches(&candidate, TopicSyntax::Mqtt) {
                let filled = topic.fill(&params);
                prop_assert!(!TopicSyntax::Mqtt.has_wildcards(&filled), "{filled:?}");
                prop_assert_eq!(filled.split('/').count(), 4, "{:?}", filled);
                prop_assert!(TopicSyntax::Mqtt.check_topic(&filled).is_ok());
            }
        }
    }

    #[test]
    fn paths_never_widen_a_nats_subscription(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        let template = PathTemplate::parse("/alerts/{site}").expect("path");
        let topic = TopicTemplate::parse("alerts.{site}", TopicSyntax::Nats, &["site"]).expect("topic");
        let encoded: String = raw.iter().map(|b| format!("%{b:02X}")).collect();
        let plain = String::from_utf8_lossy(&raw).replace('/', "");
        for candidate in [format!("/alerts/{encoded}"), format!("/alerts/{plain}")] {
            if let Some(Ok(params)) = template.matches(&candidate, TopicSyntax::Nats) {
                let filled = topic.fill(&params);
                prop_assert!(!TopicSyntax::Nats.has_wildcards(&filled), "{filled:?}");
                prop_assert_eq!(filled.split('.').count(), 2, "{:?}", filled);
                prop_assert!(TopicSyntax::Nats.check_topic(&filled).is_ok());
            }
        }
    }

    /// Checked against mosquitto's own rules: every parameter sluice accepts makes a topic mosquitto
    /// accepts (so one request can never make it drop sluice's connection), and every parameter
    /// without MQTT separators or wildcards that mosquitto would take is accepted.
    #[test]
    fn mqtt_parameters_follow_mosquittos_rules(text in hostile_text(), raw in proptest::collection::vec(any::<u8>(), 0..16)) {
        let template = PathTemplate::parse("/mq/{site}").expect("path");
        let topic = TopicTemplate::parse("sensors/{site}/temp", TopicSyntax::Mqtt, &["site"]).expect("topic");
        let mut bytes = text.clone().into_bytes();
        bytes.extend_from_slice(&raw);
        let encoded: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
        match template.matches(&format!("/mq/{encoded}"), TopicSyntax::Mqtt) {
            Some(Ok(params)) => {
                let filled = topic.fill(&params);
                prop_assert!(mosquitto_accepts(filled.as_bytes()), "accepted {filled:?}");
                prop_assert!(TopicSyntax::Mqtt.check_topic(&filled).is_ok());
            }
            Some(Err(_)) => {
                let candidate = [b"sensors/".as_slice(), &bytes, b"/temp"].concat();
                let separator = bytes.iter().any(|b| matches!(b, b'/' | b'+' | b'#'));
                prop_assert!(
                    separator || bytes.is_empty() || !mosquitto_accepts(&candidate),
                    "refused {:?}, which mosquitto takes", String::from_utf8_lossy(&bytes)
                );
            }
            None => prop_assert!(false, "the route must match"),
        }
    }

    /// Checked against nats-server's protocol parser: every parameter sluice accepts makes one
    /// well-formed subject argument, and `?topic=` filters likewise.
    #[test]
    fn nats_parameters_and_filters_follow_the_servers_parser(text in hostile_text()) {
        let template = PathTemplate::parse("/alerts/{site}").expect("path");
        let topic = TopicTemplate::parse("alerts.{site}", TopicSyntax::Nats, &["site"]).expect("topic");
        let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
        if let Some(Ok(params)) = template.matches(&format!("/alerts/{encoded}"), TopicSyntax::Nats) {
            let filled = topic.fill(&params);
            prop_assert!(nats_server_accepts(filled.as_bytes()), "accepted {filled:?}");
        }
        let filter = format!("alerts.{text}");
        if TopicSyntax::Nats.check_filter(&filter).is_ok() {
            prop_assert!(nats_server_accepts(filter.as_bytes()), "accepted filter {filter:?}");
        }
        if TopicSyntax::Mqtt.check_filter(&text).is_ok() {
            prop_assert!(mosquitto_accepts(text.as_bytes()), "accepted filter {text:?}");
        }
    }

    /// Any payload and any event name become exactly one event, with the payload intact.
    #[test]
    fn payloads_never_forge_events(payload in proptest::collection::vec(any::<u8>(), 0..256), name in "\\PC{0,12}", text in "[a-z\r\n:]{0,40}") {
        for data in [payload.clone(), text.clone().into_bytes()] {
            let frame = encode_event_with_id(Some(&name).filter(|n| !n.is_empty()).map(String::as_str), Some("1.2.3"), &data);
            let frame = String::from_utf8(frame.to_vec()).expect("frames are UTF-8");
            let events = sluice::sse::parse(&frame);
            prop_assert_eq!(events.len(), 1, "{:?}", frame);
            let sluice::sse::parser::Event { event, data: received, id } = &events[0];
            prop_assert_eq!(id.as_deref(), Some("1.2.3"));
            prop_assert!(!event.contains(['\r', '\n']));
            match std::str::from_utf8(&data) {
                Ok(text) => {
                    let expected = text.replace("\r\n", "\n").replace('\r', "\n");
                    prop_assert_eq!(received, &expected);
                }
                Err(_) => {
                    prop_assert!(event.ends_with(BASE64_SUFFIX));
                    use base64::Engine;
                    let decoded = base64::engine::general_purpose::STANDARD.decode(received).expect("base64");
                    prop_assert_eq!(decoded, data.clone());
                }
            }
        }
        let _ = encode_event(None, &payload);
    }

    /// A stream of frames (events, heartbeats, gaps, a `retry:`) reads the same however the network
    /// cuts it: the reference parser that the black-box tests feed chunk by chunk dispatches what it
    /// dispatches for the whole stream, which is every event, in order.
    #[test]
    fn streams_read_the_same_whatever_their_chunks(
        payloads in proptest::collection::vec("[a-z\r\n:é]{0,12}", 1..8),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
    ) {
        let mut stream = sluice::sse::preamble(Duration::from_millis(100)).to_vec();
        for (n, payload) in payloads.iter().enumerate() {
            let id = n.to_string();
            stream.extend_from_slice(&encode_event_with_id(Some("e"), Some(&id), payload.as_bytes()));
            stream.extend_from_slice(&sluice::sse::heartbeat());
        }
        stream.extend_from_slice(&sluice::sse::gap(sluice::sse::GapReason::Overflow, Some(3)));
        let whole = sluice::sse::parse(std::str::from_utf8(&stream).expect("UTF-8"));
        prop_assert_eq!(whole.len(), payloads.len() + 1);
        for (n, (event, payload)) in whole.iter().zip(&payloads).enumerate() {
            prop_assert_eq!(&event.data, &payload.replace("\r\n", "\n").replace('\r', "\n"));
            prop_assert_eq!(event.id.clone(), Some(n.to_string()));
        }
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        at.sort_unstable();
        let mut parser = Parser::new();
        let mut from = 0;
        for to in at.into_iter().chain([stream.len()]) {
            parser.feed(&stream[from..to]);
            from = to;
        }
        let chunked: Vec<_> = std::iter::from_fn(|| parser.next_event()).collect();
        prop_assert_eq!(chunked, whole);
        prop_assert_eq!(parser.comments(), payloads.len() + 1);
        prop_assert!((100..150).contains(&parser.retry().unwrap_or_default()));
        prop_assert!(!parser.invalid_utf8());
    }

    /// Parsers of client input never panic, and ids are only read from what sluice could have made.
    #[test]
    fn client_input_parsers_never_panic(input in "\\PC{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let lossy = String::from_utf8_lossy(&bytes);
        for text in [input.as_str(), lossy.as_ref()] {
            let _ = parse_memory_id(text);
            if let Some(n) = parse_sequence(text) {
                prop_assert!(text.bytes().all(|b| b.is_ascii_digit()));
                prop_assert_eq!(text.parse::<u64>().ok(), Some(n));
            }
            let _: Vec<_> = query_param(text, "topic").collect();
            let _: Vec<_> = query_param(text, "last-event-id").collect();
        }
    }

    /// Arbitrary tokens are refused, never accepted and never a panic.
    #[test]
    fn arbitrary_tokens_are_refused(token in "\\PC{0,300}", parts in proptest::collection::vec("[A-Za-z0-9_-]{0,40}", 3)) {
        let auth = auth(None);
        prop_assert!(auth.verify(&token).is_err());
        prop_assert!(auth.verify(&parts.join(".")).is_err());
    }

    /// Signed tokens with extreme or ill-typed time claims never panic, and are accepted exactly when
    /// every claim is well-formed and current (the audience "dash" is configured).
    #[test]
    fn signed_tokens_are_accepted_only_when_well_formed(
        exp in time_claim(),
        nbf in time_claim(),
        iat in time_claim(),
        aud in prop_oneof![
            Just(None),
            Just(Some(json!("dash"))),
            Just(Some(json!("other"))),
            Just(Some(json!(["x", "dash"]))),
            Just(Some(json!([]))),
            Just(Some(json!(5))),
            Just(Some(Value::Null)),
        ],
    ) {
        let mut claims = serde_json::Map::new();
        for (name, value) in [("exp", &exp), ("nbf", &nbf), ("iat", &iat), ("aud", &aud)] {
            if let Some(value) = value {
                claims.insert(name.into(), value.clone());
            }
        }
        let token = signed(&Value::Object(claims));
        let before = now();
        let verdict = auth(Some("dash")).verify(&token);
        let after = now();
        let (then, later) = (
            acceptable(&exp, &nbf, &iat, &aud, before),
            acceptable(&exp, &nbf, &iat, &aud, after),
        );
        // A second may tick during the call: only judge when the model agrees at both ends.
        if then == later {
            prop_assert_eq!(verdict.is_ok(), then, "{:?}", verdict.err().map(|e| e.to_string()));
        }
        if let Ok(grant) = verdict {
            // A grant never outlives what its exp says.
            let exp = numeric_date(&exp).ok().flatten().unwrap_or_default();
            prop_assert!(grant.remaining().as_secs_f64() <= exp - before + 1.0);
        }
    }

    /// A pattern in a token grants something only when it is a valid filter that covers the topic.
    #[test]
    fn only_valid_patterns_grant(pattern in "[ab+#/.*>]{0,8}", filter in "[ab+#/.*>]{1,8}") {
        let claims = json!({"exp": now() + 600.0, "sluice": {"subscribe": [&pattern], "publish": [&pattern]}});
        let grant = auth(None).verify(&signed(&claims)).expect("a valid token");
        for syntax in [TopicSyntax::Mqtt, TopicSyntax::Nats] {
            for allowed in [grant.may_subscribe(syntax, &filter), grant.may_publish(syntax, &filter)] {
                if allowed {
                    prop_assert!(syntax.check_filter(&pattern).is_ok(), "{pattern:?} granted {filter:?}");
                    prop_assert!(syntax.covers(&pattern, &filter));
                }
            }
        }
    }

    /// Every duration key is usable at runtime and within its bounds once accepted; refused, the error
    /// names its line.
    #[test]
    fn durations_are_usable_or_refused_at_their_line(
        key in proptest::sample::select(vec!["heartbeat", "retry", "write_timeout", "request_timeout", "linger", "interval"]),
        value in duration_text(),
    ) {
        let line = format!("{key} = {value:?}");
        let (text, at_line) = match key {
            "linger" => (config_text("", &line, ""), 10),
            "interval" => (config_text("", "", &line), 13),
            _ => (config_text(&line, "", ""), 2),
        };
        match parse("F", &text, Path::new(".")) {
            Ok(config) => {
                let server = &config.server;
                let simulator = config.simulator.as_ref().map(|s| s.interval);
                let parsed = match key {
                    "heartbeat" => server.heartbeat,
                    "retry" => server.retry,
                    "write_timeout" => server.write_timeout,
                    "request_timeout" => server.request_timeout,
                    "interval" => simulator.unwrap_or_default(),
                    _ => match config.routes[0].retention {
                        Retention::Replay { linger, .. } => linger,
                        ref other => panic!("{other:?}"),
                    },
                };
                prop_assert!(usable(parsed), "{line} -> {parsed:?}");
                let zero_allowed = key == "linger" && parsed.is_zero();
                prop_assert!(zero_allowed || DURATION_RANGE.contains(&parsed), "{line} -> {parsed:?}");
            }
            Err(e) => prop_assert_eq!(e.line, at_line, "{}", e),
        }
    }

    /// Every bounded number key is within its bounds once accepted; refused, the error names its line.
    #[test]
    fn numbers_are_in_bounds_or_refused_at_their_line(
        key in proptest::sample::select(vec![
            "max_publish_bytes",
            "max_streams_per_connection",
            "devices",
            "max_memory",
            "replay_bytes",
        ]),
        value in prop_oneof![
            any::<i64>(),
            -2i64..3,
            1_048_570i64..1_048_580,
            67_108_860i64..67_108_870,
            99_995i64..100_005,
            995i64..1005,
            65_530i64..65_540,
            16_777_210i64..16_777_220,
            68_719_476_730i64..68_719_476_740,
            17_592_186_044_410i64..17_592_186_044_420,
            Just(i64::from(u32::MAX) + 1),
        ],
    ) {
        let line = format!("{key} = {value}");
        let (text, at_line) = match key {
            "devices" => (config_text("", "", &line), 13),
            "replay_bytes" => (config_text("", &line, ""), 10),
            _ => (config_text(&line, "", ""), 2),
        };
        match parse("F", &text, Path::new(".")) {
            Ok(config) => {
                let in_bounds = match key {
                    "max_publish_bytes" => PUBLISH_BYTES_RANGE.contains(&config.server.max_publish_bytes),
                    "max_streams_per_connection" => {
                        STREAMS_PER_CONNECTION_RANGE.contains(&config.server.max_streams_per_connection)
                    }
                    "max_memory" => config
                        .server
                        .max_memory
                        .is_some_and(|m| MAX_MEMORY_RANGE.contains(&m)),
                    "replay_bytes" => matches!(
                        config.routes[0].retention,
                        Retention::Replay { bytes, .. } if REPLAY_BYTES_RANGE.contains(&bytes)
                    ),
                    _ => config
                        .simulator
                        .is_some_and(|s| SIMULATED_DEVICES_RANGE.contains(&s.devices)),
                };
                prop_assert!(in_bounds, "{line}");
            }
            Err(e) => prop_assert_eq!(e.line, at_line, "{}", e),
        }
    }

    /// Listen addresses that `--check` accepts can all be bound at once, as pingora binds them; refused
    /// ones cannot, and the error names the line. (An address this machine lacks, such as `::1` without
    /// IPv6, is left out.)
    #[test]
    fn accepted_listen_addresses_can_all_be_bound(
        picks in proptest::collection::vec((0usize..6, 0usize..2), 1..4),
    ) {
        let ips = ["127.0.0.1", "0.0.0.0", "[::]", "[::1]", "[::ffff:127.0.0.1]", "127.0.0.2"];
        let ports = free_ports();
        let addrs: Vec<SocketAddr> = picks
            .iter()
            .filter_map(|(ip, port)| format!("{}:{}", ips[*ip], ports[*port]).parse().ok())
            .filter(|addr| TcpListener::bind(addr).is_ok())
            .collect();
        prop_assume!(!addrs.is_empty());
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        let text = config_text(&format!("listen = [{}]", list.join(", ")), "", "");
        let accepted = parse("F", &text, Path::new("."));
        // Held together, as sluice checks them before it starts (std binds with SO_REUSEADDR).
        let mut held = Vec::new();
        let mut all_bound = true;
        for addr in &addrs {
            match TcpListener::bind(addr) {
                Ok(listener) => held.push(listener),
                Err(_) => all_bound = false,
            }
        }
        drop(held);
        match accepted {
            Ok(_) => prop_assert!(all_bound, "accepted but not bindable together: {list:?}"),
            Err(e) => {
                prop_assert_eq!(e.line, 2, "{}", e);
                // The check assumes a dual-stack [::] (Linux's default); a v6-only host could bind more.
                prop_assert!(!all_bound || !dual_stack(), "bindable together but refused: {list:?}: {e}");
            }
        }
    }

    /// A grant that covers a filter matches every topic the filter matches.
    #[test]
    fn covering_is_sound(pattern in "[ab+#]{1}(/[ab+#]){0,3}", filter in "[ab+#]{1}(/[ab+#]){0,3}", topic in "[ab]{1}(/[ab]){0,3}") {
        let mqtt = TopicSyntax::Mqtt;
        if mqtt.check_filter(&pattern).is_ok() && mqtt.check_filter(&filter).is_ok()
            && mqtt.covers(&pattern, &filter) && mqtt.matches(&filter, &topic)
        {
            prop_assert!(mqtt.matches(&pattern, &topic), "{pattern} covers {filter} but not {topic}");
        }
    }
}
