//! One projector leads per name while others wait as standbys. When the session holding
//! the leader's lock ends (a dropped connection, a PostgreSQL restart), the leader steps
//! down and exactly one projector leads again; when every PostgreSQL session of the
//! system is dropped mid-stream, everything recovers. Nothing is lost or applied twice.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sync_tests::{RunningProjector, TestApp, changes, eventually, projector_config};

use crate::metrics::sample;

const NAME: &str = schemas::projection::DEFAULT_PROJECTOR;

async fn push_notes(app: &TestApp, prefix: &str, n: usize) {
    let notes: Vec<_> = (0..n)
        .map(|i| json!({"table": "notes", "id": format!("{prefix}{i}"), "op": "insert", "data": {"i": i}}))
        .collect();
    let reply = app
        .push("ann", "phone", "notes", &changes(json!(notes)))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

/// `projector_leader` of each projector's metrics, in order.
async fn leaders(app: &TestApp, urls: &[String]) -> Vec<f64> {
    let mut out = Vec::new();
    for url in urls {
        let text = app
            .http
            .get(url)
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
        out.push(sample(&text, "projector_leader", &[]).expect("projector_leader"));
    }
    out
}

/// Sessions of this database holding an advisory lock (the leader's).
async fn lock_holders(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("pg_locks")
}

#[tokio::test]
async fn a_leader_whose_lock_session_ends_steps_down_and_one_leads() {
    let app = TestApp::spawn().await;
    let standby = RunningProjector::start(projector_config(&app.nats, &app.db, NAME)).await;
    let urls = [
        app.projector.as_ref().and_then(|p| p.metrics.clone()),
        standby.metrics.clone(),
    ]
    .map(|url| url.expect("metrics"));
    push_notes(&app, "a", 20).await;
    app.wait_projected().await;
    // Both started at once: either may have taken the lock, the other waits.
    let one_leads = || async {
        leaders(&app, &urls).await.iter().sum::<f64>() == 1.0 && lock_holders(&app).await == 1
    };
    eventually(Duration::from_secs(20), one_leads).await;

    // The session holding the leader's lock ends.
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' \
         AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("terminate");
    assert_eq!(ended, 1);

    // Exactly one leads again (whichever took the lock), and projects.
    eventually(Duration::from_secs(20), one_leads).await;
    push_notes(&app, "b", 20).await;
    app.wait_projected().await;
    assert_eq!(app.db.count("change_log").await, 40);
    assert_eq!(app.db.count("records").await, 40);
    // The old leader notices within a second that its lock is gone; until then both
    // may count themselves leaders (each batch applies only what continues the log
    // after the checkpoint, so the overlap skips nothing: `crash.rs`).
    eventually(Duration::from_secs(20), one_leads).await;
}

#[tokio::test]
async fn every_postgres_session_dropped_mid_stream_loses_and_doubles_nothing() {
    let app = TestApp::spawn().await;
    for round in 0..3 {
        // The projector leads (again): its lock is held by a live session.
        eventually(Duration::from_secs(20), || async {
            lock_holders(&app).await == 1
        })
        .await;
        push_notes(&app, &format!("r{round}-"), 10).await;
        // Every other session of this database: the projector's (its lock's too), the
        // gateway's pool and its listener.
        let ended: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&app.db.pool)
        .await
        .expect("terminate");
        assert!(ended >= 1, "{ended}");
    }
    push_notes(&app, "after-", 10).await;
    app.wait_projected().await;
    assert_eq!(app.db.count("change_log").await, 40);
    assert_eq!(app.db.count("records").await, 40);

    // Reads work again, read-your-writes included, and the projector leads again.
    let pulled = app.pull("ann", "laptop", "notes", "notes", "").await;
    assert_eq!(pulled.status, StatusCode::OK, "{}", pulled.body);
    assert_eq!(
        pulled.body["serverChanges"].as_array().map(Vec::len),
        Some(40)
    );
    let url = app
        .projector
        .as_ref()
        .and_then(|p| p.metrics.clone())
        .expect("metrics");
    eventually(Duration::from_secs(20), || async {
        leaders(&app, std::slice::from_ref(&url)).await == [1.0]
    })
    .await;
}
