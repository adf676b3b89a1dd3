//! Cursor paging walks the log with no gap and no duplicate, also under concurrent writes.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sync_tests::{TestApp, changes};

fn batch(prefix: &str, from: usize, n: usize) -> Value {
    changes(
        (from..from + n)
            .map(|i| json!({"table": "items", "id": format!("{prefix}{i}"), "op": "insert", "data": {"i": i}}))
            .collect(),
    )
}

#[tokio::test]
async fn paging_2500_changes_returns_each_exactly_once() {
    let app = TestApp::spawn().await;
    for b in 0..25 {
        let reply = app
            .push("alice", "writer", "todo", &batch("r", b * 100, 100))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let mut cursor = String::new();
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let reply = app.pull("alice", "reader", "todo", "items", &cursor).await;
        assert_eq!(reply.status, StatusCode::OK);
        let page = reply.body["serverChanges"].as_array().unwrap();
        assert!(page.len() <= 1000);
        ids.extend(page.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        let next = reply.body["syncedUntil"].as_str().unwrap().to_owned();
        assert!(next >= cursor, "cursors never go back");
        cursor = next;
        pages += 1;
        if reply.body["hasMore"] != true {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(ids.len(), 2500);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 2500);
    let expected: Vec<String> = (0..2500).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, expected, "log order");
}

#[tokio::test]
async fn paging_while_others_write_misses_nothing_and_repeats_nothing() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    for b in 0..25 {
        assert_eq!(
            app.push("alice", "writer", "todo", &batch("r", b * 100, 100))
                .await
                .status,
            StatusCode::OK
        );
    }
    let writer = {
        let app = app.clone();
        tokio::spawn(async move {
            for b in 0..20 {
                let reply = app
                    .push("alice", "writer2", "todo", &batch("w", b * 50, 50))
                    .await;
                assert_eq!(reply.status, StatusCode::OK);
            }
        })
    };
    let mut cursor = String::new();
    let mut seen = Vec::new();
    let mut writer_done = false;
    // Keep paging until the writer has finished and a page reports nothing more.
    for _ in 0..10_000 {
        let reply = app.pull("alice", "reader", "todo", "items", &cursor).await;
        assert_eq!(reply.status, StatusCode::OK);
        for c in reply.body["serverChanges"].as_array().unwrap() {
            seen.push((
                c["cursor"].as_str().unwrap().to_owned(),
                c["id"].as_str().unwrap().to_owned(),
            ));
        }
        cursor = reply.body["syncedUntil"].as_str().unwrap().to_owned();
        if writer_done && reply.body["hasMore"] != true {
            break;
        }
        writer_done = writer.is_finished();
    }
    writer.await.unwrap();
    let ids: HashSet<_> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(seen.len(), 3500, "each change exactly once");
    assert_eq!(ids.len(), 3500);
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "strictly increasing cursors"
    );
}

/// The projector commits without waiting for the disk, so a crash of PostgreSQL can take
/// back its last commit (rows and checkpoint), which it then applies again. A gateway
/// that heard the later checkpoint before must not read up to it: the page would end
/// past rows that are not there, and the client would never get them.
#[tokio::test]
async fn pulls_never_read_past_a_checkpoint_postgresql_took_back() {
    let mut app = TestApp::spawn().await;
    for id in ["a", "b", "c"] {
        let one = changes(json!([{"table": "items", "id": id, "op": "insert", "data": {}}]));
        let reply = app.push("alice", "writer", "todo", &one).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    app.wait_projected().await;
    let (seen, _) = app.pull_all("alice", "reader", "todo", "items", "").await;
    assert_eq!(seen.len(), 3, "the gateway has heard the last checkpoint");

    // What a crash that lost the projector's last commit leaves behind.
    app.stop_projector().await;
    let projector = schemas::projection::DEFAULT_PROJECTOR;
    let last = app.db.checkpoint(projector).await;
    let records = projector::records::checkpoint_name(projector);
    app.db
        .execute(&format!("DELETE FROM change_log WHERE seq = {last}"))
        .await;
    app.db
        .execute("DELETE FROM records WHERE record_id = 'c'")
        .await;
    app.db
        .execute(&format!(
            "UPDATE projector_checkpoints SET last_seq = {} WHERE name IN ('{projector}', '{records}')",
            last - 1
        ))
        .await;

    let reply = app.pull("alice", "reader", "todo", "items", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let ids: Vec<&str> = reply.body["serverChanges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let cursor = reply.body["syncedUntil"].as_str().unwrap().to_owned();

    // Applied again, the lost change reaches the client that paged past the crash.
    app.restart_projector().await;
    app.wait_projected().await;
    let (rest, _) = app
        .pull_all("alice", "reader", "todo", "items", &cursor)
        .await;
    let ids: Vec<&str> = rest.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c"]);
}

/// A legacy timestamp cursor starts at the first position logged at or after it, even
/// when the log's clock stepped back: nothing logged at or after it is skipped.
#[tokio::test]
async fn a_legacy_timestamp_cursor_skips_nothing_when_the_clock_stepped_back() {
    let app = TestApp::spawn().await;
    for id in ["a", "b", "c"] {
        let one = changes(json!([{"table": "items", "id": id, "op": "insert", "data": {}}]));
        let reply = app.push("alice", "writer", "todo", &one).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    app.wait_projected().await;
    // a was logged by a clock an hour ahead, which then stepped back.
    app.db
        .execute(
            "UPDATE change_log SET logged_at = logged_at + interval '1 hour' WHERE record_id = 'a'",
        )
        .await;
    let (seen, _) = app
        .pull_all("alice", "reader", "todo", "items", "2000-01-01T00:00:00Z")
        .await;
    let ids: Vec<&str> = seen.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

/// A caller in several spaces pages through changes interleaved across them (and across
/// two tables), with and without a collection: every change once, in log order. Up to
/// `MERGED_SPACES` spaces the page merges one scan per space; beyond, it sorts the
/// spaces' lateral scans (`gateway::store::page_sql`): both are walked here.
#[tokio::test]
async fn paging_across_several_spaces_returns_each_exactly_once_in_log_order() {
    let app = TestApp::spawn().await;
    for (user, shared) in [("alice", 2), ("bob", gateway::store::MERGED_SPACES + 1)] {
        let spaces: Vec<String> = std::iter::once(format!("_personal:{user}"))
            .chain((0..shared).map(|s| format!("{user}-space{s}")))
            .collect();
        for space in &spaces[1..] {
            app.create_space(space, user, &[]).await;
        }
        let table = |i: usize| {
            if i.is_multiple_of(2) {
                "items"
            } else {
                "notes"
            }
        };
        for b in 0..25 {
            let batch: Vec<Value> = (b * 100..b * 100 + 100)
                .map(|i| {
                    json!({"table": table(i), "id": format!("r{i}"), "op": "insert", "data": {"i": i},
                           "spaceId": spaces[(i / 3) % spaces.len()]})
                })
                .collect();
            let reply = app
                .push(user, "writer", "todo", &changes(json!(batch)))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        }

        for collection in [None, Some("items")] {
            let mut cursor = String::new();
            let mut seen: Vec<(String, String)> = Vec::new();
            loop {
                let mut query = vec![("since", cursor.as_str())];
                query.extend(collection.map(|c| ("collection", c)));
                let reply = app.pull_on(&app.gateway.base, user, "todo", &query).await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
                let page = reply.body["serverChanges"].as_array().unwrap();
                assert!(page.len() <= 1000);
                seen.extend(page.iter().map(|c| {
                    (
                        c["cursor"].as_str().unwrap().to_owned(),
                        c["id"].as_str().unwrap().to_owned(),
                    )
                }));
                cursor = reply.body["syncedUntil"].as_str().unwrap().to_owned();
                if reply.body["hasMore"] != true {
                    break;
                }
            }
            let expected: Vec<String> = (0..2500)
                .filter(|&i| collection.is_none_or(|c| table(i) == c))
                .map(|i| format!("r{i}"))
                .collect();
            let ids: Vec<String> = seen.iter().map(|(_, id)| id.clone()).collect();
            assert_eq!(
                ids, expected,
                "{user}, {collection:?}: each once, in log order"
            );
            assert!(
                seen.windows(2).all(|w| w[0].0 < w[1].0),
                "strictly increasing cursors"
            );
        }
    }
}
