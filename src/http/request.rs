//! What a request asks for, decided from its head before any body is read or anything is
//! subscribed: routing, request size limits, the topics of a stream, its resume position, and the
//! token check. Nothing here touches the connection (routing looks for static files on disk).

use crate::auth::{AuthConfig, Grant};
use crate::config::{Config, Route, Topics};
use crate::error::Error;
use crate::files;
use crate::route::query_param;
use http::Method;
use pingora::http::RequestHeader;
use std::borrow::Cow;
use std::path::PathBuf;

/// The longest request target (path and query) accepted; `414` past it.
pub(super) const MAX_URI_BYTES: usize = 8 * 1024;
/// The most request header bytes accepted (names and values); `431` past them.
pub(super) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// What to do with a request.
#[derive(Debug)]
pub(super) enum Action<'a> {
    Health,
    Ready,
    Preflight,
    File(PathBuf),
    /// A stream of route number `usize` on these topics.
    Stream(usize, &'a Route, Vec<String>),
    /// A publish through route number `usize` to this topic.
    Publish(usize, &'a Route, String),
    /// Passed to the `[proxy]` upstream.
    Proxy,
}

/// Matches method and path to an action, or to the error status that answers it.
///
/// In this order: sluice's own paths (`/healthz`, `/readyz`), the routes (in file order; a route's
/// path answers every method, those it does not take with `405`), the static files (`GET` and
/// `HEAD` of a file that exists), then the `[proxy]` upstream, if any, else `404`. An `OPTIONS`
/// is answered as a CORS preflight, except with a proxy, where only sluice's own paths and the
/// routes' are: the application answers its own.
pub(super) fn route<'a>(config: &'a Config, request: &RequestHeader) -> Result<Action<'a>, Error> {
    let (method, path) = (&request.method, request.uri.path());
    let own_path = path == "/healthz" || path == "/readyz";
    if *method == Method::OPTIONS {
        let routed = || {
            config
                .routes
                .iter()
                .any(|r| r.path.matches(path, r.syntax).is_some())
        };
        if config.proxy.is_none() || own_path || routed() {
            return Ok(Action::Preflight);
        }
        return Ok(Action::Proxy);
    }
    if own_path {
        return match *method {
            Method::GET | Method::HEAD if path == "/healthz" => Ok(Action::Health),
            Method::GET | Method::HEAD => Ok(Action::Ready),
            _ => Err(Error::MethodNotAllowed("GET, HEAD")),
        };
    }
    for (index, route) in config.routes.iter().enumerate() {
        let Some(matched) = route.path.matches(path, route.syntax) else {
            continue;
        };
        let allowed = if route.publish { "GET, POST" } else { "GET" };
        let is_publish = match *method {
            Method::GET => false,
            Method::POST if route.publish => true,
            _ => return Err(Error::MethodNotAllowed(allowed)),
        };
        let params = matched.map_err(Error::BadParameter)?;
        let topics = match &route.topic {
            Topics::Template(template) => vec![template.fill(&params)],
            Topics::Query { allowed, max } => {
                query_topics(route, allowed, *max, request.uri.query().unwrap_or(""))?
            }
        };
        if is_publish {
            // `publish = true` is only allowed with one topic (checked with the config).
            let topic = topics
                .into_iter()
                .next()
                .ok_or(Error::Internal("no topic"))?;
            return Ok(Action::Publish(index, route, topic));
        }
        return Ok(Action::Stream(index, route, topics));
    }
    if let (Some(dir), &Method::GET | &Method::HEAD) = (&config.server.static_dir, method) {
        if let Some(file) = files::resolve(dir, path) {
            return Ok(Action::File(file));
        }
    }
    if config.proxy.is_some() {
        return Ok(Action::Proxy);
    }
    Err(Error::NotFound)
}

/// Checks the token of a route with `auth = true` against the topics: `401` without a valid token,
/// `403` when its claim does not grant every topic.
pub(super) fn authorize(
    auth: Option<&AuthConfig>,
    request: &RequestHeader,
    route: &Route,
    topics: &[String],
    publish: bool,
) -> Result<Option<Grant>, Error> {
    if !route.auth {
        return Ok(None);
    }
    let auth = auth.ok_or(Error::Internal("auth = true without [auth]"))?;
    let token = auth
        .token(request)
        .ok_or_else(|| Error::Unauthorized(auth.missing()))?;
    let grant = auth.verify(&token).map_err(Error::Unauthorized)?;
    for topic in topics {
        let allowed = if publish {
            grant.may_publish(route.syntax, topic)
        } else {
            grant.may_subscribe(route.syntax, topic)
        };
        if !allowed {
            let verb = if publish {
                "publish to"
            } else {
                "subscribe to"
            };
            return Err(Error::Forbidden(format!(
                "the token may not {verb} {topic:?}"
            )));
        }
    }
    Ok(Some(grant))
}

/// The position a client resumes from: the `Last-Event-ID` header a browser sends when it reconnects,
/// or a `last-event-id` query parameter for clients that cannot set headers (the header wins).
pub(super) fn last_event_id(request: &RequestHeader) -> Option<String> {
    if let Some(value) = request.headers.get("last-event-id") {
        // A value that is not text is still a resume attempt, from an unknown position.
        return Some(value.to_str().unwrap_or("?").to_owned());
    }
    query_param(request.uri.query()?, "last-event-id")
        .next()
        .map(Cow::into_owned)
}

/// The topics of a multi-topic stream: repeated `?topic=` parameters, each a valid filter covered by
/// one of the route's `allowed` patterns, at most `max` of them.
fn query_topics(
    route: &Route,
    allowed: &[String],
    max: usize,
    query: &str,
) -> Result<Vec<String>, Error> {
    let mut topics: Vec<String> = Vec::new();
    for topic in query_param(query, "topic") {
        route
            .syntax
            .check_filter(&topic)
            .map_err(|e| Error::BadParameter(format!("topic {topic:?}: {e}")))?;
        if !allowed.iter().any(|p| route.syntax.covers(p, &topic)) {
            return Err(Error::BadParameter(format!(
                "topic {topic:?} is not allowed on this route (allowed: {})",
                allowed.join(", ")
            )));
        }
        if !topics.iter().any(|t| *t == topic) {
            topics.push(topic.into_owned());
        }
        if topics.len() > max {
            return Err(Error::BadParameter(format!(
                "at most {max} topics per stream"
            )));
        }
    }
    if topics.is_empty() {
        return Err(Error::BadParameter(
            "name the topics to stream with ?topic=...&topic=...".into(),
        ));
    }
    Ok(topics)
}

/// Refuses request targets and headers larger than sluice ever needs.
pub(super) fn check_sizes(request: &RequestHeader) -> Result<(), Error> {
    let target = request.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Err(Error::UriTooLong(MAX_URI_BYTES));
    }
    let headers: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers > MAX_HEADER_BYTES {
        return Err(Error::HeaderTooLarge(MAX_HEADER_BYTES));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::path::Path;

    const ROUTES: &str = r#"
[brokers.m]
type = "memory"

[[routes]]
path = "/rooms/{room}"
broker = "m"
topic = "rooms/{room}"
publish = true
replay = 10

[[routes]]
path = "/many"
broker = "m"
topics = ["rooms/+"]
max_topics = 2
"#;

    fn config() -> Config {
        parse("test.toml", ROUTES, Path::new(".")).expect("a valid config")
    }

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build(method, target.as_bytes(), None).expect("request");
        for (name, value) in headers {
            request
                .append_header(name.to_string(), *value)
                .expect("header");
        }
        request
    }

    fn status(result: Result<Action<'_>, Error>) -> u16 {
        result.map_or_else(|e| e.status(), |_| 200)
    }

    #[test]
    fn routes_methods_and_parameters() {
        let config = config();
        let route = |method, target| super::route(&config, &request(method, target, &[]));
        assert!(matches!(route("GET", "/healthz"), Ok(Action::Health)));
        assert!(matches!(route("HEAD", "/readyz"), Ok(Action::Ready)));
        assert_eq!(status(route("POST", "/readyz")), 405);
        assert_eq!(status(route("POST", "/healthz")), 405);
        assert!(matches!(
            route("OPTIONS", "/anything"),
            Ok(Action::Preflight)
        ));
        match route("GET", "/rooms/lobby") {
            Ok(Action::Stream(0, _, topics)) => assert_eq!(topics, ["rooms/lobby"]),
            other => panic!("{other:?}"),
        }
        match route("POST", "/rooms/lobby") {
            Ok(Action::Publish(0, _, topic)) => assert_eq!(topic, "rooms/lobby"),
            other => panic!("{other:?}"),
        }
        assert_eq!(status(route("DELETE", "/rooms/lobby")), 405);
        assert_eq!(status(route("GET", "/rooms/a%2Fb")), 400);
        assert_eq!(status(route("GET", "/nowhere")), 404);
    }

    #[test]
    fn with_a_proxy_what_sluice_does_not_answer_goes_upstream() {
        let text = format!("{ROUTES}\n[proxy]\nupstream = \"http://127.0.0.1:9\"\n");
        let config = parse("test.toml", &text, Path::new(".")).expect("a valid config");
        let route = |method, target| super::route(&config, &request(method, target, &[]));
        assert!(matches!(route("GET", "/api/x"), Ok(Action::Proxy)));
        assert!(matches!(route("POST", "/"), Ok(Action::Proxy)));
        assert!(matches!(route("OPTIONS", "/api/x"), Ok(Action::Proxy)));
        // Sluice's own paths and the routes' keep priority, preflights and wrong methods included.
        assert!(matches!(
            route("OPTIONS", "/rooms/a"),
            Ok(Action::Preflight)
        ));
        assert!(matches!(
            route("OPTIONS", "/healthz"),
            Ok(Action::Preflight)
        ));
        assert!(matches!(route("GET", "/healthz"), Ok(Action::Health)));
        assert!(matches!(route("GET", "/rooms/a"), Ok(Action::Stream(..))));
        assert_eq!(status(route("DELETE", "/rooms/a")), 405);
        assert_eq!(status(route("POST", "/healthz")), 405);
    }

    #[test]
    fn multi_topic_streams_take_their_topics_from_the_query() {
        let config = config();
        let route = |target| super::route(&config, &request("GET", target, &[]));
        match route("/many?topic=rooms/a&topic=rooms%2Fb&topic=rooms/a") {
            Ok(Action::Stream(1, _, topics)) => assert_eq!(topics, ["rooms/a", "rooms/b"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(status(route("/many")), 400, "no topic");
        assert_eq!(status(route("/many?topic=other/a")), 400, "not allowed");
        assert_eq!(
            status(route("/many?topic=rooms/%23")),
            400,
            "wider than allowed"
        );
        assert_eq!(
            status(route("/many?topic=rooms/a&topic=rooms/b&topic=rooms/c")),
            400,
            "past max_topics"
        );
    }

    #[test]
    fn sizes_past_the_limits_are_refused() {
        let long = format!("/rooms/{}", "a".repeat(MAX_URI_BYTES));
        assert_eq!(
            check_sizes(&request("GET", &long, &[])).map_err(|e| e.status()),
            Err(414)
        );
        let big = "b".repeat(MAX_HEADER_BYTES);
        assert_eq!(
            check_sizes(&request("GET", "/", &[("x-big", &big)])).map_err(|e| e.status()),
            Err(431)
        );
        assert!(check_sizes(&request("GET", "/rooms/a", &[("x", "y")])).is_ok());
    }

    #[test]
    fn the_last_event_id_header_wins_over_the_query() {
        let both = request("GET", "/r?last-event-id=q", &[("last-event-id", "h")]);
        assert_eq!(last_event_id(&both).as_deref(), Some("h"));
        let query = request("GET", "/r?x=1&last-event-id=a%2Eb", &[]);
        assert_eq!(last_event_id(&query).as_deref(), Some("a.b"));
        assert_eq!(last_event_id(&request("GET", "/r", &[])), None);
    }

    #[test]
    fn routes_without_auth_need_no_token() {
        let config = config();
        let route = &config.routes[0];
        let topics = ["rooms/a".to_owned()];
        let grant = authorize(
            None,
            &request("GET", "/rooms/a", &[]),
            route,
            &topics,
            false,
        );
        assert!(matches!(grant, Ok(None)));
    }
}
