//! Validates the keys of an `sse` broker (an upstream SSE origin): its url, the headers sent to it
//! (with `${VAR}` taken from the environment), the first reconnection delay, the idle timeout and a
//! CA file (relative to the configuration file's folder).

use super::raw::{OneOrMany, RawBroker};
use super::values::duration;
use super::{ConfigError, Locator};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sluice_sse::SseSettings;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// The first reconnection delay of an upstream stream, before the origin sends its own `retry:`.
pub const DEFAULT_RECONNECT: Duration = Duration::from_secs(1);

/// Request headers sluice sets itself, or that would change how the request is framed.
const RESERVED_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "last-event-id",
    "accept",
];

/// `[brokers.NAME]` with `type = "sse"`.
pub(super) fn validate(
    at: &Locator,
    name: &str,
    raw: &RawBroker,
    base: &Path,
) -> Result<SseSettings, ConfigError> {
    let Some(url) = &raw.url else {
        return Err(at.error(
            raw.kind.span(),
            format!("broker {name:?} needs a url, e.g. \"http://127.0.0.1:3000\""),
        ));
    };
    let OneOrMany::One(text) = url.get_ref() else {
        return Err(at.error(url.span(), "an sse broker takes one url (one origin)"));
    };
    let refuse = |why: &str| at.error(url.span(), why.to_owned());
    let parsed = url::Url::parse(text).map_err(|e| refuse(&format!("invalid url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
        return Err(refuse(
            "an sse url must start with http:// or https:// and name a host",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(refuse(
            "an sse url names the origin (and a path prefix): put a query in the route's topic",
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refuse(
            "put credentials in headers, not in the url (they would show in logs)",
        ));
    }
    let headers = match &raw.headers {
        None => HeaderMap::new(),
        Some(headers) => header_map(at, headers)?,
    };
    let reconnect = duration(at, raw.reconnect.as_ref(), DEFAULT_RECONNECT)?;
    let idle_timeout = match &raw.idle_timeout {
        None => None,
        // Set: within the bounds of every duration key (the default is never used).
        Some(idle) => Some(duration(at, Some(idle), Duration::ZERO)?),
    };
    let ca_file = match &raw.ca_file {
        None => None,
        Some(path) if parsed.scheme() == "https" => Some(super::values::ca_file(at, path, base)?),
        Some(path) => return Err(at.error(path.span(), "ca_file is for an https:// origin")),
    };
    Ok(SseSettings {
        url: parsed,
        headers,
        reconnect,
        idle_timeout,
        ca_file,
    })
}

/// The `headers` table, each value with its `${VAR}`s replaced from the environment.
fn header_map(
    at: &Locator,
    headers: &Spanned<std::collections::BTreeMap<String, String>>,
) -> Result<HeaderMap, ConfigError> {
    let refuse = |why: String| at.error(headers.span(), why);
    let mut map = HeaderMap::new();
    for (name, value) in headers.get_ref() {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| refuse(format!("{name:?} is not a valid header name")))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(refuse(format!("header {name:?} is set by sluice itself")));
        }
        let expanded = expand(value).map_err(|why| refuse(format!("header {name:?}: {why}")))?;
        let mut value = HeaderValue::from_str(&expanded).map_err(|_| {
            refuse(format!(
                "header {name:?}: the value holds a character a header cannot (a line break?)"
            ))
        })?;
        value.set_sensitive(true);
        map.insert(header, value);
    }
    Ok(map)
}

/// Replaces each `${NAME}` in `text` with the environment variable `NAME`; `$$` is a `$`.
fn expand(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "an unclosed ${ (write $$ for a plain $)".to_owned())?;
            let name = &after[..end];
            let value = std::env::var(name).map_err(|_| {
                format!("the environment variable {name:?} is not set (or not UTF-8)")
            })?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The keys only an `sse` broker takes, refused on the others.
pub(super) fn no_origin_keys(at: &Locator, raw: &RawBroker) -> Result<(), ConfigError> {
    let spans = [
        raw.headers.as_ref().map(|h| ("headers", h.span())),
        raw.reconnect.as_ref().map(|r| ("reconnect", r.span())),
        raw.idle_timeout
            .as_ref()
            .map(|i| ("idle_timeout", i.span())),
        raw.ca_file.as_ref().map(|c| ("ca_file", c.span())),
    ];
    match spans.into_iter().flatten().next() {
        Some((key, span)) => Err(at.error(span, format!("{key} is for sse brokers only"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::expand;
    use crate::config::testing::{assert_refused, parse_text};
    use crate::config::BrokerKind;

    #[test]
    fn variables_expand_from_the_environment() {
        std::env::set_var("SLUICE_ORIGIN_TEST_TOKEN", "s3cret");
        assert_eq!(
            expand("Bearer ${SLUICE_ORIGIN_TEST_TOKEN}").as_deref(),
            Ok("Bearer s3cret")
        );
        assert_eq!(expand("a$$b $c").as_deref(), Ok("a$b $c"));
        assert!(expand("${SLUICE_ORIGIN_TEST_UNSET}").is_err());
        assert!(expand("${OPEN").is_err());
    }

    #[test]
    fn an_origin_takes_a_url_headers_and_a_reconnect_delay() {
        std::env::set_var("SLUICE_ORIGIN_TEST_KEY", "k1");
        let text = "[brokers.app]\ntype = \"sse\"\nurl = \"http://127.0.0.1:3000/api\"\n\
                    headers = { authorization = \"Bearer ${SLUICE_ORIGIN_TEST_KEY}\" }\n\
                    reconnect = \"250ms\"\nidle_timeout = \"45s\"\n\
                    [[routes]]\npath = \"/builds/{id}/log\"\nbroker = \"app\"\ntopic = \"/builds/{id}/log\"\n";
        let config = match parse_text(text) {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        };
        let BrokerKind::Sse(origin) = &config.brokers[0].kind else {
            panic!("{:?}", config.brokers[0].kind);
        };
        assert_eq!(origin.url.as_str(), "http://127.0.0.1:3000/api");
        assert_eq!(origin.headers["authorization"], "Bearer k1");
        // The token never shows in a debug print of the configuration.
        assert!(!format!("{config:?}").contains("k1"));
        assert_eq!(origin.reconnect, std::time::Duration::from_millis(250));
        assert_eq!(
            origin.idle_timeout,
            Some(std::time::Duration::from_secs(45))
        );
    }

    #[test]
    fn bad_origins_are_refused() {
        let route = "[[routes]]\npath = \"/a\"\nbroker = \"app\"\ntopic = \"/a\"\n";
        let broker = |keys: &str| format!("[brokers.app]\ntype = \"sse\"\n{keys}\n{route}");
        assert_refused(&[
            (&broker(""), "2:8: broker \"app\" needs a url"),
            (
                &broker("url = \"ftp://x\""),
                "3:7: an sse url must start with http:// or https://",
            ),
            (
                &broker("url = \"http://x/?a=1\""),
                "3:7: an sse url names the origin",
            ),
            (
                &broker("url = \"http://u:p@x/\""),
                "3:7: put credentials in headers",
            ),
            (
                &broker("url = \"http://x\"\nheaders = { host = \"y\" }"),
                "4:11: header \"host\" is set by sluice itself",
            ),
            (
                &broker("url = \"http://x\"\nheaders = { a = \"${SLUICE_ORIGIN_TEST_NONE}\" }"),
                "4:11: header \"a\": the environment variable \"SLUICE_ORIGIN_TEST_NONE\" is not set",
            ),
            (
                &broker("url = \"https://x\"\nca_file = \"/nonexistent/ca.pem\""),
                "4:11: no such file",
            ),
            (
                &broker("url = \"http://x\"\nca_file = \"ca.pem\""),
                "4:11: ca_file is for an https:// origin",
            ),
            (
                &"[brokers.n]\ntype = \"nats\"\nurl = \"nats://x\"\nreconnect = \"1s\"\n".to_owned(),
                "4:13: reconnect is for sse brokers only",
            ),
        ]);
    }

    #[test]
    fn an_sse_route_cannot_publish_and_its_parameters_cannot_redirect() {
        let text = |route: &str| {
            format!("[brokers.app]\ntype = \"sse\"\nurl = \"http://x\"\n[[routes]]\nbroker = \"app\"\n{route}\n")
        };
        assert_refused(&[
            (
                &text("path = \"/a\"\ntopic = \"/a\"\npublish = true"),
                "5:10: publish = true is not possible on an sse broker",
            ),
            (
                &text("path = \"/a\"\ntopic = \"a\""),
                "7:9: invalid topic \"a\": an upstream path must start with '/'",
            ),
            (
                &text("path = \"/a\"\ntopic = \"/x/../a\""),
                "7:9: invalid topic \"/x/../a\"",
            ),
        ]);
    }
}
