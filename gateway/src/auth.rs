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
    keys: RwLock<HashMap<String, Arc<DecodingKey>>>,
    last_fetch: Mutex<Option<Instant>>,
}

impl Verifier {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
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
                    .await
                    .ok_or_else(|| invalid("unknown signing key"))?
            }
            _ => return Err(invalid("unsupported algorithm")),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
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
            _ => invalid("bad signature or claims"),
        })?;
        if data.claims.sub.is_empty() {
            return Err(invalid("empty `sub`"));
        }
        Ok(data.claims.sub)
    }
}

impl Jwks {
    /// The key for `kid`; an unknown id triggers a refetch, at most once per
    /// [`JWKS_REFETCH_INTERVAL`], so garbage ids cannot hammer the auth service.
    async fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        if let Some(key) = self.keys.read().await.get(kid) {
            return Some(key.clone());
        }
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < JWKS_REFETCH_INTERVAL) {
            // Another request may have fetched while we waited for the lock.
            return self.keys.read().await.get(kid).cloned();
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                let found = keys.get(kid).cloned();
                *self.keys.write().await = keys;
                found
            }
            Err(e) => {
                tracing::warn!(error.cause_chain = ?e, url = %self.url, "JWKS fetch failed");
                None
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
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|k| (kid, Arc::new(k)))
            })
            .collect())
    }
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
