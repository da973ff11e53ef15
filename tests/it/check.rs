//! `sluice --check` as it is run: exit codes, `PATH:LINE:COLUMN: reason` on stderr, the shipped config,
//! and the checks that need real files (TLS certificates and keys, JWT keys). Every validation rule
//! is a unit test of `config::parse` in `src/config/`.

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
fn listen_and_tls_listen_that_cannot_all_be_bound_are_refused() {
    let tls = |listen: &str| {
        format!("[server]\nlisten = [\"127.0.0.1:8080\"]\n[server.tls]\nlisten = {listen}\ncert = \"c.pem\"\nkey = \"k.pem\"\n{ROUTE}")
    };
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    let files: &[(&str, &[u8])] = &[
        ("c.pem", cert_pem.as_bytes()),
        ("k.pem", key_pem.as_bytes()),
    ];
    assert_refused(
        &[
            (
                "in listen and tls.listen",
                tls("\"127.0.0.1:8080\""),
                "FILE:4:10: listen address \"127.0.0.1:8080\" is listed twice",
            ),
            (
                "[::] in tls.listen beside 127.0.0.1",
                tls("\"[::]:8080\""),
                "FILE:4:10: listen address \"[::]:8080\" overlaps \"127.0.0.1:8080\"",
            ),
        ],
        files,
    );
    let (code, stderr) = check_with(&tls("\"127.0.0.1:8443\""), files);
    assert_eq!(code, 0, "{stderr}");
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
    assert_passes_check(std::path::Path::new(config), &[]);
}

/// Runs `sluice --check` on the file at `path` with `env` set, and asserts that it passes.
fn assert_passes_check(path: &std::path::Path, env: &[(&str, &str)]) {
    let out = Command::new(sluice_bin())
        .args(["--config".as_ref(), path.as_os_str(), "--check".as_ref()])
        .envs(env.iter().copied())
        .output()
        .expect("run sluice --check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The examples commented out in the shipped file (real brokers, an SSE origin) are valid too.
#[test]
fn shipped_config_examples_are_valid() {
    let shipped = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"));
    let (body, examples) = shipped
        .split_once("# ---- real brokers")
        .expect("the examples' marker");
    let uncommented: String = examples
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            // A key or a table: TOML, not prose.
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(key, _)| {
                        key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest
            }
            _ => "",
        })
        .fold(String::new(), |text, line| text + line + "\n");
    assert!(uncommented.contains("type = \"sse\""), "{uncommented}");
    let dir = TempDir::new("shipped-examples");
    let path = dir.0.join("config.toml");
    // Relative paths are relative to the file: the dashboard folder is the repository's.
    let dashboard = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard");
    let body = body.replace("\"dashboard\"", &format!("{dashboard:?}"));
    std::fs::write(&path, format!("{body}\n{uncommented}")).expect("write config");
    assert_passes_check(&path, &[("APP_TOKEN", "example")]);
}

#[test]
fn valid_config_exits_zero() {
    assert_eq!(check(GOOD).0, 0);
}

/// One error from serde and one from validation, as printed (every rule: unit tests in src/config/).
#[test]
fn errors_name_line_and_column() {
    let cases: &[(&str, &str, &str)] = &[
        ("unknown key", "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n", "FILE:3:1: unknown field `lisen`"),
        (
            "missing broker",
            "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"nope\"\ntopic = \"a\"\n",
            "FILE:5:10: no broker named \"nope\" (defined: m)\n",
        ),
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

#[test]
fn compress_with_auth_is_a_warning_not_an_error() {
    let public = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .expect("key")
        .public_key_pem();
    let files: &[(&str, &[u8])] = &[("public.pem", public.as_bytes())];
    let config = |keys: &str| format!("[auth]\njwt_public_key = \"public.pem\"\n{GOOD}{keys}\n");
    let (code, stderr) = check_with(&config("auth = true\ncompress = true"), files);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.starts_with("warning: route \"/r/{a}\" has compress and auth together")
            && stderr.contains("BREACH"),
        "{stderr}"
    );
    // Either one alone says nothing.
    for keys in ["auth = true", "compress = true"] {
        let (code, stderr) = check_with(&config(keys), files);
        assert_eq!((code, stderr.as_str()), (0, ""), "{keys}");
    }
}
