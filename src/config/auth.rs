//! Validates `[auth]` into an [`AuthConfig`]: the JWT key (read now), token sources and audience.

use super::raw::{OneOrMany, RawAuth};
use super::{ConfigError, Locator, DEFAULT_COOKIE, DEFAULT_TOKEN_QUERY};
use crate::auth::{AuthConfig, JwtKey};
use std::path::Path;
use toml::Spanned;

/// `[auth]`; a relative `jwt_public_key` is relative to `base`.
pub(super) fn validate(at: &Locator, raw: RawAuth, base: &Path) -> Result<AuthConfig, ConfigError> {
    // One name or a list: while a key is rotated out, tokens of the old and the new one both pass.
    let names = |value: &Spanned<OneOrMany>| -> Result<Vec<String>, ConfigError> {
        let names = match value.get_ref() {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        };
        if names.is_empty() {
            return Err(at.error(value.span(), "needs at least one key"));
        }
        Ok(names)
    };
    let (keys, secret_env) = match (&raw.jwt_secret_env, &raw.jwt_public_key) {
        (Some(env), None) => {
            let vars = names(env)?;
            let keys = vars
                .iter()
                .map(|var| {
                    let secret = std::env::var(var).unwrap_or_default();
                    if secret.is_empty() {
                        return Err(at.error(
                            env.span(),
                            format!("the environment variable {var} is not set or empty"),
                        ));
                    }
                    Ok(JwtKey::secret(secret.as_bytes()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (keys, vars.into_iter().next())
        }
        (None, Some(files)) => {
            let keys = names(files)?
                .iter()
                .map(|file| {
                    let path = base.join(file);
                    let pem = std::fs::read(&path).map_err(|e| {
                        at.error(files.span(), format!("cannot read {}: {e}", path.display()))
                    })?;
                    JwtKey::public_pem(&pem)
                        .map_err(|e| at.error(files.span(), format!("{}: {e}", path.display())))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (keys, None)
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
        keys,
        cookie: name(&raw.cookie, DEFAULT_COOKIE)?,
        query: name(&raw.query, DEFAULT_TOKEN_QUERY)?,
        audience: match raw.audience {
            Some(a) if a.get_ref().is_empty() => {
                return Err(at.error(a.span(), "audience cannot be empty"))
            }
            a => a.map(Spanned::into_inner),
        },
        secret_env,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_accepted, assert_refused, base, parse_text, ROUTE};

    #[test]
    fn a_list_of_keys_keeps_each_and_mints_with_the_first_secret() {
        let text = format!("[auth]\njwt_secret_env = [\"PATH\", \"HOME\"]\n{ROUTE}");
        let auth = parse_text(&text).expect("valid").auth.expect("[auth]");
        assert_eq!(auth.keys.len(), 2);
        assert_eq!(auth.secret_env.as_deref(), Some("PATH"));
        let ids = auth.key_ids();
        assert_ne!(ids[0], ids[1]);
    }

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
            (auth("jwt_public_key = []"), "2:18: needs at least one key"),
            (
                auth("jwt_public_key = [\"jwt-rs256.pub\", \"missing.pem\"]"),
                "2:18: cannot read",
            ),
            (
                auth("jwt_secret_env = [\"PATH\", \"SLUICE_TEST_NEVER_SET\"]"),
                "2:18: the environment variable SLUICE_TEST_NEVER_SET is not set or empty",
            ),
        ]);
        assert_accepted(&[
            auth(
                "jwt_public_key = \"jwt-rs256.pub\"\ncookie = \"t\"\nquery = \"t\"\naudience = \"dash\"",
            ),
            auth("jwt_public_key = [\"jwt-rs256.pub\", \"jwt-rs256-pkcs1.pub\"]"),
        ]);
    }
}
