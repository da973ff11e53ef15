//! Path templates and topic templates: matching a request path, checking its parameters, building
//! the concrete broker topic, and reading query parameters. Pure: no I/O.
//!
//! A parameter value is checked before anything is subscribed: it must be non-empty UTF-8 that the
//! broker accepts in a topic (no control characters; for MQTT no Unicode noncharacters) without the
//! wildcard and separator characters of the route's broker, also when they arrive percent-encoded.
//! So a path can never widen or redirect a subscription, or carry what the broker would refuse.

use percent_encoding::percent_decode_str;
use sluice_bridge::TopicSyntax;
use std::borrow::Cow;

/// Every value of query parameter `name` (`application/x-www-form-urlencoded`: `+` is a space, the
/// rest percent-decoded, text that is not UTF-8 replaced). The one query parser: topics, resume
/// positions and tokens all come through it.
pub fn query_param<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = Cow<'a, str>> + 'a {
    form_urlencoded::parse(query.as_bytes())
        .filter(move |(key, _)| key == name)
        .map(|(_, value)| value)
}

/// One piece of a template: literal text or a `{name}` parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    Param(String),
}

/// Splits `text` into literal pieces and `{name}` parameters.
pub fn parse_template(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("unmatched '}'".into());
        }
        if open > 0 {
            pieces.push(Piece::Literal(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("unclosed '{'")?;
        let name = &after[..close];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "invalid parameter name {{{name}}}: use letters, digits and '_'"
            ));
        }
        pieces.push(Piece::Param(name.to_owned()));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_owned()));
    }
    Ok(pieces)
}

/// A route path such as `/sensors/{site}/{sensor}`: each `{name}` matches one whole segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Piece>,
    text: String,
}

impl PathTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(body) = text.strip_prefix('/') else {
            return Err("a route path must start with '/'".into());
        };
        if text.contains(['?', '#']) {
            return Err("a route path cannot contain '?' or '#'".into());
        }
        let mut segments = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for segment in body.split('/') {
            let pieces = parse_template(segment)?;
            match pieces.as_slice() {
                [] => segments.push(Piece::Literal(String::new())),
                [Piece::Literal(l)] => segments.push(Piece::Literal(l.clone())),
                [Piece::Param(p)] => {
                    if names.contains(p) {
                        return Err(format!("parameter {{{p}}} appears twice"));
                    }
                    names.push(p.clone());
                    segments.push(Piece::Param(p.clone()));
                }
                _ => {
                    return Err(format!(
                        "segment {segment:?}: a parameter must be a whole path segment"
                    ))
                }
            }
        }
        if text == "/healthz" || text == "/readyz" {
            return Err(format!("{text} is reserved for the health checks"));
        }
        Ok(Self {
            segments,
            text: text.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether some request path matches both templates (so the earlier of two routes takes it from
    /// the later): the same number of segments, and no place where both have different literals.
    pub fn overlaps(&self, other: &PathTemplate) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Piece::Literal(a), Piece::Literal(b)) => a == b,
                    _ => true,
                })
    }

    /// The parameter names, in path order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Piece::Param(p) => Some(p.as_str()),
            Piece::Literal(_) => None,
        })
    }

    /// Matches a raw (still percent-encoded) request path. `None`: not this route. `Some(Err)`: this
    /// route, but a parameter value is not acceptable for `syntax`.
    pub fn matches(
        &self,
        path: &str,
        syntax: TopicSyntax,
    ) -> Option<Result<Vec<(String, String)>, String>> {
        let body = path.strip_prefix('/')?;
        let raw: Vec<&str> = body.split('/').collect();
        if raw.len() != self.segments.len() {
            return None;
        }
        let mut values = Vec::new();
        for (segment, raw) in self.segments.iter().zip(raw) {
            match segment {
                Piece::Literal(lit) => {
                    if percent_decode_str(raw).decode_utf8().ok()?.as_ref() != lit {
                        return None;
                    }
                }
                Piece::Param(name) => values.push((name.clone(), raw)),
            }
        }
        // Only now that the route matched, check each value: errors become a 400.
        let mut params = Vec::with_capacity(values.len());
        for (name, raw) in values {
            match check_param(raw, syntax) {
                Ok(value) => params.push((name, value)),
                Err(reason) => return Some(Err(format!("parameter {{{name}}}: {reason}"))),
            }
        }
        Some(Ok(params))
    }
}

/// Decodes one path parameter and rejects what could change the meaning of the topic it goes into.
pub fn check_param(raw: &str, syntax: TopicSyntax) -> Result<String, String> {
    let value = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| "not valid UTF-8".to_owned())?;
    if value.is_empty() {
        return Err("empty value".into());
    }
    syntax.check_text(&value).map_err(str::to_owned)?;
    if value.chars().any(|c| syntax.is_reserved(c)) {
        return Err(format!(
            "{} are not allowed (they would change the topic)",
            syntax.reserved_description()
        ));
    }
    Ok(value.into_owned())
}

/// A topic such as `sensors/{site}/{sensor}`, in the broker's own syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    pieces: Vec<Piece>,
}

impl TopicTemplate {
    /// Parses and validates against the broker syntax and the parameters the path defines.
    pub fn parse(text: &str, syntax: TopicSyntax, path_params: &[&str]) -> Result<Self, String> {
        let pieces = parse_template(text)?;
        for piece in &pieces {
            if let Piece::Param(p) = piece {
                if !path_params.contains(&p.as_str()) {
                    return Err(format!(
                        "topic uses {{{p}}}, which the route path does not define"
                    ));
                }
            }
        }
        let template = Self { pieces };
        // A parameter always holds a plain word, so checking with one in place checks the literal part.
        let sample = template.render(&|_| "x");
        syntax
            .check_filter(&sample)
            .map_err(|reason| format!("invalid topic {text:?}: {reason}"))?;
        Ok(template)
    }

    /// Builds the concrete topic from checked parameter values.
    pub fn render<'a>(&self, value_of: &dyn Fn(&str) -> &'a str) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => out.push_str(l),
                Piece::Param(p) => out.push_str(value_of(p)),
            }
        }
        out
    }

    /// The concrete topic for matched parameters.
    pub fn fill(&self, params: &[(String, String)]) -> String {
        self.render(&|name| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map_or("", |(_, v)| v.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TopicSyntax::{Mqtt, Nats};

    fn path(t: &str) -> PathTemplate {
        PathTemplate::parse(t).expect("valid template")
    }

    #[test]
    fn templates_overlap_when_one_request_path_matches_both() {
        let overlaps = |a: &str, b: &str| {
            let (a, b) = (path(a), path(b));
            assert_eq!(a.overlaps(&b), b.overlaps(&a), "symmetric");
            a.overlaps(&b)
        };
        assert!(overlaps("/rooms/{room}", "/rooms/lobby"));
        assert!(overlaps("/rooms/{room}", "/{kind}/{name}"));
        assert!(overlaps("/a/{x}/c", "/{y}/b/c"), "/a/b/c matches both");
        assert!(
            overlaps("/rooms/", "/rooms/{room}"),
            "an empty segment is a segment"
        );
        assert!(
            !overlaps("/rooms/{room}", "/rooms"),
            "segment counts differ"
        );
        assert!(!overlaps("/rooms/{room}", "/halls/{room}"));
        assert!(!overlaps("/a/{x}/c", "/{y}/b/d"));
    }

    #[test]
    fn templates_parse() {
        assert!(PathTemplate::parse("sensors").is_err());
        assert!(PathTemplate::parse("/a/{x}{y}").is_err());
        assert!(PathTemplate::parse("/a/b{x}").is_err());
        assert!(PathTemplate::parse("/a/{x}/{x}").is_err());
        assert!(PathTemplate::parse("/a/{x").is_err());
        assert!(PathTemplate::parse("/a/x}").is_err());
        assert!(PathTemplate::parse("/a/{bad-name}").is_err());
        assert!(PathTemplate::parse("/healthz").is_err());
        assert_eq!(path("/s/{a}/{b}").params().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn matching_extracts_decoded_params() {
        let t = path("/sensors/{site}/{sensor}");
        let params = t.matches("/sensors/plant%201/temp", Nats);
        assert!(
            params.is_some_and(|p| p.is_err()),
            "space is whitespace for NATS"
        );
        let params = t.matches("/sensors/plant%201/temp", Mqtt);
        assert_eq!(
            params,
            Some(Ok(vec![
                ("site".into(), "plant 1".into()),
                ("sensor".into(), "temp".into())
            ]))
        );
        assert_eq!(t.matches("/sensors/a", Mqtt), None);
        assert_eq!(t.matches("/sensors/a/b/c", Mqtt), None);
        assert_eq!(t.matches("/other/a/b", Mqtt), None);
    }

    #[test]
    fn params_cannot_widen_a_subscription() {
        let t = path("/s/{x}");
        for bad in [
            "+",
            "%2B",
            "#",
            "%23",
            "a%2Fb",
            "",
            "%00",
            "%0a",
            "%FF",
            "%EF%BF%BE",
            "%EF%BF%BF",
            "%EF%B7%90",
            "%C2%85",
        ] {
            assert!(
                matches!(t.matches(&format!("/s/{bad}"), Mqtt), Some(Err(_))),
                "mqtt accepted {bad:?}"
            );
        }
        for bad in ["*", "%2A", ">", "%3E", "a.b", "a%2Eb", "a%20b", "a%09b"] {
            assert!(
                matches!(t.matches(&format!("/s/{bad}"), Nats), Some(Err(_))),
                "nats accepted {bad:?}"
            );
        }
        // Empty segment from a trailing slash is an empty value, not a match of a shorter route.
        assert!(matches!(t.matches("/s/", Mqtt), Some(Err(_))));
    }

    #[test]
    fn topics_render_and_validate() {
        let t = TopicTemplate::parse("sensors/{site}/{sensor}", Mqtt, &["site", "sensor"])
            .expect("valid");
        let params = vec![("site".into(), "p1".into()), ("sensor".into(), "t".into())];
        assert_eq!(t.fill(&params), "sensors/p1/t");
        assert!(TopicTemplate::parse("a/{nope}", Mqtt, &["x"]).is_err());
        assert!(TopicTemplate::parse("a/#/b", Mqtt, &[]).is_err());
        assert!(TopicTemplate::parse("a.>", Nats, &[]).is_ok());
        assert!(TopicTemplate::parse("a.{x}*", Nats, &["x"]).is_err());
        assert!(TopicTemplate::parse("sensors/+/temp", Mqtt, &[]).is_ok());
    }
}
