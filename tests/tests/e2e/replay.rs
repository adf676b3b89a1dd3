//! Replay is exact (ARCHITECTURE, invariant 10), checksummed: the projections rebuilt
//! from the log into empty databases, up to an earlier position and up to the end, have
//! the checksums the live projection had at those positions; a rebuild resumes where
//! an earlier one stopped; the live projector's consumer is left alone; any changed
//! row changes the checksum.

use projector::replay::{Checksum, checksum, rebuild};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sync_tests::{TestApp, TestDb, changes, projector_config};

const NAME: &str = schemas::projection::DEFAULT_PROJECTOR;
const FAMILY: &str = "replay-family";

async fn push_ok(app: &TestApp, user: &str, body: Value) {
    let reply = app
        .push(user, &format!("{user}-phone"), "notes", &body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

/// The live projection's checksum once it holds everything in the log.
async fn live(app: &TestApp) -> (u64, Checksum) {
    app.wait_projected().await;
    let last = app.stream_messages_last_seq().await;
    let sum = checksum(&app.db.pool, NAME).await.expect("checksum");
    assert_eq!((sum.log_checkpoint, sum.records_checkpoint), (last, last));
    (last, sum)
}

/// When the live projector's durable consumer was created.
async fn durable_created(app: &TestApp) -> String {
    let js = app.nats.jetstream().await;
    let mut consumer = js
        .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
            NAME,
            schemas::stream::DEFAULT_STREAM,
        )
        .await
        .expect("the projector's consumer");
    format!(
        "{:?}",
        consumer.info().await.expect("consumer info").created
    )
}

#[tokio::test]
async fn rebuilds_from_the_log_match_the_live_projection_at_every_position() {
    let app = TestApp::spawn().await;
    // Every kind of event: a shared space and its members, inserts, field updates in
    // both spellings, a delete, a private record, writes by two users, poison.
    app.create_space(FAMILY, "ann", &[("ben", "member")]).await;
    push_ok(
        &app,
        "ann",
        changes(json!([
            {"table": "notes", "id": "n1", "op": "insert", "spaceId": FAMILY, "data": {"title": "one", "n": 1.5,
                "tiny": 2.465464329940304e-08, "small": 6.389961126361938e-10, "max": 1.7976931348623157e308}},
            {"table": "notes", "id": "n2", "op": "insert", "data": {"title": "mine"}},
            {"table": "notes", "id": "n3", "op": "insert", "spaceId": FAMILY, "data": {"title": "secret", "visibility": "private"}},
        ])),
    )
    .await;
    // Merged apart, so the next merge reads n1 back from `records`: floats that do not
    // survive a parse of their own text exactly would drift there (serde_json's
    // `float_roundtrip`), and `Number.MAX_VALUE` would not parse back at all.
    app.wait_projected().await;
    push_ok(
        &app,
        "ben",
        changes(json!([
            {"table": "notes", "id": "n1", "op": "update", "spaceId": FAMILY, "fields": {"title": {"value": "uno", "at": "2026-01-01T00:00:00Z"}}},
            {"table": "notes", "id": "n1", "op": "update", "spaceId": FAMILY, "fields": {"n": {"value": 2, "updatedAt": "2026-01-01T00:00:01Z"}}},
        ])),
    )
    .await;
    let js = app.nats.jetstream().await;
    js.publish(
        format!("sync.{FAMILY}.notes.notes"),
        b"{not json".to_vec().into(),
    )
    .await
    .expect("published")
    .await
    .expect("stored");
    let (first_at, first) = live(&app).await;
    assert_eq!(first.tables["dead_letters"].rows, 1);
    assert_eq!(first.tables["records"].rows, 3);
    assert_eq!(first.tables["space_members"].rows, 3, "{first:?}");

    // More: a delete, a member removed, another push.
    push_ok(
        &app,
        "ann",
        changes(json!([{"table": "notes", "id": "n2", "op": "delete", "deletedAt": "2026-01-02T00:00:00Z"}])),
    )
    .await;
    let removed = app
        .internal(
            Method::DELETE,
            &format!("/internal/spaces/{FAMILY}/members/ben"),
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    push_ok(
        &app,
        "ann",
        changes(json!([{"table": "notes", "id": "n4", "op": "insert", "spaceId": FAMILY, "data": {"title": "four"}}])),
    )
    .await;
    let (end_at, end) = live(&app).await;
    assert!(end_at > first_at);
    assert_ne!(end.sha256, first.sha256);
    let consumer_created = durable_created(&app).await;

    // Into empty databases, under the live projector's own name (as a rebuild meant to
    // replace the live projection would be): up to the first position, and to the end.
    let early = TestDb::create().await;
    let rebuilt = rebuild(projector_config(&app.nats, &early, NAME), Some(first_at))
        .await
        .expect("rebuild up to the first position");
    assert_eq!(rebuilt, first, "the projection at {first_at}");
    let full = TestDb::create().await;
    let rebuilt = rebuild(projector_config(&app.nats, &full, NAME), None)
        .await
        .expect("rebuild to the end");
    assert_eq!(rebuilt, end, "the projection at {end_at}");
    // The stopped rebuild resumes from where it stopped, to the same end.
    let resumed = rebuild(projector_config(&app.nats, &early, NAME), None)
        .await
        .expect("resumed rebuild");
    assert_eq!(resumed, end);
    // Not beyond the log, and not back to an earlier position.
    let beyond = rebuild(projector_config(&app.nats, &full, NAME), Some(end_at + 1)).await;
    let why = beyond.expect_err("beyond the log").to_string();
    assert!(why.contains(&format!("the log ends at {end_at}")), "{why}");
    let back = rebuild(projector_config(&app.nats, &full, NAME), Some(first_at)).await;
    let why = back.expect_err("back to an earlier position").to_string();
    assert!(why.contains("past"), "{why}");

    // The live projector kept its durable consumer and goes on projecting.
    assert_eq!(durable_created(&app).await, consumer_created);
    push_ok(
        &app,
        "ann",
        changes(json!([{"table": "notes", "id": "n5", "op": "insert", "data": {"title": "five"}}])),
    )
    .await;
    let (after_at, _) = live(&app).await;
    assert!(after_at > end_at);

    // One field of one record, or one logged change, differs: so do the checksums.
    let now = checksum(&app.db.pool, NAME).await.expect("checksum");
    app.db
        .execute("UPDATE records SET data = jsonb_set(data, '{title}', '\"ONE\"') WHERE record_id = 'n1'")
        .await;
    let tampered = checksum(&app.db.pool, NAME).await.expect("checksum");
    assert_ne!(tampered.tables["records"], now.tables["records"]);
    assert_eq!(tampered.tables["change_log"], now.tables["change_log"]);
    assert_ne!(tampered.sha256, now.sha256);
    app.db
        .execute("UPDATE change_log SET user_id = 'someone' WHERE seq = (SELECT max(seq) FROM change_log)")
        .await;
    let tampered_log = checksum(&app.db.pool, NAME).await.expect("checksum");
    assert_ne!(tampered_log.tables["change_log"], now.tables["change_log"]);
}

#[tokio::test]
async fn a_rebuild_refuses_the_database_a_projector_is_writing() {
    let app = TestApp::spawn().await;
    push_ok(
        &app,
        "ann",
        changes(json!([{"table": "notes", "id": "n1", "op": "insert", "data": {}}])),
    )
    .await;
    app.wait_projected().await;
    let refused = rebuild(projector_config(&app.nats, &app.db, NAME), None).await;
    let why = refused
        .expect_err("the live database is in use")
        .to_string();
    assert!(why.contains("is writing this database"), "{why}");

    // A role under row-level security, allowed to read every table, gets an error,
    // not a checksum of the rows it may see.
    let role = format!("r_{}", uuid::Uuid::new_v4().simple());
    for sql in [
        format!("CREATE ROLE {role} LOGIN NOBYPASSRLS"),
        format!("GRANT sync_reader TO {role}"),
        format!("GRANT SELECT ON dead_letters, projector_checkpoints TO {role}"),
    ] {
        app.db.execute(&sql).await;
    }
    let url = app.db.url.replacen("postgres@", &format!("{role}@"), 1);
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("connect as the reader");
    let hidden = checksum(&pool, NAME).await;
    pool.close().await;
    let why = format!(
        "{:#}",
        hidden.expect_err("no checksum under row-level security")
    );
    assert!(why.contains("row-level security"), "{why}");
    for sql in [
        format!("REVOKE ALL ON dead_letters, projector_checkpoints FROM {role}"),
        format!("DROP ROLE {role}"),
    ] {
        app.db.execute(&sql).await;
    }
}
