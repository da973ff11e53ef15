//! Validates `[server]` (listen addresses, TLS, CORS, limits, durations) into a [`Server`].

use super::raw::{OneOrMany, RawCors, RawLevels, RawServer, RawTls};
use super::values::{bounded, duration, within};
use super::{
    ConfigError, Locator, BROTLI_LEVEL_RANGE, DEFAULT_HEARTBEAT, DEFAULT_LISTEN,
    DEFAULT_MAX_COMPRESSORS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP,
    DEFAULT_MAX_PUBLISH_BYTES, DEFAULT_MAX_STREAMS_PER_CONNECTION, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RETRY, DEFAULT_WRITE_TIMEOUT, GZIP_LEVEL_RANGE, MAX_COMPRESSORS_RANGE,
    MAX_CONNECTIONS_RANGE, MAX_MEMORY_RANGE, NEW_STREAMS_RATE_RANGE, PUBLISH_BYTES_RANGE,
    STREAMS_PER_CONNECTION_RANGE, ZSTD_LEVEL_RANGE,
};
use crate::compress::Levels;
use crate::cors::Cors;
use crate::keys;
use rustls::sign::CertifiedKey;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// `[server]`, validated.
///
/// Two servers compare equal iff every setting is the same, TLS included (see [`Tls`]).
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// New streams admitted per second (a reconnect storm becomes a ramp); `None`: no bound.
    pub max_new_streams_per_second: Option<u32>,
    /// Past this resident memory (bytes), new streams and publishes get `503`; `None`: no bound.
    pub max_memory: Option<u64>,
    /// A request's head must arrive within this time, or the connection is dropped.
    pub request_timeout: Duration,
    /// Files served at `/` (the dashboard), if any.
    pub static_dir: Option<PathBuf>,
    /// The Unix socket a new process (`--upgrade`) takes the listening sockets over on, if any.
    pub upgrade_socket: Option<PathBuf>,
    pub cors: Option<Cors>,
    /// The level of each encoding of compressed streams.
    pub compression_level: Levels,
    /// How many compressed streams may hold a compressor at once.
    pub max_compressors: usize,
}

/// `[server.tls]`, validated.
///
/// Two compare equal iff they listen on the same addresses, name the same files, and those files
/// held the same certificate chain when they were loaded: a certificate renewed in place differs. The
/// private keys are not compared (rustls does not expose them), and need not be: each was checked to
/// match its certificate, so the same certificate means the same key pair.
#[derive(Clone, Debug)]
pub struct Tls {
    pub listen: Vec<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate chain and key from those files, loaded and matched.
    pub certified: Arc<CertifiedKey>,
}

impl PartialEq for Tls {
    fn eq(&self, other: &Self) -> bool {
        self.listen == other.listen
            && self.cert == other.cert
            && self.key == other.key
            && self.certified.cert == other.certified.cert
    }
}

impl Eq for Tls {}

/// `[server]`; relative paths (TLS files, `static_dir`) are relative to `base`.
pub(super) fn validate(at: &Locator, raw: RawServer, base: &Path) -> Result<Server, ConfigError> {
    let (listen, listen_span) = match raw.listen {
        Some(l) => {
            let span = l.span();
            (addresses(at, l)?, span)
        }
        None => (vec![DEFAULT_LISTEN], 0..0),
    };
    let tls = match raw.tls {
        None => None,
        Some(raw) => {
            let span = raw.listen.span();
            Some((tls(at, raw, base)?, span))
        }
    };
    let mut lists = vec![(listen.as_slice(), listen_span)];
    if let Some((tls, span)) = &tls {
        lists.push((tls.listen.as_slice(), span.clone()));
    }
    check_overlaps(at, &lists)?;
    let cors = match raw.cors {
        None => None,
        Some(cors) => Some(validate_cors(at, cors)?),
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
    let upgrade_socket = match raw.upgrade_socket {
        None => None,
        Some(path) => Some(upgrade_socket(at, &path, base)?),
    };
    let compression_level = match &raw.compression_level {
        None => Levels::default(),
        Some(levels) => compression_levels(at, levels)?,
    };
    Ok(Server {
        compression_level,
        max_compressors: bounded(
            at,
            "max_compressors",
            raw.max_compressors.as_ref(),
            DEFAULT_MAX_COMPRESSORS,
            MAX_COMPRESSORS_RANGE,
        )?,
        listen,
        tls: tls.map(|(tls, _)| tls),
        cors,
        static_dir,
        upgrade_socket,
        max_connections: within(
            at,
            raw.max_connections.as_ref(),
            DEFAULT_MAX_CONNECTIONS,
            &MAX_CONNECTIONS_RANGE,
            || "must be greater than zero".to_owned(),
        )?,
        max_connections_per_ip: raw
            .max_connections_per_ip
            .map_or(DEFAULT_MAX_CONNECTIONS_PER_IP, Spanned::into_inner),
        max_new_streams_per_second: match &raw.max_new_streams_per_second {
            None => None,
            Some(r) => Some(bounded(
                at,
                "max_new_streams_per_second",
                Some(r),
                1,
                NEW_STREAMS_RATE_RANGE,
            )?),
        },
        max_memory: match &raw.max_memory {
            None => None,
            Some(m) => Some(bounded(at, "max_memory", Some(m), 0, MAX_MEMORY_RANGE)?),
        },
        request_timeout: duration(at, raw.request_timeout.as_ref(), DEFAULT_REQUEST_TIMEOUT)?,
        heartbeat: duration(at, raw.heartbeat.as_ref(), DEFAULT_HEARTBEAT)?,
        retry: duration(at, raw.retry.as_ref(), DEFAULT_RETRY)?,
        write_timeout: duration(at, raw.write_timeout.as_ref(), DEFAULT_WRITE_TIMEOUT)?,
        max_publish_bytes: bounded(
            at,
            "max_publish_bytes",
            raw.max_publish_bytes.as_ref(),
            DEFAULT_MAX_PUBLISH_BYTES,
            PUBLISH_BYTES_RANGE,
        )?,
        max_streams_per_connection: bounded(
            at,
            "max_streams_per_connection",
            raw.max_streams_per_connection.as_ref(),
            DEFAULT_MAX_STREAMS_PER_CONNECTION,
            STREAMS_PER_CONNECTION_RANGE,
        )?,
    })
}

/// `[server] compression_level = { gzip = ..., br = ..., zstd = ... }`; a missing one keeps its
/// default.
fn compression_levels(at: &Locator, raw: &RawLevels) -> Result<Levels, ConfigError> {
    let default = Levels::default();
    Ok(Levels {
        gzip: bounded(
            at,
            "compression_level.gzip",
            raw.gzip.as_ref(),
            default.gzip,
            GZIP_LEVEL_RANGE,
        )?,
        br: bounded(
            at,
            "compression_level.br",
            raw.br.as_ref(),
            default.br,
            BROTLI_LEVEL_RANGE,
        )?,
        zstd: bounded(
            at,
            "compression_level.zstd",
            raw.zstd.as_ref(),
            default.zstd,
            ZSTD_LEVEL_RANGE,
        )?,
    })
}

/// `[server.tls]`: the certificate and key are loaded and matched here, as rustls will use them.
fn tls(at: &Locator, raw: RawTls, base: &Path) -> Result<Tls, ConfigError> {
    let read = |p: &Spanned<String>| -> Result<(PathBuf, Vec<u8>), ConfigError> {
        let path = base.join(p.get_ref());
        if p.get_ref().is_empty() || !path.is_file() {
            return Err(at.error(p.span(), format!("no such file: {}", path.display())));
        }
        let bytes = std::fs::read(&path)
            .map_err(|e| at.error(p.span(), format!("cannot read {}: {e}", path.display())))?;
        Ok((path, bytes))
    };
    let ((cert, cert_pem), (key, key_pem)) = (read(&raw.cert)?, read(&raw.key)?);
    // Loaded here, as rustls will use them: pingora would only panic on a bad pair at
    // start, on a thread of its own, and take the cleartext listeners down with it.
    let certified = keys::tls_certified_key(&cert_pem, &key_pem).map_err(|(file, e)| {
        let (spanned, path) = match file {
            keys::TlsFile::Cert => (&raw.cert, &cert),
            keys::TlsFile::Key => (&raw.key, &key),
        };
        at.error(spanned.span(), format!("{}: {e}", path.display()))
    })?;
    Ok(Tls {
        listen: addresses(at, raw.listen)?,
        cert,
        key,
        certified,
    })
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `upgrade_socket`: a path a Unix socket can be bound at. Only its form is checked: its folder may
/// not exist where `--check` runs (systemd creates `/run/sluice` as the service starts), so `--upgrade`
/// checks that itself. pingora would panic on a path too long for a socket address.
fn upgrade_socket(
    at: &Locator,
    raw: &Spanned<String>,
    base: &Path,
) -> Result<PathBuf, ConfigError> {
    if raw.get_ref().is_empty() {
        return Err(at.error(raw.span(), "upgrade_socket needs a file path"));
    }
    let path = base.join(raw.get_ref());
    let length = path.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        return Err(at.error(
            raw.span(),
            format!(
                "upgrade_socket {} is {length} bytes long: a Unix socket path holds at most {MAX_SOCKET_PATH}",
                path.display()
            ),
        ));
    }
    if path.is_dir() {
        return Err(at.error(
            raw.span(),
            format!(
                "upgrade_socket {} is a folder: name a socket file in it",
                path.display()
            ),
        ));
    }
    Ok(path)
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
pub(super) fn check_overlaps(
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

/// `[server.cors]`: every listed origin must be one a browser can send.
fn validate_cors(at: &Locator, raw: RawCors) -> Result<Cors, ConfigError> {
    for origin in raw.allow_origins.get_ref() {
        if let Some(problem) = origin_problem(origin) {
            return Err(at.error(
                raw.allow_origins.span(),
                format!("invalid origin {origin:?}: {problem} (expected scheme://host[:port], e.g. \"https://dash.example.com\")"),
            ));
        }
    }
    Ok(Cors {
        allow_origins: raw.allow_origins.into_inner(),
        allow_credentials: raw.allow_credentials.unwrap_or(false),
    })
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

#[cfg(test)]
mod tests {
    use super::Tls;
    use crate::config::testing::{assert_accepted, assert_refused, ROUTE};
    use crate::keys;

    #[test]
    fn listen_addresses_that_cannot_all_be_bound_are_refused() {
        // The same checks across listen and tls.listen need certificate files: tests/it/check.rs.
        let server = |listen: &str| format!("[server]\nlisten = {listen}\n{ROUTE}");
        assert_refused(&[
            (
                server("[\"127.0.0.1:8080\", \"127.0.0.1:8080\"]"),
                "2:10: listen address \"127.0.0.1:8080\" is listed twice",
            ),
            (
                server("[\"127.0.0.1:8080\", \"0.0.0.0:8080\"]"),
                "2:10: listen address \"0.0.0.0:8080\" overlaps \"127.0.0.1:8080\": 0.0.0.0 takes port 8080 on every IPv4 address",
            ),
            (
                server("[\"[::]:8080\", \"10.1.2.3:8080\"]"),
                "2:10: listen address \"10.1.2.3:8080\" overlaps \"[::]:8080\": :: takes port 8080 on every address, IPv4 included",
            ),
            (
                server("[\"127.0.0.1:8080\", \"[::ffff:127.0.0.1]:8080\"]"),
                "2:10: listen address \"[::ffff:127.0.0.1]:8080\" is listed twice",
            ),
            (
                server("\"127.0.0.1:0\""),
                "2:10: listen address \"127.0.0.1:0\": port 0",
            ),
            (
                "[server]\nlisten = [\"localhost\"]\n".to_owned(),
                "2:10: invalid listen address \"localhost\"",
            ),
        ]);
        // Different ports, or addresses that do not overlap, are fine.
        assert_accepted(&[
            server("[\"0.0.0.0:8080\", \"0.0.0.0:8081\", \"127.0.0.1:8082\", \"[::1]:8082\"]"),
            server("[\"0.0.0.0:8080\", \"[::1]:8080\"]"),
        ]);
    }

    #[test]
    fn every_bounded_key_is_refused_past_its_bounds_and_accepted_at_them() {
        let server = |key: &str| format!("[server]\nlisten = \"127.0.0.1:8080\"\n{key}\n{ROUTE}");
        let mut cases = Vec::new();
        for key in ["heartbeat", "retry", "write_timeout", "request_timeout"] {
            for value in ["300000000000y", "1day 1ms", "999us", "0s"] {
                cases.push((
                    server(&format!("{key} = \"{value}\"")),
                    format!(
                        "3:{}: duration \"{value}\" is out of range: it must be between 1ms and 1day",
                        key.len() + 4
                    ),
                ));
            }
        }
        for (key, past, low, high) in [
            ("max_publish_bytes", "67108865", 1, 67_108_864),
            ("max_publish_bytes", "0", 1, 67_108_864),
            ("max_streams_per_connection", "100001", 1, 100_000),
            ("max_streams_per_connection", "0", 1, 100_000),
            ("max_new_streams_per_second", "0", 1, 1_000_000),
            ("max_new_streams_per_second", "1000001", 1, 1_000_000),
            ("max_compressors", "1000001", 0, 1_000_000),
        ] {
            cases.push((
                server(&format!("{key} = {past}")),
                format!(
                    "3:{}: {key} must be between {low} and {high}",
                    key.len() + 4
                ),
            ));
        }
        cases.push((
            "[server]\nheartbeat = \"fast\"\n[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\n".to_owned(),
            "2:13: invalid duration \"fast\"".to_owned(),
        ));
        assert_refused(&cases);
        assert_accepted(&[server(
            "heartbeat = \"1ms\"\nretry = \"24h\"\nwrite_timeout = \"1day\"\nrequest_timeout = \"1ms\"\nmax_publish_bytes = 67108864\nmax_streams_per_connection = 100000",
        )]);
    }

    #[test]
    fn compression_levels_are_refused_past_their_bounds() {
        let server = |levels: &str| {
            format!("[server]\nlisten = \"127.0.0.1:8080\"\ncompression_level = {levels}\n{ROUTE}")
        };
        assert_refused(&[
            (
                server("{ gzip = 0 }"),
                "3:30: compression_level.gzip must be between 1 and 9",
            ),
            (
                server("{ br = 12 }"),
                "3:28: compression_level.br must be between 0 and 11",
            ),
            (
                server("{ zstd = 20 }"),
                "3:30: compression_level.zstd must be between 1 and 19",
            ),
            (server("{ lz4 = 1 }"), "3:23: unknown field `lz4`"),
        ]);
        assert_accepted(&[server("{ gzip = 9, br = 0, zstd = 19 }"), server("{}")]);
    }

    #[test]
    fn cors_origins_must_be_what_a_browser_sends() {
        let cors = |origin: &str| {
            format!("[server]\nlisten = \"127.0.0.1:8080\"\n[server.cors]\nallow_origins = [\"https://ok.example\", {origin:?}]\n{ROUTE}")
        };
        let refused = [
            "https://dash.example.com\r\nx-evil: 1",
            "https://dash.example.com\n",
            "https://dash example.com",
            "https://Dash.Example.com",
            "https://dash.example.com/",
            "https://dash.example.com/app",
            "https://dash.example.com:443",
            "http://dash.example.com:80",
            "https://dash.example.com:",
            "https://dash.example.com:99999",
            "https://dash.example.com:08080",
            "https://*.example.com",
            "*",
            "ftp://dash.example.com",
            "https://",
            "https://[::1",
            "https://[0:0:0:0:0:0:0:1]",
            "https://dash.exämple.com",
        ];
        let cases: Vec<(String, &str)> = refused
            .iter()
            .map(|origin| (cors(origin), "4:17: invalid origin"))
            .collect();
        assert_refused(&cases);
        assert_accepted(&[
            cors("http://localhost:8080"),
            cors("https://dash.example.com"),
            cors("https://xn--exmple-cua.com"),
            cors("http://[::1]:3000"),
            cors("http://127.0.0.1:65535"),
        ]);
    }

    #[test]
    fn missing_files_and_folders_are_refused() {
        assert_refused(&[
            (
                "[server.tls]\nlisten = \"127.0.0.1:1\"\ncert = \"missing.pem\"\nkey = \"missing.key\"\n".to_owned(),
                "3:8: no such file",
            ),
            (
                format!("[server]\nstatic_dir = \"missing\"\n{ROUTE}"),
                "2:14: no such folder",
            ),
        ]);
    }

    #[test]
    fn upgrade_socket_must_be_a_socket_path() {
        let server = |path: &str| format!("[server]\nupgrade_socket = {path:?}\n{ROUTE}");
        assert_refused(&[
            (
                server(""),
                "2:18: upgrade_socket needs a file path".to_owned(),
            ),
            (
                server(&format!("/run/{}", "s".repeat(103))),
                "2:18: upgrade_socket /run/sss".to_owned(),
            ),
            (
                server("/tmp"),
                "2:18: upgrade_socket /tmp is a folder".to_owned(),
            ),
        ]);
        assert_accepted(&[
            server("/run/sluice/upgrade.sock"),
            server(&format!("/run/{}", "s".repeat(102))),
        ]);
        let config = crate::config::testing::parse_text(&server("upgrade.sock")).expect("valid");
        assert_eq!(
            config.server.upgrade_socket,
            Some(crate::config::testing::base().join("upgrade.sock")),
            "a relative path is relative to the configuration's folder"
        );
    }

    #[test]
    fn tls_compares_addresses_files_and_the_certificate_loaded() {
        let tls = |cert: &rcgen::CertifiedKey, port: u16| Tls {
            listen: vec![([127, 0, 0, 1], port).into()],
            cert: "c.pem".into(),
            key: "k.pem".into(),
            certified: keys::tls_certified_key(
                cert.cert.pem().as_bytes(),
                cert.key_pair.serialize_pem().as_bytes(),
            )
            .expect("a matching pair"),
        };
        let self_signed = || {
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate")
        };
        let (one, other) = (self_signed(), self_signed());
        assert_eq!(tls(&one, 8443), tls(&one, 8443));
        assert_ne!(tls(&one, 8443), tls(&one, 8444));
        assert_ne!(tls(&one, 8443), tls(&other, 8443));
    }
}
