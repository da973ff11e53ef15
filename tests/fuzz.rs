//! Property tests with thousands of arbitrary inputs: the route matcher and path-parameter checks, the
//! SSE encoder, the query and id parsers, topic grants and token checks. No input may panic, forge an
//! event or widen a subscription.

use proptest::prelude::*;
use sluice::auth::{query_param, AuthConfig, JwtKey};
use sluice::replay::{parse_memory_id, parse_sequence};
use sluice::route::{PathTemplate, TopicTemplate};
use sluice::sse::{encode_event, encode_event_with_id, BASE64_SUFFIX};
use sluice_bridge::TopicSyntax;

/// What a browser dispatches for a stream (the WHATWG parsing rules for `event`, `data` and `id`).
fn dispatch(stream: &str) -> Vec<(String, String, Option<String>)> {
    let mut events = Vec::new();
    let (mut event, mut data, mut id, mut has_data) = (String::new(), String::new(), None, false);
    let normalized = stream.replace("\r\n", "\n").replace('\r', "\n");
    for line in normalized.split('\n') {
        if line.is_empty() {
            if has_data {
                data.pop();
                let name = if event.is_empty() {
                    "message".to_owned()
                } else {
                    event.clone()
                };
                events.push((name, data.clone(), id.clone()));
            }
            event.clear();
            data.clear();
            has_data = false;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
                has_data = true;
            }
            "id" => id = Some(value.to_owned()),
            _ => {}
        }
    }
    events
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

    /// Any payload and any event name become exactly one event, with the payload intact.
    #[test]
    fn payloads_never_forge_events(payload in proptest::collection::vec(any::<u8>(), 0..256), name in "\\PC{0,12}", text in "[a-z\r\n:]{0,40}") {
        for data in [payload.clone(), text.clone().into_bytes()] {
            let frame = encode_event_with_id(Some(&name).filter(|n| !n.is_empty()).map(String::as_str), Some("1.2.3"), &data);
            let frame = String::from_utf8(frame.to_vec()).expect("frames are UTF-8");
            let events = dispatch(&frame);
            prop_assert_eq!(events.len(), 1, "{:?}", frame);
            let (event, received, id) = &events[0];
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
        let auth = AuthConfig {
            key: JwtKey::secret(b"secret"),
            cookie: "sluice_token".into(),
            query: "access_token".into(),
            audience: None,
            secret_env: None,
        };
        prop_assert!(auth.verify(&token).is_err());
        prop_assert!(auth.verify(&parts.join(".")).is_err());
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
