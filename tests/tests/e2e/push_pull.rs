//! Push → log → projector → PostgreSQL → pull, as clients see it.

use reqwest::StatusCode;
use serde_json::json;
use sync_tests::{TestApp, changes, send};

#[tokio::test]
async fn insert_update_delete_reach_a_second_client_of_the_same_user() {
    let app = TestApp::spawn().await;
    let pushed = app
        .push(
            "alice",
            "laptop",
            "todo",
            &changes(json!([
                {"table": "tasks", "id": "t1", "op": "insert", "data": {"title": "Buy milk", "done": false}},
                {"table": "tasks", "id": "t2", "op": "insert", "data": {"title": "Call mum"}},
            ])),
        )
        .await;
    assert_eq!(pushed.status, StatusCode::OK, "{}", pushed.body);
    // Later than the inserts (which take the time they were received).
    let soon = |ms: i64| chrono::Utc::now() + chrono::TimeDelta::milliseconds(ms);
    let (t_title, t_done, t_delete) = (soon(1_000), soon(2_000), soon(3_000));
    let iso = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let canonical = |t: chrono::DateTime<chrono::Utc>| {
        schemas::time::canonical(schemas::time::parse_instant(&iso(t)).unwrap())
    };
    let updated = app
        .push(
            "alice",
            "laptop",
            "todo",
            &changes(json!([
                {"table": "tasks", "id": "t1", "op": "update", "fields": {"title": {"value": "Buy eggs", "at": iso(t_title)}}},
                {"table": "tasks", "id": "t1", "op": "update", "fields": {"done": {"value": true, "updatedAt": iso(t_done)}}},
                {"table": "tasks", "id": "t2", "op": "delete", "deletedAt": iso(t_delete)},
            ])),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);

    // Another device of the same user pulls at once: read-your-writes.
    let (seen, cursor) = app.pull_all("alice", "phone", "todo", "tasks", "").await;
    let ops: Vec<_> = seen
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["op"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        [
            ("t1", "insert"),
            ("t2", "insert"),
            ("t1", "update"),
            ("t1", "update"),
            ("t2", "delete")
        ]
    );
    assert_eq!(seen[0]["data"]["title"], "Buy milk");
    assert_eq!(seen[2]["fields"]["title"]["value"], "Buy eggs");
    assert_eq!(seen[2]["fields"]["title"]["at"], canonical(t_title));
    assert_eq!(seen[3]["fields"]["done"]["updatedAt"], canonical(t_done));
    assert_eq!(seen[4]["deletedAt"], canonical(t_delete));
    assert!(
        seen.iter()
            .all(|c| c["authorId"] == "alice" && c["eventId"].is_string())
    );
    let cursors: Vec<_> = seen
        .iter()
        .map(|c| c["cursor"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = cursors.clone();
    sorted.sort();
    assert_eq!(cursors, sorted, "cursors sort like the log");
    assert_eq!(&cursor, cursors.last().unwrap());

    // The pushing client does not get its own changes echoed back.
    let (own, _) = app.pull_all("alice", "laptop", "todo", "tasks", "").await;
    assert!(own.is_empty(), "{own:?}");

    // Nothing new after the cursor.
    let (rest, again) = app
        .pull_all("alice", "phone", "todo", "tasks", &cursor)
        .await;
    assert!(rest.is_empty());
    assert_eq!(again, cursor);

    // The record state merged field by field (the records stage follows the log stage).
    app.wait_projected().await;
    let t1: serde_json::Value =
        sqlx::query_scalar("SELECT data FROM records WHERE record_id = 't1'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        t1,
        json!({"title": "Buy eggs", "done": true, "authorId": "alice"}),
        "merged, with the author the server stamped"
    );
    let t2_deleted: bool =
        sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM records WHERE record_id = 't2'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(t2_deleted);
}

#[tokio::test]
async fn push_response_carries_other_clients_changes_after_since() {
    let app = TestApp::spawn().await;
    let first = app
        .push(
            "alice",
            "phone",
            "todo",
            &changes(json!([{"table": "notes", "id": "n1", "op": "insert", "data": {"t": 1}}])),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let reply = app
        .push(
            "alice",
            "laptop",
            "todo",
            &json!({"since": "1970-01-01T00:00:00.000Z", "changes": [{"table": "tasks", "id": "x", "op": "insert", "data": {}}]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let server_changes = reply.body["serverChanges"].as_array().unwrap();
    assert_eq!(server_changes.len(), 1, "{}", reply.body);
    assert_eq!(server_changes[0]["id"], "n1");
    assert_eq!(reply.body["conflicts"], json!([]));
    assert_eq!(reply.body["hasMore"], false);
    assert!(reply.body["syncedUntil"].as_str().unwrap() > "1970-01-01T00:00:00.000Z");
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused() {
    let app = TestApp::spawn().await;
    let url = format!("{}/sync/todo", app.gateway.base);
    let body = changes(json!([{"table": "t", "id": "1", "op": "insert", "data": {}}]));
    let cases = [
        app.http.post(&url).header("x-client-id", "c").json(&body),
        app.http
            .post(&url)
            .header("x-client-id", "c")
            .bearer_auth("not-a-jwt")
            .json(&body),
        app.http
            .post(&url)
            .header("x-client-id", "c")
            .bearer_auth(
                gateway::auth::mint_dev_token(
                    "another-secret",
                    "alice",
                    std::time::Duration::from_secs(60),
                )
                .unwrap(),
            )
            .json(&body),
        app.http
            .get(format!("{}/sync/todo/pull?collection=t", app.gateway.base)),
    ];
    for req in cases {
        let reply = send(req).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
        assert_eq!(reply.body["error"], "unauthorized");
    }
    assert_eq!(app.stream_messages().await, 0);
}

#[tokio::test]
async fn client_id_may_come_from_the_body_and_legacy_timestamps_work_as_since() {
    let app = TestApp::spawn().await;
    let url = format!("{}/sync/todo", app.gateway.base);
    let first = send(
        app.http
            .post(&url)
            .bearer_auth(app.token("alice"))
            .json(&json!({
                "clientId": "old-client",
                "changes": [{"table": "tasks", "id": "before", "op": "insert", "data": {}}],
            })),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    app.wait_projected().await;
    let between = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let second = app
        .push(
            "alice",
            "old-client",
            "todo",
            &changes(json!([{"table": "tasks", "id": "after", "op": "insert", "data": {}}])),
        )
        .await;
    assert_eq!(second.status, StatusCode::OK);

    // The body's clientId counts as the pushing client: no echo to it.
    let (own, _) = app
        .pull_all("alice", "old-client", "todo", "tasks", "")
        .await;
    assert!(own.is_empty(), "{own:?}");
    // A legacy timestamp cursor means "from the first event logged at or after it".
    let (since_between, _) = app
        .pull_all("alice", "phone", "todo", "tasks", &between)
        .await;
    let ids: Vec<_> = since_between
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["after"]);
    let (all, _) = app
        .pull_all(
            "alice",
            "phone",
            "todo",
            "tasks",
            "1970-01-01T00:00:00.000Z",
        )
        .await;
    assert_eq!(all.len(), 2);
}

#[tokio::test]
async fn user_ids_with_subject_syntax_cannot_change_the_subject() {
    let app = TestApp::spawn().await;
    let user = "a.b*c >d";
    let reply = app
        .push(user, "c", "todo", &changes(json!([{"table": "tasks", "id": "1", "op": "insert", "data": {}, "spaceId": format!("_personal:{user}")}])))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let msg = app.change_message(1).await;
    let tokens: Vec<_> = msg.subject.split('.').collect();
    assert_eq!(tokens.len(), 4, "{}", msg.subject);
    assert_eq!(tokens[2..], ["todo", "tasks"]);
    assert!(!msg.subject.contains('*') && !msg.subject.contains('>') && !msg.subject.contains(' '));
    let (seen, _) = app.pull_all(user, "other", "todo", "tasks", "").await;
    assert_eq!(seen.len(), 1);
}
