//! Validates `[auth]` into an [`AuthConfig`]: the JWT key (read now), token sources and audience.

use super::raw::RawAuth;
use super::{ConfigError, Locator, DEFAULT_COOKIE, DEFAULT_TOKEN_QUERY};
use crate::auth::{AuthConfig, JwtKey};
use std::path::Path;
use toml::Spanned;

/// `[auth]`; a relative `jwt_public_key` is relative to `base`.
pub(super) fn validate(at: &Locator, raw: RawAuth, base: &Path) -> Result<AuthConfig, ConfigError> {
    let key = match (&raw.jwt_secret_env, &raw.jwt_public_key) {
        (Some(env), None) => {
            let secret = std::env::var(env.get_ref()).unwrap_or_default();
            if secret.is_empty() {
                return Err(at.error(
                    env.span(),
                    format!(
                        "the environment variable {} is not set or empty",
                        env.get_ref()
                    ),
                ));
            }
            JwtKey::secret(secret.as_bytes())
        }
        (None, Some(file)) => {
            let path = base.join(file.get_ref());
            let pem = std::fs::read(&path).map_err(|e| {
                at.error(file.span(), format!("cannot read {}: {e}", path.display()))
            })?;
            JwtKey::public_pem(&pem)
                .map_err(|e| at.error(file.span(), format!("{}: {e}", path.display())))?
        }
        (Some(env), Some(_)) => {
            return Err(at.error(
                env.span(),
                "set one of jwt_secret_env (HS256) and jwt_public_key (RS256/ES256), not both",
            ))
        }
        (None, None) => {
            return Err(at.error(
                0..0,
                "[auth] needs jwt_secret_env (HS256) or jwt_public_key (RS256/ES256)",
            ))
        }
    };
    let name = |v: &Option<Spanned<String>>, default: &str| -> Result<String, ConfigError> {
        match v {
            None => Ok(default.to_owned()),
            Some(v)
                if v.get_ref().is_empty()
                    || !v
                        .get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                Err(at.error(
                    v.span(),
                    "must be non-empty letters, digits, '-', '_' or '.'",
                ))
            }
            Some(v) => Ok(v.get_ref().clone()),
        }
    };
    Ok(AuthConfig {
        key,
        cookie: name(&raw.cookie, DEFAULT_COOKIE)?,
        query: name(&raw.query, DEFAULT_TOKEN_QUERY)?,
        audience: match raw.audience {
            Some(a) if a.get_ref().is_empty() => {
                return Err(at.error(a.span(), "audience cannot be empty"))
            }
            a => a.map(Spanned::into_inner),
        },
        secret_env: raw.jwt_secret_env.map(Spanned::into_inner),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_accepted, assert_refused, base, ROUTE};

    #[test]
    fn auth_errors_name_line_and_column() {
        // Key files are the repository's fixtures; keys that load but could verify nothing are also
        // checked by the black-box tests in tests/it/check.rs.
        let auth = |keys: &str| format!("[auth]\n{keys}\n{ROUTE}");
        let private_key = format!(
            "2:18: {}: this is a private key",
            base().join("jwt-rs256-test-only.key").display()
        );
        assert_refused(&[
            (
                auth("jwt_public_key = \"jwt-rs256.pub\"\naudience = \"\""),
                "3:12: audience cannot be empty",
            ),
            (
                auth("jwt_public_key = \"jwt-rs256-test-only.key\""),
                private_key.as_str(),
            ),
            (
                auth("jwt_public_key = \"missing.pem\""),
                "2:18: cannot read",
            ),
            (
                auth("jwt_secret_env = \"SLUICE_TEST_NEVER_SET\""),
                "2:18: the environment variable SLUICE_TEST_NEVER_SET is not set or empty",
            ),
            (
                auth("jwt_secret_env = \"SLUICE_TEST_NEVER_SET\"\njwt_public_key = \"jwt-rs256.pub\""),
                "2:18: set one of jwt_secret_env (HS256) and jwt_public_key (RS256/ES256), not both",
            ),
            (
                auth("cookie = \"sluice\""),
                "1:1: [auth] needs jwt_secret_env (HS256) or jwt_public_key (RS256/ES256)",
            ),
            (
                auth("jwt_public_key = \"jwt-rs256.pub\"\ncookie = \"a b\""),
                "3:10: must be non-empty letters, digits, '-', '_' or '.'",
            ),
        ]);
        assert_accepted(&[auth(
            "jwt_public_key = \"jwt-rs256.pub\"\ncookie = \"t\"\nquery = \"t\"\naudience = \"dash\"",
        )]);
    }
}
