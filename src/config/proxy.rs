//! Validates `[proxy]` into an [`Upstream`]: the application every request that sluice does not
//! answer itself is passed to.

use super::raw::RawProxy;
use super::values::{ca_file, duration};
use super::{ConfigError, Locator, DEFAULT_PROXY_CONNECT_TIMEOUT, DEFAULT_PROXY_READ_TIMEOUT};
use crate::proxy::Upstream;
use std::path::Path;
use toml::Spanned;

/// `[proxy]`; a relative `ca_file` is relative to `base`.
pub(super) fn validate(at: &Locator, raw: RawProxy, base: &Path) -> Result<Upstream, ConfigError> {
    let (tls, host, port) = upstream(at, &raw.upstream)?;
    let ca_file = match &raw.ca_file {
        None => None,
        Some(_) if !tls => {
            let span = raw.ca_file.as_ref().map_or(0..0, Spanned::span);
            return Err(at.error(span, "ca_file is for an https:// upstream"));
        }
        Some(file) => Some(ca_file(at, file, base)?),
    };
    Ok(Upstream {
        url: raw.upstream.get_ref().clone(),
        tls,
        host,
        port,
        ca_file,
        connect_timeout: duration(
            at,
            raw.connect_timeout.as_ref(),
            DEFAULT_PROXY_CONNECT_TIMEOUT,
        )?,
        read_timeout: duration(at, raw.read_timeout.as_ref(), DEFAULT_PROXY_READ_TIMEOUT)?,
    })
}

/// `upstream`: `http://` or `https://`, a host, an optional port, nothing else (requests keep their
/// own path and query).
fn upstream(at: &Locator, raw: &Spanned<String>) -> Result<(bool, String, u16), ConfigError> {
    let text = raw.get_ref();
    let refuse = |why: &str| {
        at.error(
            raw.span(),
            format!("upstream {text:?}: {why} (e.g. \"http://127.0.0.1:3000\")"),
        )
    };
    let url = url::Url::parse(text).map_err(|e| refuse(&format!("not a URL: {e}")))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        _ => return Err(refuse("the scheme must be http:// or https://")),
    };
    let host = match url.host() {
        Some(url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(refuse("it needs a host")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("credentials in the URL are not supported"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(refuse(
            "a path, query or fragment is not supported: requests keep their own",
        ));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| refuse("no port"))?;
    Ok((tls, host, port))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_accepted, assert_refused, parse_text, ROUTE};
    use std::time::Duration;

    fn proxy(keys: &str) -> String {
        format!("{ROUTE}[proxy]\n{keys}\n")
    }

    #[test]
    fn the_upstream_is_an_http_or_https_origin() {
        let config = parse_text(&proxy("upstream = \"http://127.0.0.1:3000\"")).expect("valid");
        let upstream = config.proxy.expect("a proxy");
        assert_eq!(
            (upstream.tls, upstream.host.as_str(), upstream.port),
            (false, "127.0.0.1", 3000)
        );
        assert_eq!(upstream.read_timeout, Duration::from_secs(60));
        let config = parse_text(&proxy("upstream = \"https://app.example/\"")).expect("valid");
        let upstream = config.proxy.expect("a proxy");
        assert_eq!((upstream.tls, upstream.port), (true, 443));
        let config = parse_text(&proxy("upstream = \"http://[::1]:8000\"")).expect("valid");
        assert_eq!(config.proxy.map(|u| u.host.clone()), Some("::1".to_owned()));
        assert!(parse_text(ROUTE).is_ok_and(|c| c.proxy.is_none()));
        assert_accepted(&[proxy(
            "upstream = \"http://app:80\"\nconnect_timeout = \"1s\"\nread_timeout = \"5m\"",
        )]);
    }

    #[test]
    fn a_ca_file_of_certificates_is_taken_for_an_https_upstream() {
        let cert = rcgen::generate_simple_self_signed(vec!["app.internal".to_owned()])
            .expect("a certificate");
        let path = std::env::temp_dir().join(format!("sluice-ca-{}.pem", std::process::id()));
        std::fs::write(&path, cert.cert.pem()).expect("write the CA file");
        let text = proxy(&format!(
            "upstream = \"https://app.internal:8443\"\nca_file = {:?}",
            path.display().to_string()
        ));
        let parsed = parse_text(&text);
        let _ = std::fs::remove_file(&path);
        let upstream = parsed.expect("valid").proxy.expect("a proxy");
        assert_eq!(upstream.ca_file.as_deref(), Some(path.as_path()));
        assert_eq!(
            (upstream.host.as_str(), upstream.port),
            ("app.internal", 8443)
        );
    }

    #[test]
    fn what_the_upstream_cannot_be_is_refused_where_it_is_written() {
        assert_refused(&[
            (
                proxy("upstream = \"ftp://h\""),
                "8:12: upstream \"ftp://h\": the scheme must be http:// or https://",
            ),
            (proxy("upstream = \"h:3000\""), "8:12: upstream \"h:3000\":"),
            (
                proxy("upstream = \"nope\""),
                "8:12: upstream \"nope\": not a URL",
            ),
            (
                proxy("upstream = \"http://h/app\""),
                "8:12: upstream \"http://h/app\": a path, query or fragment",
            ),
            (
                proxy("upstream = \"http://u:p@h\""),
                "8:12: upstream \"http://u:p@h\": credentials",
            ),
            (
                proxy("upstream = \"http://h\"\nread_timeout = \"0s\""),
                "9:16: duration \"0s\" is out of range",
            ),
            (
                proxy("upstream = \"http://h\"\nconnect_timeout = \"2d\""),
                "9:19: duration \"2d\" is out of range",
            ),
            (
                proxy("upstream = \"http://h\"\nca_file = \"ca.pem\""),
                "9:11: ca_file is for an https:// upstream",
            ),
            (
                proxy("upstream = \"https://h\"\nca_file = \"missing.pem\""),
                "9:11: no such file",
            ),
            (
                proxy("upstream = \"https://h\"\nca_file = \"jwt-rs256.pub\""),
                "9:11: ",
            ),
            (
                proxy("upstream = \"http://h\"\nupstreams = 1"),
                "9:1: unknown field",
            ),
            (format!("{ROUTE}[proxy]\n"), "7:1: missing field `upstream`"),
        ]);
    }
}
