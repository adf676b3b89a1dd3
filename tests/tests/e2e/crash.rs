//! The projector killed with SIGKILL in the middle of a stream of writes, and restarted:
//! nothing lost, nothing applied twice.

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::json;
use sync_tests::{RunningProjector, TestApp, TestDb, changes, eventually, projector_config};

fn spawn_projector(app: &TestApp) -> Child {
    Command::new(env!("CARGO_BIN_EXE_test-projector"))
        .env("NATS_URL", app.nats.url())
        .env("DATABASE_URL", &app.db.url)
        .env("PROJECTOR_NAME", schemas::projection::DEFAULT_PROJECTOR)
        .env("PROJECTOR_BATCH", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("projector process starts")
}

#[tokio::test]
async fn projector_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut app = TestApp::spawn().await;
    // Run the projector as its own process so it can really be killed.
    app.projector
        .take()
        .expect("in-process projector")
        .stop()
        .await;
    let mut child = spawn_projector(&app);
    let app = Arc::new(app);

    let writer = {
        let app = app.clone();
        tokio::spawn(async move {
            let t0 = chrono::Utc::now();
            for b in 0..40 {
                let batch: Vec<_> = (0..25)
                    .map(|i| {
                        let n = b * 25 + i;
                        let at = (t0 + chrono::TimeDelta::milliseconds(n)).to_rfc3339();
                        if n % 3 == 0 {
                            json!({"table": "items", "id": format!("r{}", n % 40), "op": "insert", "data": {"n": n}})
                        } else {
                            json!({"table": "items", "id": format!("r{}", n % 40), "op": "update", "fields": {"n": {"value": n, "at": at}}})
                        }
                    })
                    .collect();
                // The gateway waits for the projector on each push; with the projector
                // down that may time out (503). Publishing still happened, so resend:
                // the resend is deduplicated.
                loop {
                    let reply = app
                        .push("alice", "writer", "todo", &changes(json!(batch)))
                        .await;
                    if reply.status == StatusCode::OK {
                        break;
                    }
                    assert_eq!(
                        reply.status,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "{}",
                        reply.body
                    );
                }
            }
        })
    };

    // Kill it once it has applied part of the stream.
    let db = &app.db;
    eventually(Duration::from_secs(30), || async {
        db.checkpoint("projector").await > 200
    })
    .await;
    child.kill().expect("SIGKILL the projector");
    child.wait().expect("reap");
    let at_kill = db.checkpoint("projector").await;

    let mut child = spawn_projector(&app);
    writer.await.expect("writer finishes");
    let last = app.stream_messages_last_seq().await;
    assert_eq!(
        app.stream_messages().await,
        1000,
        "every change is in the log once"
    );
    eventually(Duration::from_secs(30), || async {
        db.projected("projector").await >= last
    })
    .await;
    child.kill().ok();
    child.wait().ok();
    assert!(at_kill < last, "the kill happened mid-stream");

    // A clean run over the same log into an empty database.
    let clean = TestDb::create().await;
    let projector = RunningProjector::start(projector_config(&app.nats, &clean, "projector")).await;
    eventually(Duration::from_secs(30), || async {
        clean.projected("projector").await >= last
    })
    .await;
    projector.stop().await;

    assert_eq!(app.db.count("change_log").await, 1000);
    let records = "SELECT * FROM records ORDER BY space_id, app_id, table_name, record_id";
    let log = "SELECT seq, event_id, app_id, space_id, table_name, record_id, op, at, data, fields FROM change_log ORDER BY seq";
    assert_eq!(app.db.dump(log).await, clean.dump(log).await);
    assert_eq!(app.db.dump(records).await, clean.dump(records).await);
}

fn incoming(msg: &async_nats::jetstream::message::StreamMessage) -> projector::apply::Incoming {
    projector::apply::Incoming {
        seq: msg.sequence,
        subject: msg.subject.to_string(),
        payload: msg.payload.clone(),
        logged_at: msg.time,
    }
}

/// A delivery that does not continue the log right after the checkpoint (messages of
/// the consumer taken by another reader, as when two projectors overlap for a moment
/// while a leader steps down) is applied not at all: the checkpoint never steps over a
/// position the log holds, so nothing is skipped for good.
#[tokio::test]
async fn a_batch_that_skips_log_positions_is_not_applied() {
    let mut app = TestApp::spawn().await;
    // Push answers come from the tail while the projector is stopped.
    app.wait_tail_live(&app.gateway.base).await;
    app.stop_projector().await;
    for id in ["a", "b", "c"] {
        let one = changes(json!([{"table": "items", "id": id, "op": "insert", "data": {}}]));
        let reply = app.push("alice", "writer", "todo", &one).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let log: Vec<_> = app.log_messages().await.iter().map(incoming).collect();
    let name = schemas::projection::DEFAULT_PROJECTOR;
    let applied = projector::apply::apply_batch(&app.db.pool, name, &log[..2])
        .await
        .expect("the first two");
    assert_eq!(applied.checkpoint, 2);
    let skipping = projector::apply::apply_batch(&app.db.pool, name, &log[3..]).await;
    assert!(
        matches!(
            skipping,
            Err(projector::apply::ApplyError::Gap {
                expected: 3,
                found: 4
            })
        ),
        "{skipping:?}"
    );
    assert_eq!(app.db.checkpoint(name).await, 2);
    assert_eq!(app.db.count("change_log").await, 0);

    // Positions delivered twice (a redelivery behind a slow batch) are taken once.
    let repeated = [
        log[2].clone(),
        log[2].clone(),
        log[3].clone(),
        log[2].clone(),
    ];
    let applied = projector::apply::apply_batch(&app.db.pool, name, &repeated)
        .await
        .expect("a and b, once each");
    assert_eq!(applied.checkpoint, 4);
    assert_eq!(app.db.count("change_log").await, 2);

    // Read again from the checkpoint, everything goes in once.
    app.restart_projector().await;
    app.wait_projected().await;
    assert_eq!(app.db.count("change_log").await, 3);
}

/// Positions an operator removed from the log are stepped over, not waited for.
#[tokio::test]
async fn positions_removed_from_the_log_are_stepped_over() {
    let mut app = TestApp::spawn().await;
    // Push answers come from the tail while the projector is stopped.
    app.wait_tail_live(&app.gateway.base).await;
    app.stop_projector().await;
    for id in ["a", "b", "c", "d"] {
        let one = changes(json!([{"table": "items", "id": id, "op": "insert", "data": {}}]));
        let reply = app.push("alice", "writer", "todo", &one).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    // The personal space's two events, then a, b, c, d: b and c removed.
    let js = app.nats.jetstream().await;
    let stream = js
        .get_stream(schemas::stream::DEFAULT_STREAM)
        .await
        .expect("stream");
    for seq in [4, 5] {
        assert!(stream.delete_message(seq).await.expect("delete"));
    }
    app.restart_projector().await;
    app.wait_projected().await;
    let (seen, _) = app.pull_all("alice", "reader", "todo", "items", "").await;
    let ids: Vec<&str> = seen.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "d"]);
}
