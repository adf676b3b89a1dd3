//! Browser apps on another origin: preflights, and the headers that let the page read
//! answers (errors included); the internal API answers no other origin. And no cache,
//! the browser's included, keeps an answer.

use reqwest::{Method, RequestBuilder, Response, StatusCode, header::HeaderMap};
use serde_json::json;
use sync_tests::{TestApp, changes, send};

const APP_ORIGIN: &str = "https://notes.example";

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).map(|v| v.to_str().expect("ASCII header"))
}

/// A browser's preflight for `method` on `url` with the headers our clients send.
fn preflight(app: &TestApp, origin: &str, method: &str, url: &str) -> RequestBuilder {
    app.http
        .request(Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-client-id",
        )
}

async fn sent(req: RequestBuilder) -> Response {
    req.send().await.expect("request sent")
}

#[tokio::test]
async fn a_page_on_another_origin_may_push_and_pull_and_read_the_errors() {
    let app = TestApp::spawn().await;
    let base = &app.gateway.base;

    for (method, url) in [
        ("POST", format!("{base}/sync/notes")),
        ("GET", format!("{base}/sync/notes/pull")),
    ] {
        let answer = sent(preflight(&app, APP_ORIGIN, method, &url)).await;
        assert!(
            answer.status().is_success(),
            "{method} {url}: {}",
            answer.status()
        );
        let h = answer.headers();
        assert_eq!(header(h, "access-control-allow-origin"), Some("*"));
        let methods = header(h, "access-control-allow-methods").expect("methods");
        assert!(methods.contains(method), "{methods}");
        let allowed = header(h, "access-control-allow-headers").expect("headers");
        for name in ["authorization", "content-type", "x-client-id"] {
            assert!(allowed.contains(name), "{name} not in {allowed}");
        }
        assert_eq!(header(h, "access-control-max-age"), Some("3600"));
    }

    // The push and the pull themselves, as the page sends them.
    let push = sent(
        app.http
            .post(format!("{base}/sync/notes"))
            .header("origin", APP_ORIGIN)
            .header("x-client-id", "browser")
            .bearer_auth(app.token("alice"))
            .json(&changes(json!([
                {"table": "notes", "id": "n1", "op": "insert", "data": {"title": "hi"}, "at": "2026-11-23T10:00:00Z"}
            ]))),
    )
    .await;
    assert_eq!(push.status(), StatusCode::OK);
    assert_eq!(
        header(push.headers(), "access-control-allow-origin"),
        Some("*")
    );
    assert_eq!(
        header(push.headers(), "access-control-expose-headers"),
        Some("retry-after")
    );
    // No cache, the browser's included, keeps one caller's answer.
    assert_eq!(header(push.headers(), "cache-control"), Some("no-store"));
    let pulled = app.pull("alice", "phone", "notes", "notes", "").await;
    assert_eq!(sync_tests::ids(&pulled), ["n1"]);

    // Errors reach the page too: without the header it could not read why.
    let unauthenticated = app
        .http
        .get(format!("{base}/sync/notes/pull?collection=notes"))
        .header("origin", APP_ORIGIN);
    let answer = sent(unauthenticated.try_clone().expect("clonable")).await;
    assert_eq!(
        header(answer.headers(), "access-control-allow-origin"),
        Some("*")
    );
    assert_eq!(header(answer.headers(), "cache-control"), Some("no-store"));
    let reply = send(unauthenticated).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.body["error"].is_string(), "{}", reply.body);

    let health = sent(
        app.http
            .get(format!("{base}/health"))
            .header("origin", APP_ORIGIN),
    )
    .await;
    assert_eq!(
        header(health.headers(), "access-control-allow-origin"),
        Some("*")
    );
    assert_eq!(header(health.headers(), "cache-control"), Some("no-store"));
    let pulled = sent(
        app.http
            .get(format!("{base}/sync/notes/pull?collection=notes"))
            .bearer_auth(app.token("alice")),
    )
    .await;
    assert_eq!(header(pulled.headers(), "cache-control"), Some("no-store"));
}

#[tokio::test]
async fn the_internal_api_answers_no_other_origin() {
    let app = TestApp::spawn().await;
    let url = format!("{}/internal/spaces", app.gateway.base);
    let answer = sent(preflight(&app, APP_ORIGIN, "POST", &url)).await;
    assert!(!answer.status().is_success(), "{}", answer.status());
    assert_eq!(
        header(answer.headers(), "access-control-allow-origin"),
        None
    );

    let answer = sent(
        app.http
            .post(&url)
            .header("origin", APP_ORIGIN)
            .bearer_auth(sync_tests::SERVICE_KEY)
            .json(&json!({"spaceId": "fam", "type": "family", "name": "F", "ownerId": "alice"})),
    )
    .await;
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(
        header(answer.headers(), "access-control-allow-origin"),
        None
    );
}

#[tokio::test]
async fn only_the_configured_origins_are_answered() {
    let app = TestApp::spawn().await;
    let listed = app
        .another_gateway_with(|c| {
            c.cors_allowed_origins = format!("{APP_ORIGIN}, http://localhost:5173");
        })
        .await;
    let none = app
        .another_gateway_with(|c| c.cors_allowed_origins = String::new())
        .await;
    let url = |base: &str| format!("{base}/sync/notes");

    for origin in [APP_ORIGIN, "http://localhost:5173"] {
        let answer = sent(preflight(&app, origin, "POST", &url(&listed.base))).await;
        assert!(
            answer.status().is_success(),
            "{origin}: {}",
            answer.status()
        );
        assert_eq!(
            header(answer.headers(), "access-control-allow-origin"),
            Some(origin)
        );
        assert!(
            header(answer.headers(), "vary").is_some_and(|v| v.contains("origin")),
            "a cache must not serve one origin's answer to another"
        );
    }
    for (base, origin) in [
        (&listed.base, "https://evil.example"),
        (&listed.base, "http://localhost:5174"),
        (&none.base, APP_ORIGIN),
    ] {
        let answer = sent(preflight(&app, origin, "POST", &url(base))).await;
        assert_eq!(
            header(answer.headers(), "access-control-allow-origin"),
            None,
            "{origin} on {base}"
        );
        // The request itself is still answered: a browser withholds it from the page.
        let reply = send(
            app.http
                .post(url(base))
                .header("origin", origin)
                .header("x-client-id", "browser")
                .bearer_auth(app.token("alice"))
                .json(&changes(json!([]))),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }

    // A malformed origin stops the gateway at start, with the reason.
    let mut config = sync_tests::gateway_config(&app.nats, &app.db);
    config.cors_allowed_origins = "https://notes.example/".to_owned();
    let e = gateway::App::build(config).await.err().expect("refused");
    let e = format!("{e:#}");
    assert!(e.contains("CORS_ALLOWED_ORIGINS"), "{e}");
    assert!(e.contains("did you mean \"https://notes.example\""), "{e}");
}
