//! The gateway's error type, and every decision about an error's response: its status, the headers
//! it carries, and whether the connection is reused after it.

use sluice_bridge::BridgeError;

/// What `retry-after` says when a limit refuses a stream or publish, in seconds.
const BUSY_RETRY_AFTER: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found")]
    NotFound,
    #[error("method not allowed (allowed: {0})")]
    MethodNotAllowed(&'static str),
    #[error("bad request: {0}")]
    BadParameter(String),
    #[error("payload too large: the limit is {0} bytes")]
    PayloadTooLarge(usize),
    #[error("unauthorized: {0}")]
    Unauthorized(crate::auth::AuthError),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("too busy: {0}; retry later")]
    Busy(&'static str),
    /// A new stream past `max_new_streams_per_second`: the client comes back after these seconds.
    #[error("too many new streams: retry in {0} s")]
    Throttled(u64),
    #[error("request header too large: the limit is {0} bytes")]
    HeaderTooLarge(usize),
    #[error("request target too long: the limit is {0} bytes")]
    UriTooLong(usize),
    #[error("broker: {0}")]
    Bridge(BridgeError),
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("building a response: {0}")]
    Http(pingora::BError),
    #[error("reading the request: {0}")]
    Read(pingora::BError),
    #[error("writing the response: {0}")]
    Write(pingora::BError),
    /// The proxied application could not be reached or answered badly (the detail is logged, never
    /// sent).
    #[error("bad gateway: the application behind sluice did not answer")]
    BadGateway,
    #[error("gateway timeout: the application behind sluice did not answer in time")]
    GatewayTimeout,
    /// A request whose body framing sluice will not pass on.
    #[error("bad request: {0}")]
    Framing(&'static str),
    /// A proxied exchange that ended without a complete response (the client left, or the upstream
    /// failed once the response had started): the connection is closed, nothing more is written.
    #[error("proxied response cut short: {0}")]
    Cut(&'static str),
}

impl Error {
    /// The HTTP status that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            Error::NotFound => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::BadParameter(_) => 400,
            Error::PayloadTooLarge(_) => 413,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::Busy(_) | Error::Throttled(_) => 503,
            Error::HeaderTooLarge(_) => 431,
            Error::UriTooLong(_) => 414,
            Error::Bridge(BridgeError::InvalidTopic { .. }) => 400,
            Error::Bridge(BridgeError::PayloadTooLarge { .. }) => 413,
            Error::Bridge(BridgeError::Unavailable(_)) => 503,
            Error::Bridge(BridgeError::Broker(_)) => 502,
            Error::Bridge(BridgeError::Unsupported(_)) => 500,
            Error::Read(_) | Error::Framing(_) => 400,
            Error::BadGateway => 502,
            Error::GatewayTimeout => 504,
            Error::Internal(_) | Error::Http(_) | Error::Write(_) | Error::Cut(_) => 500,
        }
    }

    /// False when the connection itself failed, so no response can be written.
    pub fn is_response(&self) -> bool {
        !matches!(self, Error::Write(_) | Error::Cut(_))
    }

    /// The headers this error's response carries besides CORS: what is allowed, how to
    /// authenticate, when to come back.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Error::MethodNotAllowed(allow) => vec![("allow", (*allow).to_owned())],
            Error::Unauthorized(_) => {
                vec![("www-authenticate", "Bearer realm=\"sluice\"".to_owned())]
            }
            Error::Busy(_) => vec![("retry-after", BUSY_RETRY_AFTER.to_owned())],
            Error::Throttled(seconds) => vec![("retry-after", seconds.to_string())],
            _ => Vec::new(),
        }
    }

    /// Whether the connection may serve another request after this error's response: not when the
    /// request's body may be left unread in it (a refused publish, a failed proxied request), so the
    /// next request would start inside that body.
    pub fn keeps_connection(&self) -> bool {
        !matches!(
            self,
            Error::PayloadTooLarge(_)
                | Error::Bridge(BridgeError::PayloadTooLarge { .. })
                | Error::Unauthorized(_)
                | Error::Forbidden(_)
                | Error::BadGateway
                | Error::GatewayTimeout
                | Error::Framing(_)
        )
    }
}
