//! The published JSON Schemas (`schemas/json/`) describe what the backend really sends:
//! every kind of message in the log, as pushes, a personal space's first use and the
//! internal API write them, and the answers of push and pull. And they are not
//! vacuous: what the backend never sends fails them.

use std::{collections::BTreeSet, path::PathBuf};

use jsonschema::Validator;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sync_tests::{Reply, TestApp, changes};

/// A published schema, checked against its meta-schema, validating formats too
/// (`uuid`, `date-time`).
fn validator(file: &str) -> Validator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/json")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("the published schema");
    let schema: Value = serde_json::from_str(&text).expect("a schema is JSON");
    jsonschema::meta::validate(&schema).expect("a valid JSON Schema");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
}

fn problems(v: &Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{e} (at {})", e.instance_path))
        .collect()
}

fn assert_valid(v: &Validator, instance: &Value, what: &str) {
    let problems = problems(v, instance);
    assert!(problems.is_empty(), "{what}: {problems:#?}\n{instance:#}");
}

fn assert_invalid(v: &Validator, instance: Value, what: &str) {
    assert!(
        !problems(v, &instance).is_empty(),
        "{what} passed: {instance:#}"
    );
}

/// `base` with the value at `pointer` replaced.
fn with(base: &Value, pointer: &str, value: Value) -> Value {
    let mut changed = base.clone();
    *changed.pointer_mut(pointer).expect(pointer) = value;
    changed
}

fn ok(reply: Reply) -> Value {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

#[tokio::test]
async fn the_log_and_the_answers_match_the_published_schemas() {
    let app = TestApp::spawn().await;
    let events = validator("event.schema.json");
    let answers = validator("sync-response.schema.json");

    // Every kind of change, with the optional parts: `actor`, `origin`, legacy
    // `updatedAt`, a field update, a delete; into a personal and a shared space.
    app.create_space("fam", "alice", &[("bob", "member")]).await;
    let mut responses = vec![
        ok(app
            .push(
                "alice",
                "phone",
                "notes",
                &json!({
                    "changes": [
                        {"table": "notes", "id": "n1", "op": "insert", "spaceId": "fam",
                         "data": {"title": "shared", "done": false}, "at": "2026-11-23T10:00:00Z",
                         "actor": {"kind": "user"}, "origin": "web"},
                        {"table": "notes", "id": "p1", "op": "insert",
                         "data": {"title": "mine"}, "updatedAt": "2026-11-23T10:00:00.5+01:00"}
                    ]
                }),
            )
            .await),
        ok(app
            .push(
                "bob",
                "tablet",
                "notes",
                &changes(json!([
                    {"table": "notes", "id": "n1", "op": "update", "spaceId": "fam",
                     "fields": {"done": {"value": true, "at": "2026-11-23T10:01:00Z"},
                                "title": {"value": null, "updatedAt": "2026-11-23T10:01:00Z"}}},
                    {"table": "notes", "id": "n2", "op": "insert", "spaceId": "fam",
                     "data": {"title": "gone soon"}},
                    {"table": "notes", "id": "n2", "op": "delete", "spaceId": "fam",
                     "at": "2026-11-23T10:02:00Z"}
                ])),
            )
            .await),
    ];
    // Push answers carrying others' changes, and a pull of everything.
    responses.push(ok(app
        .push("alice", "laptop", "notes", &changes(json!([])))
        .await));
    let pulled = ok(app.pull("alice", "laptop", "notes", "notes", "").await);
    let ops: BTreeSet<&str> = pulled["serverChanges"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["op"].as_str())
        .collect();
    assert_eq!(ops, BTreeSet::from(["delete", "insert", "update"]));
    responses.push(pulled.clone());
    for (i, response) in responses.iter().enumerate() {
        assert_valid(&answers, response, &format!("answer {i}"));
    }

    // Membership events through the internal API (after the reads: the space goes).
    for (method, path, body) in [
        (
            Method::PATCH,
            "/internal/spaces/fam/members/bob",
            Some(json!({"role": "viewer"})),
        ),
        (Method::DELETE, "/internal/spaces/fam/members/bob", None),
        (Method::DELETE, "/internal/spaces/fam", None),
    ] {
        let reply = app.internal(method.clone(), path, body).await;
        assert!(reply.status.is_success(), "{method} {path}: {}", reply.body);
    }

    let mut kinds = BTreeSet::new();
    for message in app.log_messages().await {
        let event: Value = serde_json::from_slice(&message.payload).expect("JSON");
        assert_valid(&events, &event, &format!("message {}", message.sequence));
        kinds.insert(event["type"].as_str().expect("type").to_owned());
    }
    assert_eq!(
        kinds,
        BTreeSet::from(
            [
                "MemberAdded",
                "MemberRemoved",
                "MemberRoleChanged",
                "RecordChanged",
                "SpaceCreated",
                "SpaceDeleted"
            ]
            .map(str::to_owned)
        ),
        "every kind of event was checked"
    );

    // What the backend never sends fails them.
    let message = app.change_message(1).await;
    let event: Value = serde_json::from_slice(&message.payload).expect("JSON");
    let without = |field: &str| {
        let mut e = event.clone();
        e.as_object_mut().expect("object").remove(field);
        e
    };
    for (pointer, value, what) in [
        ("/type", json!("RecordMoved"), "an unknown type"),
        ("/payload/op", json!("upsert"), "an unknown op"),
        ("/eventId", json!("n1"), "an event id that is no UUID"),
        (
            "/occurredAt",
            json!("yesterday"),
            "a time that is no instant",
        ),
        ("/payload/data", json!(null), "a null record"),
    ] {
        assert_invalid(&events, with(&event, pointer, value), what);
    }
    assert_invalid(&events, without("metadata"), "no metadata");
    assert_invalid(&events, json!({}), "nothing");

    for (pointer, value, what) in [
        (
            "/syncedUntil",
            json!("2026-11-23T10:00:00Z"),
            "a timestamp cursor",
        ),
        ("/serverChanges/0/cursor", json!("s1"), "a short cursor"),
        ("/conflicts", json!([{}]), "a conflict"),
        ("/hasMore", json!("no"), "a string for a flag"),
    ] {
        assert_invalid(&answers, with(&pulled, pointer, value), what);
    }
}
