//! JWT auth for routes with `auth = true`: where a token is found, how it is verified, and what topics
//! its `sluice` claim grants.
//!
//! `EventSource` cannot set headers, so besides `Authorization: Bearer` a token is taken from a cookie
//! or a query parameter. The query parameter's value is redacted wherever a request is logged.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora::http::RequestHeader;
use serde::Deserialize;
use sluice_bridge::TopicSyntax;
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

/// A verification key and the one algorithm it is for.
#[derive(Clone)]
pub struct JwtKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
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
        }
    }

    /// An RS256 or ES256 public key in PEM.
    pub fn public_pem(pem: &[u8]) -> Result<Self, String> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self {
                algorithm: Algorithm::RS256,
                key,
            });
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Self {
                algorithm: Algorithm::ES256,
                key,
            });
        }
        Err("not an RSA or EC (P-256) public key in PEM".into())
    }
}

/// The validated `[auth]` settings.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub key: JwtKey,
    /// The cookie a token is read from.
    pub cookie: String,
    /// The query parameter a token is read from.
    pub query: String,
    /// When set, a token must name this audience in `aud`.
    pub audience: Option<String>,
    /// The environment variable holding the HS256 secret (for `sluice --mint-token`).
    pub secret_env: Option<String>,
}

/// Signs an HS256 token granting `subscribe` and `publish` patterns for `ttl` (for demos and tests;
/// production tokens come from the site's own login).
pub fn mint(
    secret: &[u8],
    subscribe: &[String],
    publish: &[String],
    ttl: Duration,
    audience: Option<&str>,
) -> Result<String, String> {
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

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    sluice: Grants,
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
}

impl Grant {
    /// True when one of the token's `subscribe` patterns covers `filter`.
    pub fn may_subscribe(&self, syntax: TopicSyntax, filter: &str) -> bool {
        self.grants
            .subscribe
            .iter()
            .any(|pattern| syntax.covers(pattern, filter))
    }

    /// True when one of the token's `publish` patterns matches `topic`.
    pub fn may_publish(&self, syntax: TopicSyntax, topic: &str) -> bool {
        self.grants
            .publish
            .iter()
            .any(|pattern| syntax.covers(pattern, topic))
    }

    /// How long until the token expires (zero if it already has).
    pub fn remaining(&self) -> Duration {
        self.expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

impl AuthConfig {
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
        query_param(request.uri.query()?, &self.query)
            .next()
            .map(|token| Cow::Owned(token.into_owned()))
    }

    /// Verifies a token: signature, `exp` (required), `nbf` when present, `aud` when configured.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let mut validation = Validation::new(self.key.algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key.key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok(Grant {
            grants: data.claims.sluice,
            expires: UNIX_EPOCH + Duration::from_secs(data.claims.exp),
        })
    }

    pub fn missing(&self) -> AuthError {
        AuthError::Missing {
            cookie: self.cookie.clone(),
            query: self.query.clone(),
        }
    }
}

/// Every value of query parameter `name`, percent-decoded (`+` is a space).
pub fn query_param<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = Cow<'a, str>> + 'a {
    query.split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            Cow::Owned(
                percent_encoding::percent_decode_str(&value.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        })
    })
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
            key: JwtKey::secret(b"s3cret"),
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
    fn logs_never_show_the_query_token() {
        let r = request("/s/a?access_token=secret&topic=x", &[]);
        assert_eq!(
            redacted_request_line(&r, Some("access_token")),
            "GET /s/a?access_token=REDACTED&topic=x"
        );
    }
}
