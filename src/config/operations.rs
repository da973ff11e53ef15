//! Validates `[admin]` (the admin listener) and `[log]` (the log format).

use super::raw::{RawAdmin, RawLog};
use super::{ConfigError, Locator, Server};
use std::net::SocketAddr;

/// `[admin]`: where metrics, readiness and the status page are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
}

/// `[log] format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[admin]`: one address, which no public listener may take (metrics are not public).
pub(super) fn validate_admin(
    at: &Locator,
    raw: RawAdmin,
    server: &Server,
) -> Result<Admin, ConfigError> {
    let span = raw.listen.span();
    let text = raw.listen.get_ref();
    let listen = match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => {
            let reason =
                format!("admin listen address {text:?}: port 0 would listen on a random port");
            return Err(at.error(span, reason));
        }
        Ok(addr) => addr,
        Err(_) => {
            let reason = format!(
                "invalid admin listen address {text:?}: expected IP:PORT, e.g. \"127.0.0.1:9090\""
            );
            return Err(at.error(span, reason));
        }
    };
    let public = server
        .listen
        .iter()
        .chain(server.tls.iter().flat_map(|t| t.listen.iter()));
    let admin = [listen];
    super::server::check_overlaps(
        at,
        &[(&public.copied().collect::<Vec<_>>(), 0..0), (&admin, span)],
    )?;
    Ok(Admin { listen })
}

/// `[log]`.
pub(super) fn validate_log(at: &Locator, raw: RawLog) -> Result<LogFormat, ConfigError> {
    let Some(format) = raw.format else {
        return Ok(LogFormat::default());
    };
    match format.get_ref().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(at.error(
            format.span(),
            format!("unknown log format {other:?}: expected \"text\" or \"json\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_refused, parse_text, ROUTE};
    use super::*;

    #[test]
    fn the_admin_listener_is_optional_and_private() {
        let config = parse_text(&format!("[admin]\nlisten = \"127.0.0.1:9090\"\n{ROUTE}"));
        let listen = "127.0.0.1:9090".parse().ok();
        assert_eq!(config.ok().and_then(|c| c.admin).map(|a| a.listen), listen);
        assert!(parse_text(ROUTE).is_ok_and(|c| c.admin.is_none()));
        let public = "[server]\nlisten = \"127.0.0.1:8080\"\n";
        let wildcard = "[server]\nlisten = \"0.0.0.0:8080\"\n";
        assert_refused(&[
            (
                format!("{public}[admin]\nlisten = \"127.0.0.1:8080\"\n{ROUTE}"),
                "4:10: listen address \"127.0.0.1:8080\" is listed twice",
            ),
            (
                format!("{wildcard}[admin]\nlisten = \"127.0.0.1:8080\"\n{ROUTE}"),
                "4:10: listen address \"127.0.0.1:8080\" overlaps",
            ),
            (
                format!("[admin]\nlisten = \"nowhere\"\n{ROUTE}"),
                "2:10: invalid admin listen address",
            ),
            (
                format!("[admin]\nlisten = \"127.0.0.1:0\"\n{ROUTE}"),
                "2:10: admin listen address \"127.0.0.1:0\": port 0",
            ),
            (format!("[admin]\nport = 1\n{ROUTE}"), "2:1: unknown field"),
        ]);
    }

    #[test]
    fn the_log_format_is_text_or_json() {
        let format = |body: &str| {
            parse_text(&format!("{body}{ROUTE}"))
                .ok()
                .map(|c| c.log_format)
        };
        assert_eq!(format(""), Some(LogFormat::Text));
        assert_eq!(format("[log]\nformat = \"json\"\n"), Some(LogFormat::Json));
        assert_refused(&[(
            format!("[log]\nformat = \"xml\"\n{ROUTE}"),
            "2:10: unknown log format \"xml\"",
        )]);
    }
}
