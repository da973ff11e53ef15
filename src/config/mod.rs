//! The configuration file: loading it, locating errors, and the one home of every default and bound.
//!
//! Two layers: `raw` mirrors the TOML for serde; one module per section validates it into runtime
//! types that cannot hold an invalid value (`server`, `auth`, `brokers`, `routes`, `simulator`,
//! `operations` for `[admin]` and `[log]`, `proxy`; the number and duration checks they share are
//! in `values`). Nothing after start-up sees the serde layer. Every error names the file, line and
//! column it comes from (`PATH:LINE:COLUMN: reason`).
//! A runtime type lives with the module that uses it ([`Overflow`] in `stream`, `Retention` in
//! `replay`, `EventName` in `sse`, `Cors` in `cors`, [`Simulator`] in `simulator`, [`AuthConfig`] in
//! `auth`, `Upstream` in `proxy`); the ones the whole gateway reads ([`Server`], [`Broker`],
//! [`Route`]) are defined by their section's module and re-exported here.

mod auth;
mod brokers;
mod operations;
mod origin;
mod proxy;
mod raw;
mod routes;
mod server;
mod simulator;
#[cfg(test)]
mod testing;
mod values;

pub use brokers::{Broker, BrokerKind};
pub use operations::{Admin, LogFormat};
pub use routes::{Route, Topics};
pub use server::{Server, Tls};

use crate::auth::AuthConfig;
use crate::simulator::Simulator;
use crate::stream::Overflow;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::{Range, RangeInclusive};
use std::path::Path;
use std::time::Duration;

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: Server,
    pub auth: Option<AuthConfig>,
    pub brokers: Vec<Broker>,
    pub routes: Vec<Route>,
    pub simulator: Option<Simulator>,
    /// The admin listener, if `[admin]` is configured.
    pub admin: Option<Admin>,
    pub log_format: LogFormat,
    /// Where requests that sluice does not answer itself go, if `[proxy]` is configured.
    pub proxy: Option<std::sync::Arc<crate::proxy::Upstream>>,
}

impl Config {
    /// What is valid but deserves a word (printed by `--check`, logged at start).
    pub fn warnings(&self) -> Vec<String> {
        self.routes
            .iter()
            .filter(|r| r.auth && !r.compress.is_empty())
            .map(|r| {
                format!(
                    "route {:?} has compress and auth together: compressing a stream that mixes \
                     secrets with data an attacker can influence can leak the secrets (BREACH); \
                     see the README's \"Compressed streams\"",
                    r.path.as_str()
                )
            })
            .collect()
    }
}

// ---- bounds: what each key may be, so no accepted value can break sluice after start-up -------

/// Every duration key (`heartbeat`, `retry`, `write_timeout`, `request_timeout`, `linger` unless
/// "0s", the simulator's `interval`). A millisecond is the resolution of sluice's timers and of
/// `retry:`; nothing sluice waits for needs more than a day, and far larger values overflow clock
/// arithmetic (a deadline of now + 300000000000y cannot be represented).
pub const DURATION_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(24 * 60 * 60);
/// `max_publish_bytes`: up to 64 MiB, NATS's own ceiling for `max_payload`. A body is read into
/// memory whole before it is published; past the broker's own limit (its announced `max_payload` or
/// maximum packet size) a publish gets `413`.
pub const PUBLISH_BYTES_RANGE: RangeInclusive<usize> = 1..=64 * 1024 * 1024;
/// `max_new_streams_per_second`: from 1 to a million (past what one process can open anyway).
pub const NEW_STREAMS_RATE_RANGE: RangeInclusive<u32> = 1..=1_000_000;
/// `[server] compression_level`: each library's own range (zstd's negative levels are left out).
pub const GZIP_LEVEL_RANGE: RangeInclusive<u32> = 1..=9;
pub const BROTLI_LEVEL_RANGE: RangeInclusive<u32> = 0..=11;
pub const ZSTD_LEVEL_RANGE: RangeInclusive<i32> = 1..=19;
/// `max_compressors`: 0 (every compressed write on its own) to a million.
pub const MAX_COMPRESSORS_RANGE: RangeInclusive<usize> = 0..=1_000_000;
/// `max_memory`, in bytes: from 16 MiB (sluice itself takes about 10) to 16 TiB.
pub const MAX_MEMORY_RANGE: RangeInclusive<u64> = 16 * 1024 * 1024..=16 * 1024 * 1024 * 1024 * 1024;
/// `max_streams_per_connection`: at the top, one HTTP/2 connection holds about 200 MiB of streams.
pub const STREAMS_PER_CONNECTION_RANGE: RangeInclusive<u32> = 1..=100_000;
/// `max_connections`: any positive number (the open-file limit caps connections at start).
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<usize> = 1..=usize::MAX;
/// The simulator's `devices`: each publishes three values per interval.
pub const SIMULATED_DEVICES_RANGE: RangeInclusive<usize> = 1..=1000;
/// `sluice --mint-token --ttl`: a demo or test token lives at most a year ("1y", 365.25 days).
pub const TOKEN_TTL_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(31_557_600);
/// A route's `buffer`, in events.
pub const BUFFER_RANGE: RangeInclusive<usize> = 1..=1_000_000;
/// A route's `replay`, in events per concrete topic; 0 is off.
pub const REPLAY_RANGE: RangeInclusive<usize> = 0..=1_000_000;
/// A replay route's `replay_bytes`: 64 KiB to 64 GiB.
pub const REPLAY_BYTES_RANGE: RangeInclusive<usize> = 64 * 1024..=64 * 1024 * 1024 * 1024;
/// A `topics` route's `max_topics`: `?topic=` parameters per stream.
pub const MAX_TOPICS_RANGE: RangeInclusive<usize> = 1..=1000;
/// A nats broker's `max_control_line`: from the least a NATS server accepts to 16 MiB.
pub const MAX_CONTROL_LINE_RANGE: RangeInclusive<usize> =
    sluice_nats::MIN_MAX_CONTROL_LINE..=16 * 1024 * 1024;
/// An mqtt broker's `qos`: sluice subscribes with at most once or at least once.
pub const MQTT_QOS_RANGE: RangeInclusive<u8> = 0..=1;
/// A route's `jetstream`: the longest stream name a NATS server takes.
pub const MAX_JETSTREAM_NAME_BYTES: usize = 255;

// ---- defaults: the one home of every default value --------------------------------------------

pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
pub const DEFAULT_RETRY: Duration = Duration::from_secs(2);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_PUBLISH_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 1000;
/// At most this many compressed streams hold a compressor at once (about 470 MB with gzip).
pub const DEFAULT_MAX_COMPRESSORS: usize = 2048;
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// No limit per client IP.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 0;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_COOKIE: &str = "sluice_token";
pub const DEFAULT_TOKEN_QUERY: &str = "access_token";
pub const DEFAULT_MAX_CONTROL_LINE: usize = sluice_nats::DEFAULT_MAX_CONTROL_LINE;
pub const DEFAULT_MQTT_QOS: u8 = 1;
pub const DEFAULT_BUFFER: usize = 256;
pub const DEFAULT_OVERFLOW: Overflow = Overflow::Disconnect;
pub const DEFAULT_MAX_TOPICS: usize = 32;
/// Replay off: a route is live only.
pub const DEFAULT_REPLAY: usize = 0;
pub const DEFAULT_REPLAY_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_LINGER: Duration = Duration::from_secs(60);
pub const DEFAULT_SIMULATED_DEVICES: usize = 4;
pub const DEFAULT_SIMULATOR_INTERVAL: Duration = Duration::from_secs(1);
/// `[proxy] connect_timeout`: TCP and TLS to the upstream.
pub const DEFAULT_PROXY_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `[proxy] read_timeout`: the upstream's silence before its response head, or within a response
/// body that is not an event stream (nginx's `proxy_read_timeout` default).
pub const DEFAULT_PROXY_READ_TIMEOUT: Duration = Duration::from_secs(60);

// ---- loading and validation ------------------------------------------------------------------

/// Turns byte offsets into `PATH:LINE:COLUMN` errors.
struct Locator<'a> {
    file: &'a str,
    source: &'a str,
}

impl Locator<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let at = span.start.min(self.source.len());
        let before = &self.source[..at];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(at, |nl| at - nl - 1) + 1;
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: 1,
        column: 1,
        message: format!("cannot read: {e}"),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&file, &source, base)
}

/// Parses and validates configuration text; `base` resolves relative file paths (the file's folder).
/// Sections are checked in a fixed order (server, auth, brokers, routes, simulator, admin, log,
/// proxy), so a file with several errors always reports the same one.
pub fn parse(file: &str, source: &str, base: &Path) -> Result<Config, ConfigError> {
    let at = Locator { file, source };
    let raw: raw::RawConfig = toml::from_str(source)
        .map_err(|e| at.error(e.span().unwrap_or(0..0), e.message().trim().to_owned()))?;
    let server = server::validate(&at, raw.server, base)?;
    let auth = match raw.auth {
        Some(auth) => Some(auth::validate(&at, auth, base)?),
        None => None,
    };
    let brokers = brokers::validate(&at, raw.brokers, base)?;
    let routes = routes::validate(&at, raw.routes, &brokers, auth.is_some())?;
    let simulator = match raw.simulator {
        Some(sim) => Some(simulator::validate(&at, sim, &brokers)?),
        None => None,
    };
    let admin = match raw.admin {
        Some(admin) => Some(operations::validate_admin(&at, admin, &server)?),
        None => None,
    };
    let log_format = match raw.log {
        Some(log) => operations::validate_log(&at, log)?,
        None => LogFormat::default(),
    };
    let proxy = match raw.proxy {
        Some(proxy) => Some(std::sync::Arc::new(proxy::validate(&at, proxy, base)?)),
        None => None,
    };
    Ok(Config {
        server,
        auth,
        brokers,
        routes,
        simulator,
        admin,
        log_format,
        proxy,
    })
}

#[cfg(test)]
mod tests {
    use super::testing::{assert_refused, parse_text, ROUTE};
    use super::*;

    #[test]
    fn errors_are_located_by_line_and_column() {
        let at = Locator {
            file: "F",
            source: "a = 1\nbb = 2\n",
        };
        let place = |span: Range<usize>| {
            let e = at.error(span, "why");
            (e.line, e.column)
        };
        assert_eq!(place(0..0), (1, 1));
        assert_eq!(place(4..5), (1, 5));
        assert_eq!(place(6..8), (2, 1));
        assert_eq!(place(11..12), (2, 6));
        // A span past the end (toml reports some at the end of input) is the end.
        assert_eq!(place(99..99), (3, 1));
        assert_eq!(at.error(0..0, "why").to_string(), "F:1:1: why");
    }

    #[test]
    fn what_serde_refuses_is_located_too() {
        assert_refused(&[
            (
                "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n",
                "3:1: unknown field `lisen`",
            ),
            (
                format!("{ROUTE}bufer = 3\n").as_str(),
                "7:1: unknown field `bufer`",
            ),
            (
                "[server]\nlisten = \"127.0.0.1:1\"\nheartbeat = 15\n",
                "3:13: invalid type",
            ),
            ("[server\n", "1:8:"),
        ]);
    }

    /// What reloading will rely on: a file read twice compares equal section by section, a value
    /// written out equals its default, and a change shows in the one route it concerns.
    #[test]
    fn validated_sections_compare_equal_iff_they_behave_the_same() {
        let text = |buffer: &str| {
            format!("[server]\nheartbeat = \"15s\"\n{ROUTE}{buffer}\n[[routes]]\npath = \"/b/{{x}}\"\nbroker = \"m\"\ntopic = \"b/{{x}}\"\nreplay = 5\n")
        };
        let parse = |buffer: &str| parse_text(&text(buffer)).expect("valid");
        let (first, again) = (parse(""), parse("buffer = 256"));
        assert_eq!(first.server, again.server);
        assert_eq!(first.brokers, again.brokers);
        assert_eq!(first.routes, again.routes);
        let changed = parse("buffer = 8");
        assert_ne!(first.routes[0], changed.routes[0]);
        assert_eq!(first.routes[1], changed.routes[1]);
        let other_server = parse_text(&text("").replace("15s", "16s")).expect("valid");
        assert_ne!(first.server, other_server.server);
        assert_eq!(first.routes, other_server.routes);
    }
}
