//! `sluice --check`: the shipped config is valid, and every kind of error names its line and column.

use crate::support::{sluice_bin, TempDir};
use std::process::Command;

/// Runs `sluice --check` on `text`; returns the exit code and what it printed on stderr.
fn check(text: &str) -> (i32, String) {
    let dir = TempDir::new("check");
    let path = dir.0.join("sluice.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(sluice_bin())
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .expect("run sluice --check");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (out.status.code().unwrap_or(-1), stderr)
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:1"

[brokers.mem]
type = "memory"

[[routes]]
path = "/r/{a}"
broker = "mem"
topic = "r/{a}"
"#;

#[test]
fn shipped_config_is_valid() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let out = Command::new(sluice_bin())
        .args(["--config", config, "--check"])
        .output()
        .expect("run sluice --check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn valid_config_exits_zero() {
    assert_eq!(check(GOOD).0, 0);
}

#[test]
fn errors_name_line_and_column() {
    let cases: &[(&str, &str, &str)] = &[
        ("unknown key", "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n", "FILE:3:1: unknown field `lisen`"),
        (
            "unknown route key",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\nbufer = 3\n",
            "FILE:7:1: unknown field `bufer`",
        ),
        (
            "missing broker",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"nope\"\ntopic = \"a\"\n",
            "FILE:5:10: no broker named \"nope\"",
        ),
        (
            "bad duration",
            "[server]\nheartbeat = \"fast\"\n[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\n",
            "FILE:2:13: invalid duration \"fast\"",
        ),
        (
            "undefined parameter",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a/{x}\"\nbroker = \"m\"\ntopic = \"a/{y}\"\n",
            "FILE:6:9: topic uses {y}, which the route path does not define",
        ),
        (
            "bad broker type",
            "[brokers.m]\ntype = \"kafka\"\n",
            "FILE:2:8: unknown broker type \"kafka\"",
        ),
        (
            "bad qos",
            "[brokers.m]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1\"\nqos = 2\n",
            "FILE:4:7: qos must be 0 or 1",
        ),
        (
            "bad overflow",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\noverflow = \"block\"\n",
            "FILE:7:12: unknown overflow policy \"block\"",
        ),
        (
            "wildcard in the middle",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a/#/b\"\n",
            "FILE:6:9: invalid topic \"a/#/b\": '#' must be the last level",
        ),
        (
            "nats wildcard",
            "[brokers.n]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n[[routes]]\npath = \"/a\"\nbroker = \"n\"\ntopic = \"a.b*\"\n",
            "FILE:7:9: invalid topic \"a.b*\": a wildcard must be a whole token",
        ),
        (
            "publish to wildcard",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a/+\"\npublish = true\n",
            "FILE:6:9: publish = true needs a topic without wildcards",
        ),
        (
            "bad path",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"a/{x\"\nbroker = \"m\"\ntopic = \"a\"\n",
            "FILE:4:8: a route path must start with '/'",
        ),
        (
            "bad listen",
            "[server]\nlisten = [\"localhost\"]\n",
            "FILE:2:10: invalid listen address \"localhost\"",
        ),
        (
            "wrong type",
            "[server]\nlisten = \"127.0.0.1:1\"\nheartbeat = 15\n",
            "FILE:3:13: invalid type",
        ),
        (
            "duplicate path",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"b\"\n",
            "FILE:8:8: duplicate route path \"/a\"",
        ),
        (
            "nats url scheme",
            "[brokers.n]\ntype = \"nats\"\nurl = \"http://x\"\n",
            "FILE:3:7: a nats url must start with nats://",
        ),
        (
            "mqtt key on nats",
            "[brokers.n]\ntype = \"nats\"\nurl = \"nats://x\"\nqos = 1\n",
            "FILE:4:7: qos is for mqtt brokers only",
        ),
        (
            "event parameter",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a/{x}\"\nbroker = \"m\"\ntopic = \"a/{x}\"\nevent = \"{x}\"\n",
            "FILE:7:9: event can only insert {topic}, not {x}",
        ),
        (
            "zero buffer",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\nbuffer = 0\n",
            "FILE:7:10: buffer must be between 1 and",
        ),
        (
            "missing certificate",
            "[server.tls]\nlisten = \"127.0.0.1:1\"\ncert = \"missing.pem\"\nkey = \"missing.key\"\n",
            "FILE:3:8: no such file",
        ),
        (
            "jetstream on memory",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\njetstream = \"S\"\n",
            "FILE:7:13: jetstream is for nats brokers only",
        ),
        (
            "bad stream name",
            "[brokers.n]\ntype = \"nats\"\nurl = \"nats://x\"\n[[routes]]\npath = \"/a\"\nbroker = \"n\"\ntopic = \"a\"\njetstream = \"A.B\"\n",
            "FILE:8:13: invalid JetStream stream name",
        ),
        (
            "replay with jetstream",
            "[brokers.n]\ntype = \"nats\"\nurl = \"nats://x\"\n[[routes]]\npath = \"/a\"\nbroker = \"n\"\ntopic = \"a\"\njetstream = \"S\"\nreplay = 5\n",
            "FILE:9:10: replay and jetstream cannot be combined",
        ),
        (
            "linger without replay",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\nlinger = \"5s\"\n",
            "FILE:7:10: linger needs replay > 0",
        ),
        (
            "bad linger",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\nreplay = 5\nlinger = \"soon\"\n",
            "FILE:8:10: invalid duration",
        ),
        (
            "huge replay",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\nreplay = 99999999\n",
            "FILE:7:10: replay must be between 0 (off) and",
        ),
        (
            "retained on nats",
            "[brokers.n]\ntype = \"nats\"\nurl = \"nats://x\"\n[[routes]]\npath = \"/a\"\nbroker = \"n\"\ntopic = \"a\"\nretained = true\n",
            "FILE:8:12: retained = true is for mqtt brokers only",
        ),
        ("no routes", "[brokers.m]\ntype = \"memory\"\n", "FILE:1:1: no [[routes]]"),
        ("not toml", "[server\n", "FILE:1:8:"),
    ];
    for (name, text, expected) in cases {
        let (code, stderr) = check(text);
        assert_eq!(code, 2, "{name}: exit code (stderr: {stderr})");
        assert!(
            stderr.starts_with(expected),
            "{name}: expected {expected:?}, got {stderr:?}"
        );
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = Command::new(sluice_bin())
        .args(["--config", "/nonexistent/sluice.toml", "--check"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/sluice.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}
