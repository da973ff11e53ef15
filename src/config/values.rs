//! Validators shared by every section: a number within its bounds, a duration within its bounds,
//! a file of CA certificates.

use super::{ConfigError, Locator, DURATION_RANGE};
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// A number key within `range`, or `default` when it is not set; the error says
/// "KEY must be between LOW and HIGH".
pub(super) fn bounded<T: Copy + PartialOrd + Display>(
    at: &Locator,
    key: &str,
    value: Option<&Spanned<T>>,
    default: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError> {
    let message = || {
        format!(
            "{key} must be between {} and {}",
            range.start(),
            range.end()
        )
    };
    within(at, value, default, &range, message)
}

/// A number key within `range`, or `default` when it is not set; `message` says what is wrong
/// with a value outside it.
pub(super) fn within<T: Copy + PartialOrd>(
    at: &Locator,
    value: Option<&Spanned<T>>,
    default: T,
    range: &RangeInclusive<T>,
    message: impl FnOnce() -> String,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err(at.error(v.span(), message())),
    }
}

/// A duration key: a humantime string within [`DURATION_RANGE`].
pub(super) fn duration(
    at: &Locator,
    value: Option<&Spanned<String>>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => in_duration_range(at, value, parse_duration(at, value)?),
    }
}

/// A duration that may also be zero ("0s" turns the feature off).
pub(super) fn optional_duration(
    at: &Locator,
    value: Option<&Spanned<String>>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match parse_duration(at, value)? {
        zero if zero.is_zero() => Ok(zero),
        parsed => in_duration_range(at, value, parsed),
    }
}

fn parse_duration(at: &Locator, value: &Spanned<String>) -> Result<Duration, ConfigError> {
    let text = value.get_ref().trim();
    // humantime wants a unit even on zero.
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|e| {
        at.error(
            value.span(),
            format!(
                "invalid duration {:?}: {e} (e.g. \"15s\", \"500ms\")",
                value.get_ref()
            ),
        )
    })
}

fn in_duration_range(
    at: &Locator,
    value: &Spanned<String>,
    parsed: Duration,
) -> Result<Duration, ConfigError> {
    if DURATION_RANGE.contains(&parsed) {
        return Ok(parsed);
    }
    Err(at.error(
        value.span(),
        format!(
            "duration {:?} is out of range: it must be between {} and {}",
            value.get_ref(),
            humantime::format_duration(*DURATION_RANGE.start()),
            humantime::format_duration(*DURATION_RANGE.end())
        ),
    ))
}

/// `ca_file` (of `[proxy]` and of an `sse` broker): a PEM file of at least one certificate,
/// relative to `base`, loaded as pingora will load it.
pub(super) fn ca_file(
    at: &Locator,
    raw: &Spanned<String>,
    base: &Path,
) -> Result<std::path::PathBuf, ConfigError> {
    let path = base.join(raw.get_ref());
    if raw.get_ref().is_empty() || !path.is_file() {
        return Err(at.error(raw.span(), format!("no such file: {}", path.display())));
    }
    let mut store = rustls::RootCertStore::empty();
    // The same loader pingora's connector uses, so what passes here loads there.
    if let Err(e) = pingora::tls::load_ca_file_into_store(&path, &mut store) {
        return Err(at.error(raw.span(), format!("{}: {e}", path.display())));
    }
    if store.is_empty() {
        return Err(at.error(
            raw.span(),
            format!("{}: no certificate in the file", path.display()),
        ));
    }
    Ok(path)
}
