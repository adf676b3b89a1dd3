//! EdDSA tokens verified against a JWKS URL, as issued by the existing auth service.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{Json, Router, routing::get};
use base64::Engine as _;
use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::json;
use sync_tests::{
    RunningGateway, RunningProjector, TestDb, TestNats, changes, gateway_config, projector_config,
    send,
};

struct Issuer {
    key: EncodingKey,
    kid: String,
}

impl Issuer {
    fn new(kid: &str) -> (Self, serde_json::Value) {
        let mut seed = [0u8; 32];
        seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let signing = SigningKey::from_bytes(&seed);
        let der = signing.to_pkcs8_der().expect("pkcs8");
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(signing.verifying_key().as_bytes());
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
        (
            Self {
                key: EncodingKey::from_ed_der(der.as_bytes()),
                kid: kid.to_owned(),
            },
            jwk,
        )
    }

    fn token(&self, sub: &str, exp_in: i64, iss: &str) -> String {
        let exp = chrono::Utc::now().timestamp() + exp_in;
        self.sign(json!({"sub": sub, "exp": exp, "iss": iss}))
    }

    fn sign(&self, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign")
    }
}

#[tokio::test]
async fn eddsa_tokens_from_the_jwks_are_accepted_and_others_refused() {
    sync_tests::init_logging();
    let (issuer, jwk) = Issuer::new("key-1");
    let (stranger, _) = Issuer::new("key-2");
    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks = Router::new().route(
        "/jwks",
        get({
            let fetches = fetches.clone();
            move || {
                fetches.fetch_add(1, Ordering::SeqCst);
                let jwk = jwk.clone();
                // Beside it, a malformed key (its `x` is not 32 bytes): left out.
                let bad = json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "bad"});
                async move { Json(json!({ "keys": [jwk, bad] })) }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, jwks).await });

    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let _projector = RunningProjector::start(projector_config(&nats, &db, "projector")).await;
    let mut config = gateway_config(&nats, &db);
    config.jwt_hs256_secret = None;
    config.jwks_url = Some(jwks_url);
    config.jwt_issuer = Some("https://auth.example".into());
    let gateway = RunningGateway::start(config).await;
    let http = sync_tests::http_client();
    let push = |token: String| {
        http.post(format!("{}/sync/todo", gateway.base))
            .bearer_auth(token)
            .header("x-client-id", "c")
            .json(&changes(
                json!([{"table": "t", "id": "1", "op": "insert", "data": {}}]),
            ))
    };

    let ok = send(push(issuer.token("user-42", 300, "https://auth.example"))).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);

    let refused = [
        (
            issuer.token("user-42", -120, "https://auth.example"),
            "expired",
        ),
        (
            issuer.token("user-42", 300, "https://evil.example"),
            "wrong issuer",
        ),
        (
            issuer.sign(json!({"sub": "user-42", "exp": chrono::Utc::now().timestamp() + 300})),
            "no issuer at all, when one is configured",
        ),
        (
            Issuer {
                kid: "bad".to_owned(),
                ..Issuer::new("bad").0
            }
            .token("user-42", 300, "https://auth.example"),
            "a malformed key of the set",
        ),
        (
            stranger.token("user-42", 300, "https://auth.example"),
            "unknown key",
        ),
        (
            gateway::auth::mint_dev_token("s", "user-42", std::time::Duration::from_secs(60))
                .unwrap(),
            "HS256 not configured",
        ),
    ];
    for (token, why) in refused {
        let reply = send(push(token)).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{why}: {}",
            reply.body
        );
    }
    // Unknown key ids trigger at most one JWKS fetch per interval.
    for _ in 0..5 {
        let reply = send(push(stranger.token("user-42", 300, "https://auth.example"))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "unknown key ids do not refetch within the interval"
    );
}

/// While the auth service's key set cannot be fetched, a token whose key is not known yet
/// is a 503 (retry later), not a 401 (which clients take as "sign in again").
#[tokio::test]
async fn an_unreachable_jwks_is_a_503_not_a_401() {
    let (issuer, _) = Issuer::new("key-1");
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks", closed.local_addr().unwrap());
    drop(closed);

    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let mut config = gateway_config(&nats, &db);
    config.jwt_hs256_secret = None;
    config.jwks_url = Some(jwks_url);
    let gateway = RunningGateway::start(config).await;
    let http = sync_tests::http_client();
    for _ in 0..2 {
        let reply = send(
            http.get(format!("{}/sync/todo/pull?collection=t", gateway.base))
                .bearer_auth(issuer.token("user-42", 300, "https://auth.example")),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.body
        );
        assert!(reply.body["error"].is_string(), "{}", reply.body);
    }
}

/// An HS256 secret shorter than the hash (or empty: an unset variable) is refused at
/// start; it would let anyone mint tokens.
#[tokio::test]
async fn a_short_hs256_secret_stops_the_gateway_at_start() {
    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    for secret in ["", "short"] {
        let mut config = gateway_config(&nats, &db);
        config.jwt_hs256_secret = Some(gateway::config::Secret(secret.to_owned()));
        let e = gateway::App::build(config).await.err().expect("refused");
        assert!(e.to_string().contains("at least 32 bytes"), "{e:#}");
    }
}
