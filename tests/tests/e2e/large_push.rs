//! A push is all-or-nothing however many changes it holds: one atomic JetStream batch,
//! up to the most the server takes in one (`nats/log-limits.conf` raises nats-server's
//! default of 1000). On a server left at the default, the gateway learns the limit from
//! the server's refusal (which stores nothing) and publishes atomically per 1000.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sync_tests::{TestApp, TestNats, changes};

fn inserts(prefix: &str, n: usize) -> Value {
    changes(Value::Array(
        (0..n)
            .map(|i| json!({"table": "tasks", "id": format!("{prefix}{i}"), "op": "insert", "data": {"n": i}}))
            .collect(),
    ))
}

/// Pushes `body` and checks that all of it can be pulled, each change once.
async fn push_and_pull_back(app: &TestApp, body: &Value, expected_total: usize) {
    let reply = app.push("alice", "laptop", "todo", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let (seen, _) = app.pull_all("alice", "phone", "todo", "tasks", "").await;
    let ids: HashSet<&str> = seen.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!((seen.len(), ids.len()), (expected_total, expected_total));
}

#[tokio::test]
async fn a_push_of_2500_changes_is_one_atomic_batch() {
    let app = TestApp::spawn().await;
    push_and_pull_back(&app, &inserts("r", 2500), 2500).await;

    // One batch: the push's changes, after the two events creating alice's personal
    // space on her first push.
    let batches = app.log_batches().await;
    assert_eq!(
        batches.len(),
        1,
        "one batch for the whole push: {batches:?}"
    );
    assert_eq!(batches[0].1, 2502);
    assert!(!batches[0].0.is_empty(), "published as an atomic batch");
}

#[tokio::test]
async fn on_a_stock_server_a_large_push_is_atomic_per_1000() {
    let app = TestApp::spawn_on(TestNats::start_stock().await).await;
    push_and_pull_back(&app, &inserts("a", 2500), 2500).await;
    // The server refused the whole push (2502 events with the two creating alice's
    // personal space) as one batch and stored none of it; then the push went in as
    // three batches, each whole and contiguous.
    let sizes: Vec<usize> = app.log_batches().await.iter().map(|b| b.1).collect();
    assert_eq!(sizes, [1000, 1000, 502]);

    // Learned: the next large push goes straight in batches of 1000.
    push_and_pull_back(&app, &inserts("b", 1500), 4000).await;
    let sizes: Vec<usize> = app.log_batches().await.iter().map(|b| b.1).collect();
    assert_eq!(sizes, [1000, 1000, 502, 1000, 500]);
    assert_eq!(app.stream_messages().await, 4000);
}
