//! Malformed requests: a clear JSON error, nothing written, no internal detail.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sync_tests::{Reply, TestApp, changes, send};

/// No SQL, no Rust internals, no stack traces in a response.
fn assert_clean_error(reply: &Reply, status: StatusCode) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert!(reply.body["error"].is_string(), "{}", reply.body);
    let message = reply.body["message"].as_str().expect("message");
    assert!(!message.is_empty());
    for leak in [
        "SELECT",
        "INSERT",
        "sqlx",
        "panicked",
        "src/",
        "postgres",
        "stack backtrace",
    ] {
        assert!(!message.contains(leak), "{message}");
    }
}

async fn assert_nothing_written(app: &TestApp) {
    assert_eq!(app.stream_messages().await, 0, "nothing may reach the log");
    assert_eq!(app.db.count("change_log").await, 0);
    assert_eq!(app.db.count("records").await, 0);
}

#[tokio::test]
async fn a_batch_with_one_invalid_change_is_rejected_whole() {
    let app = TestApp::spawn().await;
    let reply = app
        .push(
            "alice",
            "c1",
            "todo",
            &changes(json!([
                {"table": "tasks", "id": "a", "op": "insert", "data": {"title": "fine"}},
                {"table": "tasks", "id": "b", "op": "insert", "data": {"title": "fine too"}},
                {"table": "tasks", "id": "c", "op": "upsert", "data": {}},
            ])),
        )
        .await;
    assert_clean_error(&reply, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["index"], 2);
    assert!(reply.body["message"].as_str().unwrap().contains("upsert"));
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn every_kind_of_malformed_push_gets_a_json_400() {
    let app = TestApp::spawn().await;
    let ok = json!({"table": "t", "id": "a", "op": "insert", "data": {}});
    let bad_changes: Vec<(Value, &str)> = vec![
        (
            json!({"table": "t", "id": "a", "op": "merge", "data": {}}),
            "unknown op",
        ),
        (
            json!({"id": "a", "op": "insert", "data": {}}),
            "missing table",
        ),
        (
            json!({"table": "t", "op": "insert", "data": {}}),
            "missing id",
        ),
        (
            json!({"table": "", "id": "a", "op": "insert", "data": {}}),
            "empty table",
        ),
        (
            json!({"table": "t", "id": "", "op": "insert", "data": {}}),
            "empty id",
        ),
        (
            json!({"table": "t", "id": "a", "op": "insert", "data": {}, "schemaVersion": 2}),
            "schemaVersion",
        ),
        (
            json!({"table": "t.x", "id": "a", "op": "insert", "data": {}}),
            "dot in table",
        ),
        (
            json!({"table": "t", "id": "a.b", "op": "insert", "data": {}}),
            "dot in id",
        ),
        (
            json!({"table": "*", "id": "a", "op": "insert", "data": {}}),
            "star",
        ),
        (
            json!({"table": "t", "id": ">", "op": "insert", "data": {}}),
            "gt",
        ),
        (
            json!({"table": "t", "id": "a b", "op": "insert", "data": {}}),
            "space",
        ),
        (
            json!({"table": "t", "id": "a", "op": "insert", "data": {}, "spaceId": "s.*"}),
            "space id syntax",
        ),
        (
            json!({"table": 1, "id": "a", "op": "insert", "data": {}}),
            "table type",
        ),
        (
            json!({"table": "t", "id": ["a"], "op": "insert", "data": {}}),
            "id type",
        ),
        (
            json!({"table": "t", "id": "a", "op": true, "data": {}}),
            "op type",
        ),
        (
            json!({"table": "t", "id": "a", "op": "insert", "data": [1]}),
            "data type",
        ),
        (
            json!({"table": "t", "id": "a", "op": "update", "fields": {"x": {"value": 1, "at": 5}}}),
            "at type",
        ),
        (
            json!({"table": "t", "id": "a", "op": "update", "fields": {"x": {"value": 1, "at": "later"}}}),
            "at garbage",
        ),
        (
            json!({"table": "t", "id": "a", "op": "insert", "data": {"x": "a\u{0}b"}}),
            "NUL in a string",
        ),
    ];
    for (bad, why) in bad_changes {
        let reply = app
            .push("alice", "c1", "todo", &changes(json!([ok.clone(), bad])))
            .await;
        assert_clean_error(&reply, StatusCode::BAD_REQUEST);
        assert_eq!(reply.body["index"], 1, "{why}: {}", reply.body);
    }

    let url = format!("{}/sync/todo", app.gateway.base);
    let raw_bodies: Vec<(&str, &str)> = vec![
        ("{\"changes\": [", "truncated JSON"),
        ("not json", "not JSON"),
        ("[]", "array body"),
        ("{}", "no changes"),
        ("{\"changes\": {}}", "changes not an array"),
        (
            "{\"changes\": [], \"schemaVersion\": 7}",
            "batch schemaVersion",
        ),
        (
            "{\"changes\": [], \"since\": \"whenever\"}",
            "garbage since",
        ),
    ];
    for (body, why) in raw_bodies {
        let req = app
            .http
            .post(&url)
            .bearer_auth(app.token("alice"))
            .header("x-client-id", "c1")
            .header("content-type", "application/json")
            .body(body);
        let reply = send(req).await;
        assert_clean_error(&reply, StatusCode::BAD_REQUEST);
        assert!(reply.body["index"].is_null(), "{why}");
    }

    // Subject syntax in the app id of the path.
    let reply = app
        .push("alice", "c1", "to*do", &changes(json!([ok.clone()])))
        .await;
    assert_clean_error(&reply, StatusCode::BAD_REQUEST);
    // A client id is required for a push and must be a plain id.
    let reply = send(
        app.http
            .post(&url)
            .bearer_auth(app.token("alice"))
            .json(&changes(json!([ok.clone()]))),
    )
    .await;
    assert_clean_error(&reply, StatusCode::BAD_REQUEST);
    let reply = send(
        app.http
            .post(&url)
            .bearer_auth(app.token("alice"))
            .header("x-client-id", "a>b")
            .json(&changes(json!([ok]))),
    )
    .await;
    assert_clean_error(&reply, StatusCode::BAD_REQUEST);

    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn a_body_over_ten_mebibytes_is_413() {
    let app = TestApp::spawn().await;
    let big = "x".repeat(11 * 1024 * 1024);
    let reply = app
        .push(
            "alice",
            "c1",
            "todo",
            &changes(json!([{"table": "t", "id": "a", "op": "insert", "data": {"blob": big}}])),
        )
        .await;
    assert_clean_error(&reply, StatusCode::PAYLOAD_TOO_LARGE);
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn more_changes_than_one_atomic_batch_holds_is_413() {
    let app = TestApp::spawn().await;
    // Small enough a body (about 4 MB), but more changes than a push may hold.
    let many: Vec<Value> = (0..=schemas::wire::MAX_PUSH_CHANGES)
        .map(|i| json!({"table": "t", "id": format!("r{i}"), "op": "delete"}))
        .collect();
    let reply = app.push("alice", "c1", "todo", &changes(json!(many))).await;
    assert_clean_error(&reply, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .contains("at most 100000 changes"),
        "{}",
        reply.body
    );
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn garbage_cursors_are_400_not_a_silent_reset() {
    let app = TestApp::spawn().await;
    for since in [
        "garbage",
        "s12",
        "s000000000000000G",
        "2026-02-30T00:00:00Z",
    ] {
        let reply = app.pull("alice", "c1", "todo", "tasks", since).await;
        assert_clean_error(&reply, StatusCode::BAD_REQUEST);
    }
    let reply = app.pull("alice", "c1", "todo", "ta.sks", "").await;
    assert_clean_error(&reply, StatusCode::BAD_REQUEST);
    // Legacy timestamps and empty cursors are fine.
    for since in ["", "1970-01-01T00:00:00.000Z", "2026-05-01T10:00:00+02:00"] {
        let reply = app.pull("alice", "c1", "todo", "tasks", since).await;
        assert_eq!(reply.status, StatusCode::OK, "{since}: {}", reply.body);
    }
}

/// What the framework refuses before any handler runs (a path segment that is not valid
/// UTF-8, a query that does not parse, a method the route does not take) is a JSON
/// error too.
#[tokio::test]
async fn paths_queries_and_methods_the_routes_refuse_answer_json() {
    let app = TestApp::spawn().await;
    let token = app.token("alice");
    let base = &app.gateway.base;
    for (request, status) in [
        (
            app.http.get(format!("{base}/sync/%FF/pull?collection=t")),
            StatusCode::BAD_REQUEST,
        ),
        (
            app.http
                .get(format!("{base}/sync/todo/pull?since=a&since=b")),
            StatusCode::BAD_REQUEST,
        ),
        (
            app.http.put(format!("{base}/sync/todo")),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            app.http.delete(format!("{base}/health")),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ] {
        let reply = send(request.bearer_auth(&token).header("x-client-id", "c1")).await;
        assert_clean_error(&reply, status);
    }
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn unknown_routes_answer_json_404() {
    let app = TestApp::spawn().await;
    let reply = send(app.http.get(format!("{}/nope", app.gateway.base))).await;
    assert_clean_error(&reply, StatusCode::NOT_FOUND);
}
