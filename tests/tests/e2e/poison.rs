//! Events the projector cannot apply are parked with a reason, not retried forever and
//! not silently dropped; the events after them are applied.

use reqwest::StatusCode;
use serde_json::json;
use sync_tests::{TestApp, changes};

#[tokio::test]
async fn poison_messages_are_parked_and_the_log_moves_on() {
    let app = TestApp::spawn().await;
    let js = app.nats.jetstream().await;
    let publish = |subject: &'static str, payload: Vec<u8>| {
        let js = js.clone();
        async move {
            js.publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };
    // Not an event at all.
    publish("sync.x.todo.tasks", b"{not json".to_vec()).await;
    // A valid change whose data PostgreSQL refuses (NUL in jsonb text).
    let good = app
        .push(
            "alice",
            "c",
            "todo",
            &changes(json!([{"table": "tasks", "id": "ok1", "op": "insert", "data": {}}])),
        )
        .await;
    assert_eq!(good.status, StatusCode::OK);
    let nul = app
        .push("alice", "c", "todo", &changes(json!([{"table": "tasks", "id": "nul", "op": "insert", "data": {"bad": "a\u{0}b"}}])))
        .await;
    // The read-your-writes wait still completes: the parked event moves the checkpoint.
    assert_eq!(nul.status, StatusCode::OK, "{}", nul.body);
    // An event published on another space's subject.
    let js_stream = js
        .get_stream(schemas::stream::DEFAULT_STREAM)
        .await
        .unwrap();
    let genuine = js_stream.get_raw_message(2).await.unwrap();
    publish("sync.someone-else.todo.tasks", genuine.payload.to_vec()).await;
    let after = app
        .push(
            "alice",
            "c",
            "todo",
            &changes(json!([{"table": "tasks", "id": "ok2", "op": "insert", "data": {}}])),
        )
        .await;
    assert_eq!(after.status, StatusCode::OK);
    app.wait_projected().await;

    let parked: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, reason FROM dead_letters ORDER BY seq")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(parked.len(), 3, "{parked:?}");
    assert!(parked[0].1.contains("undecodable"), "{parked:?}");
    assert!(
        parked[1].1.to_lowercase().contains("unicode") || parked[1].1.contains("\\u0000"),
        "{parked:?}"
    );
    assert!(parked[2].1.contains("published on"), "{parked:?}");

    let (seen, _) = app.pull_all("alice", "reader", "todo", "tasks", "").await;
    let ids: Vec<_> = seen.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["ok1", "ok2"]);
}
