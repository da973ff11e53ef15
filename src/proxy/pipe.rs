//! One proxied exchange, between the client's session and pingora's proxy pipeline running as a
//! subrequest: the request body streamed up as the upstream asks for it, the response streamed
//! down (an event stream chunk by chunk, each flushed as it comes), the upstream's silence
//! bounded, and every failure turned into `502`, `504` or a cut response.

use super::headers;
use crate::error::Error;
use bytes::Bytes;
use http::Method;
use pingora::protocols::http::subrequest::server::SubrequestHandle;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::proxy::PreparedSubrequest;
use pingora::server::ShutdownWatch;
use pingora::{ErrorSource, ErrorType};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

/// How long a finished exchange waits for pingora to put the upstream connection back in its pool
/// (it does so right after the response's last piece; past this the task is cut short).
const POOL_RETURN: Duration = Duration::from_secs(1);

/// The status a proxy error answers: timeouts are `504`, other upstream failures `502`, and a
/// client that went away gets nothing (0).
pub fn status_of(e: &pingora::Error) -> u16 {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        _ if *e.esource() == ErrorSource::Downstream => 0,
        _ => 502,
    }
}

/// The pingora task of one exchange, aborted if the exchange ends any other way than complete
/// (an upstream that stopped answering must not keep its task and connection).
struct Subrequest(Option<JoinHandle<()>>);

impl Subrequest {
    /// Lets the task finish by itself (it returns the upstream connection to the pool), briefly.
    async fn settle(mut self) {
        if let Some(task) = self.0.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(POOL_RETURN, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Subrequest {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Where the response stands.
struct Response {
    /// The final status written to the client, once it is.
    status: Option<u16>,
    event_stream: bool,
    done: bool,
}

/// Runs `prepared` and pipes it to `session`. Returns whether the connection may serve another
/// request (the request body was read whole); `Err` is a `502`/`504` to answer, or a cut.
pub async fn pipe(
    session: &mut ServerSession,
    prepared: PreparedSubrequest,
    handle: SubrequestHandle,
    read_timeout: Duration,
    shutdown: &ShutdownWatch,
) -> Result<bool, Error> {
    let task = Subrequest(Some(tokio::spawn(prepared.run())));
    let SubrequestHandle {
        tx,
        mut rx,
        subreq_wants_body: mut wants_body_rx,
        subreq_proxy_error: mut error_rx,
    } = handle;
    let method = session.req_header().method.clone();
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut shutdown = shutdown.clone();
    let mut request_done = session.is_body_done();
    let mut body_abandoned = false;
    let (mut wants_body, mut wants_body_gone, mut error_gone) = (false, false, false);
    let mut response = Response {
        status: None,
        event_stream: false,
        done: false,
    };
    // The upstream's silence is bounded by `read_timeout`, restarted by every piece that moves
    // either way; an event stream being written may idle for as long as it likes.
    let mut deadline = Instant::now() + read_timeout;
    while !response.done {
        let idle_bounded = !(response.event_stream && response.status.is_some());
        let reading_body = !request_done && !body_abandoned;
        let watch_client = !reading_body && response.event_stream && response.status.is_some();
        tokio::select! {
            biased;
            task = rx.recv() => {
                deadline = Instant::now() + read_timeout;
                match task {
                    Some(task) => {
                        let context = (&method, expects_continue);
                        answer(session, task, context, &mut response).await?;
                    }
                    None => {
                        // Ended without its last piece: the error, if pingora sent one, says why.
                        return Err(failed(&response, error_rx.try_recv().ok().as_deref()));
                    }
                }
            }
            error = &mut error_rx, if !error_gone => match error {
                Ok(e) => return Err(failed(&response, Some(&e))),
                Err(_) => error_gone = true,
            },
            wants = &mut wants_body_rx, if !wants_body && !wants_body_gone => match wants {
                Ok(()) => wants_body = true,
                Err(_) => wants_body_gone = true,
            },
            // The request body, read as the upstream asks for it; once read, an event stream
            // watches the client instead, and runs until the client leaves. A permit comes first,
            // so a piece read can always be passed on at once: waiting on the upstream with a
            // piece in hand would stop the response from being read.
            read = async {
                if reading_body {
                    (Some(tx.reserve().await), session.read_body_or_idle(false).await)
                } else {
                    (None, session.read_body_or_idle(true).await)
                }
            }, if (wants_body && reading_body) || watch_client => {
                deadline = Instant::now() + read_timeout;
                match read {
                    (Some(Ok(permit)), body) => {
                        let body = body.map_err(|e| client_gone("reading the request body", &e))?;
                        // An empty piece is never passed on: pingora's chunked writer would take
                        // it for the last chunk (an HTTP/2 body often ends with an empty frame).
                        let body = body.filter(|b| !b.is_empty());
                        request_done = body.is_none() || session.is_body_done();
                        if body.is_some() || request_done {
                            permit.send(HttpTask::Body(body, request_done));
                        }
                    }
                    // The upstream stopped reading the body; its response says what it wanted. The
                    // rest stays unread, so the connection is not reused.
                    (Some(Err(_)), _) => body_abandoned = true,
                    (None, gone) => {
                        let closed = pingora::Error::new(ErrorType::ConnectionClosed);
                        let error = gone.err().unwrap_or(closed);
                        return Err(client_gone("watching an event stream", &error));
                    }
                }
            }
            () = sleep_until(deadline), if idle_bounded => {
                return Err(match response.status {
                    None => Error::GatewayTimeout,
                    Some(_) => Error::Cut("the upstream went silent within a response"),
                });
            }
            () = shut_down(&mut shutdown), if response.event_stream => {
                // Ended cleanly: an EventSource reconnects (to another process, after an upgrade).
                finish(session).await?;
                return Ok(false);
            }
        }
    }
    drop((tx, rx));
    task.settle().await;
    Ok(request_done && !body_abandoned)
}

/// Resolves once the server is shutting down (at once if it already is).
async fn shut_down(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            // No one can shut the server down any more: never.
            std::future::pending::<()>().await;
        }
    }
}

/// Passes one piece of the upstream's response to the client.
/// `request`: its method, and whether it asked for `100 Continue`.
async fn answer(
    session: &mut ServerSession,
    task: HttpTask,
    request: (&Method, bool),
    response: &mut Response,
) -> Result<(), Error> {
    let (method, expects_continue) = request;
    match task {
        HttpTask::Header(mut head, end) => {
            let status = head.status.as_u16();
            if status == 101 || response.status.is_some() {
                // Upgrades are never asked for (`upgrade` is not passed on); a second head is a
                // broken upstream.
                return Err(failed(response, None));
            }
            if head.status.is_informational() {
                // A client that waits for `100 Continue` before its body gets it; other
                // informational responses are optional and dropped.
                if status == 100 && expects_continue {
                    let written = session.write_response_header(head).await;
                    written.map_err(|e| client_gone("writing 100 Continue", &e))?;
                }
                return Ok(());
            }
            let bodyless = headers::is_bodyless(method, status);
            headers::client_response(&mut head, bodyless).map_err(Error::Http)?;
            response.event_stream = headers::is_event_stream(&head);
            crate::admin::metrics::global().proxy_request(status);
            response.status = Some(status);
            let written = session.write_response_header(head).await;
            written.map_err(|e| client_gone("writing the response head", &e))?;
            if end {
                finish(session).await?;
                response.done = true;
            }
        }
        HttpTask::Body(data, end) => {
            if let Some(data) = data.filter(|d| !d.is_empty()) {
                // Written at once: HTTP/1.1 chunks and HTTP/2 frames are flushed as they go.
                let written = session.write_response_body(data, false).await;
                written.map_err(|e| client_gone("writing the response body", &e))?;
            }
            if end {
                finish(session).await?;
                response.done = true;
            }
        }
        HttpTask::Done => {
            finish(session).await?;
            response.done = true;
        }
        // Trailers are not passed on.
        HttpTask::Trailer(_) => {}
        HttpTask::UpgradedBody(..) => return Err(failed(response, None)),
        HttpTask::Failed(e) => return Err(failed(response, Some(&e))),
    }
    Ok(())
}

/// Ends the client's response (the last chunk, or the end of the HTTP/2 stream).
async fn finish(session: &mut ServerSession) -> Result<(), Error> {
    let written = session.write_response_body(Bytes::new(), true).await;
    written.map_err(|e| client_gone("ending the response", &e))
}

/// What a failure of the exchange answers: nothing once the response has started (the client sees
/// it cut short), else `504` for a timeout and `502` for anything else the upstream did.
fn failed(response: &Response, e: Option<&pingora::Error>) -> Error {
    if let Some(e) = e {
        // The detail stays in the log; the client is told only the status.
        tracing::warn!(error = %e, status = ?response.status, "proxied request failed");
    }
    if response.status.is_some() {
        return Error::Cut("the upstream failed within a response");
    }
    match e.map(status_of) {
        Some(504) => Error::GatewayTimeout,
        Some(0) => Error::Cut("the client went away"),
        _ => Error::BadGateway,
    }
}

fn client_gone(doing: &'static str, e: &pingora::Error) -> Error {
    tracing::debug!(error = %e, "proxied request: the client went away while {doing}");
    Error::Cut("the client went away")
}
