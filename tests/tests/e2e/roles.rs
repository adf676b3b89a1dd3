//! NATS users and permissions (`nats/roles.conf`): the backend works with each part
//! connected as its own user, and each user can do only what its part does. Above all,
//! nobody but the gateway and trusted services publishes into the log (so nothing
//! skips the gateway's authorization), and nobody but an operator deletes or rewrites
//! it.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::{StreamExt as _, future::join_all};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sync_tests::{
    TestApp, TestDb, TestNats, changes, eventually, ids, projector_config, role_password,
};

const STREAM: &str = schemas::stream::DEFAULT_STREAM;

/// JetStream as `user`, giving up on an answer after a second: a refused request gets
/// none (the server drops it and tells the connection).
async fn jetstream_as(nats: &TestNats, user: &str) -> jetstream::Context {
    let client =
        async_nats::ConnectOptions::with_user_and_password(user.to_owned(), role_password(user))
            .request_timeout(Some(Duration::from_secs(1)))
            .connect(nats.url())
            .await
            .expect("connects");
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client)
}

fn member_added(space: &str, user: &str) -> bytes::Bytes {
    serde_json::to_vec(&json!({
        "eventId": uuid::Uuid::new_v4(),
        "schemaVersion": 1,
        "occurredAt": "2026-11-23T10:00:00Z",
        "type": "MemberAdded",
        "payload": {"spaceId": space, "userId": user, "role": "member"},
        "metadata": {"userId": "service:family-app", "clientId": "family-app", "receivedAt": "2026-11-23T10:00:00Z"},
    }))
    .expect("JSON")
    .into()
}

/// Whether `user` gets an acknowledgement for publishing `payload` on `subject`.
async fn may_publish(nats: &TestNats, user: &str, subject: &str, payload: bytes::Bytes) -> bool {
    let js = jetstream_as(nats, user).await;
    match js.publish(subject.to_owned(), payload).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn each_part_does_its_work_as_its_own_user_and_nothing_more() {
    let mut app = TestApp::spawn_on(TestNats::start_with_roles().await).await;

    // The gateway (changes, membership events through the internal API, its tail and
    // membership view) and the projector (its durable consumer, acks) at work.
    app.create_space("fam", "alice", &[]).await;
    let batch = changes(json!([
        {"table": "notes", "id": "mine", "op": "insert", "data": {"t": 1}},
        {"table": "notes", "id": "shared", "op": "insert", "spaceId": "fam", "data": {"t": 2}}
    ]));
    let pushed = app.push("alice", "phone", "notes", &batch).await;
    assert_eq!(pushed.status, StatusCode::OK, "{}", pushed.body);
    // A resend: the gateway reads back what of it is logged.
    let before = app.nats.stream_state(STREAM).await.messages;
    let resent = app.push("alice", "phone", "notes", &batch).await;
    assert_eq!(resent.status, StatusCode::OK, "{}", resent.body);
    assert_eq!(app.nats.stream_state(STREAM).await.messages, before);
    app.stop_projector().await;
    app.restart_projector().await;
    assert_eq!(
        ids(&app.pull("alice", "laptop", "notes", "notes", "").await),
        ["mine", "shared"]
    );
    // A rebuild, as the projector's user, through a consumer of its own.
    app.wait_projected().await;
    let replica = TestDb::create().await;
    let name = schemas::projection::DEFAULT_PROJECTOR;
    let rebuilt = projector::replay::rebuild(projector_config(&app.nats, &replica, name), None)
        .await
        .expect("a rebuild as the projector's user");
    let live = projector::replay::checksum(&app.db.pool, name)
        .await
        .expect("checksum");
    assert_eq!(rebuilt, live);

    // A trusted service adds bob to the space by publishing straight to the log.
    let members = schemas::subject::membership_subject("fam");
    assert!(may_publish(&app.nats, "service", &members, member_added("fam", "bob")).await);
    eventually(Duration::from_secs(10), || async {
        ids(&app.pull("bob", "tablet", "notes", "notes", "").await) == ["shared"]
    })
    .await;
    app.wait_projected().await;
    let logged = app.nats.stream_state(STREAM).await.messages;

    // Nobody else publishes into the log: not a service as a record change, not
    // analytics, not the projector, not an anonymous connection. (Refusals are
    // awaited together: each is a second without an answer.)
    let change = app.change_message(1).await.payload;
    let changes_subject = schemas::subject::change_subject("fam", "notes", "notes");
    let mallory = member_added("fam", "mallory");
    let attempts = [
        ("service", &changes_subject, &change),
        ("analytics", &changes_subject, &change),
        ("analytics", &members, &mallory),
        ("projector", &changes_subject, &change),
        ("projector", &members, &mallory),
    ];
    let published =
        join_all(attempts.map(|(user, subject, payload)| {
            may_publish(&app.nats, user, subject, payload.clone())
        }))
        .await;
    for ((user, subject, _), published) in attempts.iter().zip(published) {
        assert!(!published, "{user} published to {subject}");
    }
    assert!(app.nats.connect_as(None).await.is_err(), "anonymous");
    let wrong = async_nats::ConnectOptions::with_user_and_password(
        "gateway".to_owned(),
        "guessed".to_owned(),
    )
    .connect(app.nats.url())
    .await;
    assert!(wrong.is_err(), "a wrong password");

    // Analytics reads the whole log through a consumer of its own…
    let js = jetstream_as(&app.nats, "analytics").await;
    let stream = js
        .get_stream(STREAM)
        .await
        .expect("analytics reads stream info");
    let mut messages = stream
        .create_consumer(pull::OrderedConfig {
            name: Some("analytics-report".to_owned()),
            ..Default::default()
        })
        .await
        .expect("analytics creates its consumer")
        .messages()
        .await
        .expect("analytics reads");
    for seq in 1..=logged {
        let message = messages.next().await.expect("a message").expect("readable");
        let info = message.info().expect("a JetStream message");
        assert_eq!(info.stream_sequence, seq);
    }
    // …but cannot take the projector's messages; nobody but the projector (and admin)
    // deletes its consumer.
    let taken = stream.get_consumer::<pull::Config>("projector").await;
    assert!(taken.is_err(), "analytics took the projector's consumer");
    let app = &app;
    join_all(["gateway", "service", "analytics"].map(|user| async move {
        let js = jetstream_as(&app.nats, user).await;
        let deleted = match js.get_stream_no_info(STREAM).await {
            Ok(stream) => stream.delete_consumer("projector").await.is_ok(),
            Err(_) => false,
        };
        assert!(!deleted, "{user} deleted the projector's consumer");
    }))
    .await;

    // Only an operator deletes or rewrites the log.
    join_all(
        ["gateway", "projector", "service", "analytics"].map(|user| async move {
            let js = jetstream_as(&app.nats, user).await;
            let client = js.client();
            let (deleted, purged, message_deleted) = tokio::join!(
                js.delete_stream(STREAM),
                client.request(format!("$JS.API.STREAM.PURGE.{STREAM}"), "".into()),
                client.request(
                    format!("$JS.API.STREAM.MSG.DELETE.{STREAM}"),
                    r#"{"seq":1}"#.into(),
                ),
            );
            assert!(deleted.is_err(), "{user} deleted the log");
            assert!(purged.is_err(), "{user} purged the log");
            assert!(message_deleted.is_err(), "{user} deleted a message");
        }),
    )
    .await;

    // Nothing of it changed the log or the projection; the backend still works.
    let state = app.nats.stream_state(STREAM).await;
    assert_eq!((state.messages, state.first_sequence), (logged, 1));
    let projector = jetstream_as(&app.nats, "admin")
        .await
        .get_stream(STREAM)
        .await
        .expect("stream")
        .consumer_info("projector")
        .await
        .expect("the projector's consumer is there");
    assert_eq!(projector.ack_floor.stream_sequence, logged);
    let removed = app
        .internal(Method::DELETE, "/internal/spaces/fam/members/bob", None)
        .await;
    assert!(removed.status.is_success(), "{}", removed.body);
    assert!(ids(&app.pull("bob", "tablet", "notes", "notes", "").await).is_empty());
}
