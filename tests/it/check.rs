//! `sluice --check`: the shipped config is valid, and every kind of error names its line and column.

use crate::support::{sluice_bin, TempDir};
use std::process::Command;

/// Runs `sluice --check` on `text`; returns the exit code and what it printed on stderr.
fn check(text: &str) -> (i32, String) {
    check_with(text, &[])
}

/// Like [`check`], with more files (`(name, contents)`) beside the config; their folder is `DIR` in
/// what is returned.
fn check_with(text: &str, files: &[(&str, &[u8])]) -> (i32, String) {
    let dir = TempDir::new("check");
    for (name, contents) in files {
        std::fs::write(dir.0.join(name), contents).expect("write file");
    }
    let path = dir.0.join("sluice.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(sluice_bin())
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .expect("run sluice --check");
    let stderr = String::from_utf8_lossy(&out.stderr)
        .replace(&path.display().to_string(), "FILE")
        .replace(&dir.0.display().to_string(), "DIR");
    (out.status.code().unwrap_or(-1), stderr)
}

/// Asserts that each `(name, config, expected start of stderr)` fails `--check` with status 2.
fn assert_refused(cases: &[(&str, String, &str)], files: &[(&str, &[u8])]) {
    for (name, text, expected) in cases {
        let (code, stderr) = check_with(text, files);
        assert_eq!(code, 2, "{name}: exit code (stderr: {stderr})");
        assert!(
            stderr.starts_with(expected),
            "{name}: expected {expected:?}, got {stderr:?}"
        );
    }
}

/// One route on a memory broker, for configs that test other sections.
const ROUTE: &str =
    "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\n";

#[test]
fn listen_addresses_that_cannot_all_be_bound_are_refused() {
    let tls = |listen: &str| {
        format!("[server]\nlisten = [\"127.0.0.1:8080\"]\n[server.tls]\nlisten = {listen}\ncert = \"c.pem\"\nkey = \"k.pem\"\n{ROUTE}")
    };
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    let files: &[(&str, &[u8])] = &[
        ("c.pem", cert_pem.as_bytes()),
        ("k.pem", key_pem.as_bytes()),
    ];
    let server = |listen: &str| format!("[server]\nlisten = {listen}\n{ROUTE}");
    assert_refused(
        &[
            (
                "the same address twice",
                server("[\"127.0.0.1:8080\", \"127.0.0.1:8080\"]"),
                "FILE:2:10: listen address \"127.0.0.1:8080\" is listed twice",
            ),
            (
                "in listen and tls.listen",
                tls("\"127.0.0.1:8080\""),
                "FILE:4:10: listen address \"127.0.0.1:8080\" is listed twice",
            ),
            (
                "0.0.0.0 beside 127.0.0.1",
                server("[\"127.0.0.1:8080\", \"0.0.0.0:8080\"]"),
                "FILE:2:10: listen address \"0.0.0.0:8080\" overlaps \"127.0.0.1:8080\": 0.0.0.0 takes port 8080 on every IPv4 address",
            ),
            (
                "[::] beside an IPv4 address",
                server("[\"[::]:8080\", \"10.1.2.3:8080\"]"),
                "FILE:2:10: listen address \"10.1.2.3:8080\" overlaps \"[::]:8080\": :: takes port 8080 on every address, IPv4 included",
            ),
            (
                "[::] in tls.listen beside 127.0.0.1",
                tls("\"[::]:8080\""),
                "FILE:4:10: listen address \"[::]:8080\" overlaps \"127.0.0.1:8080\"",
            ),
            (
                "an IPv4-mapped IPv6 address",
                server("[\"127.0.0.1:8080\", \"[::ffff:127.0.0.1]:8080\"]"),
                "FILE:2:10: listen address \"[::ffff:127.0.0.1]:8080\" is listed twice",
            ),
            (
                "port 0",
                server("\"127.0.0.1:0\""),
                "FILE:2:10: listen address \"127.0.0.1:0\": port 0",
            ),
        ],
        files,
    );
    // Different ports, or addresses that do not overlap, are fine.
    for ok in [
        server("[\"0.0.0.0:8080\", \"0.0.0.0:8081\", \"127.0.0.1:8082\", \"[::1]:8082\"]"),
        server("[\"0.0.0.0:8080\", \"[::1]:8080\"]"),
        tls("\"127.0.0.1:8443\""),
    ] {
        let (code, stderr) = check_with(&ok, files);
        assert_eq!(code, 0, "{ok}: {stderr}");
    }
}

#[test]
fn tls_files_are_loaded_and_matched_by_check() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    let other_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let files: &[(&str, &[u8])] = &[
        ("cert.pem", cert_pem.as_bytes()),
        ("key.pem", key_pem.as_bytes()),
        ("other.key", other_key.as_bytes()),
        ("garbage.pem", b"garbage\n"),
    ];
    let config = |cert: &str, key: &str| {
        format!("[server]\nlisten = \"127.0.0.1:8080\"\n[server.tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{cert}\"\nkey = \"{key}\"\n{ROUTE}")
    };
    assert_refused(
        &[
            (
                "garbage certificate",
                config("garbage.pem", "key.pem"),
                "FILE:5:8: DIR/garbage.pem: no certificate",
            ),
            (
                "garbage key",
                config("cert.pem", "garbage.pem"),
                "FILE:6:7: DIR/garbage.pem: no private key",
            ),
            (
                "a certificate as the key",
                config("cert.pem", "cert.pem"),
                "FILE:6:7: DIR/cert.pem: no private key",
            ),
            (
                "a key that is not the certificate's",
                config("cert.pem", "other.key"),
                "FILE:6:7: DIR/other.key: the private key does not match the certificate",
            ),
        ],
        files,
    );
    let (code, stderr) = check_with(&config("cert.pem", "key.pem"), files);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn every_bounded_key_is_refused_past_its_bounds_and_accepted_at_them() {
    let server = |key: &str| format!("[server]\nlisten = \"127.0.0.1:8080\"\n{key}\n{ROUTE}");
    let simulator = |key: &str| format!("{ROUTE}[simulator]\nbroker = \"m\"\n{key}\n");
    let linger = |value: &str| format!("{ROUTE}replay = 5\nlinger = \"{value}\"\n");
    let out_of_range = |col: usize, value: &str| {
        format!(
            "FILE:3:{col}: duration \"{value}\" is out of range: it must be between 1ms and 1day"
        )
    };
    let mut cases = Vec::new();
    for key in ["heartbeat", "retry", "write_timeout", "request_timeout"] {
        for value in ["300000000000y", "1day 1ms", "999us"] {
            cases.push((
                key,
                server(&format!("{key} = \"{value}\"")),
                out_of_range(key.len() + 4, value),
            ));
        }
        cases.push((
            key,
            server(&format!("{key} = \"0s\"")),
            out_of_range(key.len() + 4, "0s"),
        ));
    }
    cases.push((
        "interval",
        simulator("interval = \"2days\""),
        "FILE:9:12: duration \"2days\" is out of range".into(),
    ));
    cases.push((
        "interval",
        simulator("interval = \"0ms\""),
        "FILE:9:12: duration \"0ms\" is out of range".into(),
    ));
    cases.push((
        "linger",
        linger("25h"),
        "FILE:8:10: duration \"25h\" is out of range".into(),
    ));
    cases.push((
        "linger",
        linger("500us"),
        "FILE:8:10: duration \"500us\" is out of range".into(),
    ));
    for (key, past) in [
        ("max_publish_bytes", "67108865"),
        ("max_publish_bytes", "0"),
        ("max_streams_per_connection", "100001"),
        ("max_streams_per_connection", "0"),
    ] {
        let (low, high) = if key == "max_publish_bytes" {
            (1, 67_108_864)
        } else {
            (1, 100_000)
        };
        cases.push((
            key,
            server(&format!("{key} = {past}")),
            format!(
                "FILE:3:{}: {key} must be between {low} and {high}",
                key.len() + 4
            ),
        ));
    }
    cases.push((
        "devices",
        simulator("devices = 1001"),
        "FILE:9:11: devices must be between 1 and 1000".into(),
    ));
    cases.push((
        "devices",
        simulator("devices = 0"),
        "FILE:9:11: devices must be between 1 and 1000".into(),
    ));
    let cases: Vec<(&str, String, &str)> = cases
        .iter()
        .map(|(name, text, expected)| (*name, text.clone(), expected.as_str()))
        .collect();
    assert_refused(&cases, &[]);

    // At the bounds, every key passes (tests/it/limits.rs starts sluice with such values).
    let edge = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\nheartbeat = \"1ms\"\nretry = \"24h\"\nwrite_timeout = \"1day\"\nrequest_timeout = \"1ms\"\nmax_publish_bytes = 67108864\nmax_streams_per_connection = 100000\n{ROUTE}replay = 1\nlinger = \"0ms\"\n[simulator]\nbroker = \"m\"\ndevices = 1000\ninterval = \"1ms\"\n"
    );
    let (code, stderr) = check(&edge);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn cors_origins_must_be_what_a_browser_sends() {
    let cors = |origin: &str| {
        format!("[server]\nlisten = \"127.0.0.1:8080\"\n[server.cors]\nallow_origins = [\"https://ok.example\", {origin:?}]\n{ROUTE}")
    };
    let refused = [
        "https://dash.example.com\r\nx-evil: 1",
        "https://dash.example.com\n",
        "https://dash example.com",
        "https://Dash.Example.com",
        "https://dash.example.com/",
        "https://dash.example.com/app",
        "https://dash.example.com:443",
        "http://dash.example.com:80",
        "https://dash.example.com:",
        "https://dash.example.com:99999",
        "https://dash.example.com:08080",
        "https://*.example.com",
        "*",
        "ftp://dash.example.com",
        "https://",
        "https://[::1",
        "https://[0:0:0:0:0:0:0:1]",
        "https://dash.exämple.com",
    ];
    let cases: Vec<(&str, String, &str)> = refused
        .iter()
        .map(|origin| (*origin, cors(origin), "FILE:4:17: invalid origin"))
        .collect();
    assert_refused(&cases, &[]);
    for ok in [
        "http://localhost:8080",
        "https://dash.example.com",
        "https://xn--exmple-cua.com",
        "http://[::1]:3000",
        "http://127.0.0.1:65535",
    ] {
        let (code, stderr) = check(&cors(ok));
        assert_eq!(code, 0, "{ok}: {stderr}");
    }
}

#[test]
fn jwt_keys_that_could_verify_nothing_are_refused() {
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let (private, public, wrong_curve) = (
        p256.serialize_pem(),
        p256.public_key_pem(),
        p384.public_key_pem(),
    );
    let files: &[(&str, &[u8])] = &[
        ("private.pem", private.as_bytes()),
        ("public.pem", public.as_bytes()),
        ("p384.pem", wrong_curve.as_bytes()),
    ];
    let auth = |key: &str| format!("[auth]\njwt_public_key = \"{key}\"\n{ROUTE}");
    assert_refused(
        &[
            (
                "private key",
                auth("private.pem"),
                "FILE:2:18: DIR/private.pem: this is a private key",
            ),
            (
                "P-384",
                auth("p384.pem"),
                "FILE:2:18: DIR/p384.pem: an EC key on P-384",
            ),
            (
                "empty audience",
                format!("[auth]\njwt_public_key = \"public.pem\"\naudience = \"\"\n{ROUTE}"),
                "FILE:3:12: audience cannot be empty",
            ),
        ],
        files,
    );
    let (code, stderr) = check_with(&auth("public.pem"), files);
    assert_eq!(code, 0, "{stderr}");
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
            "replay_bytes without replay",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\nreplay_bytes = 100000\n",
            "FILE:7:16: replay_bytes needs replay > 0",
        ),
        (
            "replay_bytes too small",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\nreplay = 5\nreplay_bytes = 1000\n",
            "FILE:8:16: replay_bytes must be between 65536 (64 KiB) and 68719476736 (64 GiB)",
        ),
        (
            "max_control_line too small",
            "[brokers.n]\ntype = \"nats\"\nurl = \"nats://x\"\nmax_control_line = 100\n",
            "FILE:4:20: max_control_line must be between 1024 and 16777216 bytes",
        ),
        (
            "max_control_line on mqtt",
            "[brokers.q]\ntype = \"mqtt\"\nurl = \"mqtt://x\"\nmax_control_line = 4096\n",
            "FILE:4:20: max_control_line is for nats brokers only",
        ),
        (
            "a long stream name",
            &format!("[brokers.n]\ntype = \"nats\"\nurl = \"nats://x\"\n[[routes]]\npath = \"/a\"\nbroker = \"n\"\ntopic = \"a\"\njetstream = \"{}\"\n", "S".repeat(256)),
            "FILE:8:13: a JetStream stream name is at most 255 bytes",
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
