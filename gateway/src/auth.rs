//! Authentication: Bearer JWTs, HS256 with a shared secret (development, tests) or
//! EdDSA keys from the auth service's JWKS. The user id is the `sub` claim.
//!
//! [`AuthUser`] is an extractor, so a handler that takes it cannot run unauthenticated.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, jwk::JwkSet};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};

use crate::{AppState, config::Config, error::ApiError};

/// Least time between two JWKS fetches triggered by unknown key ids.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// After a failed fetch, how soon the next token that needs the set may try again.
const JWKS_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// How long fetched keys are trusted before the set is fetched again (on the next token
/// that needs one): a key the auth service withdrew stops working within this long.
const JWKS_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// Shortest HS256 secret accepted: HMAC-SHA256 keys shorter than the hash are weak (RFC
/// 7518, 3.2), and an empty one (an unset variable) would let anyone mint tokens.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: String,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let user_id = state.verifier().verify(token).await?;
        Ok(AuthUser { user_id })
    }
}

/// The bearer credential of a request.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization header".into()))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be `Bearer <token>`".into()))?;
    Ok(token.trim())
}

/// A trusted service, authenticated by the service key (`Authorization: Bearer <key>`).
#[derive(Debug, Clone, Copy)]
pub struct Service;

impl FromRequestParts<AppState> for Service {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(key) = &state.config().service_key else {
            return Err(ApiError::Unauthorized(
                "the internal API is disabled (no service key configured)".into(),
            ));
        };
        if !same_secret(bearer(parts)?, &key.0) {
            return Err(ApiError::Unauthorized("invalid service key".into()));
        }
        Ok(Service)
    }
}

/// A scraper of `GET /metrics`: anyone when no `METRICS_TOKEN` is configured, else
/// whoever presents it (`Authorization: Bearer <token>`).
#[derive(Debug, Clone, Copy)]
pub struct MetricsScraper;

impl FromRequestParts<AppState> for MetricsScraper {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match &state.config().metrics_token {
            Some(token) if !same_secret(bearer(parts)?, &token.0) => {
                Err(ApiError::Unauthorized("invalid metrics token".into()))
            }
            _ => Ok(MetricsScraper),
        }
    }
}

/// Whether `presented` is `expected`, in time that depends only on the length of
/// `presented`.
fn same_secret(presented: &str, expected: &str) -> bool {
    let expected = expected.as_bytes();
    let differs = presented
        .bytes()
        .enumerate()
        .fold(presented.len() ^ expected.len(), |acc, (i, b)| {
            acc | usize::from(expected.get(i).is_none_or(|e| *e != b))
        });
    differs == 0
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    hs256: Option<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
}

struct Jwks {
    url: String,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    /// When the set was last asked for, and whether that worked.
    last_fetch: Mutex<Option<(Instant, bool)>>,
}

/// The key set as last fetched, and when.
#[derive(Default)]
struct Keys {
    by_id: HashMap<String, Arc<DecodingKey>>,
    fetched: Option<Instant>,
}

impl Keys {
    fn fresh(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.fetched
            .is_some_and(|t| t.elapsed() < JWKS_MAX_AGE)
            .then(|| self.by_id.get(kid).cloned())
            .flatten()
    }
}

impl Verifier {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        if let Some(secret) = &config.jwt_hs256_secret {
            anyhow::ensure!(
                secret.0.len() >= MIN_SECRET_BYTES,
                "JWT_HS256_SECRET must be at least {MIN_SECRET_BYTES} bytes"
            );
        }
        let hs256 = config
            .jwt_hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.0.as_bytes()));
        let jwks = config.jwks_url.as_ref().map(|url| Jwks {
            url: url.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            keys: RwLock::default(),
            last_fetch: Mutex::default(),
        });
        anyhow::ensure!(
            hs256.is_some() || jwks.is_some(),
            "no way to verify tokens: set JWT_HS256_SECRET and/or JWKS_URL"
        );
        Ok(Self {
            hs256,
            jwks,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        })
    }

    /// The `sub` of a valid token.
    pub async fn verify(&self, token: &str) -> Result<String, ApiError> {
        let invalid = |why: &str| ApiError::Unauthorized(format!("invalid token: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .clone()
                .map(Arc::new)
                .ok_or_else(|| invalid("HS256 tokens are not accepted"))?,
            Algorithm::EdDSA => {
                let jwks = self
                    .jwks
                    .as_ref()
                    .ok_or_else(|| invalid("EdDSA tokens are not accepted"))?;
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| invalid("no `kid` in header"))?;
                jwks.key(kid)
                    .await?
                    .ok_or_else(|| invalid("unknown signing key"))?
            }
            _ => return Err(invalid("unsupported algorithm")),
        };
        let mut validation = Validation::new(header.alg);
        // A configured issuer or audience is required, not only compared when present.
        let mut required = vec!["exp", "sub"];
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        required.extend(self.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => invalid("expired"),
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => invalid("wrong issuer"),
            jsonwebtoken::errors::ErrorKind::InvalidAudience => invalid("wrong audience"),
            jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(claim) => {
                invalid(&format!("no `{claim}` claim"))
            }
            _ => invalid("bad signature or claims"),
        })?;
        if data.claims.sub.is_empty() {
            return Err(invalid("empty `sub`"));
        }
        Ok(data.claims.sub)
    }
}

impl Jwks {
    /// The key for `kid`. An unknown id, or a set older than [`JWKS_MAX_AGE`], triggers
    /// a fetch, at most once per [`JWKS_REFETCH_INTERVAL`], so garbage ids cannot hammer
    /// the auth service. When the auth service cannot be reached, the keys fetched before
    /// stay in use; a token whose key is not among them is a 503 (the client should
    /// retry), not a 401 (which clients take as "sign in again").
    async fn key(&self, kid: &str) -> Result<Option<Arc<DecodingKey>>, ApiError> {
        if let Some(key) = self.keys.read().await.fresh(kid) {
            return Ok(Some(key));
        }
        let mut last = self.last_fetch.lock().await;
        let known = || async { self.keys.read().await.by_id.get(kid).cloned() };
        let unreachable =
            |why: String| ApiError::unavailable("the auth service's keys (JWKS)", why);
        if let Some((at, worked)) = *last {
            let interval = if worked {
                JWKS_REFETCH_INTERVAL
            } else {
                JWKS_RETRY_AFTER_FAILURE
            };
            if at.elapsed() < interval {
                // Asked just now, perhaps while we waited for the lock.
                return match known().await {
                    Some(key) => Ok(Some(key)),
                    None if worked => Ok(None),
                    None => Err(unreachable("the last fetch failed".into())),
                };
            }
        }
        let result = self.fetch().await;
        *last = Some((Instant::now(), result.is_ok()));
        match result {
            Ok(by_id) => {
                let found = by_id.get(kid).cloned();
                *self.keys.write().await = Keys {
                    by_id,
                    fetched: Some(Instant::now()),
                };
                Ok(found)
            }
            Err(e) => {
                tracing::warn!(error.cause_chain = ?e, url = %self.url, "JWKS fetch failed");
                match known().await {
                    Some(key) => Ok(Some(key)),
                    None => Err(unreachable(e.to_string())),
                }
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, Arc<DecodingKey>>> {
        let set: JwkSet = self
            .http
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(set
            .keys
            .iter()
            .filter(|jwk| is_ed25519_signing_key(jwk))
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|k| (kid, Arc::new(k)))
            })
            .collect())
    }
}

/// An Ed25519 public key for signatures, with a key of the right length: anything else in
/// the set is left out (the verifier of a malformed key could fail on every token).
fn is_ed25519_signing_key(jwk: &jsonwebtoken::jwk::Jwk) -> bool {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm, PublicKeyUse};
    let AlgorithmParameters::OctetKeyPair(okp) = &jwk.algorithm else {
        return false;
    };
    // 32 bytes in unpadded base64url.
    okp.curve == EllipticCurve::Ed25519
        && okp.x.trim_end_matches('=').len() == 43
        && jwk
            .common
            .public_key_use
            .as_ref()
            .is_none_or(|u| *u == PublicKeyUse::Signature)
        && jwk
            .common
            .key_algorithm
            .is_none_or(|a| a == KeyAlgorithm::EdDSA)
}

/// Mints an HS256 token for `sub`, valid for `ttl` (the `gateway token` command).
pub fn mint_dev_token(secret: &str, sub: &str, ttl: Duration) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp() as u64;
    let claims = Claims {
        sub: sub.to_owned(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}
