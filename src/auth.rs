//! JWT auth for routes with `auth = true`: where a token is found, how it is verified, and what topics
//! its `sluice` claim grants.
//!
//! `EventSource` cannot set headers, so besides `Authorization: Bearer` a token is taken from a cookie
//! or a query parameter. The query parameter's value is redacted wherever a request is logged.

use crate::config::TOKEN_TTL_RANGE;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora::http::RequestHeader;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_bridge::TopicSyntax;
use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

/// The latest `exp`, `nbf` or `iat` accepted: 9999-12-31T23:59:59Z. A later, negative or non-numeric
/// time claim is a broken issuer; past 2^63 seconds it is not even a time this machine can hold.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// A verification key and the one algorithm it is for.
#[derive(Clone)]
pub struct JwtKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
    /// A digest of the key material, never the material itself (see [`KeyId`]).
    fingerprint: u64,
}

/// Which key, under which audience, verified a stream's token: a digest, so a stream keeps 8 bytes
/// rather than its token, and a configuration reload that takes the key away (or changes the
/// audience) can find and end the streams whose tokens no longer verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(NonZeroU64);

/// A digest of `parts` (std's SipHash with fixed keys: the same in every run of this binary).
fn digest(parts: impl Hash) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material (an HS256 key is the shared secret).
        write!(f, "JwtKey({:?})", self.algorithm)
    }
}

impl JwtKey {
    /// An HS256 shared secret.
    pub fn secret(secret: &[u8]) -> Self {
        Self {
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
            fingerprint: digest(("secret", secret)),
        }
    }

    /// An RS256 or ES256 public key in PEM (see [`crate::keys::jwt_public_key`]). A file with other
    /// bytes counts as another key, even if it encodes the same one.
    pub fn public_pem(pem: &[u8]) -> Result<Self, String> {
        let (algorithm, key) = crate::keys::jwt_public_key(pem)?;
        Ok(Self {
            algorithm,
            key,
            fingerprint: digest(("public", pem)),
        })
    }
}

/// The validated `[auth]` settings.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The keys a token may be signed with (at least one): several while one is rotated out.
    pub keys: Vec<JwtKey>,
    /// The cookie a token is read from.
    pub cookie: String,
    /// The query parameter a token is read from.
    pub query: String,
    /// When set, a token must name this audience in `aud`.
    pub audience: Option<String>,
    /// The environment variable holding the first HS256 secret (for `sluice --mint-token`).
    pub secret_env: Option<String>,
}

/// Signs an HS256 token granting `subscribe` and `publish` patterns for `ttl`, which must lie in
/// [`TOKEN_TTL_RANGE`] (for demos and tests; production tokens come from the site's own login).
pub fn mint(
    secret: &[u8],
    subscribe: &[String],
    publish: &[String],
    ttl: Duration,
    audience: Option<&str>,
) -> Result<String, String> {
    if !TOKEN_TTL_RANGE.contains(&ttl) {
        return Err(format!(
            "the lifetime must be between {} and {}",
            humantime::format_duration(*TOKEN_TTL_RANGE.start()),
            humantime::format_duration(*TOKEN_TTL_RANGE.end())
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    let mut claims = serde_json::json!({
        "iat": now.as_secs(),
        "exp": (now + ttl).as_secs(),
        "sluice": { "subscribe": subscribe, "publish": publish },
    });
    if let Some(audience) = audience {
        claims["aud"] = serde_json::json!(audience);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

/// Why a request is not authenticated (`401`).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: send Authorization: Bearer, the {cookie} cookie or the {query} query parameter"
    )]
    Missing { cookie: String, query: String },
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Grants {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// What a verified token allows, and until when.
#[derive(Clone, Debug)]
pub struct Grant {
    grants: Grants,
    /// The token's `exp`.
    pub expires: SystemTime,
    /// The key that verified it.
    pub key: KeyId,
}

impl Grant {
    /// True when one of the token's `subscribe` patterns covers `filter`.
    pub fn may_subscribe(&self, syntax: TopicSyntax, filter: &str) -> bool {
        grants(&self.grants.subscribe, syntax, filter)
    }

    /// True when one of the token's `publish` patterns matches `topic`.
    pub fn may_publish(&self, syntax: TopicSyntax, topic: &str) -> bool {
        grants(&self.grants.publish, syntax, topic)
    }

    /// How long until the token expires (zero if it already has).
    pub fn remaining(&self) -> Duration {
        self.expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

impl AuthConfig {
    /// The identity of `key` under this configuration's audience: a token verified under one
    /// identity verifies under another only if the identities are equal.
    pub fn key_id(&self, key: &JwtKey) -> KeyId {
        let id = digest((key.algorithm, key.fingerprint, &self.audience));
        KeyId(NonZeroU64::new(id).unwrap_or(NonZeroU64::MIN))
    }

    /// The identities of every configured key (see [`AuthConfig::key_id`]).
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|key| self.key_id(key)).collect()
    }

    /// The request's token: `Authorization: Bearer`, then the cookie, then the query parameter.
    pub fn token<'a>(&self, request: &'a RequestHeader) -> Option<Cow<'a, str>> {
        let headers = &request.headers;
        if let Some(bearer) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
        {
            return Some(Cow::Borrowed(bearer.trim()));
        }
        for cookies in headers.get_all(http::header::COOKIE) {
            let Ok(cookies) = cookies.to_str() else {
                continue;
            };
            for pair in cookies.split(';') {
                if let Some((name, value)) = pair.trim().split_once('=') {
                    if name == self.cookie && !value.is_empty() {
                        return Some(Cow::Borrowed(value.trim_matches('"')));
                    }
                }
            }
        }
        crate::route::query_param(request.uri.query()?, &self.query)
            .next()
            .map(|token| Cow::Owned(token.into_owned()))
    }

    /// Verifies a token: signature (by any configured key), `exp` (required), `nbf` when present,
    /// `aud` when configured, and that every time claim (`exp`, `nbf`, `iat`) is a NumericDate in
    /// range. A token that one key's signature check passes is judged by that key alone.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let mut wrong_key = None;
        for key in &self.keys {
            match self.verify_with(key, token) {
                Ok(grant) => return Ok(grant),
                Err(Refusal::WrongKey(e)) => {
                    wrong_key.get_or_insert(e);
                }
                Err(Refusal::Invalid(e)) => return Err(e),
            }
        }
        Err(wrong_key.unwrap_or_else(|| AuthError::Invalid("no key is configured".into())))
    }

    fn verify_with(&self, key: &JwtKey, token: &str) -> Result<Grant, Refusal> {
        let mut validation = Validation::new(key.algorithm);
        // jsonwebtoken skips a time claim it cannot read as a number (an `nbf` string is ignored)
        // and rounds fractions: the time claims are all checked below instead, strictly.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                // Without this a token with no `aud` at all would pass.
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        let claims = match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
        {
            Ok(data) => data.claims,
            Err(e) => {
                // jsonwebtoken reads the claims only once the signature verified, and fails on
                // some ill-typed time claims (an object, an array) with a bare JSON error: name the claim.
                if let (ErrorKind::Json(_), Some(claims)) = (e.kind(), signed_claims(token)) {
                    time_claims(&claims)?;
                }
                let error = AuthError::Invalid(reason(key, &e));
                return Err(match e.kind() {
                    // Checked before anything else of the token: another key may verify it.
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        Refusal::WrongKey(error)
                    }
                    _ => Refusal::Invalid(error),
                });
            }
        };
        let exp = time_claims(&claims)?;
        let grants = match claims.get("sluice") {
            None => Grants::default(),
            Some(claim) => Grants::deserialize(claim).map_err(|e| {
                AuthError::Invalid(format!(
                    "the sluice claim must be {{\"subscribe\": [patterns], \"publish\": [patterns]}}: {e}"
                ))
            })?,
        };
        // time_claims kept exp within 0..=MAX_NUMERIC_DATE: neither the cast nor the sum overflows.
        let expires = UNIX_EPOCH
            .checked_add(Duration::from_secs(exp.floor() as u64))
            .ok_or_else(|| AuthError::Invalid("exp is out of range".into()))?;
        Ok(Grant {
            grants,
            expires,
            key: self.key_id(key),
        })
    }

    pub fn missing(&self) -> AuthError {
        AuthError::Missing {
            cookie: self.cookie.clone(),
            query: self.query.clone(),
        }
    }
}

/// Why one key did not verify a token.
enum Refusal {
    /// The token is not signed by this key (another may verify it).
    WrongKey(AuthError),
    /// This key verified the signature, and the token is refused all the same.
    Invalid(AuthError),
}

impl From<AuthError> for Refusal {
    fn from(error: AuthError) -> Self {
        Self::Invalid(error)
    }
}

/// A 401 reason for a token jsonwebtoken refused with `key`.
fn reason(key: &JwtKey, error: &jsonwebtoken::errors::Error) -> String {
    match error.kind() {
        ErrorKind::InvalidSignature => "the signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => {
            format!("the token must be signed with {:?}", key.algorithm)
        }
        ErrorKind::InvalidAudience | ErrorKind::MissingRequiredClaim(_) => {
            "the token needs an aud that names this server's audience".into()
        }
        _ => error.to_string(),
    }
}

/// True when one of `patterns` is a valid filter in `syntax` that covers `filter`. A pattern that is
/// not valid grants nothing: `covers` stops at the first `#`, so `sensors/#/x` would grant `sensors/#`.
fn grants(patterns: &[String], syntax: TopicSyntax, filter: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| syntax.check_filter(pattern).is_ok() && syntax.covers(pattern, filter))
}

/// Checks `exp` (required), `nbf` and `iat` (when present) against the clock, with [`LEEWAY_SECS`]
/// of skew; returns `exp`.
fn time_claims(claims: &Map<String, Value>) -> Result<f64, AuthError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as f64;
    let leeway = LEEWAY_SECS as f64;
    let exp = numeric_date(claims, "exp")?
        .ok_or_else(|| AuthError::Invalid("the token has no exp (expiry) claim".into()))?;
    if exp + leeway < now {
        return Err(AuthError::Invalid("the token has expired (exp)".into()));
    }
    if numeric_date(claims, "nbf")?.is_some_and(|nbf| nbf > now + leeway) {
        return Err(AuthError::Invalid(
            "the token is not valid yet (nbf)".into(),
        ));
    }
    numeric_date(claims, "iat")?;
    Ok(exp)
}

/// The claims of a token whose signature jsonwebtoken has already verified, read directly.
fn signed_claims(token: &str) -> Option<Map<String, Value>> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// The time claim `name` in seconds since 1970, if present: a JSON number (RFC 7519 allows
/// fractions) from 0 to [`MAX_NUMERIC_DATE`]. Anything else present is refused, `null` included.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let kind = match value {
        Value::Number(n) => {
            // as_f64 is exact for every integer in range (they are below 2^53).
            return match n.as_f64() {
                Some(secs) if (0.0..=MAX_NUMERIC_DATE as f64).contains(&secs) => Ok(Some(secs)),
                _ => Err(AuthError::Invalid(format!(
                    "{name} is out of range: a time claim must be from 0 to {MAX_NUMERIC_DATE} \
                     seconds since 1970 (the end of the year 9999)"
                ))),
            };
        }
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    Err(AuthError::Invalid(format!(
        "{name} must be a number of seconds since 1970, not {kind}"
    )))
}

/// The request line for logs, with the value of query parameter `secret` (the token) redacted.
pub fn redacted_request_line(request: &RequestHeader, secret: Option<&str>) -> String {
    let path = request.uri.path();
    let Some(query) = request.uri.query() else {
        return format!("{} {path}", request.method);
    };
    let query: Vec<Cow<str>> = query
        .split('&')
        .map(|pair| match (pair.split_once('='), secret) {
            (Some((key, _)), Some(secret)) if key == secret => {
                Cow::Owned(format!("{key}=REDACTED"))
            }
            _ => Cow::Borrowed(pair),
        })
        .collect();
    format!("{} {path}?{}", request.method, query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn config() -> AuthConfig {
        AuthConfig {
            keys: vec![JwtKey::secret(b"s3cret")],
            cookie: "sluice_token".into(),
            query: "access_token".into(),
            audience: None,
            secret_env: None,
        }
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .expect("encode")
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", uri.as_bytes(), None).expect("request");
        for (name, value) in headers {
            request
                .append_header(name.to_string(), *value)
                .expect("header");
        }
        request
    }

    #[test]
    fn any_configured_key_verifies_and_the_grant_names_it() {
        let auth = AuthConfig {
            keys: vec![JwtKey::secret(b"new"), JwtKey::secret(b"s3cret")],
            ..config()
        };
        let signed = |secret: &[u8], exp: u64| {
            let claims = serde_json::json!({ "exp": exp });
            encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(secret),
            )
            .expect("encode")
        };
        let ids = auth.key_ids();
        let by_new = auth
            .verify(&signed(b"new", now() + 60))
            .expect("the first key");
        let by_old = auth
            .verify(&signed(b"s3cret", now() + 60))
            .expect("the second key");
        assert_eq!((by_new.key, by_old.key), (ids[0], ids[1]));
        // Refused by the key that verifies it, for what it is, not for another key's signature.
        let expired = auth.verify(&signed(b"s3cret", now() - 60)).err();
        assert!(expired.is_some_and(|e| e.to_string().contains("expired")));
        let stranger = auth.verify(&signed(b"other", now() + 60)).err();
        assert!(stranger.is_some_and(|e| e.to_string().contains("signature does not verify")));
        // Another audience is another identity of the same key.
        let audience = AuthConfig {
            audience: Some("x".into()),
            ..auth.clone()
        };
        assert!(audience.key_ids().iter().all(|id| !ids.contains(id)));
    }

    #[test]
    fn tokens_come_from_bearer_cookie_or_query() {
        let auth = config();
        let bearer = request("/a", &[("authorization", "Bearer abc")]);
        assert_eq!(auth.token(&bearer).as_deref(), Some("abc"));
        let cookie = request("/a", &[("cookie", "x=1; sluice_token=def; y=2")]);
        assert_eq!(auth.token(&cookie).as_deref(), Some("def"));
        let query = request("/a?x=1&access_token=g%2Bh", &[]);
        assert_eq!(auth.token(&query).as_deref(), Some("g+h"));
        assert!(auth.token(&request("/a?token=x", &[])).is_none());
    }

    #[test]
    fn verifies_signature_expiry_and_grants() {
        let auth = config();
        let good = token(serde_json::json!({
            "exp": now() + 60,
            "sluice": {"subscribe": ["sensors/+/temp"], "publish": ["cmd/a"]}
        }));
        let grant = auth.verify(&good).expect("valid");
        assert!(grant.may_subscribe(TopicSyntax::Mqtt, "sensors/a/temp"));
        assert!(!grant.may_subscribe(TopicSyntax::Mqtt, "sensors/#"));
        assert!(grant.may_publish(TopicSyntax::Mqtt, "cmd/a"));
        assert!(!grant.may_publish(TopicSyntax::Mqtt, "cmd/b"));
        assert!(grant.remaining() > Duration::from_secs(50));

        let expired = token(serde_json::json!({"exp": now() - 600}));
        assert!(auth.verify(&expired).is_err());
        let no_exp = token(serde_json::json!({"sluice": {"subscribe": ["#"]}}));
        assert!(auth.verify(&no_exp).is_err());
        let early = token(serde_json::json!({"exp": now() + 600, "nbf": now() + 300}));
        assert!(auth.verify(&early).is_err());
        let forged = encode(
            &Header::default(),
            &serde_json::json!({"exp": now() + 60}),
            &EncodingKey::from_secret(b"other"),
        )
        .expect("encode");
        assert!(auth.verify(&forged).is_err());
        assert!(auth.verify("not.a.token").is_err());
    }

    #[test]
    fn minted_tokens_verify() {
        let minted = mint(
            b"s3cret",
            &["sensors/#".into()],
            &[],
            Duration::from_secs(60),
            None,
        )
        .expect("mint");
        let grant = config().verify(&minted).expect("valid");
        assert!(grant.may_subscribe(TopicSyntax::Mqtt, "sensors/a"));
    }

    #[test]
    fn audience_is_checked_when_configured() {
        let mut auth = config();
        auth.audience = Some("dash".into());
        let right = token(serde_json::json!({"exp": now() + 60, "aud": "dash"}));
        let wrong = token(serde_json::json!({"exp": now() + 60, "aud": "other"}));
        assert!(auth.verify(&right).is_ok());
        assert!(auth.verify(&wrong).is_err());
    }

    #[test]
    fn a_token_without_aud_is_refused_when_an_audience_is_configured() {
        let mut auth = config();
        auth.audience = Some("dash".into());
        let none = token(serde_json::json!({"exp": now() + 60}));
        let number = token(serde_json::json!({"exp": now() + 60, "aud": 5}));
        for token in [none, number] {
            let error = auth.verify(&token).expect_err("no usable aud").to_string();
            assert!(error.contains("aud"), "{error}");
        }
        // Without a configured audience, aud is not looked at.
        auth.audience = None;
        let any = token(serde_json::json!({"exp": now() + 60, "aud": "other"}));
        assert!(auth.verify(&any).is_ok());
    }

    #[test]
    fn time_claims_out_of_range_or_ill_typed_are_refused_with_a_reason() {
        let auth = config();
        let later = now() + 600;
        let cases = [
            ("exp", serde_json::json!({"exp": 1u64 << 63})),
            ("exp", serde_json::json!({"exp": u64::MAX})),
            ("exp", serde_json::json!({"exp": 1.8446744073709552e19})),
            ("exp", serde_json::json!({"exp": -1})),
            ("exp", serde_json::json!({"exp": "2030-01-01"})),
            ("exp", serde_json::json!({"exp": null})),
            ("exp", serde_json::json!({"exp": [later]})),
            ("exp", serde_json::json!({"exp": MAX_NUMERIC_DATE + 1})),
            (
                "nbf",
                serde_json::json!({"exp": later, "nbf": "2020-01-01"}),
            ),
            (
                "nbf",
                serde_json::json!({"exp": later, "nbf": 1.8446744073709552e19}),
            ),
            ("nbf", serde_json::json!({"exp": later, "nbf": -5})),
            ("nbf", serde_json::json!({"exp": later, "nbf": null})),
            ("nbf", serde_json::json!({"exp": later, "nbf": {"at": 1}})),
            ("iat", serde_json::json!({"exp": later, "iat": 1u64 << 63})),
            ("iat", serde_json::json!({"exp": later, "iat": "yesterday"})),
            ("iat", serde_json::json!({"exp": later, "iat": true})),
        ];
        for (claim, claims) in cases {
            let error = auth
                .verify(&token(claims.clone()))
                .expect_err("refused")
                .to_string();
            assert!(error.contains(claim), "{claims}: {error}");
        }
        // Well-formed values still pass: integers, and fractional NumericDates (RFC 7519, 2).
        for claims in [
            serde_json::json!({"exp": later, "nbf": now() - 5, "iat": now()}),
            serde_json::json!({"exp": later as f64 + 0.5, "nbf": now() as f64 - 0.5}),
            serde_json::json!({"exp": MAX_NUMERIC_DATE}),
        ] {
            let grant = auth.verify(&token(claims.clone())).expect("valid");
            assert!(grant.remaining() > Duration::from_secs(500), "{claims}");
        }
    }

    #[test]
    fn invalid_grant_patterns_grant_nothing() {
        let auth = config();
        let grant = auth
            .verify(&token(serde_json::json!({
                "exp": now() + 60,
                "sluice": {"subscribe": ["sensors/#/x", "a/b+", "", "ok/+"], "publish": ["cmd/#/x", "n.*x"]}
            })))
            .expect("valid");
        for topic in ["sensors/#", "sensors/a", "sensors/a/x", "a/b+", "a/b"] {
            assert!(!grant.may_subscribe(TopicSyntax::Mqtt, topic), "{topic}");
        }
        assert!(grant.may_subscribe(TopicSyntax::Mqtt, "ok/a"));
        assert!(!grant.may_publish(TopicSyntax::Mqtt, "cmd/a/x"));
        assert!(!grant.may_publish(TopicSyntax::Nats, "n.ax"));
    }

    #[test]
    fn minting_refuses_absurd_lifetimes() {
        for ttl in [
            Duration::ZERO,
            *TOKEN_TTL_RANGE.end() + Duration::from_secs(1),
            Duration::from_secs(u64::MAX),
        ] {
            assert!(mint(b"s3cret", &[], &[], ttl, None).is_err(), "{ttl:?}");
        }
        let longest =
            mint(b"s3cret", &["#".into()], &[], *TOKEN_TTL_RANGE.end(), None).expect("mint");
        assert!(config().verify(&longest).is_ok());
    }

    #[test]
    fn logs_never_show_the_query_token() {
        let r = request("/s/a?access_token=secret&topic=x", &[]);
        assert_eq!(
            redacted_request_line(&r, Some("access_token")),
            "GET /s/a?access_token=REDACTED&topic=x"
        );
    }
}
