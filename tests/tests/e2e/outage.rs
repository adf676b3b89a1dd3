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
    assert_eq!(
        health.body["projector"]["checkpoint"],
        app.stream_messages_last_seq().await
    );
    assert_eq!(health.body["projector"]["records"]["lag"], 0);
}

#[tokio::test]
async fn a_push_the_log_cannot_store_whole_lands_not_at_all() {
    let app = TestApp::spawn().await;
    // The log fills up: room for a few changes, not for the whole batch.
    let js = app.nats.jetstream().await;
    let mut config = js
        .get_stream(schemas::stream::DEFAULT_STREAM)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.max_bytes = 4096;
    js.update_stream(config).await.unwrap();

    let batch: Vec<_> = (0..10)
        .map(|i| json!({"table": "t", "id": format!("r{i}"), "op": "insert", "data": {"pad": "x".repeat(400)}}))
        .collect();
    let reply = app.push("alice", "c", "todo", &changes(json!(batch))).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(
        app.stream_messages().await,
        0,
        "no part of the batch is in the log"
    );
    assert_eq!(app.db.count("change_log").await, 0);
}

#[tokio::test]
async fn a_push_is_stored_as_one_atomic_batch() {
    let app = TestApp::spawn().await;
    let batch: Vec<_> = (0..5)
        .map(|i| json!({"table": "t", "id": format!("r{i}"), "op": "insert", "data": {}}))
        .collect();
    assert_eq!(
        app.push("alice", "c", "todo", &changes(json!(batch)))
            .await
            .status,
        StatusCode::OK
    );
    // One batch: the five changes, after the two events creating alice's personal space.
    let batches = app.log_batches().await;
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(batches[0].1, 7, "{batches:?}");
    assert!(!batches[0].0.is_empty(), "{batches:?}");
}
