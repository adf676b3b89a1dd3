//! Spaces, memberships and authorization: the isolation matrix over users A, B and C,
//! read and write authorization, private records, row-level security, revocation on
//! every gateway, and failing closed.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sync_tests::{TestApp, changes, eventually, ids};

const FAM: &str = "fam-1";

async fn pull_ids(app: &TestApp, user: &str, query: &[(&str, &str)]) -> Vec<String> {
    ids(&app.pull_on(&app.gateway.base, user, "notes", query).await)
}

fn insert(id: &str, space: Option<&str>, extra: Value) -> Value {
    let mut data = json!({ "text": id });
    if let Value::Object(extra) = extra {
        data.as_object_mut().unwrap().extend(extra);
    }
    let mut change = json!({"table": "notes", "id": id, "op": "insert", "data": data});
    if let Some(space) = space {
        change["spaceId"] = json!(space);
    }
    change
}

async fn push_ok(app: &TestApp, user: &str, batch: Value) {
    let reply = app
        .push_on(&app.gateway.base, user, "notes", &changes(batch))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

/// Pushes that must be refused with 403 naming `index`, leaving the log unchanged.
async fn push_refused(app: &TestApp, user: &str, batch: Value, index: usize) -> String {
    let before = app.all_stream_messages().await;
    let reply = app
        .push_on(&app.gateway.base, user, "notes", &changes(batch))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert_eq!(reply.body["error"], "forbidden");
    assert_eq!(reply.body["index"], index, "{}", reply.body);
    assert_eq!(app.all_stream_messages().await, before, "nothing may land");
    reply.body["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Removes `user` from the family space through the internal API.
async fn remove_from_fam(app: &TestApp, user: &str) {
    let path = format!("/internal/spaces/{FAM}/members/{user}");
    let removed = app.internal(Method::DELETE, &path, None).await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
}

/// `user`'s push into the family space, on the gateway at `base`, is refused.
async fn push_into_fam_refused(app: &TestApp, base: &str, user: &str) {
    let batch = changes(json!([insert(
        &format!("{user}-after"),
        Some(FAM),
        json!({})
    )]));
    let reply = app.push_on(base, user, "notes", &batch).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
}

#[tokio::test]
async fn isolation_matrix_over_three_users() {
    let app = TestApp::spawn().await;
    // A's personal data is A's alone.
    push_ok(&app, "A", json!([insert("a-personal", None, json!({}))])).await;
    assert_eq!(
        pull_ids(&app, "A", &[("collection", "notes")]).await,
        ["a-personal"]
    );
    assert!(
        pull_ids(&app, "B", &[("collection", "notes")])
            .await
            .is_empty()
    );

    // A shared family space of A and B.
    app.create_space(FAM, "A", &[("B", "member"), ("V", "viewer")])
        .await;
    push_ok(&app, "A", json!([insert("a-shared", Some(FAM), json!({}))])).await;
    push_ok(&app, "B", json!([insert("b-shared", Some(FAM), json!({}))])).await;
    assert_eq!(
        pull_ids(&app, "A", &[("collection", "notes"), ("spaceId", FAM)]).await,
        ["a-shared", "b-shared"],
        "A sees what B wrote into the shared space"
    );
    assert_eq!(
        pull_ids(&app, "B", &[("collection", "notes")]).await,
        ["a-shared", "b-shared"],
        "B sees the shared space and not A's personal data"
    );
    assert!(
        pull_ids(&app, "C", &[("collection", "notes")])
            .await
            .is_empty()
    );
    let c_pull = app
        .pull_on(&app.gateway.base, "C", "notes", &[("spaceId", FAM)])
        .await;
    assert_eq!(c_pull.status, StatusCode::FORBIDDEN, "{}", c_pull.body);

    // C may not write into it; nothing of the batch lands.
    app.wait_projected().await;
    let rows = app.db.count("change_log").await;
    let why = push_refused(
        &app,
        "C",
        json!([
            insert("c-own", None, json!({})),
            insert("c-shared", Some(FAM), json!({}))
        ]),
        1,
    )
    .await;
    assert!(why.contains("not a member"), "{why}");
    app.wait_projected().await;
    assert_eq!(app.db.count("change_log").await, rows);

    // Somebody else's personal space, a forged author, a move between spaces.
    push_refused(
        &app,
        "B",
        json!([insert("x", Some("_personal:A"), json!({}))]),
        0,
    )
    .await;
    let why = push_refused(
        &app,
        "B",
        json!([
            insert("ok", Some(FAM), json!({})),
            insert("x", Some(FAM), json!({"authorId": "A"}))
        ]),
        1,
    )
    .await;
    assert!(why.contains("authorId"), "{why}");
    push_refused(
        &app,
        "B",
        json!([{"table": "notes", "id": "b-shared", "op": "update", "fields": {"authorId": {"value": "A", "at": "2026-01-01T00:00:00Z"}}, "spaceId": FAM}]),
        0,
    )
    .await;
    let why = push_refused(
        &app,
        "A",
        json!([insert("m", Some(FAM), json!({"spaceId": "_personal:A"}))]),
        0,
    )
    .await;
    assert!(why.contains("another space"), "{why}");

    // The server stamps the author on insert.
    let a_view = app
        .pull_on(&app.gateway.base, "A", "notes", &[("spaceId", FAM)])
        .await;
    let b_shared = &a_view.body["serverChanges"][1];
    assert_eq!(b_shared["data"]["authorId"], "B");
    assert_eq!(b_shared["authorId"], "B");

    // A viewer reads but does not write.
    assert_eq!(
        pull_ids(&app, "V", &[("collection", "notes")]).await,
        ["a-shared", "b-shared"]
    );
    let why = push_refused(&app, "V", json!([insert("v", Some(FAM), json!({}))]), 0).await;
    assert!(why.contains("viewer"), "{why}");
}

#[tokio::test]
async fn private_records_reach_only_their_author() {
    let app = TestApp::spawn().await;
    app.create_space(FAM, "A", &[("B", "member")]).await;
    push_ok(
        &app,
        "A",
        json!([
            insert("secret", Some(FAM), json!({"visibility": "private"})),
            insert("open", Some(FAM), json!({"visibility": "space"})),
            insert("later", Some(FAM), json!({})),
        ]),
    )
    .await;
    // B's own update of the private record (a blind write) does not reveal it either.
    push_ok(
        &app,
        "B",
        json!([{"table": "notes", "id": "secret", "op": "update", "spaceId": FAM,
                "fields": {"visibility": {"value": "space", "at": "2030-01-01T00:00:00Z"}}}]),
    )
    .await;
    assert_eq!(pull_ids(&app, "B", &[]).await, ["open", "later"]);
    assert_eq!(
        pull_ids(&app, "A", &[]).await,
        ["secret", "open", "later", "secret"],
        "the author sees every change of their private record"
    );

    // A makes a record private later: from then on B gets none of it.
    push_ok(
        &app,
        "A",
        json!([{"table": "notes", "id": "later", "op": "update", "spaceId": FAM,
                "fields": {"visibility": {"value": "private", "at": "2026-01-01T00:00:00Z"}}}]),
    )
    .await;
    assert_eq!(pull_ids(&app, "B", &[]).await, ["open"]);
    let bad = app
        .push_on(
            &app.gateway.base,
            "A",
            "notes",
            &changes(json!([insert(
                "v",
                Some(FAM),
                json!({"visibility": "secret"})
            )])),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
}

#[tokio::test]
async fn row_level_security_filters_an_unfiltered_select() {
    let app = TestApp::spawn().await;
    app.create_space(FAM, "A", &[("B", "member")]).await;
    push_ok(&app, "A", json!([insert("a-personal", None, json!({}))])).await;
    push_ok(
        &app,
        "A",
        json!([
            insert("a-shared", Some(FAM), json!({})),
            insert("a-private", Some(FAM), json!({"visibility": "private"})),
        ]),
    )
    .await;
    push_ok(&app, "C", json!([insert("c-personal", None, json!({}))])).await;
    app.wait_projected().await;
    let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
    let records_done = app.db.checkpoint("projector.records").await;
    assert!(records_done >= app.stream_messages_last_seq().await || records_done > 0);
    let b = gateway_access(&app, "B").await;

    let mut tx = gateway::store::begin_as(&pool, &b).await.unwrap();
    let seen: Vec<(String, String)> = sqlx::query_as("SELECT record_id, space_id FROM change_log")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, [("a-shared".to_owned(), FAM.to_owned())]);
    let spaces: Vec<String> = sqlx::query_scalar("SELECT space_id FROM spaces")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(spaces, [FAM]);
    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM space_members")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(members, 2, "the members of B's spaces only");
    let hidden: i64 = sqlx::query_scalar("SELECT count(*) FROM record_visibility")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(hidden, 1, "B may know a private record exists, not read it");
    // Read as the reader role, which has no BYPASSRLS and may not write.
    let role: (String, bool) = sqlx::query_as(
        "SELECT current_user::text, rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(role, ("sync_reader".to_owned(), false));
    let write = sqlx::query("DELETE FROM change_log")
        .execute(&mut *tx)
        .await;
    assert!(write.is_err(), "the reader role must not write");
    tx.rollback().await.unwrap();

    eventually(Duration::from_secs(20), || async {
        let mut tx = gateway::store::begin_as(&pool, &b).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        n == 1
    })
    .await;

    // Without a caller set, the reader role sees nothing at all.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE sync_reader")
        .execute(&mut *tx)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM change_log")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

/// B's access as the gateway sees it, through the internal API's list.
async fn gateway_access(app: &TestApp, user: &str) -> ingest::Access {
    let reply = app
        .internal(
            Method::GET,
            &format!("/internal/users/{user}/memberships"),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let roles = reply.body["memberships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["spaceId"].as_str().unwrap().to_owned(),
                schemas::Role::parse(m["role"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    ingest::Access::with_roles(user, roles)
}

#[tokio::test]
async fn removal_is_immediate_on_every_gateway_and_keeps_earlier_data() {
    let app = TestApp::spawn().await;
    let other = app.another_gateway().await;
    app.create_space(FAM, "A", &[("B", "member")]).await;
    push_ok(&app, "B", json!([insert("b-before", Some(FAM), json!({}))])).await;
    // The second gateway knows B as a member too.
    eventually(Duration::from_secs(10), || async {
        app.pull_on(&other.base, "B", "notes", &[("spaceId", FAM)])
            .await
            .status
            == StatusCode::OK
    })
    .await;

    remove_from_fam(&app, "B").await;
    let at = Instant::now();

    // On the gateway that took the call: the very next request.
    let pull = app
        .pull_on(&app.gateway.base, "B", "notes", &[("spaceId", FAM)])
        .await;
    assert_eq!(pull.status, StatusCode::FORBIDDEN, "{}", pull.body);
    push_into_fam_refused(&app, &app.gateway.base, "B").await;
    assert!(
        pull_ids(&app, "B", &[]).await.is_empty(),
        "nothing of the space for B"
    );

    // On the other gateway: as soon as the event arrives (no TTL cache).
    eventually(Duration::from_secs(1), || async {
        app.pull_on(&other.base, "B", "notes", &[("spaceId", FAM)])
            .await
            .status
            == StatusCode::FORBIDDEN
    })
    .await;
    push_into_fam_refused(&app, &other.base, "B").await;
    eprintln!("revoked on the second gateway within {:?}", at.elapsed());

    // B's earlier data stays in the space for A.
    assert_eq!(pull_ids(&app, "A", &[("spaceId", FAM)]).await, ["b-before"]);
}

/// A write its gateway authorized just before the author's removal, but logged after
/// the `MemberRemoved`, is not projected: the projector parks it with the reason, and
/// neither a push response (from the log tail) nor a pull returns it.
#[tokio::test]
async fn a_write_logged_after_its_authors_removal_is_parked_and_never_served() {
    let mut app = TestApp::spawn().await;
    app.create_space(FAM, "A", &[("B", "member")]).await;
    push_ok(&app, "B", json!([insert("b-before", Some(FAM), json!({}))])).await;
    app.wait_projected().await;
    app.wait_tail_live(&app.gateway.base).await;
    // With the projector stopped, push responses can only come from the tail.
    app.stop_projector().await;
    remove_from_fam(&app, "B").await;

    // B's next change, as a gateway that authorized it before the removal publishes it.
    let template = app.change_message(1).await;
    let b_event: Value = serde_json::from_slice(&template.payload).unwrap();
    assert_eq!(b_event["payload"]["recordId"], "b-before", "{b_event}");
    let js = app.nats.jetstream().await;
    let publish_as_b = |id: &str| {
        let mut event = b_event.clone();
        event["eventId"] = json!(uuid::Uuid::new_v4());
        event["payload"]["recordId"] = json!(id);
        event["payload"]["data"]["text"] = json!(id);
        let (js, subject) = (js.clone(), template.subject.clone());
        async move {
            let ack = js.publish(subject, serde_json::to_vec(&event).unwrap().into());
            ack.await.unwrap().await.unwrap().sequence as i64
        }
    };
    let late_seq = publish_as_b("b-late").await;

    // A pushes after it; the response comes from the tail, which has seen b-late.
    let reply = app
        .push_on(
            &app.gateway.base,
            "A",
            "notes",
            &changes(json!([insert("a-after", Some(FAM), json!({}))])),
        )
        .await;
    assert_eq!(ids(&reply), ["b-before"], "{}", reply.body);

    // The projector, restarted, catches up on the removal, b-late and a-after (the
    // removal in the same batch as b-late, or committed before it): it parks b-late and
    // projects the rest.
    app.restart_projector().await;
    app.wait_projected().await;
    // A later one, in a batch of its own: refused by the projected membership.
    let later_seq = publish_as_b("b-later").await;
    app.wait_projected().await;
    let parked: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, reason FROM dead_letters ORDER BY seq")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    let seqs: Vec<i64> = parked.iter().map(|p| p.0).collect();
    assert_eq!(seqs, [late_seq, later_seq], "{parked:?}");
    for (_, reason) in &parked {
        assert!(
            reason.starts_with("unauthorized") && reason.contains(r#""B""#),
            "{parked:?}"
        );
    }
    assert_eq!(
        app.db
            .strings("SELECT record_id FROM change_log ORDER BY seq")
            .await,
        ["b-before", "a-after"]
    );
    assert_eq!(
        app.db
            .strings("SELECT record_id FROM records ORDER BY record_id")
            .await,
        ["a-after", "b-before"]
    );
    assert_eq!(
        pull_ids(&app, "A", &[("spaceId", FAM)]).await,
        ["b-before", "a-after"]
    );
}

#[tokio::test]
async fn membership_api_and_compatibility_endpoint() {
    let app = TestApp::spawn().await;
    push_ok(&app, "A", json!([insert("first", None, json!({}))])).await;
    app.create_space(FAM, "A", &[("B", "member")]).await;
    let changed = app
        .internal(
            Method::PATCH,
            &format!("/internal/spaces/{FAM}/members/B"),
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    push_into_fam_refused(&app, &app.gateway.base, "B").await;

    let legacy = app
        .internal(Method::GET, "/api/v1/internal/users/B/memberships", None)
        .await;
    assert_eq!(legacy.status, StatusCode::OK, "{}", legacy.body);
    assert_eq!(legacy.body["userId"], "B");
    assert!(
        legacy.body["memberships"]
            .as_array()
            .unwrap()
            .contains(&json!({"organizationId": FAM, "role": "viewer"})),
        "{}",
        legacy.body
    );

    // A's personal space was created by A's first push.
    let mine = app
        .internal(Method::GET, "/internal/users/A/memberships", None)
        .await;
    let personal = schemas::space::personal_space_id("A");
    assert!(
        mine.body["memberships"]
            .as_array()
            .unwrap()
            .contains(&json!({"spaceId": personal, "type": "personal", "role": "owner"})),
        "{}",
        mine.body
    );

    // The projection in PostgreSQL agrees with the gateway's view.
    app.wait_projected().await;
    let members = app
        .db
        .strings("SELECT space_id || ' ' || user_id || ' ' || role FROM space_members ORDER BY 1")
        .await;
    assert_eq!(
        members,
        [
            format!("{personal} A owner"),
            format!("{FAM} A owner"),
            format!("{FAM} B viewer")
        ]
    );
    let spaces = app
        .db
        .strings("SELECT space_id || ' ' || type FROM spaces ORDER BY 1")
        .await;
    assert_eq!(
        spaces,
        [format!("{personal} personal"), format!("{FAM} family")]
    );

    // Bad calls: wrong key, unknown role or type, unknown space or member, duplicates.
    let no_key = sync_tests::send(
        app.http
            .get(format!("{}/internal/users/A/memberships", app.gateway.base))
            .bearer_auth("wrong"),
    )
    .await;
    assert_eq!(no_key.status, StatusCode::UNAUTHORIZED);
    let user_token = sync_tests::send(
        app.http
            .get(format!("{}/internal/users/A/memberships", app.gateway.base))
            .bearer_auth(app.token("A")),
    )
    .await;
    assert_eq!(
        user_token.status,
        StatusCode::UNAUTHORIZED,
        "a user token is not a service key"
    );
    for (method, path, body, status) in [
        (
            Method::POST,
            format!("/internal/spaces/{FAM}/members"),
            Some(json!({"userId": "C", "role": "king"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/internal/spaces".to_owned(),
            Some(json!({"type": "castle", "name": "x", "ownerId": "A"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/internal/spaces".to_owned(),
            Some(json!({"type": "personal", "name": "x", "ownerId": "A"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/internal/spaces".to_owned(),
            Some(json!({"spaceId": FAM, "type": "team", "name": "x", "ownerId": "A"})),
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            "/internal/spaces".to_owned(),
            Some(json!({"spaceId": "a.b", "type": "team", "name": "x", "ownerId": "A"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("/internal/spaces/{FAM}/members"),
            Some(json!({"userId": "B", "role": "member"})),
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            "/internal/spaces/nope/members".to_owned(),
            Some(json!({"userId": "B", "role": "member"})),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            format!("/internal/spaces/{FAM}/members/C"),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            format!("/internal/spaces/{FAM}/members"),
            Some(json!("nonsense")),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let before = app.all_stream_messages().await;
        let reply = app.internal(method.clone(), &path, body).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
        assert!(reply.body["error"].is_string() && reply.body["message"].is_string());
        assert_eq!(
            app.all_stream_messages().await,
            before,
            "{method} {path} wrote"
        );
    }

    // Deleting the space ends every membership.
    let deleted = app
        .internal(Method::DELETE, &format!("/internal/spaces/{FAM}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    let gone = app
        .pull_on(&app.gateway.base, "A", "notes", &[("spaceId", FAM)])
        .await;
    assert_eq!(gone.status, StatusCode::FORBIDDEN);
}

/// A trusted service's `MemberAdded` of B to the family space, published straight to
/// NATS with `client_id` in its metadata.
async fn service_adds_b(app: &TestApp, client_id: &str) {
    let event = json!({
        "eventId": uuid::Uuid::new_v4(),
        "schemaVersion": 1,
        "occurredAt": "2026-11-22T10:00:00Z",
        "type": "MemberAdded",
        "payload": {"spaceId": FAM, "userId": "B", "role": "member"},
        "metadata": {"userId": "service:family-app", "clientId": client_id, "receivedAt": "2026-11-22T10:00:00Z"},
    });
    let js = app.nats.jetstream().await;
    js.publish(
        schemas::subject::membership_subject(FAM),
        serde_json::to_vec(&event).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

#[tokio::test]
async fn a_trusted_service_publishing_to_nats_has_the_same_effect() {
    let app = TestApp::spawn().await;
    app.create_space(FAM, "A", &[]).await;
    push_ok(&app, "A", json!([insert("a-shared", Some(FAM), json!({}))])).await;
    service_adds_b(&app, "family-app").await;
    eventually(Duration::from_secs(10), || async {
        app.pull_on(&app.gateway.base, "B", "notes", &[("spaceId", FAM)])
            .await
            .status
            == StatusCode::OK
    })
    .await;
    assert_eq!(pull_ids(&app, "B", &[]).await, ["a-shared"]);
    app.wait_projected().await;
    assert_eq!(
        app.db
            .strings(&format!(
                "SELECT role FROM space_members WHERE space_id = '{FAM}' AND user_id = 'B'"
            ))
            .await,
        ["member"]
    );
}

#[tokio::test]
async fn membership_state_that_cannot_be_read_fails_closed() {
    let mut app = TestApp::spawn().await;
    app.create_space(FAM, "A", &[("B", "member")]).await;
    push_ok(&app, "A", json!([insert("a-shared", Some(FAM), json!({}))])).await;
    remove_from_fam(&app, "B").await;
    app.wait_projected().await;

    // NATS down: the view stops following; access comes from PostgreSQL's projection,
    // with every restriction still in force.
    app.nats.stop();
    let b = app
        .pull_on(&app.gateway.base, "B", "notes", &[("spaceId", FAM)])
        .await;
    assert_eq!(b.status, StatusCode::FORBIDDEN, "{}", b.body);
    assert!(pull_ids(&app, "B", &[]).await.is_empty());
    assert_eq!(pull_ids(&app, "A", &[("spaceId", FAM)]).await, ["a-shared"]);

    // Membership unreadable as well: 503, never an unrestricted answer.
    app.db
        .execute("ALTER TABLE space_members RENAME TO space_members_away")
        .await;
    let b = app.pull_on(&app.gateway.base, "B", "notes", &[]).await;
    assert_eq!(b.status, StatusCode::SERVICE_UNAVAILABLE, "{}", b.body);
    assert!(
        b.body["message"].as_str().unwrap().contains("membership"),
        "{}",
        b.body
    );
    assert!(
        !b.body.to_string().contains("space_members"),
        "no SQL detail: {}",
        b.body
    );

    // Both back: the view follows the log again.
    app.db
        .execute("ALTER TABLE space_members_away RENAME TO space_members")
        .await;
    app.nats.restart().await;
    eventually(Duration::from_secs(20), || async {
        app.pull_on(&app.gateway.base, "A", "notes", &[("spaceId", FAM)])
            .await
            .status
            == StatusCode::OK
    })
    .await;
    eventually(Duration::from_secs(20), || async {
        app.internal(Method::GET, &format!("/internal/spaces/{FAM}"), None)
            .await
            .status
            == StatusCode::OK
    })
    .await;
}

/// Who may set a record's visibility (its author: the user of its first change) does
/// not depend on how far the records stage has got: a co-member's change of it is
/// refused even when the log stage takes it in together with the record's creation,
/// before the records stage has merged that (as in every rebuild).
#[tokio::test]
async fn only_the_author_sets_visibility_however_far_the_records_stage_is() {
    let mut app = TestApp::spawn().await;
    app.create_space(FAM, "A", &[("B", "member")]).await;
    app.wait_projected().await;
    // Push answers come from the tail while the projector is stopped.
    app.wait_tail_live(&app.gateway.base).await;
    app.stop_projector().await;
    push_ok(&app, "A", json!([insert("shared", Some(FAM), json!({}))])).await;
    push_ok(
        &app,
        "B",
        json!([{"table": "notes", "id": "shared", "op": "update", "spaceId": FAM,
                "fields": {"visibility": {"value": "private", "at": "2026-01-01T00:00:00Z"}}}]),
    )
    .await;
    app.restart_projector().await;
    app.wait_projected().await;
    assert!(
        app.db
            .strings("SELECT visibility FROM record_visibility WHERE record_id = 'shared'")
            .await
            .is_empty(),
        "B is not the author: the record keeps the default"
    );
    assert_eq!(pull_ids(&app, "A", &[]).await, ["shared", "shared"]);

    // The author can still make it private.
    push_ok(
        &app,
        "A",
        json!([{"table": "notes", "id": "shared", "op": "update", "spaceId": FAM,
                "fields": {"visibility": {"value": "private", "at": "2026-01-02T00:00:00Z"}}}]),
    )
    .await;
    app.wait_projected().await;
    assert_eq!(
        app.db
            .strings("SELECT visibility FROM record_visibility WHERE record_id = 'shared'")
            .await,
        ["private"]
    );
}

/// Visibility follows last-write-wins like every other field: an older change of it
/// that syncs late (the author's offline device) loses to a newer one already applied,
/// in `records` and in what row-level security enforces alike.
#[tokio::test]
async fn an_older_visibility_change_synced_late_loses() {
    let app = TestApp::spawn().await;
    app.create_space(FAM, "A", &[("B", "member")]).await;
    push_ok(&app, "A", json!([insert("diary", Some(FAM), json!({}))])).await;
    let set = |visibility: &str, at: &str| {
        json!([{"table": "notes", "id": "diary", "op": "update", "spaceId": FAM,
                "fields": {"visibility": {"value": visibility, "at": at}}}])
    };
    // Made private at 10:05 on the laptop; the phone's change of 10:00 arrives after.
    push_ok(&app, "A", set("private", "2026-05-01T10:05:00Z")).await;
    let late = app
        .push_on(
            &app.gateway.base,
            "A",
            "notes",
            &changes(set("space", "2026-05-01T10:00:00Z")),
        )
        .await;
    assert_eq!(late.status, StatusCode::OK, "{}", late.body);
    app.wait_projected().await;
    assert_eq!(
        app.db
            .strings("SELECT data->>'visibility' FROM records WHERE record_id = 'diary'")
            .await,
        ["private"]
    );
    assert_eq!(
        app.db
            .strings("SELECT visibility FROM record_visibility WHERE record_id = 'diary'")
            .await,
        ["private"]
    );
    assert!(pull_ids(&app, "B", &[]).await.is_empty(), "B never sees it");

    // A newer change wins, and an equal instant goes by log order.
    push_ok(&app, "A", set("space", "2026-05-01T10:05:00Z")).await;
    app.wait_projected().await;
    assert_eq!(pull_ids(&app, "B", &[]).await.len(), 4);
}

/// A membership event the projector parks (here a NUL in its metadata) grants nothing on
/// the gateways either: their views decode as the projector does.
#[tokio::test]
async fn a_membership_event_the_projector_parks_grants_nothing() {
    let app = TestApp::spawn().await;
    app.create_space(FAM, "A", &[]).await;
    push_ok(&app, "A", json!([insert("a-shared", Some(FAM), json!({}))])).await;
    service_adds_b(&app, "family\u{0}app").await;
    app.wait_projected().await;
    assert_eq!(app.db.count("dead_letters").await, 1);
    // C added after it: once the view lets C in, it has taken in the parked event too.
    let added = app
        .internal(
            Method::POST,
            &format!("/internal/spaces/{FAM}/members"),
            Some(json!({"userId": "C", "role": "member"})),
        )
        .await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    eventually(Duration::from_secs(10), || async {
        app.pull_on(&app.gateway.base, "C", "notes", &[("spaceId", FAM)])
            .await
            .status
            == StatusCode::OK
    })
    .await;
    let reply = app
        .pull_on(&app.gateway.base, "B", "notes", &[("spaceId", FAM)])
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert!(pull_ids(&app, "B", &[]).await.is_empty());
}

/// The internal API takes user ids as tokens carry them (an e-mail-shaped one with dots
/// included), and refuses a shared space whose id has the form of a personal space's.
#[tokio::test]
async fn the_internal_api_takes_any_user_id_and_no_personal_space_ids() {
    let app = TestApp::spawn().await;
    let dotted = "d.user@example.org";
    app.create_space(FAM, "A", &[(dotted, "member")]).await;
    let listed = app
        .internal(
            Method::GET,
            &format!("/internal/users/{dotted}/memberships"),
            None,
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert!(listed.body.to_string().contains(FAM), "{}", listed.body);
    let pushed = app
        .push_as(
            &app.gateway.base,
            dotted,
            "laptop",
            "notes",
            &changes(json!([insert("from-d", Some(FAM), json!({}))])),
        )
        .await;
    assert_eq!(pushed.status, StatusCode::OK, "{}", pushed.body);
    assert_eq!(pull_ids(&app, "A", &[]).await, ["from-d"]);

    let personal = schemas::space::personal_space_id("victim");
    let refused = app
        .internal(
            Method::POST,
            "/internal/spaces",
            Some(json!({"spaceId": personal, "type": "family", "name": "Trap", "ownerId": "A"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert_eq!(refused.body["error"], "bad_request");
}

/// The projector commits, with its checkpoint, the position of the last membership
/// event it applied; record changes leave it where it is.
#[tokio::test]
async fn the_checkpoint_carries_the_position_of_the_last_membership_event() {
    let app = TestApp::spawn().await;
    let members_seq = || async {
        app.db
            .strings(&format!(
                "SELECT members_seq::text FROM projector_checkpoints WHERE name = '{}'",
                schemas::projection::DEFAULT_PROJECTOR
            ))
            .await
            .concat()
    };
    app.create_space(FAM, "A", &[("B", "member")]).await;
    app.wait_projected().await;
    let added = app.stream_messages_last_seq().await;
    assert_eq!(members_seq().await, added.to_string());

    push_ok(&app, "A", json!([insert("a-shared", Some(FAM), json!({}))])).await;
    app.wait_projected().await;
    assert!(app.stream_messages_last_seq().await > added);
    assert_eq!(
        members_seq().await,
        added.to_string(),
        "record changes only"
    );

    remove_from_fam(&app, "B").await;
    app.wait_projected().await;
    let removed = app.stream_messages_last_seq().await;
    assert!(removed > added);
    assert_eq!(members_seq().await, removed.to_string());
}

/// A read arriving after the projector applied a removal that this gateway's membership
/// view has not heard of yet (on another gateway than the one that logged it, a matter
/// of milliseconds; longer while the view's consumer is recreated) goes by PostgreSQL's
/// projection: the removal is in force. The race is made to last here by writing what
/// the projector writes when it applies the removal (the membership row goes, the
/// checkpoint's membership position moves past the view's) without logging it, so the
/// view never hears of it.
#[tokio::test]
async fn a_removal_the_membership_view_has_not_heard_of_yet_is_in_force_for_reads() {
    let app = TestApp::spawn().await;
    app.create_space(FAM, "A", &[("B", "member")]).await;
    push_ok(&app, "A", json!([insert("a-shared", Some(FAM), json!({}))])).await;
    // B's personal space exists before (its creation, a membership event, would take the
    // view past the position set below).
    push_ok(&app, "B", json!([insert("b-first", None, json!({}))])).await;
    app.wait_projected().await;
    assert_eq!(pull_ids(&app, "B", &[("spaceId", FAM)]).await, ["a-shared"]);

    app.db
        .execute(&format!(
            "DELETE FROM space_members WHERE space_id = '{FAM}' AND user_id = 'B'"
        ))
        .await;
    app.db
        .execute(&format!(
            "UPDATE projector_checkpoints SET members_seq = last_seq WHERE name = '{}'",
            schemas::projection::DEFAULT_PROJECTOR
        ))
        .await;
    // The view still has B as a member: writes are authorized by it (and checked again
    // in log order by the projector), reads are not.
    assert!(
        gateway_access(&app, "B").await.role(FAM).is_some(),
        "the view has not heard of the removal"
    );
    let pull = app
        .pull_on(&app.gateway.base, "B", "notes", &[("spaceId", FAM)])
        .await;
    assert_eq!(pull.status, StatusCode::FORBIDDEN, "{}", pull.body);
    assert_eq!(
        pull_ids(&app, "B", &[]).await,
        ["b-first"],
        "nothing of the space"
    );
    // A push's answer read from PostgreSQL (a legacy timestamp cursor, which the log
    // tail does not answer) goes by the same rule.
    let batch = json!({
        "changes": [insert("b-second", None, json!({}))],
        "since": "1970-01-01T00:00:00Z",
    });
    let reply = app.push_on(&app.gateway.base, "B", "notes", &batch).await;
    assert!(ids(&reply).is_empty(), "{}", reply.body);
    // A, still a member, reads the space as before.
    assert_eq!(pull_ids(&app, "A", &[("spaceId", FAM)]).await, ["a-shared"]);
}

/// A call of the internal API retried (after a `503`, whose event was logged, or a lost
/// answer) takes effect once: the same creation or addition again is answered `200`
/// and logs nothing; a creation without a `spaceId` names itself by its
/// `Idempotency-Key`. The same id or member with other details is still a `409`.
#[tokio::test]
async fn internal_api_calls_retried_take_effect_once() {
    let app = TestApp::spawn().await;
    let create = |key: Option<&'static str>, body: Value| {
        let mut req = app
            .http
            .post(format!("{}/internal/spaces", app.gateway.base))
            .bearer_auth(sync_tests::SERVICE_KEY)
            .json(&body);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        sync_tests::send(req)
    };
    let team = json!({"spaceId": "team-1", "type": "team", "name": "Team", "ownerId": "A"});
    let first = create(None, team.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let logged = app.all_stream_messages().await;
    let again = create(None, team.clone()).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["spaceId"], "team-1");
    assert_eq!(
        app.all_stream_messages().await,
        logged,
        "nothing logged again"
    );
    let renamed = json!({"spaceId": "team-1", "type": "team", "name": "Other", "ownerId": "A"});
    assert_eq!(create(None, renamed).await.status, StatusCode::CONFLICT);
    let other_owner = json!({"spaceId": "team-1", "type": "team", "name": "Team", "ownerId": "B"});
    assert_eq!(create(None, other_owner).await.status, StatusCode::CONFLICT);

    // Two creations of one id racing with different owners: one is made, whole.
    let by =
        |owner: &str| json!({"spaceId": "race-1", "type": "team", "name": "R", "ownerId": owner});
    let (a, b) = tokio::join!(create(None, by("A")), create(None, by("B")));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::CREATED, StatusCode::CONFLICT],
        "{a:?} {b:?}"
    );
    let space = app
        .internal(Method::GET, "/internal/spaces/race-1", None)
        .await;
    let winner = if a.status == StatusCode::CREATED {
        "A"
    } else {
        "B"
    };
    assert_eq!(
        space.body["members"],
        json!([{"userId": winner, "role": "owner"}]),
        "{}",
        space.body
    );

    // Without a spaceId: one space per idempotency key, however often it is sent.
    let club = json!({"type": "club", "name": "Club", "ownerId": "A"});
    let first = create(Some("create-club-7"), club.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let logged = app.all_stream_messages().await;
    let again = create(Some("create-club-7"), club.clone()).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["spaceId"], first.body["spaceId"]);
    assert_eq!(app.all_stream_messages().await, logged);
    let id = first.body["spaceId"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 8);
    let another = create(Some("create-club-8"), club.clone()).await;
    assert_eq!(another.status, StatusCode::CREATED, "{}", another.body);
    assert_ne!(another.body["spaceId"], first.body["spaceId"]);
    let unkeyed = create(None, club.clone()).await;
    assert_eq!(unkeyed.status, StatusCode::CREATED, "{}", unkeyed.body);
    for bad in ["", "naïve", &"k".repeat(257)] {
        let req = app
            .http
            .post(format!("{}/internal/spaces", app.gateway.base))
            .bearer_auth(sync_tests::SERVICE_KEY)
            .header("idempotency-key", bad)
            .json(&club);
        let reply = sync_tests::send(req).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad:?}: {}",
            reply.body
        );
        assert!(
            reply.body["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{}",
            reply.body
        );
    }
    app.wait_projected().await;
    let clubs = app
        .db
        .strings("SELECT space_id FROM spaces WHERE type = 'club' ORDER BY 1")
        .await;
    assert_eq!(clubs.len(), 3, "{clubs:?}");

    // The same member added again: done; with another role: 409.
    let add = |role: &'static str| {
        app.internal(
            Method::POST,
            "/internal/spaces/team-1/members",
            Some(json!({"userId": "C", "role": role})),
        )
    };
    assert_eq!(add("viewer").await.status, StatusCode::OK);
    let logged = app.all_stream_messages().await;
    let again = add("viewer").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["spaceId"], "team-1");
    assert_eq!(app.all_stream_messages().await, logged);
    assert_eq!(add("member").await.status, StatusCode::CONFLICT);
    assert_eq!(
        app.pull_on(&app.gateway.base, "C", "notes", &[("spaceId", "team-1")])
            .await
            .status,
        StatusCode::OK
    );
}

/// A gateway upgraded before the projector (its database without migration 9's column)
/// still answers reads, taking memberships from PostgreSQL.
#[tokio::test]
async fn reads_work_on_a_database_without_the_membership_position() {
    let mut app = TestApp::spawn().await;
    app.create_space(FAM, "A", &[("B", "member")]).await;
    push_ok(&app, "A", json!([insert("a-shared", Some(FAM), json!({}))])).await;
    app.wait_projected().await;
    app.stop_projector().await;
    app.db
        .execute("ALTER TABLE projector_checkpoints DROP COLUMN members_seq")
        .await;
    assert_eq!(pull_ids(&app, "B", &[("spaceId", FAM)]).await, ["a-shared"]);
    app.db
        .execute(&format!(
            "DELETE FROM space_members WHERE space_id = '{FAM}' AND user_id = 'B'"
        ))
        .await;
    let pull = app
        .pull_on(&app.gateway.base, "B", "notes", &[("spaceId", FAM)])
        .await;
    assert_eq!(pull.status, StatusCode::FORBIDDEN, "{}", pull.body);
}
