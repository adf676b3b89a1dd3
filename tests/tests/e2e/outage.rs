//! NATS down: pushes fail with 503 and nothing is half-written; health says so.

use reqwest::StatusCode;
use serde_json::json;
use sync_tests::{TestApp, changes, eventually, send};

#[tokio::test]
async fn push_with_nats_down_is_503_and_writes_nothing() {
    let mut app = TestApp::spawn().await;
    let ok = app
        .push(
            "alice",
            "c",
            "todo",
            &changes(json!([{"table": "t", "id": "before", "op": "insert", "data": {}}])),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    app.wait_projected().await;

    app.nats.stop();
    let batch = changes(json!([
        {"table": "t", "id": "a", "op": "insert", "data": {}},
        {"table": "t", "id": "b", "op": "insert", "data": {}},
    ]));
    let reply = app.push("alice", "c", "todo", &batch).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["error"], "unavailable");
    let health = send(app.http.get(format!("{}/health", app.gateway.base))).await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.body["nats"]["ok"], false);

    // Reads stay available from the projection while the log is down.
    let pulled = app.pull("alice", "other", "todo", "t", "").await;
    assert_eq!(pulled.status, StatusCode::OK);
    assert_eq!(
        pulled.body["serverChanges"].as_array().unwrap().len(),
        1,
        "{}",
        pulled.body
    );

    app.nats.restart().await;
    assert_eq!(
        app.stream_messages().await,
        1,
        "the refused batch is not in the log"
    );
    let base = app.gateway.base.clone();
    let http = app.http.clone();
    eventually(std::time::Duration::from_secs(20), || {
        let (base, http) = (base.clone(), http.clone());
        async move { send(http.get(format!("{base}/health"))).await.status == StatusCode::OK }
    })
    .await;
    assert_eq!(app.db.count("change_log").await, 1);

    // Once NATS is back the client's retry lands.
    let retry = app.push("alice", "c", "todo", &batch).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
    assert_eq!(app.stream_messages().await, 3);
}

#[tokio::test]
async fn health_reports_nats_postgres_and_projector_lag() {
    let app = TestApp::spawn().await;
    let ok = app
        .push(
            "alice",
            "c",
            "todo",
            &changes(json!([{"table": "t", "id": "a", "op": "insert", "data": {}}])),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    app.wait_projected().await;
    let health = send(app.http.get(format!("{}/health", app.gateway.base))).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    assert_eq!(health.body["status"], "ok");
    assert_eq!(health.body["nats"]["ok"], true);
    assert_eq!(health.body["postgres"]["ok"], true);
    assert_eq!(health.body["projector"]["lag"], 0);
    assert_eq!(health.body["projector"]["checkpoint"], 1);
}
