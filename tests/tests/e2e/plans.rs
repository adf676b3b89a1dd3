//! Reads keep plans that follow the caller's data as the log grows. The page queries
//! are prepared and reused, so after five executions PostgreSQL may settle on a plan
//! made without their parameters; run as the caller, that plan must still be a range
//! scan of the caller's scope, not a walk of every tenant's changes from the cursor
//! (which the every-table read's generic plan is without row-level security's
//! `space_id = ANY (…)`, see `gateway::store::page_sql`).

use ingest::Access;
use sync_tests::TestDb;

/// The caller's own changes, spread over a log of other tenants' changes.
async fn a_shared_log(db: &TestDb, caller_space: &str) {
    db.execute(&format!(
        "INSERT INTO change_log (seq, event_id, app_id, space_id, table_name, record_id, op, at, data, \
                                 user_id, client_id, schema_version, received_at, logged_at) \
         SELECT i, gen_random_uuid(), 'todo', \
                CASE WHEN i % 50 = 0 THEN '{caller_space}' ELSE 'space' || (i % 50) END, \
                'table' || (i % 7), 'r' || i, 'insert', now(), '{{}}', 'u' || (i % 50), 'c', 1, now(), now() \
         FROM generate_series(1, 100000) i"
    ))
    .await;
    db.execute("ANALYZE change_log").await;
}

/// The plan of the page query as the gateway runs it: prepared, executed more often
/// than PostgreSQL's five custom plans before it may switch to a generic one, in a
/// read transaction as the caller.
async fn page_plan(db: &TestDb, access: &Access, table: Option<&str>) -> String {
    let mut tx = gateway::store::begin_as(&db.pool, access)
        .await
        .expect("read transaction");
    let sql = gateway::store::page_sql(table.is_some());
    sqlx::raw_sql(&format!(
        "PREPARE page(text[], text, int8, int8, int8, text, text, text) AS {sql}"
    ))
    .execute(&mut *tx)
    .await
    .expect("prepares");
    let table = table.map_or("NULL".to_owned(), |t| format!("'{t}'"));
    let execute = format!(
        "EXECUTE page(ARRAY['{}'], 'todo', 0, 100000, 1001, {table}, 'x', 'y')",
        access.personal_space()
    );
    for _ in 0..8 {
        sqlx::raw_sql(&execute)
            .execute(&mut *tx)
            .await
            .expect("executes");
    }
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {execute}"))
        .fetch_all(&mut *tx)
        .await
        .expect("explains");
    plan.join("\n")
}

#[tokio::test]
async fn page_reads_scan_the_callers_rows_not_the_whole_log() {
    let db = TestDb::create().await;
    let alice = Access::personal_only("alice");
    a_shared_log(&db, alice.personal_space()).await;

    let every_table = page_plan(&db, &alice, None).await;
    assert!(
        every_table.contains("change_log_space_app_seq")
            && !every_table.contains("change_log_pkey"),
        "{every_table}"
    );
    let one_table = page_plan(&db, &alice, Some("table3")).await;
    assert!(
        one_table.contains("change_log_space_app_table_seq")
            && !one_table.contains("change_log_pkey"),
        "{one_table}"
    );
}
