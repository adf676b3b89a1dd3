//! A retried push creates no new events, within JetStream's duplicate window (by
//! message id) and beyond it (by the deterministic event id in the projection).

use reqwest::StatusCode;
use serde_json::{Value, json};
use sync_tests::{RunningGateway, RunningProjector, TestApp, changes, projector_config};

#[tokio::test]
async fn retried_push_does_not_duplicate_events() {
    let app = TestApp::spawn().await;
    let batch = changes(json!([
        {"table": "tasks", "id": "t1", "op": "insert", "data": {"title": "a"}},
        {"table": "tasks", "id": "t1", "op": "update", "fields": {"title": {"value": "b", "at": "2026-05-01T10:00:00Z"}}},
        {"table": "tasks", "id": "t2", "op": "delete"},
    ]));
    for _ in 0..3 {
        let reply = app.push("alice", "laptop", "todo", &batch).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    assert_eq!(app.stream_messages().await, 3);
    app.wait_projected().await;
    assert_eq!(app.db.count("change_log").await, 3);

    // The same change from another client is another event.
    let reply = app.push("alice", "phone", "todo", &batch).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(app.stream_messages().await, 6);
}

/// The log's first record change published again under a fresh message id: a resend as
/// it looks once JetStream's duplicate window has forgotten the original.
async fn republish_first_change(app: &TestApp) {
    let js = app.nats.jetstream().await;
    let original = app.change_message(1).await;
    js.publish(original.subject.clone(), original.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_resend_after_the_duplicate_window_is_applied_once() {
    let app = TestApp::spawn().await;
    let batch =
        changes(json!([{"table": "tasks", "id": "t1", "op": "insert", "data": {"title": "a"}}]));
    assert_eq!(
        app.push("alice", "laptop", "todo", &batch).await.status,
        StatusCode::OK
    );
    app.wait_projected().await;

    republish_first_change(&app).await;
    assert_eq!(app.stream_messages().await, 2);
    app.wait_projected().await;

    assert_eq!(app.db.count("change_log").await, 1);
    assert_eq!(app.db.count("dead_letters").await, 0);
    let (seen, _) = app.pull_all("alice", "phone", "todo", "tasks", "").await;
    assert_eq!(seen.len(), 1);
}

/// A late resend of a change that set a visibility sets nothing: the change log keeps
/// the original only, and `record_visibility` (what row-level security reads) must agree
/// with it, not flip back to the resent value.
#[tokio::test]
async fn a_late_resend_of_a_visibility_change_sets_nothing() {
    let app = TestApp::spawn().await;
    let made_private = changes(json!([{"table": "notes", "id": "n1", "op": "insert",
        "data": {"title": "draft", "visibility": "private", "updatedAt": "2026-05-01T10:00:00Z"}}]));
    let shared = changes(json!([{"table": "notes", "id": "n1", "op": "update",
        "fields": {"visibility": {"value": "space", "at": "2026-05-01T10:05:00Z"}}}]));
    for push in [&made_private, &shared] {
        let reply = app.push("alice", "laptop", "todo", push).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    app.wait_projected().await;
    let visibility = "SELECT visibility FROM record_visibility WHERE record_id = 'n1'";
    assert_eq!(app.db.strings(visibility).await, ["space"]);

    republish_first_change(&app).await;
    app.wait_projected().await;
    assert_eq!(app.db.count("change_log").await, 2);
    assert_eq!(app.db.strings(visibility).await, ["space"]);
}

#[tokio::test]
async fn a_resend_with_new_changes_added_lands_only_the_new_ones() {
    let app = TestApp::spawn().await;
    let a = json!({"table": "tasks", "id": "a", "op": "insert", "data": {}});
    let b = json!({"table": "tasks", "id": "b", "op": "insert", "data": {}});
    let c = json!({"table": "tasks", "id": "c", "op": "insert", "data": {}});
    assert_eq!(
        app.push("alice", "laptop", "todo", &changes(json!([a, b])))
            .await
            .status,
        StatusCode::OK
    );
    // The client never saw the answer and resends its queue, which has grown meanwhile.
    let reply = app
        .push("alice", "laptop", "todo", &changes(json!([a, b, c])))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(app.stream_messages().await, 3);
    let (seen, _) = app.pull_all("alice", "phone", "todo", "tasks", "").await;
    let ids: Vec<_> = seen.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

/// The new changes of such a resend go in as one atomic batch, not one by one: the
/// events the gateway's tail has seen in the log are left out of it.
#[tokio::test]
async fn the_new_changes_of_a_grown_resend_are_published_as_one_batch() {
    let app = TestApp::spawn().await;
    let change = |id: &str| json!({"table": "tasks", "id": id, "op": "insert", "data": {}});
    let first = changes(json!([change("a"), change("b")]));
    let reply = app.push("alice", "laptop", "todo", &first).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    let grown = changes(json!([
        change("a"),
        change("b"),
        change("c"),
        change("d"),
        change("e")
    ]));
    let reply = app.push("alice", "laptop", "todo", &grown).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(app.stream_messages().await, 5);
    let batches = app.log_batches().await;
    let sizes: Vec<usize> = batches.iter().map(|b| b.1).collect();
    // Alice's personal space with a and b; then c, d and e together.
    assert_eq!(sizes, [4, 3], "{batches:?}");
    assert!(!batches[1].0.is_empty(), "c, d and e as one atomic batch");
    let (seen, _) = app.pull_all("alice", "phone", "todo", "tasks", "").await;
    let ids: Vec<_> = seen.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
}

/// A change sent twice in one push (a client's queue holding the same delete twice) is
/// one event, and the push stays one atomic batch: nats-server refuses an atomic batch
/// that repeats a message id, as it refuses a resend.
#[tokio::test]
async fn a_change_repeated_within_a_push_lands_once_in_one_atomic_batch() {
    let app = TestApp::spawn().await;
    let gone = json!({"table": "tasks", "id": "old", "op": "delete"});
    let push = changes(json!([insert("a"), gone, insert("b"), gone]));
    let reply = app.push("alice", "laptop", "todo", &push).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let batches = app.log_batches().await;
    // Alice's personal space, a, b and the delete (at its last place): one batch.
    assert_eq!(
        batches.iter().map(|b| b.1).collect::<Vec<_>>(),
        [5],
        "{batches:?}"
    );
    assert!(!batches[0].0.is_empty(), "one atomic batch");
    app.wait_projected().await;
    assert_eq!(app.db.count("change_log").await, 3);
    assert_eq!(app.db.count("dead_letters").await, 0);
}

fn insert(id: &str) -> Value {
    json!({"table": "tasks", "id": id, "op": "insert", "data": {}})
}

/// The stack with the projector stopped after Alice pushed a and b and Bob pushed x
/// (through the app's gateway, whose tail answers them), and a second gateway whose
/// tail keeps the last `tail_events` changes: of Alice's, it holds at most b. Returns
/// it and the cursor of Bob's x. (A resend's new changes may land before a push that
/// follows it is answered, pushing x out of a window of two: from x's own cursor the
/// window still answers then; from an earlier one it would leave the answer to the
/// stopped projector. That made a test here time out under load.)
async fn projector_stopped_after_a_push(tail_events: usize) -> (TestApp, RunningGateway, Value) {
    let mut app = TestApp::spawn().await;
    let g = app
        .another_gateway_with(|c| {
            c.tail_events = tail_events;
            c.publish_timeout_ms = 20_000;
        })
        .await;
    app.wait_tail_live(&app.gateway.base).await;
    app.wait_tail_live(&g.base).await;
    app.stop_projector().await;
    let first = changes(json!([insert("a"), insert("b")]));
    let reply = app.push("alice", "laptop", "todo", &first).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let other = changes(json!([insert("x")]));
    let reply = app.push("bob", "phone", "todo", &other).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // Bob's x is the log's end.
    let cursor = json!(schemas::Cursor(app.stream_messages_last_seq().await).encode());
    (app, g, cursor)
}

/// The same, when the resend's logged part has left the gateway's tail and the
/// projector has not applied it yet: the gateway waits for the projector (briefly)
/// before looking in the change log, so c, d and e still land as one atomic batch.
/// (Without the wait they go one by one: the projector, restarted beside the resend,
/// has not caught up when the change log is read.)
#[tokio::test]
async fn a_grown_resend_lands_as_one_batch_while_the_projector_catches_up() {
    // `g`'s tail keeps only Bob's x.
    let (mut app, g, _) = projector_stopped_after_a_push(1).await;
    let grown = changes(json!([
        insert("a"),
        insert("b"),
        insert("c"),
        insert("d"),
        insert("e")
    ]));
    let resend = app.push_as(&g.base, "alice", "laptop", "todo", &grown);
    let restart = RunningProjector::start(projector_config(
        &app.nats,
        &app.db,
        schemas::projection::DEFAULT_PROJECTOR,
    ));
    let (reply, projector) = tokio::join!(resend, restart);
    app.projector = Some(projector);
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(app.stream_messages().await, 6);
    let batches = app.log_batches().await;
    let sizes: Vec<usize> = batches.iter().map(|b| b.1).collect();
    // Alice's personal space with a and b; Bob's with x; then c, d and e together.
    assert_eq!(sizes, [4, 3, 3], "{batches:?}");
    assert!(!batches[2].0.is_empty(), "c, d and e as one atomic batch");
    let (seen, _) = app.pull_all("alice", "phone", "todo", "tasks", "").await;
    let ids: Vec<_> = seen.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
}

/// A resend that has to wait for the projector (part of what it repeats has left the
/// gateway's tail, and the projector is down) does not hold up the pushes queued behind
/// it: they are group-committed and answered while it waits.
#[tokio::test]
async fn a_resend_waiting_for_the_projector_does_not_hold_up_the_pushes_behind_it() {
    // `g`'s tail keeps b and Bob's x: a is only in the log.
    let (app, g, cursor) = projector_stopped_after_a_push(2).await;

    let grown = changes(json!([insert("a"), insert("b"), insert("c")]));
    let resend = app.push_as(&g.base, "alice", "laptop", "todo", &grown);
    tokio::pin!(resend);
    // Until JetStream has refused it and the gateway reads the log's end (a JetStream
    // API request; nothing else makes one meanwhile but these queries of the count).
    let js = app.nats.jetstream().await;
    let api_requests = || async {
        js.query_account()
            .await
            .expect("account info")
            .requests
            .total
    };
    let first = api_requests().await;
    let refused = async {
        for queries in 1.. {
            if api_requests().await > first + queries {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::select! {
        biased;
        _ = &mut resend => panic!("the resend was answered before the projector ran"),
        waited = tokio::time::timeout(std::time::Duration::from_secs(5), refused) => {
            waited.expect("the resend reaches the gateway's lookup");
        }
    }
    // Carol's first push (her personal space and y: a batch for the combiner), with a
    // cursor `g`'s tail answers from while the projector is down.
    let fresh = json!({"since": cursor, "changes": [insert("y")]});
    let carol = app.push_as(&g.base, "carol", "tablet", "todo", &fresh);
    let reply = tokio::select! {
        biased;
        _ = &mut resend => panic!("the resend was answered before the projector ran"),
        reply = tokio::time::timeout(std::time::Duration::from_secs(5), carol) => {
            reply.expect("Carol's push is answered while the resend waits")
        }
    };
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    // Started again apart from `app`, which the resend borrows meanwhile.
    let _projector = RunningProjector::start(projector_config(
        &app.nats,
        &app.db,
        schemas::projection::DEFAULT_PROJECTOR,
    ))
    .await;
    let reply = resend.await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let (seen, _) = app.pull_all("alice", "phone", "todo", "tasks", "").await;
    let ids: Vec<_> = seen.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

/// Concurrent pushes are published together (group commit). Each still lands whole and
/// contiguous in the log, exactly once, also when resends are among them: a combined
/// batch holding an event the log already has is published push by push instead.
#[tokio::test]
async fn concurrent_pushes_and_resends_each_land_once_and_together() {
    let app = TestApp::spawn().await;
    let base = app.gateway.base.clone();
    let batch = |user: usize, round: usize| {
        let changes: Vec<_> = (0..10)
            .map(|k| json!({"table": "tasks", "id": format!("u{user}-r{round}-{k}"), "op": "insert", "data": {}}))
            .collect();
        json!({ "changes": changes })
    };
    let users: Vec<String> = (0..8).map(|u| format!("user{u}")).collect();
    for (u, user) in users.iter().enumerate() {
        let reply = app
            .push_as(&base, user, "first", "todo", &batch(u, 0))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    for round in 1..=3 {
        let bodies: Vec<_> = (0..users.len())
            .map(|u| (batch(u, 0), batch(u, round)))
            .collect();
        let requests = users
            .iter()
            .zip(&bodies)
            .flat_map(|(user, (resend, fresh))| {
                [
                    futures::future::Either::Left(
                        app.push_as(&base, user, "first", "todo", resend),
                    ),
                    futures::future::Either::Right(
                        app.push_as(&base, user, "second", "todo", fresh),
                    ),
                ]
            });
        for reply in futures::future::join_all(requests).await {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        }
    }
    assert_eq!(app.stream_messages().await, 8 * 10 * 4);
    assert_pushes_contiguous(&app, 8 * 4, 10).await;
}

/// More concurrent pushes than one atomic batch holds (12 × 150 changes): the combiner
/// splits them between batches, never a push, and every change lands once.
#[tokio::test]
async fn pushes_overflowing_one_batch_land_whole_and_once() {
    let app = TestApp::spawn().await;
    let base = app.gateway.base.clone();
    let users: Vec<String> = (0..12).map(|u| format!("user{u}")).collect();
    let bodies: Vec<_> = (0..users.len())
        .map(|u| {
            let changes: Vec<_> = (0..150)
                .map(|k| json!({"table": "tasks", "id": format!("u{u}-r0-{k}"), "op": "insert", "data": {}}))
                .collect();
            json!({ "changes": changes })
        })
        .collect();
    let requests = users
        .iter()
        .zip(&bodies)
        .map(|(user, body)| app.push_as(&base, user, "c", "todo", body));
    for reply in futures::future::join_all(requests).await {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    assert_eq!(app.stream_messages().await, 12 * 150);
    assert_pushes_contiguous(&app, 12, 150).await;
}

/// Every push's record changes (ids `<push>-<k>`) sit next to each other in the log.
async fn assert_pushes_contiguous(app: &TestApp, pushes: usize, changes: usize) {
    let mut seen: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for msg in app.log_messages().await {
        let env: schemas::Envelope = serde_json::from_slice(&msg.payload).unwrap();
        if let schemas::Event::RecordChanged(rc) = env.event {
            let push = rc.record_id.rsplit_once('-').unwrap().0.to_owned();
            seen.entry(push).or_default().push(msg.sequence);
        }
    }
    assert_eq!(seen.len(), pushes);
    for (push, seqs) in seen {
        assert_eq!(seqs.len(), changes, "{push}");
        assert_eq!(
            seqs[changes - 1] - seqs[0],
            changes as u64 - 1,
            "{push} is not contiguous: {seqs:?}"
        );
    }
}
