//! Events the projector cannot apply are parked with a reason, not retried forever and
//! not silently dropped; the events after them are applied.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sync_tests::{TestApp, changes};

async fn push_one(app: &TestApp, id: &str) {
    let reply = app
        .push(
            "alice",
            "c",
            "todo",
            &changes(json!([{"table": "tasks", "id": id, "op": "insert", "data": {}}])),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

async fn parked(app: &TestApp) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT seq, reason FROM dead_letters ORDER BY seq")
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

async fn pulled_ids(app: &TestApp) -> Vec<String> {
    let (seen, _) = app.pull_all("alice", "reader", "todo", "tasks", "").await;
    seen.iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn poison_messages_are_parked_and_the_log_moves_on() {
    let app = TestApp::spawn().await;
    let js = app.nats.jetstream().await;
    // 1: not an event at all.
    js.publish("sync.x.todo.tasks", b"{not json".to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // 2: a genuine event (after the two creating alice's personal space).
    push_one(&app, "ok1").await;
    let genuine = app.change_message(2).await;
    // 3: a trusted publisher's event with a NUL in its data, which PostgreSQL cannot store.
    let mut nul: Value = serde_json::from_slice(&genuine.payload).unwrap();
    nul["eventId"] = json!(uuid::Uuid::new_v4());
    nul["payload"]["data"] = json!({"bad": "a\u{0}b"});
    let nul_seq = js
        .publish(
            genuine.subject.clone(),
            serde_json::to_vec(&nul).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    // 4: the genuine event again, published on another space's subject.
    let misplaced_seq = js
        .publish("sync.someone-else.todo.tasks", genuine.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    // 5: the log moves on.
    push_one(&app, "ok2").await;
    app.wait_projected().await;

    let parked = parked(&app).await;
    let seqs: Vec<_> = parked.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        [1, nul_seq as i64, misplaced_seq as i64],
        "{parked:?}"
    );
    assert!(parked[0].1.contains("undecodable"), "{parked:?}");
    assert!(parked[1].1.contains("NUL"), "{parked:?}");
    assert!(parked[2].1.contains("published on"), "{parked:?}");
    assert_eq!(pulled_ids(&app).await, ["ok1", "ok2"]);
}

#[tokio::test]
async fn a_change_the_records_stage_cannot_store_is_parked_and_the_rest_applied() {
    let app = TestApp::spawn().await;
    // Stand-in for any data PostgreSQL refuses when merging into records.
    sqlx::query("ALTER TABLE records ADD CONSTRAINT refuse_poison CHECK (record_id <> 'poison')")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let batch = changes(json!([
        {"table": "tasks", "id": "a", "op": "insert", "data": {}},
        {"table": "tasks", "id": "poison", "op": "insert", "data": {}},
        {"table": "tasks", "id": "b", "op": "insert", "data": {}},
    ]));
    assert_eq!(
        app.push("alice", "c", "todo", &batch).await.status,
        StatusCode::OK
    );
    app.wait_projected().await;

    let parked = parked(&app).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].0, app.change_message(2).await.sequence as i64);
    assert!(parked[0].1.starts_with("records stage"), "{parked:?}");
    let records: Vec<String> =
        sqlx::query_scalar("SELECT record_id FROM records ORDER BY record_id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(records, ["a", "b"]);
}
