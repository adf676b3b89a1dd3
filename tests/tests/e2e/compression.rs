//! Compressed answers for clients that accept them: the same bytes once decompressed,
//! the client's preferred encoding, small answers left alone, and a switch to turn it
//! off behind a proxy that compresses already.

use std::io::Read as _;

use reqwest::{StatusCode, header::HeaderMap};
use serde_json::json;
use sync_tests::{TestApp, changes};

/// What a client receives for `url` when it sends `accept` as `Accept-Encoding`: the
/// `Content-Encoding`, the `Vary` header and the body as sent, still encoded.
async fn fetch(
    app: &TestApp,
    url: &str,
    accept: Option<&str>,
) -> (Option<String>, String, Vec<u8>) {
    let mut req = app
        .http
        .get(url)
        .bearer_auth(app.token("alice"))
        .header("x-client-id", "laptop");
    if let Some(accept) = accept {
        req = req.header("accept-encoding", accept);
    }
    let resp = req.send().await.expect("request sent");
    assert_eq!(resp.status(), StatusCode::OK);
    let headers: HeaderMap = resp.headers().clone();
    let body = resp.bytes().await.expect("body read").to_vec();
    let get = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII").to_owned())
    };
    (
        get("content-encoding"),
        get("vary").unwrap_or_default(),
        body,
    )
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

fn unzstd(bytes: &[u8]) -> Vec<u8> {
    zstd::decode_all(bytes).expect("valid zstd")
}

/// 300 notes pushed by alice from her phone, so her laptop's page is large.
async fn a_large_page(app: &TestApp) -> String {
    let notes: Vec<_> = (0..300)
        .map(|i| {
            json!({"table": "notes", "id": format!("n{i}"), "op": "insert",
                   "data": {"title": format!("note {i}"), "body": "the same words again and again"},
                   "at": "2026-11-23T10:00:00Z"})
        })
        .collect();
    let reply = app
        .push("alice", "phone", "notes", &changes(json!(notes)))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    format!(
        "{}/sync/notes/pull?collection=notes&since=",
        app.gateway.base
    )
}

#[tokio::test]
async fn pages_are_compressed_for_clients_that_accept_it() {
    let app = TestApp::spawn().await;
    let url = a_large_page(&app).await;

    let (encoding, _, plain) = fetch(&app, &url, None).await;
    assert_eq!(encoding, None);
    let page: serde_json::Value = serde_json::from_slice(&plain).expect("JSON");
    assert_eq!(page["serverChanges"].as_array().map(Vec::len), Some(300));

    for (accept, expected, decode) in [
        ("gzip", "gzip", gunzip as fn(&[u8]) -> Vec<u8>),
        ("zstd", "zstd", unzstd),
        // What browsers send: equal preference, zstd is taken.
        ("gzip, deflate, br, zstd", "zstd", unzstd),
        // An explicit preference wins.
        ("zstd;q=0.5, gzip", "gzip", gunzip),
    ] {
        let (encoding, vary, body) = fetch(&app, &url, Some(accept)).await;
        assert_eq!(encoding.as_deref(), Some(expected), "{accept}");
        assert!(vary.contains("accept-encoding"), "{accept}: vary {vary:?}");
        assert!(
            body.len() * 4 < plain.len(),
            "{accept}: {} bytes for {} plain",
            body.len(),
            plain.len()
        );
        assert_eq!(decode(&body), plain, "{accept}: the same answer");
    }

    // Asking for nothing we offer, or for no encoding at all, gets the plain answer.
    for accept in ["br", "identity", "gzip;q=0"] {
        let (encoding, _, body) = fetch(&app, &url, Some(accept)).await;
        assert_eq!(encoding, None, "{accept}");
        assert_eq!(body, plain, "{accept}");
    }

    // A small answer is not worth it: an empty page.
    let empty = format!("{url}{}", page["syncedUntil"].as_str().expect("cursor"));
    let (encoding, _, body) = fetch(&app, &empty, Some("gzip, zstd")).await;
    assert_eq!(encoding, None);
    assert!(body.len() < 1024, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn compression_can_be_left_to_a_proxy() {
    let app = TestApp::spawn().await;
    let url = a_large_page(&app).await;
    let plain_gateway = app
        .another_gateway_with(|c| c.compress_responses = false)
        .await;
    let url = url.replace(&app.gateway.base, &plain_gateway.base);
    let (encoding, _, body) = fetch(&app, &url, Some("gzip, zstd")).await;
    assert_eq!(encoding, None);
    let page: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(page["serverChanges"].as_array().map(Vec::len), Some(300));
}
