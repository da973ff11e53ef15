//! CORS for pages on other origins: exact-origin echo (never `*`, so credentials work), preflight
//! answers, and `vary: origin` so caches keep per-origin answers apart.

use pingora::http::RequestHeader;

/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// `[server.cors]`: which page origins may read streams, with or without credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    /// Exact origins (`scheme://host[:port]`); an origin not listed gets no CORS headers.
    pub allow_origins: Vec<String>,
    pub allow_credentials: bool,
}

/// The CORS headers of a response to `request`; empty when CORS is not configured. An origin that is
/// not listed gets only `vary: origin`, so the browser withholds the response from the page.
pub fn response_headers(
    cors: Option<&Cors>,
    request: &RequestHeader,
) -> Vec<(&'static str, String)> {
    let Some(cors) = cors else {
        return Vec::new();
    };
    let mut headers = vec![("vary", "origin".to_owned())];
    let origin = request
        .headers
        .get(http::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if let Some(origin) = origin.filter(|o| cors.allow_origins.iter().any(|a| a == o)) {
        headers.push(("access-control-allow-origin", origin.to_owned()));
        if cors.allow_credentials {
            headers.push(("access-control-allow-credentials", "true".to_owned()));
        }
    }
    headers
}

/// The headers of a preflight (`OPTIONS`) answer, added to [`response_headers`] when the origin is
/// allowed. Only the headers sluice reads are allowed: echoing whatever was requested adds nothing.
pub fn preflight_headers() -> Vec<(&'static str, String)> {
    vec![
        (
            "access-control-allow-methods",
            "GET, POST, OPTIONS".to_owned(),
        ),
        (
            "access-control-allow-headers",
            "authorization, content-type, last-event-id".to_owned(),
        ),
        ("access-control-max-age", PREFLIGHT_MAX_AGE.to_owned()),
    ]
}

/// True when `headers` (from [`response_headers`]) allow the request's origin.
pub fn allows_origin(headers: &[(&'static str, String)]) -> bool {
    headers
        .iter()
        .any(|(name, _)| *name == "access-control-allow-origin")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/s", None).expect("request");
        if let Some(o) = origin {
            r.insert_header("origin", o).expect("header");
        }
        r
    }

    #[test]
    fn echoes_only_listed_origins() {
        let cors = Cors {
            allow_origins: vec!["https://dash.example.com".into()],
            allow_credentials: true,
        };
        let listed = response_headers(Some(&cors), &request(Some("https://dash.example.com")));
        assert!(listed.contains(&(
            "access-control-allow-origin",
            "https://dash.example.com".into()
        )));
        assert!(listed.contains(&("access-control-allow-credentials", "true".into())));
        assert!(listed.contains(&("vary", "origin".into())));
        let other = response_headers(Some(&cors), &request(Some("https://evil.example")));
        assert_eq!(other, vec![("vary", "origin".to_owned())]);
        assert!(response_headers(None, &request(Some("https://dash.example.com"))).is_empty());
    }
}
