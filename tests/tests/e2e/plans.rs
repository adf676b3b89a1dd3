//! Reads keep plans that follow the caller's data as the log grows. The page queries
//! are prepared and reused, so after five executions PostgreSQL may settle on a plan
//! made without their parameters; run as the caller, that plan must still be a range
//! scan of the caller's scope, not a walk of every tenant's changes from the cursor
//! (which the every-table read's generic plan is without row-level security's
//! `space_id = ANY (…)`, see `gateway::store::page_sql`). A caller in a few spaces gets
//! their scans merged in order, with nothing sorted.

use std::collections::HashMap;

use gateway::store::MERGED_SPACES;
use ingest::Access;
use schemas::membership::Role;
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
    let spaces = access.readable_spaces();
    let sql = gateway::store::page_sql(table.is_some(), spaces.len());
    sqlx::raw_sql(&format!(
        "PREPARE page(text[], text, int8, int8, int8, text, text, text) AS {sql}"
    ))
    .execute(&mut *tx)
    .await
    .expect("prepares");
    let table = table.map_or("NULL".to_owned(), |t| format!("'{t}'"));
    let execute = format!(
        "EXECUTE page(ARRAY['{}'], 'todo', 0, 100000, 1001, {table}, 'x', 'y')",
        spaces.join("','")
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
    // Prepared statements belong to the session, which the pool keeps.
    sqlx::raw_sql("DEALLOCATE page")
        .execute(&mut *tx)
        .await
        .expect("deallocates");
    plan.join("\n")
}

/// Alice, a member of `shared` of the log's other spaces besides her personal one.
fn alice_in(shared: usize) -> Access {
    let roles: HashMap<String, Role> = (1..=shared)
        .map(|i| (format!("space{i}"), Role::Member))
        .collect();
    Access::with_roles("alice", roles)
}

#[tokio::test]
async fn page_reads_scan_the_callers_rows_not_the_whole_log() {
    let db = TestDb::create().await;
    a_shared_log(&db, alice_in(0).personal_space()).await;

    for shared in [0, 2, MERGED_SPACES - 1, MERGED_SPACES + 2] {
        let alice = alice_in(shared);
        let spaces = shared + 1;
        for (table, index) in [
            (None, "change_log_space_app_seq"),
            (Some("table3"), "change_log_space_app_table_seq"),
        ] {
            let plan = page_plan(&db, &alice, table).await;
            assert!(
                plan.contains(index) && !plan.contains("change_log_pkey"),
                "{spaces} spaces, table {table:?}: {plan}"
            );
            let sorts = plan.lines().any(|l| {
                l.trim_start()
                    .trim_start_matches("->  ")
                    .starts_with("Sort  (")
            });
            match spaces {
                1 => assert!(!sorts && !plan.contains("Append"), "{plan}"),
                2..=MERGED_SPACES => assert!(
                    !sorts && plan.contains("Merge Append"),
                    "{spaces} spaces: {plan}"
                ),
                _ => assert!(sorts, "{spaces} spaces: {plan}"),
            }
        }
    }
}
