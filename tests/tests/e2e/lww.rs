//! Field-level last-write-wins through the whole stack, and replay convergence.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sync_tests::{RunningProjector, TestApp, TestDb, changes, projector_config};

/// `column` (a JSON expression over `records`) of record `id`.
async fn records_json(app: &TestApp, id: &str, column: &str) -> Value {
    sqlx::query_scalar(&format!(
        "SELECT {column} FROM records WHERE record_id = $1"
    ))
    .bind(id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

async fn record(app: &TestApp, id: &str) -> Value {
    // The merged fields; the server-stamped author is not what these tests are about.
    records_json(app, id, "data - 'authorId'").await
}

fn update(id: &str, field: &str, value: Value, at: &str) -> Value {
    json!({"table": "tasks", "id": id, "op": "update", "fields": {field: {"value": value, "at": at}}})
}

async fn push_ok(app: &TestApp, client: &str, change: Value) {
    let reply = app
        .push("alice", client, "todo", &changes(json!([change])))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn concurrent_edits_merge_field_by_field() {
    let app = TestApp::spawn().await;
    push_ok(&app, "a", json!({"table": "tasks", "id": "t", "op": "insert", "data": {"title": "x", "done": false}, "spaceId": "_personal:alice"})).await;
    let insert_at = chrono::Utc::now();
    let at = |s: i64| (insert_at + chrono::TimeDelta::seconds(s)).to_rfc3339();

    // Different fields from two clients: both survive.
    push_ok(&app, "a", update("t", "title", json!("from a"), &at(1))).await;
    push_ok(&app, "b", update("t", "done", json!(true), &at(1))).await;
    app.wait_projected().await;
    assert_eq!(
        record(&app, "t").await,
        json!({"title": "from a", "done": true})
    );

    // Same field: the greater instant wins even when it arrives first.
    push_ok(&app, "b", update("t", "title", json!("newer"), &at(10))).await;
    push_ok(&app, "a", update("t", "title", json!("older"), &at(5))).await;
    app.wait_projected().await;
    assert_eq!(record(&app, "t").await["title"], "newer");

    // Equal instants (written differently): the later event in the log wins.
    let same = insert_at + chrono::TimeDelta::seconds(20);
    push_ok(
        &app,
        "a",
        update("t", "title", json!("first"), &same.to_rfc3339()),
    )
    .await;
    let other_form = same
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap())
        .to_rfc3339();
    push_ok(
        &app,
        "b",
        update("t", "title", json!("second"), &other_form),
    )
    .await;
    app.wait_projected().await;
    assert_eq!(record(&app, "t").await["title"], "second");
}

/// The field times the records stage stores for a record.
async fn stored_field_times(app: &TestApp, id: &str) -> Value {
    records_json(app, id, "field_at::jsonb").await
}

#[tokio::test]
async fn fields_keep_the_insert_time_they_were_stored_without() {
    let app = TestApp::spawn().await;
    let before = chrono::Utc::now();
    push_ok(
        &app,
        "a",
        json!({"table": "tasks", "id": "t", "op": "insert", "data": {"title": "x", "done": false}}),
    )
    .await;
    app.wait_projected().await;
    // Every field carries the insert's time, which the row has already (`exists_at`).
    assert_eq!(stored_field_times(&app, "t").await, json!({}));
    let inserted_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT exists_at FROM records WHERE record_id = 't'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    let at = |s: i64| (inserted_at + chrono::TimeDelta::seconds(s)).to_rfc3339();

    // Read back in later batches, the fields still have the insert's time: an update
    // older than the insert loses, a newer one wins, an equal one wins by log order.
    let older = (before - chrono::TimeDelta::seconds(60)).to_rfc3339();
    push_ok(&app, "b", update("t", "title", json!("older"), &older)).await;
    push_ok(&app, "b", update("t", "done", json!(true), &at(1))).await;
    app.wait_projected().await;
    assert_eq!(record(&app, "t").await, json!({"title": "x", "done": true}));
    let stored = stored_field_times(&app, "t").await;
    assert_eq!(
        stored.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["done"]
    );
    let equal = inserted_at
        .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
        .to_rfc3339();
    push_ok(&app, "b", update("t", "title", json!("same"), &equal)).await;
    app.wait_projected().await;
    assert_eq!(record(&app, "t").await["title"], "same");
}

#[tokio::test]
async fn instants_are_compared_not_strings() {
    let app = TestApp::spawn().await;
    push_ok(
        &app,
        "a",
        json!({"table": "tasks", "id": "t", "op": "insert", "data": {"title": "x"}}),
    )
    .await;
    let base = chrono::Utc::now() + chrono::TimeDelta::seconds(60);
    // As strings "+02:00" at hour h+2 sorts after "Z" at hour h+1, as instants it is earlier.
    let earlier = (base)
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap())
        .to_rfc3339();
    let later = (base + chrono::TimeDelta::minutes(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    assert!(earlier > later, "the strings sort the other way round");
    push_ok(&app, "b", update("t", "title", json!("later"), &later)).await;
    push_ok(&app, "a", update("t", "title", json!("earlier"), &earlier)).await;
    app.wait_projected().await;
    assert_eq!(record(&app, "t").await["title"], "later");
}

#[tokio::test]
async fn a_clock_far_in_the_future_cannot_win_every_conflict() {
    let app = TestApp::spawn().await;
    push_ok(
        &app,
        "a",
        json!({"table": "tasks", "id": "t", "op": "insert", "data": {"title": "x"}}),
    )
    .await;
    // A client whose clock is a year ahead: clamped to the time the server received it.
    push_ok(
        &app,
        "skewed",
        update(
            "t",
            "title",
            json!("from the future"),
            "2099-01-01T00:00:00Z",
        ),
    )
    .await;
    // A push answers once its changes are in the log, not necessarily in PostgreSQL.
    app.wait_projected().await;
    let stored: String = sqlx::query_scalar(
        "SELECT fields->'title'->>'at' FROM change_log ORDER BY seq DESC LIMIT 1",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(
        stored.starts_with(&chrono::Utc::now().format("%Y-").to_string()),
        "{stored}"
    );
    // An honest client writing a little later wins.
    let soon = (chrono::Utc::now() + chrono::TimeDelta::seconds(2)).to_rfc3339();
    push_ok(&app, "honest", update("t", "title", json!("honest"), &soon)).await;
    app.wait_projected().await;
    assert_eq!(record(&app, "t").await["title"], "honest");
}

#[tokio::test]
async fn replaying_the_log_gives_the_same_state() {
    let app = TestApp::spawn().await;
    let t0 = chrono::Utc::now();
    for i in 0..60i64 {
        let id = format!("r{}", i % 7);
        let at = (t0 + chrono::TimeDelta::milliseconds((i * 37) % 11 * 100)).to_rfc3339();
        let change = match i % 5 {
            0 => json!({"table": "tasks", "id": id, "op": "insert", "data": {"n": i}}),
            4 => json!({"table": "tasks", "id": id, "op": "delete", "deletedAt": at}),
            _ => update(&id, if i % 2 == 0 { "a" } else { "b" }, json!(i), &at),
        };
        push_ok(&app, &format!("c{}", i % 3), change).await;
    }
    app.wait_projected().await;

    // A second projector rebuilds everything from sequence 1 into an empty database.
    let replica = TestDb::create().await;
    let rebuild = RunningProjector::start(projector_config(&app.nats, &replica, "replay")).await;
    let last = app.stream_messages_last_seq().await;
    sync_tests::eventually(std::time::Duration::from_secs(20), || async {
        replica.projected("replay").await >= last
    })
    .await;
    rebuild.stop().await;

    let records = "SELECT * FROM records ORDER BY space_id, app_id, table_name, record_id";
    let log = "SELECT * FROM change_log ORDER BY seq";
    assert_eq!(app.db.dump(records).await, replica.dump(records).await);
    assert_eq!(app.db.dump(log).await, replica.dump(log).await);
    assert_eq!(app.db.count("records").await, 7);
}
