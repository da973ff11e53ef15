//! The configuration file as serde reads it: a mirror of the TOML, with spans and no logic.
//!
//! Every key the file may hold is here and nowhere else; `deny_unknown_fields` makes any other key an
//! error at its line. Values stay as written (durations are strings, options stay `None`): defaults
//! and bounds are applied by the section validators, so they can point at the value's span.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub brokers: BTreeMap<String, RawBroker>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    pub simulator: Option<RawSimulator>,
    pub admin: Option<RawAdmin>,
    pub log: Option<RawLog>,
    pub proxy: Option<RawProxy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub upstream: Spanned<String>,
    pub ca_file: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub read_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub format: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub jwt_secret_env: Option<Spanned<OneOrMany>>,
    pub jwt_public_key: Option<Spanned<OneOrMany>>,
    pub cookie: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub audience: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    pub allow_origins: Spanned<Vec<String>>,
    pub allow_credentials: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSimulator {
    pub broker: Spanned<String>,
    pub devices: Option<Spanned<usize>>,
    pub interval: Option<Spanned<String>>,
}

/// A listen or url list: one address as a plain string, or an array of them.
#[derive(Deserialize)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<Spanned<OneOrMany>>,
    pub heartbeat: Option<Spanned<String>>,
    pub retry: Option<Spanned<String>>,
    pub write_timeout: Option<Spanned<String>>,
    pub max_publish_bytes: Option<Spanned<usize>>,
    pub max_streams_per_connection: Option<Spanned<u32>>,
    pub max_connections: Option<Spanned<usize>>,
    pub max_connections_per_ip: Option<Spanned<usize>>,
    pub max_new_streams_per_second: Option<Spanned<u32>>,
    pub max_memory: Option<Spanned<u64>>,
    pub request_timeout: Option<Spanned<String>>,
    pub static_dir: Option<Spanned<String>>,
    pub upgrade_socket: Option<Spanned<String>>,
    pub tls: Option<RawTls>,
    pub cors: Option<RawCors>,
    pub compression_level: Option<RawLevels>,
    pub max_compressors: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub listen: Spanned<OneOrMany>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBroker {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub url: Option<Spanned<OneOrMany>>,
    pub client_id: Option<Spanned<String>>,
    pub qos: Option<Spanned<u8>>,
    pub max_control_line: Option<Spanned<usize>>,
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    pub reconnect: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub path: Spanned<String>,
    pub broker: Spanned<String>,
    pub topic: Option<Spanned<String>>,
    pub topics: Option<Spanned<Vec<String>>>,
    pub max_topics: Option<Spanned<usize>>,
    pub envelope: Option<bool>,
    pub auth: Option<Spanned<bool>>,
    pub event: Option<Spanned<String>>,
    pub buffer: Option<Spanned<usize>>,
    pub overflow: Option<Spanned<String>>,
    pub publish: Option<bool>,
    pub replay: Option<Spanned<usize>>,
    pub replay_bytes: Option<Spanned<usize>>,
    pub linger: Option<Spanned<String>>,
    pub jetstream: Option<Spanned<String>>,
    pub retained: Option<Spanned<bool>>,
    pub compress: Option<Spanned<RawCompress>>,
    pub max_rate: Option<Spanned<String>>,
    pub conflate: Option<Spanned<String>>,
}

/// `compress`: `true` or `false`, or the encodings the route offers.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "expected true, false or a list of encodings (\"gzip\", \"br\", \"zstd\")"
)]
pub(super) enum RawCompress {
    All(bool),
    Some(Vec<String>),
}

/// `[server] compression_level`: a level per encoding.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLevels {
    pub gzip: Option<Spanned<u32>>,
    pub br: Option<Spanned<u32>>,
    pub zstd: Option<Spanned<i32>>,
}
