//! The header rewriting of a proxied exchange, pure: hop-by-hop headers removed both ways, the
//! forwarding headers set by sluice alone, and the framing of each message decided by sluice.

use http::header::{self, HeaderName};
use http::Version;
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

/// Headers that describe one connection, never the message: not passed on in either direction
/// (RFC 9110 section 7.6.1, and the older ones still sent). `transfer-encoding` is among them: each
/// side's framing is written by pingora's codec from what sluice decides below.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
];

/// Forwarding headers a client could forge: removed from every request, then set by sluice.
const FORWARDING: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// Framing headers that a `Connection` list cannot remove (the codecs own them).
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Who sent a request, as the upstream is told.
#[derive(Clone, Debug)]
pub struct Client {
    pub ip: Option<IpAddr>,
    /// The scheme the client used: `https` on a TLS listener.
    pub https: bool,
}

/// The headers to remove from a message: those named by `Connection`, and every hop-by-hop one.
fn hop_by_hop(headers: &http::HeaderMap) -> Vec<HeaderName> {
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| !FRAMING.contains(&name.as_str()));
    named
        .chain(HOP_BY_HOP.map(HeaderName::from_static))
        .collect()
}

/// Turns the client's request head into the upstream's: hop-by-hop and forged forwarding headers
/// out, sluice's forwarding headers in, HTTP/1.1 with a `Host`, and the body framed the one way
/// the request was read (`chunked`: with chunks, else by its `content-length`, or empty).
pub fn upstream_request(
    request: &mut RequestHeader,
    client: &Client,
    chunked: bool,
    upstream_authority: &str,
) -> Result<(), pingora::BError> {
    let host = request
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    for name in hop_by_hop(&request.headers) {
        request.remove_header(&name);
    }
    for name in FORWARDING {
        request.remove_header(name);
    }
    request.set_version(Version::HTTP_11);
    if chunked {
        request.remove_header(&header::CONTENT_LENGTH);
        request.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    let host = match host {
        Some(host) => host,
        None => {
            request.insert_header(header::HOST, upstream_authority)?;
            upstream_authority.to_owned()
        }
    };
    let proto = if client.https { "https" } else { "http" };
    let mut forwarded = Vec::with_capacity(3);
    if let Some(ip) = client.ip {
        request.insert_header("x-forwarded-for", ip.to_string())?;
        request.insert_header("x-real-ip", ip.to_string())?;
        // RFC 7239: an IPv6 address is bracketed and quoted.
        forwarded.push(match ip {
            IpAddr::V4(v4) => format!("for={v4}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        });
    }
    forwarded.push(format!("proto={proto}"));
    if let Some(quoted) = quoted_string(&host) {
        forwarded.push(format!("host={quoted}"));
    }
    request.insert_header("forwarded", forwarded.join(";"))?;
    request.insert_header("x-forwarded-proto", proto)?;
    request.insert_header("x-forwarded-host", host)?;
    Ok(())
}

/// `value` as an RFC 7230 quoted-string, if it holds only characters one can carry.
fn quoted_string(value: &str) -> Option<String> {
    let plain = value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
    plain.then(|| format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// Whether a response's `content-type` is an event stream.
pub fn is_event_stream(response: &ResponseHeader) -> bool {
    response
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(sluice_bridge::is_event_stream)
}

/// Turns the upstream's response head into the client's: hop-by-hop headers out, and the body
/// framed by sluice: a response that has no body keeps its headers as they are (a `HEAD`'s
/// `content-length` describes the `GET`); one with a `content-length` keeps it, unless it is an
/// event stream, which is always sent in chunks so each one leaves at once; any other is chunked.
/// On HTTP/2 pingora drops `transfer-encoding` and frames the body itself.
pub fn client_response(
    response: &mut ResponseHeader,
    bodyless: bool,
) -> Result<(), pingora::BError> {
    for name in hop_by_hop(&response.headers) {
        response.remove_header(&name);
    }
    if bodyless {
        return Ok(());
    }
    if is_event_stream(response) || response.headers.get(header::CONTENT_LENGTH).is_none() {
        response.remove_header(&header::CONTENT_LENGTH);
        response.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// Whether a response to `method` with `status` has no body (RFC 9110 section 6.4.1).
pub fn is_bodyless(method: &http::Method, status: u16) -> bool {
    *method == http::Method::HEAD || status == 204 || status == 304 || (100..200).contains(&status)
}

/// The request's transfer codings are acceptable: none, or exactly `chunked` once. Anything else
/// (`gzip, chunked`, two `transfer-encoding` lines) is refused rather than reinterpreted.
pub fn plain_framing(request: &RequestHeader) -> bool {
    let mut codings = request.headers.get_all(header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(one), None) => one.as_bytes().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("POST", b"/api?x=1", None).expect("request");
        for (name, value) in headers {
            request
                .append_header(name.to_string(), *value)
                .expect("header");
        }
        request
    }

    fn get<'a>(request: &'a RequestHeader, name: &str) -> Vec<&'a str> {
        request
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect()
    }

    #[test]
    fn hop_by_hop_and_forged_forwarding_headers_are_replaced() {
        let mut req = request(&[
            ("host", "app.example"),
            ("connection", "keep-alive, x-secret, content-length"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("content-length", "3"),
            ("x-kept", "yes"),
        ]);
        let client = Client {
            ip: Some("10.1.2.3".parse().expect("ip")),
            https: false,
        };
        upstream_request(&mut req, &client, false, "127.0.0.1:3000").expect("rewritten");
        for gone in ["connection", "x-secret", "keep-alive", "te", "upgrade"] {
            assert!(get(&req, gone).is_empty(), "{gone} kept");
        }
        assert_eq!(
            get(&req, "content-length"),
            ["3"],
            "framing is not a hop header"
        );
        assert_eq!(get(&req, "x-forwarded-for"), ["10.1.2.3"]);
        assert_eq!(get(&req, "x-real-ip"), ["10.1.2.3"]);
        assert_eq!(
            get(&req, "forwarded"),
            ["for=10.1.2.3;proto=http;host=\"app.example\""]
        );
        assert_eq!(get(&req, "x-forwarded-proto"), ["http"]);
        assert_eq!(get(&req, "x-forwarded-host"), ["app.example"]);
        assert_eq!(get(&req, "host"), ["app.example"]);
        assert_eq!(get(&req, "x-kept"), ["yes"]);
        assert_eq!(req.version, Version::HTTP_11);
    }

    #[test]
    fn a_chunked_body_stays_chunked_and_a_missing_host_is_the_upstreams() {
        let mut req = request(&[("transfer-encoding", "chunked"), ("content-length", "9")]);
        let client = Client {
            ip: Some("::1".parse().expect("ip")),
            https: true,
        };
        upstream_request(&mut req, &client, true, "127.0.0.1:3000").expect("rewritten");
        assert_eq!(get(&req, "transfer-encoding"), ["chunked"]);
        assert!(get(&req, "content-length").is_empty());
        assert_eq!(get(&req, "host"), ["127.0.0.1:3000"]);
        assert_eq!(
            get(&req, "forwarded"),
            ["for=\"[::1]\";proto=https;host=\"127.0.0.1:3000\""]
        );
    }

    #[test]
    fn only_plain_chunked_framing_is_accepted() {
        assert!(plain_framing(&request(&[])));
        assert!(plain_framing(&request(&[("transfer-encoding", "Chunked")])));
        assert!(!plain_framing(&request(&[(
            "transfer-encoding",
            "gzip, chunked"
        )])));
        assert!(!plain_framing(&request(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked")
        ])));
        assert!(!plain_framing(&request(&[(
            "transfer-encoding",
            "identity"
        )])));
    }

    fn response(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut response = ResponseHeader::build(200, None).expect("response");
        for (name, value) in headers {
            response
                .append_header(name.to_string(), *value)
                .expect("header");
        }
        response
    }

    #[test]
    fn responses_are_framed_by_sluice_and_event_streams_always_in_chunks() {
        let te = |r: &ResponseHeader| r.headers.get("transfer-encoding").cloned();
        let cl = |r: &ResponseHeader| r.headers.get("content-length").cloned();
        let mut sized = response(&[
            ("content-length", "5"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
        ]);
        client_response(&mut sized, false).expect("rewritten");
        assert_eq!((te(&sized), cl(&sized).is_some()), (None, true));
        assert!(sized.headers.get("x-hop").is_none() && sized.headers.get("connection").is_none());

        let mut unsized_ = response(&[("transfer-encoding", "gzip, chunked")]);
        client_response(&mut unsized_, false).expect("rewritten");
        assert_eq!(
            te(&unsized_).as_ref().map(|v| v.as_bytes()),
            Some(&b"chunked"[..])
        );

        let mut events = response(&[
            ("content-type", "Text/Event-Stream; charset=utf-8"),
            ("content-length", "100"),
        ]);
        assert!(is_event_stream(&events));
        client_response(&mut events, false).expect("rewritten");
        assert_eq!((te(&events).is_some(), cl(&events)), (true, None));

        let mut head = response(&[("content-length", "100")]);
        client_response(&mut head, true).expect("rewritten");
        assert_eq!((te(&head), cl(&head).is_some()), (None, true));
        assert!(is_bodyless(&http::Method::HEAD, 200) && is_bodyless(&http::Method::GET, 304));
        assert!(!is_bodyless(&http::Method::GET, 200));
    }
}
