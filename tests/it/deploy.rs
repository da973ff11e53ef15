//! The deploy files: `systemd-analyze verify` accepts deploy/sluice.service (with the real binary).

use crate::support::*;
use std::path::Path;
use std::process::{Command, Stdio};

/// The unit as shipped, with its binary path replaced by the binary under test (verify checks that
/// every command exists and is executable).
fn shipped_unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/sluice.service");
    let unit = std::fs::read_to_string(path).expect("deploy/sluice.service");
    assert!(
        unit.contains("/usr/local/bin/sluice"),
        "the unit runs the installed binary"
    );
    unit.replace("/usr/local/bin/sluice", sluice_bin())
}

/// Runs `systemd-analyze verify` offline on `unit` (written as sluice.service): Ok when it passes
/// with nothing to say, since it only warns (exit 0) about unknown keys and invalid values.
fn verify(unit: &str) -> Result<(), String> {
    let dir = TempDir::new("unit");
    let path = dir.0.join("sluice.service");
    std::fs::write(&path, unit).expect("write unit");
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {said}", output.status))
    }
}

fn systemd_analyze_present() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("note: systemd-analyze is not on PATH; deploy/sluice.service was not verified");
    }
    found
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if !systemd_analyze_present() {
        return;
    }
    let unit = shipped_unit();
    if let Err(e) = verify(&unit) {
        panic!("deploy/sluice.service: {e}");
    }
    // The check has teeth: a misspelt key, a bad value and a missing binary are each caught.
    for (from, to) in [
        ("NotifyAccess=all", "NotifyAcces=all"),
        ("Type=notify", "Type=notifyy"),
        (sluice_bin(), "/nonexistent/sluice"),
    ] {
        assert!(unit.contains(from), "{from}");
        let broken = unit.replace(from, to);
        assert!(verify(&broken).is_err(), "accepted with {to}");
    }
    for needed in [
        "Type=notify",
        "NotifyAccess=all",
        "RuntimeDirectory=sluice",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "SIGUSR2",
    ] {
        assert!(unit.contains(needed), "the unit has {needed}");
    }
}
