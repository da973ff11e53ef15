//! Validates `[[routes]]` into [`Route`]s: path, topic or topics, event name, queue, retention,
//! compression.

use super::raw::{RawCompress, RawRoute};
use super::values::{bounded, optional_duration, within};
use super::{
    Broker, BrokerKind, ConfigError, Locator, BUFFER_RANGE, DEFAULT_BUFFER, DEFAULT_LINGER,
    DEFAULT_MAX_TOPICS, DEFAULT_OVERFLOW, DEFAULT_REPLAY, DEFAULT_REPLAY_BYTES,
    MAX_JETSTREAM_NAME_BYTES, MAX_TOPICS_RANGE, REPLAY_BYTES_RANGE, REPLAY_RANGE,
};
use crate::compress::Encoding;
use crate::replay::Retention;
use crate::route::{PathTemplate, TopicTemplate};
use crate::sse::EventName;
use crate::stream::Overflow;
use sluice_bridge::TopicSyntax;
use std::time::Duration;
use toml::Spanned;

/// Where a route's topics come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topics {
    /// One topic, from the path parameters (`topic = "..."`).
    Template(TopicTemplate),
    /// Repeated `?topic=` query parameters, each covered by one of `allowed` (`topics = [...]`).
    Query { allowed: Vec<String>, max: usize },
}

/// One `[[routes]]` entry, validated.
///
/// Two routes compare equal iff they serve a request the same way: the same path, topic or topics,
/// event name, queue, publishing, auth and retention, on the same broker index. What a route refers
/// to is compared apart: `broker` indexes `Config::brokers` (so an equal route of another
/// configuration behaves the same only if the brokers at those indices are equal too), `auth = true`
/// uses `Config::auth`, and which route answers a path depends on its place in the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub path: PathTemplate,
    /// Index into `Config::brokers`.
    pub broker: usize,
    pub syntax: TopicSyntax,
    pub topic: Topics,
    /// Events are sent as `{"topic": ..., "data": ...}` JSON.
    pub envelope: bool,
    /// A token is required, and its `sluice` claim must grant the topics.
    pub auth: bool,
    pub event: Option<EventName>,
    pub buffer: usize,
    pub overflow: Overflow,
    pub publish: bool,
    pub retention: Retention,
    /// MQTT: each stream starts with the current (retained) value of each topic, marked `.retained`.
    pub retained: bool,
    /// The encodings a stream may be compressed with (none: never compressed).
    pub compress: Vec<Encoding>,
    /// `max_rate`, as the interval between two events of one concrete topic on one stream; what
    /// comes in between is conflated (the newest wins).
    pub max_rate: Option<Duration>,
}

/// Every `[[routes]]`, in file order (the order they are matched in). `has_auth`: the file has an
/// `[auth]` section, which `auth = true` needs.
pub(super) fn validate(
    at: &Locator,
    raw: Vec<RawRoute>,
    brokers: &[Broker],
    has_auth: bool,
) -> Result<Vec<Route>, ConfigError> {
    let mut routes: Vec<Route> = Vec::new();
    for route in raw {
        let span = route.path.span();
        if let Some(a) = route.auth.as_ref().filter(|a| *a.get_ref() && !has_auth) {
            return Err(at.error(
                a.span(),
                "auth = true needs an [auth] section (jwt_secret_env or jwt_public_key)",
            ));
        }
        let route = validate_route(at, route, brokers)?;
        if routes
            .iter()
            .any(|r| r.path.as_str() == route.path.as_str())
        {
            return Err(at.error(
                span,
                format!("duplicate route path {:?}", route.path.as_str()),
            ));
        }
        routes.push(route);
    }
    if routes.is_empty() {
        return Err(at.error(0..0, "no [[routes]]: nothing to serve"));
    }
    Ok(routes)
}

fn validate_route(at: &Locator, raw: RawRoute, brokers: &[Broker]) -> Result<Route, ConfigError> {
    let path = PathTemplate::parse(raw.path.get_ref()).map_err(|e| at.error(raw.path.span(), e))?;
    let Some(broker) = brokers.iter().position(|b| b.name == *raw.broker.get_ref()) else {
        let known: Vec<&str> = brokers.iter().map(|b| b.name.as_str()).collect();
        return Err(at.error(
            raw.broker.span(),
            format!(
                "no broker named {:?} (defined: {})",
                raw.broker.get_ref(),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ));
    };
    let syntax = brokers[broker].kind.syntax();
    let params: Vec<&str> = path.params().collect();
    let topic = match (&raw.topic, &raw.topics) {
        (Some(topic), None) => {
            if let Some(m) = &raw.max_topics {
                return Err(at.error(m.span(), "max_topics is for routes with topics = [...]"));
            }
            Topics::Template(
                TopicTemplate::parse(topic.get_ref(), syntax, &params)
                    .map_err(|e| at.error(topic.span(), e))?,
            )
        }
        (None, Some(topics)) => {
            if topics.get_ref().is_empty() {
                return Err(at.error(topics.span(), "topics needs at least one pattern"));
            }
            for pattern in topics.get_ref() {
                syntax.check_filter(pattern).map_err(|e| {
                    at.error(
                        topics.span(),
                        format!("invalid topic pattern {pattern:?}: {e}"),
                    )
                })?;
            }
            let max = bounded(
                at,
                "max_topics",
                raw.max_topics.as_ref(),
                DEFAULT_MAX_TOPICS,
                MAX_TOPICS_RANGE,
            )?;
            let resumes =
                raw.replay.as_ref().is_some_and(|r| *r.get_ref() > 0) || raw.jetstream.is_some();
            if resumes {
                return Err(at.error(
                    topics.span(),
                    "replay and jetstream are not supported with topics = [...] yet: use one wildcard topic",
                ));
            }
            if raw.publish == Some(true) {
                return Err(at.error(topics.span(), "publish = true needs one topic, not topics"));
            }
            Topics::Query {
                allowed: topics.get_ref().clone(),
                max,
            }
        }
        (Some(topic), Some(_)) => {
            return Err(at.error(topic.span(), "set topic or topics, not both"))
        }
        (None, None) => {
            return Err(at.error(
                raw.path.span(),
                "a route needs topic = \"...\" or topics = [\"...\"]",
            ))
        }
    };
    let event = match &raw.event {
        None => None,
        Some(e) => Some(EventName::parse(e.get_ref()).map_err(|msg| at.error(e.span(), msg))?),
    };
    let buffer = within(
        at,
        raw.buffer.as_ref(),
        DEFAULT_BUFFER,
        &BUFFER_RANGE,
        || {
            format!(
                "buffer must be between {} and {} events",
                BUFFER_RANGE.start(),
                BUFFER_RANGE.end()
            )
        },
    )?;
    let overflow = match raw
        .overflow
        .as_ref()
        .map(|o| (o.get_ref().as_str(), o.span()))
    {
        None => DEFAULT_OVERFLOW,
        Some(("disconnect", _)) => Overflow::Disconnect,
        Some(("drop-oldest", _)) => Overflow::DropOldest,
        Some((other, span)) => {
            return Err(at.error(
                span,
                format!(
                    "unknown overflow policy {other:?}: expected \"disconnect\" or \"drop-oldest\""
                ),
            ))
        }
    };
    let publish = raw.publish.unwrap_or(false);
    if let (true, BrokerKind::Sse(_)) = (publish, &brokers[broker].kind) {
        return Err(at.error(
            raw.broker.span(),
            "publish = true is not possible on an sse broker: it reads an origin's streams",
        ));
    }
    if let (true, Topics::Template(template), Some(span)) =
        (publish, &topic, raw.topic.as_ref().map(Spanned::span))
    {
        if syntax.has_wildcards(&template.fill(&[])) {
            return Err(at.error(span, "publish = true needs a topic without wildcards"));
        }
    }
    // A multi-topic stream names each event's topic unless it uses the JSON envelope.
    let envelope = raw.envelope.unwrap_or(false);
    let event = match (event, &topic) {
        (None, Topics::Query { .. }) if !envelope => Some(EventName::topic()),
        (event, _) => event,
    };
    let retention = retention(at, &raw, &brokers[broker])?;
    let retained = match &raw.retained {
        Some(r) if *r.get_ref() && !matches!(brokers[broker].kind, BrokerKind::Mqtt { .. }) => {
            return Err(at.error(r.span(), "retained = true is for mqtt brokers only"))
        }
        Some(r) => *r.get_ref(),
        None => false,
    };
    let compress = compress(at, raw.compress.as_ref())?;
    let max_rate = max_rate(at, raw.max_rate.as_ref(), raw.conflate.as_ref())?;
    Ok(Route {
        compress,
        max_rate,
        path,
        broker,
        syntax,
        topic,
        envelope,
        auth: raw.auth.is_some_and(|a| a.into_inner()),
        event,
        buffer,
        overflow,
        publish,
        retention,
        retained,
    })
}

/// `max_rate = "N/s"` or `"N/min"` (1 to 1,000 per second), with `conflate = "latest"` (the only
/// policy, and the default): the interval between two events of a topic on a stream.
fn max_rate(
    at: &Locator,
    rate: Option<&Spanned<String>>,
    conflate: Option<&Spanned<String>>,
) -> Result<Option<Duration>, ConfigError> {
    if let Some(policy) = conflate {
        if rate.is_none() {
            return Err(at.error(policy.span(), "conflate needs max_rate"));
        }
        if policy.get_ref() != "latest" {
            return Err(at.error(
                policy.span(),
                format!(
                    "unknown conflate policy {:?}: expected \"latest\"",
                    policy.get_ref()
                ),
            ));
        }
    }
    let Some(rate) = rate else {
        return Ok(None);
    };
    let refuse = || {
        at.error(
            rate.span(),
            format!(
                "max_rate {:?} is not a rate from 1/min to 1000/s, e.g. \"4/s\" or \"30/min\"",
                rate.get_ref()
            ),
        )
    };
    let (count, per) = rate.get_ref().split_once('/').ok_or_else(refuse)?;
    let count: u32 = count.trim().parse().map_err(|_| refuse())?;
    let per = match per.trim() {
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        _ => return Err(refuse()),
    };
    let interval = per / count.max(1);
    if count == 0 || interval < Duration::from_millis(1) {
        return Err(refuse());
    }
    Ok(Some(interval))
}

/// `compress`: `true` offers every encoding, a list offers those named.
fn compress(
    at: &Locator,
    raw: Option<&Spanned<RawCompress>>,
) -> Result<Vec<Encoding>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    match raw.get_ref() {
        RawCompress::All(true) => Ok(Encoding::ALL.to_vec()),
        RawCompress::All(false) => Ok(Vec::new()),
        RawCompress::Some(names) => {
            let mut offered = Vec::new();
            for name in names {
                let encoding = Encoding::from_token(name).ok_or_else(|| {
                    at.error(
                        raw.span(),
                        format!("unknown encoding {name:?}: expected \"gzip\", \"br\" or \"zstd\""),
                    )
                })?;
                if !offered.contains(&encoding) {
                    offered.push(encoding);
                }
            }
            Ok(offered)
        }
    }
}

/// `replay`, `replay_bytes` and `linger` (memory replay), or `jetstream` (the broker's history).
fn retention(at: &Locator, raw: &RawRoute, broker: &Broker) -> Result<Retention, ConfigError> {
    let replay = within(
        at,
        raw.replay.as_ref(),
        DEFAULT_REPLAY,
        &REPLAY_RANGE,
        || {
            format!(
                "replay must be between {} (off) and {} events",
                REPLAY_RANGE.start(),
                REPLAY_RANGE.end()
            )
        },
    )?;
    if let Some(stream) = &raw.jetstream {
        if !matches!(broker.kind, BrokerKind::Nats { .. }) {
            return Err(at.error(stream.span(), "jetstream is for nats brokers only"));
        }
        let name = stream.get_ref();
        if name.len() > MAX_JETSTREAM_NAME_BYTES {
            return Err(at.error(
                stream.span(),
                format!("a JetStream stream name is at most {MAX_JETSTREAM_NAME_BYTES} bytes"),
            ));
        }
        if name.is_empty()
            || name.contains(|c: char| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
        {
            return Err(at.error(
                stream.span(),
                "invalid JetStream stream name: it cannot be empty or contain spaces, '.', '*', '>', '/' or '\\'",
            ));
        }
        if let Some(r) = raw.replay.as_ref().filter(|r| *r.get_ref() > 0) {
            return Err(at.error(
                r.span(),
                "replay and jetstream cannot be combined: the JetStream stream holds the history",
            ));
        }
        if let Some(l) = &raw.linger {
            return Err(at.error(l.span(), "linger is for replay routes only"));
        }
        if let Some(b) = &raw.replay_bytes {
            return Err(at.error(b.span(), "replay_bytes is for replay routes only"));
        }
        return Ok(Retention::JetStream {
            stream: name.clone(),
        });
    }
    if replay == 0 {
        if let Some(l) = &raw.linger {
            return Err(at.error(l.span(), "linger needs replay > 0"));
        }
        if let Some(b) = &raw.replay_bytes {
            return Err(at.error(b.span(), "replay_bytes needs replay > 0"));
        }
        return Ok(Retention::Live);
    }
    let bytes = within(
        at,
        raw.replay_bytes.as_ref(),
        DEFAULT_REPLAY_BYTES,
        &REPLAY_BYTES_RANGE,
        || {
            format!(
                "replay_bytes must be between {} (64 KiB) and {} (64 GiB)",
                REPLAY_BYTES_RANGE.start(),
                REPLAY_BYTES_RANGE.end()
            )
        },
    )?;
    Ok(Retention::Replay {
        per_topic: replay,
        bytes,
        linger: optional_duration(at, raw.linger.as_ref(), DEFAULT_LINGER)?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_accepted, assert_refused, parse_text, ROUTE};
    use std::time::Duration;

    #[test]
    fn route_errors_name_line_and_column() {
        assert_refused(&[
            (
                "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"nope\"\ntopic = \"a\"\n".to_owned(),
                "5:10: no broker named \"nope\"",
            ),
            (
                "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a/{x}\"\nbroker = \"m\"\ntopic = \"a/{y}\"\n".to_owned(),
                "6:9: topic uses {y}, which the route path does not define",
            ),
            (
                format!("{ROUTE}overflow = \"block\"\n"),
                "7:12: unknown overflow policy \"block\"",
            ),
            (
                "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a/#/b\"\n".to_owned(),
                "6:9: invalid topic \"a/#/b\": '#' must be the last level",
            ),
            (
                "[brokers.n]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n[[routes]]\npath = \"/a\"\nbroker = \"n\"\ntopic = \"a.b*\"\n".to_owned(),
                "7:9: invalid topic \"a.b*\": a wildcard must be a whole token",
            ),
            (
                "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a/+\"\npublish = true\n".to_owned(),
                "6:9: publish = true needs a topic without wildcards",
            ),
            (
                "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"a/{x\"\nbroker = \"m\"\ntopic = \"a\"\n".to_owned(),
                "4:8: a route path must start with '/'",
            ),
            (
                format!("{ROUTE}[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"b\"\n"),
                "8:8: duplicate route path \"/a\"",
            ),
            (
                "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a/{x}\"\nbroker = \"m\"\ntopic = \"a/{x}\"\nevent = \"{x}\"\n".to_owned(),
                "7:9: event can only insert {topic}, not {x}",
            ),
            (
                format!("{ROUTE}buffer = 0\n"),
                "7:10: buffer must be between 1 and",
            ),
            (
                format!("{ROUTE}auth = true\n"),
                "7:8: auth = true needs an [auth] section",
            ),
            (
                "[brokers.m]\ntype = \"memory\"\n".to_owned(),
                "1:1: no [[routes]]",
            ),
        ]);
    }

    #[test]
    fn max_rate_is_a_rate_and_conflate_needs_it() {
        let interval = |keys: &str| match parse_text(&format!("{ROUTE}{keys}\n")) {
            Ok(config) => config.routes[0].max_rate,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(interval(""), None);
        assert_eq!(
            interval("max_rate = \"4/s\""),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            interval("max_rate = \"30/min\"\nconflate = \"latest\""),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            interval("max_rate = \"1000/s\""),
            Some(Duration::from_millis(1))
        );
        let bad = |rate: &str| {
            let expected = format!("7:12: max_rate \"{rate}\" is not a rate from 1/min to 1000/s");
            (format!("{ROUTE}max_rate = \"{rate}\"\n"), expected)
        };
        assert_refused(&[
            bad("0/s"),
            bad("1001/s"),
            bad("4/h"),
            bad("fast"),
            (
                format!("{ROUTE}conflate = \"latest\"\n"),
                "7:12: conflate needs max_rate".to_owned(),
            ),
            (
                format!("{ROUTE}max_rate = \"1/s\"\nconflate = \"oldest\"\n"),
                "8:12: unknown conflate policy \"oldest\"".to_owned(),
            ),
        ]);
    }

    #[test]
    fn retention_errors_name_line_and_column() {
        let nats = |keys: &str| {
            format!("[brokers.n]\ntype = \"nats\"\nurl = \"nats://x\"\n[[routes]]\npath = \"/a\"\nbroker = \"n\"\ntopic = \"a\"\n{keys}\n")
        };
        assert_refused(&[
            (
                format!("{ROUTE}jetstream = \"S\"\n"),
                "7:13: jetstream is for nats brokers only",
            ),
            (
                nats("jetstream = \"A.B\""),
                "8:13: invalid JetStream stream name",
            ),
            (
                nats("jetstream = \"S\"\nreplay = 5"),
                "9:10: replay and jetstream cannot be combined",
            ),
            (
                nats(&format!("jetstream = \"{}\"", "S".repeat(256))),
                "8:13: a JetStream stream name is at most 255 bytes",
            ),
            (
                format!("{ROUTE}linger = \"5s\"\n"),
                "7:10: linger needs replay > 0",
            ),
            (
                format!("{ROUTE}replay_bytes = 100000\n"),
                "7:16: replay_bytes needs replay > 0",
            ),
            (
                format!("{ROUTE}replay = 5\nreplay_bytes = 1000\n"),
                "8:16: replay_bytes must be between 65536 (64 KiB) and 68719476736 (64 GiB)",
            ),
            (
                format!("{ROUTE}replay = 5\nlinger = \"soon\"\n"),
                "8:10: invalid duration",
            ),
            (
                format!("{ROUTE}replay = 99999999\n"),
                "7:10: replay must be between 0 (off) and",
            ),
            (
                nats("retained = true"),
                "8:12: retained = true is for mqtt brokers only",
            ),
        ]);
    }

    #[test]
    fn compress_takes_true_false_or_a_list_of_encodings() {
        use crate::compress::Encoding::{Brotli, Gzip, Zstd};
        let offered = |value: &str| {
            let text = format!("{ROUTE}compress = {value}\n");
            parse_text(&text).expect("valid").routes[0].compress.clone()
        };
        assert_eq!(offered("true"), [Zstd, Brotli, Gzip]);
        assert_eq!(offered("false"), []);
        assert_eq!(offered(r#"["gzip", "ZSTD", "gzip"]"#), [Gzip, Zstd]);
        assert_eq!(offered("[]"), []);
        assert_refused(&[
            (
                format!("{ROUTE}compress = [\"gzip\", \"deflate\"]\n"),
                "7:12: unknown encoding \"deflate\": expected \"gzip\", \"br\" or \"zstd\"",
            ),
            (
                format!("{ROUTE}compress = \"gzip\"\n"),
                "7:12: expected true, false or a list of encodings",
            ),
        ]);
    }

    #[test]
    fn linger_is_refused_past_its_bounds_and_accepted_at_them() {
        let linger = |value: &str| format!("{ROUTE}replay = 5\nlinger = \"{value}\"\n");
        assert_refused(&[
            (linger("25h"), "8:10: duration \"25h\" is out of range"),
            (linger("500us"), "8:10: duration \"500us\" is out of range"),
        ]);
        // "0s" (any zero) drops a topic as soon as its last stream leaves.
        assert_accepted(&[
            format!("{ROUTE}replay = 1\nlinger = \"0ms\"\n"),
            linger("1day"),
        ]);
    }
}
