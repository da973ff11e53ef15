//! Broker topic syntax: which characters are wildcards and separators, and whether a filter is valid
//! by the broker's own rules (MQTT: the UTF-8 rules of the specification, as mosquitto enforces them;
//! NATS: subject tokens; SSE origins: a URL path that a parameter cannot redirect). Limits that
//! depend on the server (NATS `max_control_line`, packet sizes) are checked by each bridge.

/// The longest MQTT topic: its length is a two-byte prefix in every packet.
pub const MQTT_MAX_TOPIC_BYTES: usize = 65_535;

/// The topic grammar of a broker family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicSyntax {
    /// NATS subjects: `.`-separated tokens, `*` one token, `>` the rest.
    Nats,
    /// MQTT topics: `/`-separated levels, `+` one level, `#` the rest.
    Mqtt,
    /// The path (and query) of an upstream SSE origin, such as `/builds/42/log`. A topic is always
    /// concrete; token grants may still use `+` (one segment) and `#` (the rest), as for MQTT.
    Path,
}

/// The longest upstream path (and query) of an SSE origin: what common servers accept in a request
/// line.
pub const PATH_MAX_BYTES: usize = 8 * 1024;

impl TopicSyntax {
    /// True when `c` may not appear inside a single path parameter substituted into a topic: it would
    /// act as a wildcard or a separator and so widen or redirect the subscription.
    pub fn is_reserved(self, c: char) -> bool {
        match self {
            TopicSyntax::Nats => matches!(c, '*' | '>' | '.') || c.is_whitespace(),
            TopicSyntax::Mqtt => matches!(c, '+' | '#' | '/'),
            // What would end the segment, start the query or fragment, escape a character (so a
            // second decoding at the origin could make a '/'), act as a separator on some servers,
            // or add a query parameter when the value goes into a query.
            TopicSyntax::Path => {
                matches!(c, '/' | '\\' | '?' | '#' | '%' | '&' | '=' | '+' | ';')
                    || c.is_whitespace()
            }
        }
    }

    /// The characters [`Self::is_reserved`] rejects, for error messages.
    pub fn reserved_description(self) -> &'static str {
        match self {
            TopicSyntax::Nats => "'*', '>', '.' or whitespace",
            TopicSyntax::Mqtt => "'+', '#' or '/'",
            TopicSyntax::Path => "'/', '\\', '?', '#', '%', '&', '=', '+', ';' or whitespace",
        }
    }

    /// Checks text that goes into a topic, as the broker would: no control characters (U+0000 to
    /// U+001F, U+007F to U+009F) for either broker, and for MQTT no Unicode noncharacters
    /// (U+FDD0 to U+FDEF, and the last two code points of every plane): the MQTT specification
    /// rules them out of its UTF-8 strings, and mosquitto drops a connection that sends one.
    pub fn check_text(self, text: &str) -> Result<(), &'static str> {
        if text.chars().any(char::is_control) {
            return Err("control character in topic");
        }
        if self == TopicSyntax::Mqtt && text.chars().any(is_noncharacter) {
            return Err("Unicode noncharacter in topic (MQTT does not allow them)");
        }
        // A `.` or `..` segment names another resource once the origin normalises the path.
        if self == TopicSyntax::Path && (text == "." || text.contains("..") || text.contains("/./"))
        {
            return Err("'.' and '..' segments are not allowed in a path");
        }
        Ok(())
    }

    /// Checks a subscription filter (wildcards allowed). Returns a reason when it is not valid.
    pub fn check_filter(self, filter: &str) -> Result<(), &'static str> {
        if filter.is_empty() {
            return Err("empty topic");
        }
        if self == TopicSyntax::Mqtt && filter.len() > MQTT_MAX_TOPIC_BYTES {
            return Err("topic longer than 65,535 bytes (the MQTT limit)");
        }
        self.check_text(filter)?;
        match self {
            TopicSyntax::Path => {
                if !filter.starts_with('/') {
                    return Err("an upstream path must start with '/'");
                }
                if filter.len() > PATH_MAX_BYTES {
                    return Err("upstream path longer than 8 KiB");
                }
                if filter.chars().any(char::is_whitespace) {
                    return Err("whitespace in upstream path");
                }
                if filter.contains('#') {
                    return Err("an upstream path cannot have a fragment ('#')");
                }
                // The URL standard reads `%2e` as a dot: `/a/%2e%2e/b` is `/b`.
                if filter.to_ascii_lowercase().contains("%2e") {
                    return Err("an encoded dot ('%2e') is not allowed in an upstream path");
                }
                if filter.ends_with("/.") {
                    return Err("'.' and '..' segments are not allowed in a path");
                }
                Ok(())
            }
            TopicSyntax::Nats => {
                if filter.chars().any(char::is_whitespace) {
                    return Err("whitespace in subject");
                }
                let tokens: Vec<&str> = filter.split('.').collect();
                for (i, token) in tokens.iter().enumerate() {
                    if token.is_empty() {
                        return Err("empty token in subject");
                    }
                    if token.contains(['*', '>']) && token.len() > 1 {
                        return Err("a wildcard must be a whole token");
                    }
                    if *token == ">" && i + 1 != tokens.len() {
                        return Err("'>' must be the last token");
                    }
                }
                Ok(())
            }
            TopicSyntax::Mqtt => {
                let levels: Vec<&str> = filter.split('/').collect();
                for (i, level) in levels.iter().enumerate() {
                    if level.contains(['+', '#']) && level.len() > 1 {
                        return Err("a wildcard must be a whole level");
                    }
                    if *level == "#" && i + 1 != levels.len() {
                        return Err("'#' must be the last level");
                    }
                }
                Ok(())
            }
        }
    }

    /// Checks a concrete topic to publish on (no wildcards). Returns a reason when it is not valid.
    pub fn check_topic(self, topic: &str) -> Result<(), &'static str> {
        self.check_filter(topic)?;
        if self.has_wildcards(topic) {
            return Err("wildcards are not allowed in a topic to publish on");
        }
        Ok(())
    }

    /// True when the filter contains a wildcard token or level.
    pub fn has_wildcards(self, filter: &str) -> bool {
        match self {
            TopicSyntax::Nats => filter.split('.').any(|t| t == "*" || t == ">"),
            TopicSyntax::Mqtt => filter.split('/').any(|l| l == "+" || l == "#"),
            // An upstream path is always one resource.
            TopicSyntax::Path => false,
        }
    }

    /// True when the concrete `topic` is matched by `filter`.
    pub fn matches(self, filter: &str, topic: &str) -> bool {
        if self == TopicSyntax::Path && !self.plain_path(topic) {
            return filter == topic;
        }
        let (sep, one, rest) = self.wildcards();
        // MQTT: wildcards at the first level never match topics starting with '$'.
        if self == TopicSyntax::Mqtt
            && topic.starts_with('$')
            && (filter.starts_with('+') || filter.starts_with('#'))
        {
            return false;
        }
        let mut f = filter.split(sep);
        let mut t = topic.split(sep);
        loop {
            match (f.next(), t.next()) {
                // NATS '>' needs at least one token; MQTT '#' also matches the parent level.
                (Some(fl), tl) if fl == rest => return tl.is_some() || self == TopicSyntax::Mqtt,
                (Some(fl), Some(tl)) => {
                    if fl != one && fl != tl {
                        return false;
                    }
                }
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// An upstream path whose segments could each be a path parameter: a wildcard may stand for
    /// them. Any other path (with a query, say) is only covered by itself, so a client choosing
    /// its topics cannot add a query or an escape where a wildcard stood.
    fn plain_path(self, path: &str) -> bool {
        !path.chars().any(|c| c != '/' && self.is_reserved(c))
    }

    /// The separator, the one-level wildcard and the rest wildcard of topic filters and grants.
    fn wildcards(self) -> (char, &'static str, &'static str) {
        match self {
            TopicSyntax::Nats => ('.', "*", ">"),
            TopicSyntax::Mqtt | TopicSyntax::Path => ('/', "+", "#"),
        }
    }

    /// True when every topic that `filter` matches is also matched by `pattern`: a grant of `pattern`
    /// allows subscribing to `filter`. For a concrete topic this is [`Self::matches`].
    pub fn covers(self, pattern: &str, filter: &str) -> bool {
        if self == TopicSyntax::Path && !self.plain_path(filter) {
            return pattern == filter;
        }
        let (sep, one, rest) = self.wildcards();
        if self == TopicSyntax::Mqtt
            && filter.starts_with('$') != pattern.starts_with('$')
            && (pattern.starts_with('+') || pattern.starts_with('#'))
        {
            return false;
        }
        let mut p = pattern.split(sep);
        let mut f = filter.split(sep);
        loop {
            match (p.next(), f.next()) {
                // `rest` covers whatever follows, wildcards included (MQTT `#` also its parent level).
                (Some(pl), fl) if pl == rest => return fl.is_some() || self == TopicSyntax::Mqtt,
                // `one` covers one literal or one-level wildcard, never a `rest` wildcard.
                (Some(pl), Some(fl)) if pl == one => {
                    if fl == rest {
                        return false;
                    }
                }
                (Some(pl), Some(fl)) => {
                    if pl != fl {
                        return false;
                    }
                }
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

/// A Unicode noncharacter: U+FDD0 to U+FDEF, or U+xFFFE and U+xFFFF in any plane.
fn is_noncharacter(c: char) -> bool {
    let c = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&c) || c & 0xFFFE == 0xFFFE
}

#[cfg(test)]
mod tests {
    use super::TopicSyntax::{Mqtt, Nats, Path};

    #[test]
    fn filters() {
        assert!(Nats.check_filter("a.b.*").is_ok());
        assert!(Nats.check_filter("a.>").is_ok());
        assert!(Nats.check_filter("a.>.b").is_err());
        assert!(Nats.check_filter("a..b").is_err());
        assert!(Nats.check_filter("a.b*").is_err());
        assert!(Nats.check_filter("a b").is_err());
        assert!(Mqtt.check_filter("a/+/c").is_ok());
        assert!(Mqtt.check_filter("a/#").is_ok());
        assert!(Mqtt.check_filter("a/#/c").is_err());
        assert!(Mqtt.check_filter("a/b+").is_err());
        assert!(Mqtt.check_filter("").is_err());
        assert!(Mqtt.check_topic("a/+").is_err());
        assert!(Mqtt.check_topic("a/b").is_ok());
    }

    #[test]
    fn upstream_paths_name_one_resource() {
        for good in [
            "/builds/42/log",
            "/log?tail=1&x=y",
            "/caf\u{E9}/v1.2",
            "/a/b.c/",
        ] {
            assert!(Path.check_topic(good).is_ok(), "{good:?}");
        }
        for bad in [
            "builds",
            "/a/../b",
            "/a/./b",
            "/a/.",
            "/a/%2e%2E/b",
            "/a/%2E/b",
            "/a#frag",
            "/a b",
            "/a\tb",
            "/a\u{0}",
        ] {
            assert!(Path.check_filter(bad).is_err(), "{bad:?}");
        }
        assert!(Path
            .check_filter(&format!("/{}", "a".repeat(8192)))
            .is_err());
        // A parameter value can name no other resource, decoded or not.
        for c in ['/', '\\', '?', '#', '%', '&', '=', '+', ';', ' ', '\t'] {
            assert!(Path.is_reserved(c), "{c:?}");
        }
        assert!(Path.check_text("..").is_err());
        assert!(Path.check_text(".").is_err());
        assert!(Path.check_text("v1..2").is_err());
        assert!(Path.check_text("v1.2").is_ok());
        assert!(!Path.has_wildcards("/a/+/b"));
    }

    #[test]
    fn path_grants_cover_plain_segments_only() {
        assert!(Path.covers("/builds/+/log", "/builds/42/log"));
        assert!(Path.covers("/builds/#", "/builds/42/log"));
        assert!(!Path.covers("/builds/+/log", "/builds/42/logs"));
        // A wildcard never stands for a query or an escape.
        assert!(!Path.covers("/builds/#", "/builds/42/log?all=1"));
        assert!(!Path.covers("/builds/+/log", "/builds/a%2Fb/log"));
        assert!(!Path.matches("/builds/+", "/builds/a?b"));
        assert!(Path.covers("/log?all=1", "/log?all=1"));
        assert!(Path.matches("/log?all=1", "/log?all=1"));
    }

    #[test]
    fn mqtt_refuses_what_its_utf8_rules_refuse() {
        for bad in [
            "a/\u{FFFE}",
            "a/\u{FFFF}",
            "\u{FDD0}",
            "\u{FDEF}/x",
            "\u{1FFFF}",
            "\u{10FFFE}",
            "a\u{0}",
            "a\u{1F}",
            "a\u{7F}",
            "a\u{85}",
            "a\u{9F}",
        ] {
            assert!(Mqtt.check_filter(bad).is_err(), "{bad:?}");
        }
        for good in [
            "\u{FDCF}",
            "\u{FDF0}",
            "\u{FFFD}",
            "\u{A0}",
            "caf\u{E9}/\u{1F600}",
        ] {
            assert!(Mqtt.check_filter(good).is_ok(), "{good:?}");
        }
        // NATS subjects may hold any character but controls and whitespace.
        assert!(Nats.check_filter("a.\u{FFFE}").is_ok());
        assert!(Nats.check_filter("a.\u{85}").is_err());
        assert!(Mqtt.check_filter(&"a".repeat(65_535)).is_ok());
        assert!(Mqtt.check_filter(&"a".repeat(65_536)).is_err());
    }

    #[test]
    fn matching() {
        assert!(Mqtt.matches("a/+/c", "a/b/c"));
        assert!(!Mqtt.matches("a/+/c", "a/b/d"));
        assert!(Mqtt.matches("a/#", "a/b/c"));
        assert!(Mqtt.matches("a/#", "a"));
        assert!(!Mqtt.matches("#", "$SYS/x"));
        assert!(Nats.matches("a.*", "a.b"));
        assert!(!Nats.matches("a.*", "a.b.c"));
        assert!(Nats.matches("a.>", "a.b.c"));
        assert!(!Nats.matches("a.>", "a"));
    }

    #[test]
    fn covering() {
        assert!(Mqtt.covers("sensors/#", "sensors/+/temp"));
        assert!(Mqtt.covers("sensors/+/temp", "sensors/a/temp"));
        assert!(Mqtt.covers("sensors/+/temp", "sensors/+/temp"));
        assert!(!Mqtt.covers("sensors/+/temp", "sensors/#"));
        assert!(!Mqtt.covers("sensors/a/temp", "sensors/+/temp"));
        assert!(!Mqtt.covers("sensors/+", "sensors/a/b"));
        assert!(!Mqtt.covers("#", "$SYS/x"));
        assert!(Nats.covers("orders.>", "orders.*.eu"));
        assert!(!Nats.covers("orders.*", "orders.>"));
        assert!(!Nats.covers("orders.>", "orders"));
        assert!(Nats.covers("a.b", "a.b"));
    }
}
