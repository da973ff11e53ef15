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
