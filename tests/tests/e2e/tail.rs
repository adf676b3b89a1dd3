//! Each gateway's tail of the log: push responses served from it while the projector
//! is stopped, identical to what PostgreSQL answers, and left to PostgreSQL whenever
//! the tail cannot answer exactly (cursor older than its window, legacy timestamps,
//! private records of someone else).

use reqwest::StatusCode;
use serde_json::{Value, json};
use sync_tests::{Reply, TestApp, ids};

const FAM: &str = "fam-tail";

fn insert(id: &str, space: &str, data: Value) -> Value {
    json!({"table": "notes", "id": id, "op": "insert", "spaceId": space, "data": data})
}

async fn push(app: &TestApp, base: &str, user: &str, client: &str, batch: Value) -> Reply {
    let body = json!({"since": "", "changes": batch});
    app.push_as(base, user, client, "notes", &body).await
}

/// The same empty push on two gateways, answered alike.
async fn assert_same_answer(
    app: &TestApp,
    a: &str,
    b: &str,
    user: &str,
    client: &str,
    since: &str,
) {
    let body = json!({"since": since, "changes": []});
    let first = app.push_as(a, user, client, "notes", &body).await;
    let second = app.push_as(b, user, client, "notes", &body).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(
        first.body, second.body,
        "{user}/{client} since {since:?}: the two gateways differ"
    );
}

#[tokio::test]
async fn push_responses_come_from_the_tail_and_equal_postgres() {
    let mut app = TestApp::spawn().await;
    app.create_space(FAM, "A", &[("B", "member")]).await;
    app.wait_projected().await;
    let personal = "_personal:A";
    let batch = json!([
        {"table": "notes", "id": "n1", "op": "insert", "spaceId": FAM,
         "data": {"text": "one", "done": false},
         "actor": {"kind": "ai", "principalId": "bot"}, "origin": "agent"},
        insert("n2", FAM, json!({"text": "two"})),
        {"table": "notes", "id": "n1", "op": "update", "spaceId": FAM,
         "fields": {"text": {"value": "uno", "at": "2026-05-01T10:00:00Z"}}},
        {"table": "notes", "id": "n2", "op": "update", "spaceId": FAM,
         "fields": {"text": {"value": "dos", "updatedAt": "2026-05-01T12:00:00.5+02:00"}}},
        {"table": "notes", "id": "n2", "op": "delete", "spaceId": FAM,
         "deletedAt": "2026-05-01T11:00:00Z"},
        insert("p1", personal, json!({"text": "mine"})),
    ]);

    // With the projector stopped, nothing new reaches PostgreSQL: a response that needs
    // A's changes can only come from the gateway's tail of the log (PostgreSQL's path
    // would wait for the projector and fail with 503).
    app.wait_tail_live(&app.gateway.base).await;
    app.stop_projector().await;
    let g = app.gateway.base.clone();
    let reply = push(&app, &g, "A", "a-phone", batch).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = push(
        &app,
        &g,
        "B",
        "b-phone",
        json!([insert("b1", FAM, json!({}))]),
    )
    .await;
    assert_eq!(ids(&reply), ["n1", "n2", "n1", "n2", "n2"]);
    let n1 = &reply.body["serverChanges"][0];
    assert_eq!(n1["authorId"], "A");
    assert_eq!(n1["actor"], json!({"kind": "ai", "principalId": "bot"}));
    let mid = reply.body["serverChanges"][1]["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();

    // Once PostgreSQL has everything, a gateway without a tail answers exactly the same.
    app.restart_projector().await;
    app.wait_projected().await;
    let postgres_only = app.another_gateway_with(|c| c.tail_events = 0).await;
    for (user, client) in [
        ("A", "a-laptop"),
        ("A", "a-phone"),
        ("B", "b-phone"),
        ("C", "c"),
    ] {
        for since in ["", mid.as_str(), "1970-01-01T00:00:00.000Z"] {
            assert_same_answer(&app, &g, &postgres_only.base, user, client, since).await;
        }
    }
}

#[tokio::test]
async fn the_tail_leaves_to_postgres_what_only_postgres_can_answer() {
    let app = TestApp::spawn().await;
    app.create_space(FAM, "A", &[("B", "member")]).await;
    let g = app.gateway.base.clone();
    // A window of two changes: older cursors are read from PostgreSQL.
    let small = app.another_gateway_with(|c| c.tail_events = 2).await;
    let batch: Vec<Value> = (1..=4)
        .map(|i| insert(&format!("n{i}"), FAM, json!({})))
        .collect();
    let reply = push(&app, &g, "A", "a-phone", json!(batch)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = push(&app, &small.base, "B", "b-phone", json!([])).await;
    assert_eq!(ids(&reply), ["n1", "n2", "n3", "n4"]);

    // Private records: another member's response never holds them, not even the
    // earlier changes of a record made private later; the author's does.
    let reply = push(
        &app,
        &g,
        "A",
        "a-phone",
        json!([
            insert("secret", FAM, json!({"visibility": "private"})),
            insert("open", FAM, json!({"visibility": "space"})),
        ]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = push(&app, &g, "B", "b-phone", json!([])).await;
    assert_eq!(ids(&reply), ["n1", "n2", "n3", "n4", "open"]);
    let reply = push(
        &app,
        &g,
        "A",
        "a-phone",
        json!([{"table": "notes", "id": "open", "op": "update", "spaceId": FAM,
                "fields": {"visibility": {"value": "private", "at": "2030-01-01T00:00:00Z"}}}]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    for base in [&g, &small.base] {
        let reply = push(&app, base, "B", "b-phone", json!([])).await;
        assert_eq!(ids(&reply), ["n1", "n2", "n3", "n4"]);
        let reply = push(&app, base, "A", "a-laptop", json!([])).await;
        assert_eq!(
            ids(&reply),
            ["n1", "n2", "n3", "n4", "secret", "open", "open"]
        );
    }
}
