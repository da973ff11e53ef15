//! Sluice: an SSE gateway that streams broker topics (NATS, MQTT, upstream SSE origins, in-memory)
//! to browsers.
//!
//! The flow of one message, and the module that owns each step:
//! - [`config`]: the TOML file: its serde mirror, one validator per section into runtime types
//!   (server, auth, brokers, routes, simulator), errors at `PATH:LINE:COLUMN`, every default and bound.
//! - [`brokers`]: one bridge (crate `sluice-nats`, `sluice-mqtt`, `sluice-sse`, `sluice-memory`) per
//!   broker.
//! - [`hub`]: one shared broker subscription per route and concrete topic; encodes each message once
//!   ([`sse`]) and queues the same bytes for every stream on the topic; the one resume path.
//! - [`replay`]: event ids, `Last-Event-ID` parsing, the replay ring of encoded frames of a topic
//!   and the memory budget of a route.
//! - [`stream`]: each stream's bounded queue and overflow policy (`disconnect` or `drop-oldest`),
//!   its latest-value conflation (`max_rate`), and the backlog a resuming stream reads as it drains.
//! - [`pump`]: writes one stream's backlog and queue to its wire: heartbeats, write deadlines.
//! - [`compress`]: compressed streams (gzip, Brotli, zstd), negotiated per request and flushed at
//!   every write.
//! - [`cors`], [`files`] (the dashboard folder), [`limits`] (connections per server and per IP, and
//!   `max_memory`), [`admission`] (new streams per second, so a reconnect storm becomes a ramp).
//! - [`connections`]: every client connection under a budget from the file limit; one with no
//!   stream and no request in progress is closed after `request_timeout`.
//! - [`auth`]: JWT verification and topic grants for routes with `auth = true`; [`keys`]: the JWT
//!   and TLS key files, checked as they will be used.
//! - [`http`]: the pingora app: HTTP/1.1, h2c and TLS h2; what a request asks for (routing with
//!   [`route`], limits, tokens), opening streams and handing them to their wires (HTTP/1.x raw
//!   connection, HTTP/2 send half); [`error`] decides every error's response.
//! - [`proxy`]: pass-through proxying: what no sluice path, route or static file answers goes to
//!   the `[proxy]` upstream through pingora's proxy, event streams flushed chunk by chunk.
//! - [`simulator`]: simulated IoT devices publishing on a memory broker, for the demo dashboard.
//! - [`shutdown`]: signals: SIGTERM closes every stream with a randomised `retry:` (a second signal
//!   exits); SIGQUIT and SIGUSR2 hand the listening sockets to a new process (graceful upgrade).
//! - [`reload`]: SIGHUP re-reads the configuration file and applies what changed; the streams of
//!   unchanged routes carry on untouched.
//! - [`admin`]: the admin listener: Prometheus metrics (recorded where the work happens, through
//!   [`admin::metrics`]), readiness, and a live status page; [`logging`]: text or JSON logs, and
//!   each stream's access line.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod brokers;
pub mod compress;
pub mod config;
pub mod connections;
pub mod cors;
pub mod error;
pub mod files;
pub mod http;
pub mod hub;
pub mod keys;
pub mod limits;
pub mod logging;
pub mod proxy;
pub mod pump;
pub mod reload;
pub mod replay;
pub mod route;
pub mod shutdown;
pub mod simulator;
pub mod sse;
pub mod stream;
