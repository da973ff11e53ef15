//! Complete small responses (health, preflight, files, publishes, errors), and the raw `400` for a
//! request head that does not parse.

use crate::error::Error;
use bytes::Bytes;
use http::Method;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Writes a complete small response (counted in `sluice_http_requests_total`).
pub(super) async fn respond(
    session: &mut ServerSession,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&'static str, String)],
) -> Result<(), Error> {
    crate::admin::metrics::global().http_request(status);
    let mut response = ResponseHeader::build(status, Some(3 + extra.len())).map_err(Error::Http)?;
    response
        .insert_header("content-type", content_type)
        .map_err(Error::Http)?;
    response
        .insert_header("content-length", body.len().to_string())
        .map_err(Error::Http)?;
    for (name, value) in extra {
        response
            .insert_header(*name, value.as_str())
            .map_err(Error::Http)?;
    }
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(response))
        .await
        .map_err(Error::Write)?;
    let body = if head_only { Bytes::new() } else { body };
    session
        .write_response_body(body, true)
        .await
        .map_err(Error::Write)
}

/// Answers an HTTP/1.x request head that does not parse with `400` and a short reason, then
/// closes: a client sees why, where pingora would just drop the connection. HTTP/2 has its own
/// protocol errors for this.
pub(super) async fn refuse_unparsable(session: ServerSession, write_timeout: Duration) {
    let ServerSession::H1(h1) = session else {
        return;
    };
    crate::admin::metrics::global().http_request(400);
    let mut io = h1.into_inner();
    let body = "bad request: the request head does not parse as HTTP/1.1\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        io.write_all(response.as_bytes()).await?;
        io.flush().await?;
        io.shutdown().await
    };
    let _ = tokio::time::timeout(write_timeout, answer).await;
}
