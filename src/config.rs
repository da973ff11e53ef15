//! The TOML configuration: serde structs that mirror the file, and `validate()` into runtime types.
//!
//! Every error names the file, line and column it comes from (`PATH:LINE:COLUMN: reason`). Nothing
//! after start-up sees the serde layer: the runtime types below cannot hold an invalid value.

use crate::auth::{AuthConfig, JwtKey};
use crate::cors::Cors;
use crate::keys;
use crate::replay::Retention;
use crate::route::{PathTemplate, TopicTemplate};
use crate::simulator::Simulator;
use crate::sse::EventName;
use crate::stream::Overflow;
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use sluice_bridge::TopicSyntax;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

// ---- the file, as serde reads it -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    auth: Option<RawAuth>,
    #[serde(default)]
    brokers: BTreeMap<String, RawBroker>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    simulator: Option<RawSimulator>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    jwt_secret_env: Option<Spanned<String>>,
    jwt_public_key: Option<Spanned<String>>,
    cookie: Option<Spanned<String>>,
    query: Option<Spanned<String>>,
    audience: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    allow_origins: Spanned<Vec<String>>,
    allow_credentials: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimulator {
    broker: Spanned<String>,
    devices: Option<Spanned<usize>>,
    interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<OneOrMany>>,
    heartbeat: Option<Spanned<String>>,
    retry: Option<Spanned<String>>,
    write_timeout: Option<Spanned<String>>,
    max_publish_bytes: Option<Spanned<usize>>,
    max_streams_per_connection: Option<Spanned<u32>>,
    max_connections: Option<Spanned<usize>>,
    max_connections_per_ip: Option<Spanned<usize>>,
    max_memory: Option<Spanned<u64>>,
    request_timeout: Option<Spanned<String>>,
    static_dir: Option<Spanned<String>>,
    tls: Option<RawTls>,
    cors: Option<RawCors>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: Spanned<OneOrMany>,
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    url: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    qos: Option<Spanned<u8>>,
    max_control_line: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Spanned<String>,
    broker: Spanned<String>,
    topic: Option<Spanned<String>>,
    topics: Option<Spanned<Vec<String>>>,
    max_topics: Option<Spanned<usize>>,
    envelope: Option<bool>,
    auth: Option<Spanned<bool>>,
    event: Option<Spanned<String>>,
    buffer: Option<Spanned<usize>>,
    overflow: Option<Spanned<String>>,
    publish: Option<bool>,
    replay: Option<Spanned<usize>>,
    replay_bytes: Option<Spanned<usize>>,
    linger: Option<Spanned<String>>,
    jetstream: Option<Spanned<String>>,
    retained: Option<Spanned<bool>>,
}

// ---- the runtime types -----------------------------------------------------------------------

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: Server,
    pub auth: Option<AuthConfig>,
    pub brokers: Vec<Broker>,
    pub routes: Vec<Route>,
    pub simulator: Option<Simulator>,
}

#[derive(Clone, Debug)]
pub struct Server {
    /// Cleartext listeners: HTTP/1.1 and h2c with prior knowledge on the same port.
    pub listen: Vec<SocketAddr>,
    pub tls: Option<Tls>,
    /// A comment line is written on a stream idle this long.
    pub heartbeat: Duration,
    /// Sent as `retry:` when a stream opens.
    pub retry: Duration,
    /// A write to a client that makes no progress for this long ends its stream.
    pub write_timeout: Duration,
    /// The largest body a `POST` may publish (`413` past it).
    pub max_publish_bytes: usize,
    /// HTTP/2 concurrent streams per connection.
    pub max_streams_per_connection: u32,
    /// Client connections that hold open streams, in all (`503` past it).
    pub max_connections: usize,
    /// The same, per client IP address; 0 is no limit.
    pub max_connections_per_ip: usize,
    /// Past this resident memory (bytes), new streams and publishes get `503`; `None`: no bound.
    pub max_memory: Option<u64>,
    /// A request's head must arrive within this time, or the connection is dropped.
    pub request_timeout: Duration,
    /// Files served at `/` (the dashboard), if any.
    pub static_dir: Option<PathBuf>,
    pub cors: Option<Cors>,
}

#[derive(Clone, Debug)]
pub struct Tls {
    pub listen: Vec<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate chain and key from those files, loaded and matched.
    pub certified: Arc<CertifiedKey>,
}

#[derive(Clone, Debug)]
pub struct Broker {
    pub name: String,
    pub kind: BrokerKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    Memory,
    Nats {
        url: String,
        /// The server's `max_control_line`: the longest protocol line (and so subject) it takes.
        max_control_line: usize,
    },
    Mqtt {
        url: String,
        client_id: String,
        qos: u8,
    },
}

impl BrokerKind {
    pub fn syntax(&self) -> TopicSyntax {
        match self {
            BrokerKind::Nats { .. } => TopicSyntax::Nats,
            BrokerKind::Mqtt { .. } | BrokerKind::Memory => TopicSyntax::Mqtt,
        }
    }
}

/// Where a route's topics come from.
#[derive(Clone, Debug)]
pub enum Topics {
    /// One topic, from the path parameters (`topic = "..."`).
    Template(TopicTemplate),
    /// Repeated `?topic=` query parameters, each covered by one of `allowed` (`topics = [...]`).
    Query { allowed: Vec<String>, max: usize },
}

#[derive(Clone, Debug)]
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
/// `max_memory`, in bytes: from 16 MiB (sluice itself takes about 10) to 16 TiB.
pub const MAX_MEMORY_RANGE: RangeInclusive<u64> = 16 * 1024 * 1024..=16 * 1024 * 1024 * 1024 * 1024;
/// `max_streams_per_connection`: at the top, one HTTP/2 connection holds about 200 MiB of streams.
pub const STREAMS_PER_CONNECTION_RANGE: RangeInclusive<u32> = 1..=100_000;
/// The simulator's `devices`: each publishes three values per interval.
pub const SIMULATED_DEVICES_RANGE: RangeInclusive<usize> = 1..=1000;
/// `sluice --mint-token --ttl`: a demo or test token lives at most a year ("1y", 365.25 days).
pub const TOKEN_TTL_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(31_557_600);

// ---- defaults: the one home of every default value --------------------------------------------

pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8080,
));
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
pub const DEFAULT_RETRY: Duration = Duration::from_secs(2);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_PUBLISH_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 1000;
pub const DEFAULT_BUFFER: usize = 256;
pub const MAX_BUFFER: usize = 1_000_000;
pub const DEFAULT_LINGER: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_TOPICS: usize = 32;
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_COOKIE: &str = "sluice_token";
pub const DEFAULT_TOKEN_QUERY: &str = "access_token";
pub const DEFAULT_SIMULATED_DEVICES: usize = 4;
pub const DEFAULT_SIMULATOR_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_REPLAY: usize = 1_000_000;
pub const DEFAULT_REPLAY_BYTES: usize = 64 * 1024 * 1024;
pub const REPLAY_BYTES_RANGE: std::ops::RangeInclusive<usize> = 64 * 1024..=64 * 1024 * 1024 * 1024;
pub const DEFAULT_MAX_CONTROL_LINE: usize = sluice_nats::DEFAULT_MAX_CONTROL_LINE;
pub const MAX_CONTROL_LINE_RANGE: std::ops::RangeInclusive<usize> =
    sluice_nats::MIN_MAX_CONTROL_LINE..=16 * 1024 * 1024;

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
pub fn parse(file: &str, source: &str, base: &Path) -> Result<Config, ConfigError> {
    let at = Locator { file, source };
    let raw: RawConfig = toml::from_str(source)
        .map_err(|e| at.error(e.span().unwrap_or(0..0), e.message().trim().to_owned()))?;

    let server = validate_server(&at, raw.server, base)?;
    let auth = match raw.auth {
        Some(auth) => Some(validate_auth(&at, auth, base)?),
        None => None,
    };

    let mut brokers = Vec::new();
    for (name, broker) in raw.brokers {
        let kind = validate_broker(&at, &name, broker)?;
        brokers.push(Broker { name, kind });
    }

    let mut routes: Vec<Route> = Vec::new();
    for route in raw.routes {
        let span = route.path.span();
        if let Some(a) = route
            .auth
            .as_ref()
            .filter(|a| *a.get_ref() && auth.is_none())
        {
            return Err(at.error(
                a.span(),
                "auth = true needs an [auth] section (jwt_secret_env or jwt_public_key)",
            ));
        }
        let route = validate_route(&at, route, &brokers)?;
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
    let simulator = match raw.simulator {
        Some(sim) => Some(validate_simulator(&at, sim, &brokers)?),
        None => None,
    };
    Ok(Config {
        server,
        auth,
        brokers,
        routes,
        simulator,
    })
}

fn validate_auth(at: &Locator, raw: RawAuth, base: &Path) -> Result<AuthConfig, ConfigError> {
    let key = match (&raw.jwt_secret_env, &raw.jwt_public_key) {
        (Some(env), None) => {
            let secret = std::env::var(env.get_ref()).unwrap_or_default();
            if secret.is_empty() {
                return Err(at.error(
                    env.span(),
                    format!(
                        "the environment variable {} is not set or empty",
                        env.get_ref()
                    ),
                ));
            }
            JwtKey::secret(secret.as_bytes())
        }
        (None, Some(file)) => {
            let path = base.join(file.get_ref());
            let pem = std::fs::read(&path).map_err(|e| {
                at.error(file.span(), format!("cannot read {}: {e}", path.display()))
            })?;
            JwtKey::public_pem(&pem)
                .map_err(|e| at.error(file.span(), format!("{}: {e}", path.display())))?
        }
        (Some(env), Some(_)) => {
            return Err(at.error(
                env.span(),
                "set one of jwt_secret_env (HS256) and jwt_public_key (RS256/ES256), not both",
            ))
        }
        (None, None) => {
            return Err(at.error(
                0..0,
                "[auth] needs jwt_secret_env (HS256) or jwt_public_key (RS256/ES256)",
            ))
        }
    };
    let name = |v: &Option<Spanned<String>>, default: &str| -> Result<String, ConfigError> {
        match v {
            None => Ok(default.to_owned()),
            Some(v)
                if v.get_ref().is_empty()
                    || !v
                        .get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                Err(at.error(
                    v.span(),
                    "must be non-empty letters, digits, '-', '_' or '.'",
                ))
            }
            Some(v) => Ok(v.get_ref().clone()),
        }
    };
    Ok(AuthConfig {
        key,
        cookie: name(&raw.cookie, DEFAULT_COOKIE)?,
        query: name(&raw.query, DEFAULT_TOKEN_QUERY)?,
        audience: match raw.audience {
            Some(a) if a.get_ref().is_empty() => {
                return Err(at.error(a.span(), "audience cannot be empty"))
            }
            a => a.map(Spanned::into_inner),
        },
        secret_env: raw.jwt_secret_env.map(Spanned::into_inner),
    })
}

fn validate_simulator(
    at: &Locator,
    raw: RawSimulator,
    brokers: &[Broker],
) -> Result<Simulator, ConfigError> {
    let Some(broker) = brokers
        .iter()
        .position(|b| b.name == *raw.broker.get_ref() && b.kind == BrokerKind::Memory)
    else {
        return Err(at.error(
            raw.broker.span(),
            format!(
                "no memory broker named {:?}: the simulator publishes on a memory broker",
                raw.broker.get_ref()
            ),
        ));
    };
    Ok(Simulator {
        broker,
        devices: bounded(
            at,
            "devices",
            raw.devices,
            DEFAULT_SIMULATED_DEVICES,
            SIMULATED_DEVICES_RANGE,
        )?,
        interval: duration(at, raw.interval, DEFAULT_SIMULATOR_INTERVAL)?,
    })
}

/// A duration key: a humantime string within [`DURATION_RANGE`].
fn duration(
    at: &Locator,
    value: Option<Spanned<String>>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => in_duration_range(at, &value, parse_duration(at, &value)?),
    }
}

/// A duration that may also be zero ("0s" turns the feature off).
fn optional_duration(
    at: &Locator,
    value: Option<Spanned<String>>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match parse_duration(at, &value)? {
        zero if zero.is_zero() => Ok(zero),
        parsed => in_duration_range(at, &value, parsed),
    }
}

fn parse_duration(at: &Locator, value: &Spanned<String>) -> Result<Duration, ConfigError> {
    let text = value.get_ref().trim();
    // humantime wants a unit even on zero.
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|e| {
        at.error(
            value.span(),
            format!(
                "invalid duration {:?}: {e} (e.g. \"15s\", \"500ms\")",
                value.get_ref()
            ),
        )
    })
}

fn in_duration_range(
    at: &Locator,
    value: &Spanned<String>,
    parsed: Duration,
) -> Result<Duration, ConfigError> {
    if DURATION_RANGE.contains(&parsed) {
        return Ok(parsed);
    }
    Err(at.error(
        value.span(),
        format!(
            "duration {:?} is out of range: it must be between {} and {}",
            value.get_ref(),
            humantime::format_duration(*DURATION_RANGE.start()),
            humantime::format_duration(*DURATION_RANGE.end())
        ),
    ))
}

/// A number key within `range`, or `default` when it is not set.
fn bounded<T: Copy + PartialOrd + std::fmt::Display>(
    at: &Locator,
    key: &str,
    value: Option<Spanned<T>>,
    default: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if range.contains(v.get_ref()) => Ok(v.into_inner()),
        Some(v) => Err(at.error(
            v.span(),
            format!(
                "{key} must be between {} and {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

fn addresses(at: &Locator, value: Spanned<OneOrMany>) -> Result<Vec<SocketAddr>, ConfigError> {
    let span = value.span();
    let list = match value.into_inner() {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    };
    if list.is_empty() {
        return Err(at.error(span, "listen needs at least one address"));
    }
    list.iter()
        .map(|a| match a.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => Err(at.error(
                span.clone(),
                format!("listen address {a:?}: port 0 would listen on a random port"),
            )),
            Ok(addr) => Ok(addr),
            Err(_) => Err(at.error(
                span.clone(),
                format!("invalid listen address {a:?}: expected IP:PORT, e.g. \"127.0.0.1:8080\""),
            )),
        })
        .collect()
}

/// Refuses listen addresses that cannot all be bound at once: the same one twice (in `listen` or
/// `tls.listen`), or a wildcard beside another address on its port (`0.0.0.0:P` takes port P on
/// every IPv4 address, `[::]:P` on every address, IPv4 included, as Linux binds it by default).
/// Each list comes with its span; an error names the later list.
fn check_overlaps(
    at: &Locator,
    lists: &[(&[SocketAddr], Range<usize>)],
) -> Result<(), ConfigError> {
    let all: Vec<(SocketAddr, &Range<usize>)> = lists
        .iter()
        .flat_map(|(addrs, span)| addrs.iter().map(move |a| (*a, span)))
        .collect();
    for (i, (later, span)) in all.iter().enumerate() {
        for (earlier, _) in &all[..i] {
            if later.port() != earlier.port() {
                continue;
            }
            let (a, b) = (plain_ip(earlier.ip()), plain_ip(later.ip()));
            let covers =
                |w: IpAddr, other: IpAddr| w.is_unspecified() && (w.is_ipv6() || other.is_ipv4());
            let wildcard = [(a, b), (b, a)]
                .into_iter()
                .find_map(|(w, other)| covers(w, other).then_some(w));
            let message = if a == b {
                format!("listen address \"{later}\" is listed twice")
            } else if let Some(w) = wildcard {
                let every = if w.is_ipv6() {
                    "every address, IPv4 included"
                } else {
                    "every IPv4 address"
                };
                format!(
                    "listen address \"{later}\" overlaps \"{earlier}\": {w} takes port {} on {every}",
                    later.port()
                )
            } else {
                continue;
            };
            return Err(at.error((*span).clone(), message));
        }
    }
    Ok(())
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) binds its IPv4 address.
fn plain_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why `origin` can never equal an `Origin` header a browser sends, if it cannot. Browsers send
/// `scheme://host[:port]` with the host in lower case (IDN as punycode, IPv6 in brackets, compressed)
/// and no default port; what is listed is also echoed in a response header, so nothing else may pass.
fn origin_problem(origin: &str) -> Option<&'static str> {
    let (rest, default_port) = match origin.split_once("://") {
        Some(("https", rest)) => (rest, "443"),
        Some(("http", rest)) => (rest, "80"),
        _ => return Some("the scheme must be http:// or https://"),
    };
    // The host, and what follows it: nothing, or ":PORT".
    let (host_ok, after) = match rest.strip_prefix('[') {
        Some(v6) => {
            let Some((ip, after)) = v6.split_once(']') else {
                return Some("an IPv6 host needs its closing ']'");
            };
            let canonical = ip
                .parse::<std::net::Ipv6Addr>()
                .is_ok_and(|parsed| parsed.to_string() == ip);
            (canonical, after)
        }
        None => {
            let host = rest.find(':').map_or(rest, |colon| &rest[..colon]);
            let host_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
            (host_ok, &rest[host.len()..])
        }
    };
    if !host_ok {
        return Some(
            "the host must be lower-case letters, digits, '-' and '.' (punycode for other names), \
             or a compressed IPv6 address in brackets: no \"*\", no path, no spaces or control characters",
        );
    }
    if after.is_empty() {
        return None;
    }
    match after.strip_prefix(':') {
        Some(port) if port == default_port => {
            Some("browsers leave out the scheme's default port: drop it")
        }
        Some(port)
            if (1..=5).contains(&port.len())
                && !port.starts_with('0')
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| p <= 65_535) =>
        {
            None
        }
        _ => Some("the port must be a number from 1 to 65535, after a ':'"),
    }
}

fn validate_server(at: &Locator, raw: RawServer, base: &Path) -> Result<Server, ConfigError> {
    let (listen, listen_span) = match raw.listen {
        Some(l) => {
            let span = l.span();
            (addresses(at, l)?, span)
        }
        None => (vec![DEFAULT_LISTEN], 0..0),
    };
    let tls = match raw.tls {
        None => None,
        Some(tls) => {
            let read = |p: &Spanned<String>| -> Result<(PathBuf, Vec<u8>), ConfigError> {
                let path = base.join(p.get_ref());
                if p.get_ref().is_empty() || !path.is_file() {
                    return Err(at.error(p.span(), format!("no such file: {}", path.display())));
                }
                let bytes = std::fs::read(&path).map_err(|e| {
                    at.error(p.span(), format!("cannot read {}: {e}", path.display()))
                })?;
                Ok((path, bytes))
            };
            let ((cert, cert_pem), (key, key_pem)) = (read(&tls.cert)?, read(&tls.key)?);
            // Loaded here, as rustls will use them: pingora would only panic on a bad pair at
            // start, on a thread of its own, and take the cleartext listeners down with it.
            let certified = keys::tls_certified_key(&cert_pem, &key_pem).map_err(|(file, e)| {
                let (raw, path) = match file {
                    keys::TlsFile::Cert => (&tls.cert, &cert),
                    keys::TlsFile::Key => (&tls.key, &key),
                };
                at.error(raw.span(), format!("{}: {e}", path.display()))
            })?;
            let span = tls.listen.span();
            Some((
                Tls {
                    listen: addresses(at, tls.listen)?,
                    cert,
                    key,
                    certified,
                },
                span,
            ))
        }
    };
    let mut lists = vec![(listen.as_slice(), listen_span)];
    if let Some((tls, span)) = &tls {
        lists.push((tls.listen.as_slice(), span.clone()));
    }
    check_overlaps(at, &lists)?;
    let positive = |v: Option<Spanned<usize>>, default: usize| -> Result<usize, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) if *v.get_ref() == 0 => Err(at.error(v.span(), "must be greater than zero")),
            Some(v) => Ok(v.into_inner()),
        }
    };
    let cors = match raw.cors {
        None => None,
        Some(cors) => {
            for origin in cors.allow_origins.get_ref() {
                if let Some(problem) = origin_problem(origin) {
                    return Err(at.error(
                        cors.allow_origins.span(),
                        format!("invalid origin {origin:?}: {problem} (expected scheme://host[:port], e.g. \"https://dash.example.com\")"),
                    ));
                }
            }
            Some(Cors {
                allow_origins: cors.allow_origins.into_inner(),
                allow_credentials: cors.allow_credentials.unwrap_or(false),
            })
        }
    };
    let static_dir = match raw.static_dir {
        None => None,
        Some(dir) => {
            let path = base.join(dir.get_ref());
            if dir.get_ref().is_empty() || !path.is_dir() {
                return Err(at.error(dir.span(), format!("no such folder: {}", path.display())));
            }
            Some(path)
        }
    };
    Ok(Server {
        listen,
        tls: tls.map(|(tls, _)| tls),
        cors,
        static_dir,
        max_connections: positive(raw.max_connections, DEFAULT_MAX_CONNECTIONS)?,
        max_connections_per_ip: raw.max_connections_per_ip.map_or(0, Spanned::into_inner),
        max_memory: match raw.max_memory {
            None => None,
            Some(m) => Some(bounded(at, "max_memory", Some(m), 0, MAX_MEMORY_RANGE)?),
        },
        request_timeout: duration(at, raw.request_timeout, DEFAULT_REQUEST_TIMEOUT)?,
        heartbeat: duration(at, raw.heartbeat, DEFAULT_HEARTBEAT)?,
        retry: duration(at, raw.retry, DEFAULT_RETRY)?,
        write_timeout: duration(at, raw.write_timeout, DEFAULT_WRITE_TIMEOUT)?,
        max_publish_bytes: bounded(
            at,
            "max_publish_bytes",
            raw.max_publish_bytes,
            DEFAULT_MAX_PUBLISH_BYTES,
            PUBLISH_BYTES_RANGE,
        )?,
        max_streams_per_connection: bounded(
            at,
            "max_streams_per_connection",
            raw.max_streams_per_connection,
            DEFAULT_MAX_STREAMS_PER_CONNECTION,
            STREAMS_PER_CONNECTION_RANGE,
        )?,
    })
}

fn validate_broker(at: &Locator, name: &str, raw: RawBroker) -> Result<BrokerKind, ConfigError> {
    let url = |scheme: &str| -> Result<String, ConfigError> {
        let Some(url) = &raw.url else {
            return Err(at.error(
                raw.kind.span(),
                format!("broker {name:?} needs a url, e.g. \"{scheme}://127.0.0.1\""),
            ));
        };
        if !url.get_ref().starts_with(&format!("{scheme}://")) {
            return Err(at.error(
                url.span(),
                format!("a {} url must start with {scheme}://", raw.kind.get_ref()),
            ));
        }
        Ok(url.get_ref().clone())
    };
    let not_mqtt = |raw: &RawBroker| -> Result<(), ConfigError> {
        if let Some(c) = &raw.client_id {
            return Err(at.error(c.span(), "client_id is for mqtt brokers only"));
        }
        if let Some(q) = &raw.qos {
            return Err(at.error(q.span(), "qos is for mqtt brokers only"));
        }
        Ok(())
    };
    let not_nats = |raw: &RawBroker| -> Result<(), ConfigError> {
        match &raw.max_control_line {
            Some(m) => Err(at.error(m.span(), "max_control_line is for nats brokers only")),
            None => Ok(()),
        }
    };
    match raw.kind.get_ref().as_str() {
        "memory" => {
            not_mqtt(&raw)?;
            not_nats(&raw)?;
            if let Some(u) = &raw.url {
                return Err(at.error(u.span(), "a memory broker has no url"));
            }
            Ok(BrokerKind::Memory)
        }
        "nats" => {
            not_mqtt(&raw)?;
            let max_control_line = match &raw.max_control_line {
                None => DEFAULT_MAX_CONTROL_LINE,
                Some(m) if MAX_CONTROL_LINE_RANGE.contains(m.get_ref()) => *m.get_ref(),
                Some(m) => {
                    return Err(at.error(
                        m.span(),
                        format!(
                            "max_control_line must be between {} and {} bytes",
                            MAX_CONTROL_LINE_RANGE.start(),
                            MAX_CONTROL_LINE_RANGE.end()
                        ),
                    ))
                }
            };
            Ok(BrokerKind::Nats {
                url: url("nats")?,
                max_control_line,
            })
        }
        "mqtt" => {
            not_nats(&raw)?;
            let url = url("mqtt")?;
            let qos = match &raw.qos {
                None => 1,
                Some(q) if *q.get_ref() <= 1 => *q.get_ref(),
                Some(q) => return Err(at.error(q.span(), "qos must be 0 or 1")),
            };
            let client_id = match &raw.client_id {
                Some(c) if c.get_ref().is_empty() => {
                    return Err(at.error(c.span(), "client_id cannot be empty"))
                }
                Some(c) => c.get_ref().clone(),
                // Two sluice instances with one client id would keep disconnecting each other.
                None => format!("sluice-{name}-{}", std::process::id()),
            };
            Ok(BrokerKind::Mqtt {
                url,
                client_id,
                qos,
            })
        }
        other => Err(at.error(
            raw.kind.span(),
            format!("unknown broker type {other:?}: expected \"mqtt\", \"nats\" or \"memory\""),
        )),
    }
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
            let max = match &raw.max_topics {
                None => DEFAULT_MAX_TOPICS,
                Some(m) if (1..=1000).contains(m.get_ref()) => *m.get_ref(),
                Some(m) => return Err(at.error(m.span(), "max_topics must be between 1 and 1000")),
            };
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
    let buffer = match &raw.buffer {
        None => DEFAULT_BUFFER,
        Some(b) if (1..=MAX_BUFFER).contains(b.get_ref()) => *b.get_ref(),
        Some(b) => {
            return Err(at.error(
                b.span(),
                format!("buffer must be between 1 and {MAX_BUFFER} events"),
            ))
        }
    };
    let overflow = match raw
        .overflow
        .as_ref()
        .map(|o| (o.get_ref().as_str(), o.span()))
    {
        None | Some(("disconnect", _)) => Overflow::Disconnect,
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
    Ok(Route {
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

fn retention(at: &Locator, raw: &RawRoute, broker: &Broker) -> Result<Retention, ConfigError> {
    let replay = match &raw.replay {
        Some(r) if *r.get_ref() > MAX_REPLAY => {
            return Err(at.error(
                r.span(),
                format!("replay must be between 0 (off) and {MAX_REPLAY} events"),
            ))
        }
        Some(r) => *r.get_ref(),
        None => 0,
    };
    if let Some(stream) = &raw.jetstream {
        if !matches!(broker.kind, BrokerKind::Nats { .. }) {
            return Err(at.error(stream.span(), "jetstream is for nats brokers only"));
        }
        let name = stream.get_ref();
        if name.len() > 255 {
            return Err(at.error(
                stream.span(),
                "a JetStream stream name is at most 255 bytes",
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
    let bytes = match &raw.replay_bytes {
        None => DEFAULT_REPLAY_BYTES,
        Some(b) if REPLAY_BYTES_RANGE.contains(b.get_ref()) => *b.get_ref(),
        Some(b) => {
            return Err(at.error(
                b.span(),
                format!(
                    "replay_bytes must be between {} (64 KiB) and {} (64 GiB)",
                    REPLAY_BYTES_RANGE.start(),
                    REPLAY_BYTES_RANGE.end()
                ),
            ))
        }
    };
    Ok(Retention::Replay {
        per_topic: replay,
        bytes,
        linger: optional_duration(at, raw.linger.clone(), DEFAULT_LINGER)?,
    })
}
