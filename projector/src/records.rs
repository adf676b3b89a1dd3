//! The records stage: record state (field-level last-write-wins, `ingest::lww`) follows
//! `change_log` in sequence order, in its own transactions and with its own checkpoint
//! (`<projector>.records`), concurrently with the log stage. Readers wait only for the
//! log stage; the merge work runs beside it on a second database session.
//!
//! `change_log` holds each event once (duplicates by event id never enter it), so
//! following it applies each change exactly once; the checkpoint commits with the state.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use ingest::lww::RecordState;
use schemas::{FieldValue, Op, RecordChanged, time};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{PgPool, Postgres, Row, Transaction, types::Json};

use crate::apply::{ApplyError, begin_at_checkpoint, read_checkpoint};

/// Name of the records stage's checkpoint for projector `name`.
pub fn checkpoint_name(name: &str) -> String {
    format!("{name}.records")
}

/// One change of `change_log`: read back from it, or handed over by the log stage.
pub(crate) struct Logged {
    pub(crate) seq: u64,
    pub(crate) user_id: String,
    pub(crate) change: RecordChanged,
}

/// What a committed log-stage transaction wrote to `change_log`, handed to the records
/// stage in memory so it need not read it back: exactly the rows with a position in
/// `(after, upto]`.
pub struct Handoff {
    pub(crate) after: u64,
    pub(crate) upto: u64,
    pub(crate) changes: Vec<Logged>,
}

/// Hand-offs waiting for the records stage, in log order.
#[derive(Default)]
pub(crate) struct Handoffs(VecDeque<Handoff>);

impl Handoffs {
    pub(crate) fn push(&mut self, h: Handoff) {
        self.0.push_back(h);
    }

    /// Drops what starts before `at` (passed, or straddling it: of no use either way, the
    /// change log has it), then takes the consecutive run starting right after `at` (up
    /// to about `limit` changes), if the next one starts there.
    pub(crate) fn take_run(&mut self, at: u64, limit: usize) -> Vec<Handoff> {
        while self.0.front().is_some_and(|h| h.after < at) {
            self.0.pop_front();
        }
        let mut run: Vec<Handoff> = Vec::new();
        let mut end = at;
        let mut changes = 0;
        while let Some(next) = self.0.front() {
            if next.after != end || (!run.is_empty() && changes + next.changes.len() > limit) {
                break;
            }
            end = next.upto;
            changes += next.changes.len();
            run.extend(self.0.pop_front());
        }
        run
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Where the next waiting hand-off starts, if any.
    pub(crate) fn next_start(&self) -> Option<u64> {
        self.0.front().map(|h| h.after)
    }
}

/// Applies consecutive hand-offs, the first continuing right after the records
/// checkpoint, in one transaction. Returns the new checkpoint; when the checkpoint is
/// not where the first starts (another instance moved it), applies nothing and returns
/// it. A change PostgreSQL refuses is isolated through the change log instead.
pub(crate) async fn apply_handed(
    pool: &PgPool,
    name: &str,
    run: Vec<Handoff>,
    limit: usize,
) -> Result<u64, ApplyError> {
    let (Some(after), Some(upto)) = (run.first().map(|h| h.after), run.last().map(|h| h.upto))
    else {
        return Ok(read_checkpoint(pool, name).await?);
    };
    let (mut tx, last) = begin_at_checkpoint(pool, name).await?;
    if last as u64 != after {
        return Ok(last as u64);
    }
    let changes: Vec<Logged> = run.into_iter().flat_map(|h| h.changes).collect();
    match merge_records(&mut tx, changes)
        .await
        .map_err(ApplyError::from)
    {
        Ok(()) => {}
        Err(ApplyError::Refused(_)) => {
            drop(tx);
            return apply_upto(pool, name, upto, limit).await;
        }
        Err(e) => return Err(e),
    }
    set_checkpoint(&mut tx, name, upto).await?;
    tx.commit().await?;
    Ok(upto)
}

async fn set_checkpoint(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    seq: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projector_checkpoints SET last_seq = $2, updated_at = now() WHERE name = $1",
    )
    .bind(name)
    .bind(seq as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Applies the changes after the records checkpoint up to `upto` (at most `limit` of
/// them) in one transaction. Returns the new checkpoint.
pub async fn apply_upto(
    pool: &PgPool,
    name: &str,
    upto: u64,
    limit: usize,
) -> Result<u64, ApplyError> {
    match apply(pool, name, upto, limit, None).await {
        Err(ApplyError::Refused(e)) => {
            // Isolate the change PostgreSQL refuses: one at a time, parking it.
            tracing::warn!(error = %e, "records batch refused; applying one by one");
            let mut checkpoint = 0;
            for _ in 0..limit {
                checkpoint = match apply(pool, name, upto, 1, None).await {
                    Ok(cp) => cp,
                    Err(ApplyError::Refused(e)) => {
                        apply(pool, name, upto, 1, Some(&e.to_string())).await?
                    }
                    Err(e) => return Err(e),
                };
                if checkpoint >= upto {
                    break;
                }
            }
            Ok(checkpoint)
        }
        other => other,
    }
}

async fn apply(
    pool: &PgPool,
    name: &str,
    upto: u64,
    limit: usize,
    park: Option<&str>,
) -> Result<u64, ApplyError> {
    let (mut tx, last) = begin_at_checkpoint(pool, name).await?;
    if last as u64 >= upto {
        return Ok(last as u64);
    }
    let rows = sqlx::query(
        "SELECT seq, space_id, app_id, table_name, record_id, op, at, data, fields, user_id, schema_version \
         FROM change_log WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
    )
    .bind(last)
    .bind(upto as i64)
    .bind(limit as i64)
    .fetch_all(&mut *tx)
    .await?;
    // A full page may stop short of `upto`; otherwise everything up to it is covered
    // (sequences without a change_log row were parked by the log stage).
    let checkpoint = if rows.len() == limit {
        rows.last().map_or(upto, |r| r.get::<i64, _>("seq") as u64)
    } else {
        upto
    };
    let logged = rows
        .iter()
        .map(read_logged)
        .collect::<Result<Vec<_>, _>>()?;
    match park {
        Some(reason) => {
            for l in &logged {
                tracing::warn!(seq = l.seq, %reason, "parking change the records stage cannot apply");
                sqlx::query(
                    "INSERT INTO dead_letters (seq, subject, payload, reason) \
                     SELECT seq, 'change_log', convert_to(row_to_json(c)::text, 'UTF8'), $2 FROM change_log c WHERE seq = $1 \
                     ON CONFLICT DO NOTHING",
                )
                .bind(l.seq as i64)
                .bind(format!("records stage: {reason}"))
                .execute(&mut *tx)
                .await?;
            }
        }
        None => merge_records(&mut tx, logged).await?,
    }
    set_checkpoint(&mut tx, name, checkpoint).await?;
    tx.commit().await?;
    Ok(checkpoint)
}

fn read_logged(row: &sqlx::postgres::PgRow) -> Result<Logged, sqlx::Error> {
    let op: String = row.try_get("op")?;
    let fields: Option<Value> = row.try_get("fields")?;
    let data: Option<Value> = row.try_get("data")?;
    let change = RecordChanged {
        app_id: row.try_get("app_id")?,
        space_id: row.try_get("space_id")?,
        table: row.try_get("table_name")?,
        record_id: row.try_get("record_id")?,
        op: Op::parse(&op).unwrap_or(Op::Update),
        at: row.try_get::<Option<DateTime<Utc>>, _>("at")?,
        data: data.map(into_map),
        fields: fields.map(|f| {
            into_map(f)
                .into_iter()
                .filter_map(|(name, f)| {
                    let at = f
                        .get("at")
                        .and_then(Value::as_str)
                        .and_then(time::parse_instant)?;
                    let value = f.get("value").cloned().unwrap_or(Value::Null);
                    Some((name, FieldValue { value, at }))
                })
                .collect()
        }),
        client_schema_version: row.try_get::<i32, _>("schema_version")? as u32,
    };
    Ok(Logged {
        seq: row.try_get::<i64, _>("seq")? as u64,
        user_id: row.try_get("user_id")?,
        change,
    })
}

type Key = (String, String, String, String);

struct Pending {
    /// Already in `records` (loaded), or new in this batch.
    existed: bool,
    state: RecordState,
    author: String,
    created_seq: i64,
    updated_seq: i64,
}

async fn merge_records(
    tx: &mut Transaction<'_, Postgres>,
    applied: Vec<Logged>,
) -> Result<(), sqlx::Error> {
    if applied.is_empty() {
        return Ok(());
    }
    // Each record once, in order of first appearance; the changes keep what merges.
    let mut index: HashMap<Key, usize> = HashMap::new();
    let mut rows: Vec<(Key, Pending)> = Vec::new();
    let mut changes = Vec::with_capacity(applied.len());
    for mut logged in applied {
        let rc = &mut logged.change;
        let key = (
            std::mem::take(&mut rc.space_id),
            std::mem::take(&mut rc.app_id),
            std::mem::take(&mut rc.table),
            std::mem::take(&mut rc.record_id),
        );
        let at = match index.get(&key) {
            Some(&at) => at,
            None => {
                index.insert(key.clone(), rows.len());
                rows.push((key, Pending::new()));
                rows.len() - 1
            }
        };
        changes.push((at, logged));
    }
    load_existing(tx, &mut rows).await?;

    for (at, logged) in changes {
        let row = &mut rows[at].1;
        if row.created_seq == 0 {
            row.created_seq = logged.seq as i64;
            row.author = logged.user_id;
        }
        row.updated_seq = logged.seq as i64;
        row.state = std::mem::take(&mut row.state).apply(logged.change);
    }

    // Rows that exist are updated, new ones inserted: no conflict check per row.
    let (existing, new): (Vec<_>, Vec<_>) = rows.iter().partition(|(_, row)| row.existed);
    if !new.is_empty() {
        let c = Columns::of(&new);
        let insert = sqlx::query(
            "INSERT INTO records (space_id, app_id, table_name, record_id, data, field_at, exists_at, deleted_at, \
                                  author_id, created_seq, updated_seq) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::json[], \
                                  $7::timestamptz[], $8::timestamptz[], $9::text[], $10::int8[], $11::int8[])",
        );
        c.bind_state(insert)
            .bind(&c.author)
            .bind(&c.created)
            .bind(&c.updated)
            .execute(&mut **tx)
            .await?;
    }
    if !existing.is_empty() {
        let c = Columns::of(&existing);
        let update = sqlx::query(
            "UPDATE records r SET data = u.data, field_at = u.field_at, exists_at = u.exists_at, \
                    deleted_at = u.deleted_at, updated_seq = u.updated_seq \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::json[], \
                         $7::timestamptz[], $8::timestamptz[], $9::int8[]) \
                  AS u(space_id, app_id, table_name, record_id, data, field_at, exists_at, deleted_at, updated_seq) \
             WHERE (r.space_id, r.app_id, r.table_name, r.record_id) = (u.space_id, u.app_id, u.table_name, u.record_id)",
        );
        c.bind_state(update)
            .bind(&c.updated)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl Pending {
    fn new() -> Self {
        Self {
            existed: false,
            state: RecordState::default(),
            author: String::new(),
            created_seq: 0,
            updated_seq: 0,
        }
    }
}

/// Record rows as column arrays, for `UNNEST`. The state is serialized straight from
/// the merged rows, without copies.
struct Columns<'a> {
    space: Vec<&'a str>,
    app: Vec<&'a str>,
    table: Vec<&'a str>,
    record: Vec<&'a str>,
    data: Vec<Json<&'a Map<String, Value>>>,
    field_at: Vec<String>,
    exists_at: Vec<Option<DateTime<Utc>>>,
    deleted_at: Vec<Option<DateTime<Utc>>>,
    author: Vec<&'a str>,
    created: Vec<i64>,
    updated: Vec<i64>,
}

/// `{field: canonical instant}`, as stored in `records.field_at` (`json`: bookkeeping
/// of the merge, never queried inside): only the times that differ from `exists_at`
/// (see [`RecordState::stored_field_times`]).
struct FieldTimes<'a>(&'a RecordState);

impl Serialize for FieldTimes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .stored_field_times()
                .map(|(k, t)| (k, time::canonical(*t))),
        )
    }
}

type Query<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

impl<'a> Columns<'a> {
    /// Binds `$1`–`$8`: the key and the merged state.
    fn bind_state<'q>(&'q self, q: Query<'q>) -> Query<'q> {
        q.bind(&self.space)
            .bind(&self.app)
            .bind(&self.table)
            .bind(&self.record)
            .bind(&self.data)
            .bind(&self.field_at)
            .bind(&self.exists_at)
            .bind(&self.deleted_at)
    }

    fn of(rows: &[&'a (Key, Pending)]) -> Self {
        let n = rows.len();
        let mut c = Self {
            space: Vec::with_capacity(n),
            app: Vec::with_capacity(n),
            table: Vec::with_capacity(n),
            record: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            field_at: Vec::with_capacity(n),
            exists_at: Vec::with_capacity(n),
            deleted_at: Vec::with_capacity(n),
            author: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
            updated: Vec::with_capacity(n),
        };
        for (key, row) in rows {
            c.space.push(key.0.as_str());
            c.app.push(key.1.as_str());
            c.table.push(key.2.as_str());
            c.record.push(key.3.as_str());
            c.data.push(Json(&row.state.data));
            c.field_at
                .push(serde_json::to_string(&FieldTimes(&row.state)).unwrap_or_default());
            c.exists_at.push(row.state.exists_at);
            c.deleted_at.push(row.state.deleted_at);
            c.author.push(row.author.as_str());
            c.created.push(row.created_seq);
            c.updated.push(row.updated_seq);
        }
        c
    }
}

/// No row locks: the records stage is the only writer of `records`, and its locked
/// checkpoint row already keeps a second instance out. One primary-key probe per key
/// (the `LIMIT 1` keeps the lateral subquery from being flattened): while `records` is
/// small the planner would otherwise hash the whole table for every batch.
async fn load_existing(
    tx: &mut Transaction<'_, Postgres>,
    rows: &mut [(Key, Pending)],
) -> Result<(), sqlx::Error> {
    let cols: [Vec<&str>; 4] = [
        rows.iter().map(|(k, _)| k.0.as_str()).collect(),
        rows.iter().map(|(k, _)| k.1.as_str()).collect(),
        rows.iter().map(|(k, _)| k.2.as_str()).collect(),
        rows.iter().map(|(k, _)| k.3.as_str()).collect(),
    ];
    let found = sqlx::query(
        "SELECT k.i, r.* \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS k(space_id, app_id, table_name, record_id, i) \
         CROSS JOIN LATERAL ( \
            SELECT r.data, r.field_at, r.exists_at, r.deleted_at, r.author_id, r.created_seq, r.updated_seq \
            FROM records r \
            WHERE (r.space_id, r.app_id, r.table_name, r.record_id) = (k.space_id, k.app_id, k.table_name, k.record_id) \
            LIMIT 1 \
         ) r",
    )
    .bind(&cols[0])
    .bind(&cols[1])
    .bind(&cols[2])
    .bind(&cols[3])
    .fetch_all(&mut **tx)
    .await?;
    for r in found {
        // `WITH ORDINALITY` counts from 1.
        let Some((_, row)) = usize::try_from(r.try_get::<i64, _>(0)? - 1)
            .ok()
            .and_then(|i| rows.get_mut(i))
        else {
            continue;
        };
        let data: Value = r.try_get(1)?;
        let field_at: Value = r.try_get(2)?;
        let mut state = RecordState {
            data: into_map(data),
            field_at: into_map(field_at)
                .into_iter()
                .filter_map(|(k, v)| v.as_str().and_then(time::parse_instant).map(|t| (k, t)))
                .collect::<BTreeMap<_, _>>(),
            exists_at: r.try_get(3)?,
            deleted_at: r.try_get(4)?,
        };
        state.restore_field_times();
        *row = Pending {
            existed: true,
            state,
            author: r.try_get(5)?,
            created_seq: r.try_get(6)?,
            updated_seq: r.try_get(7)?,
        };
    }
    Ok(())
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff(after: u64, upto: u64, changes: usize) -> Handoff {
        let change = |seq| Logged {
            seq,
            user_id: "u".to_owned(),
            change: RecordChanged {
                app_id: "app".to_owned(),
                space_id: "s".to_owned(),
                table: "t".to_owned(),
                record_id: format!("r{seq}"),
                op: Op::Insert,
                at: None,
                data: Some(Map::new()),
                fields: None,
                client_schema_version: 1,
            },
        };
        Handoff {
            after,
            upto,
            changes: (after + 1..=after + changes as u64).map(change).collect(),
        }
    }

    fn ranges(run: &[Handoff]) -> Vec<(u64, u64)> {
        run.iter().map(|h| (h.after, h.upto)).collect()
    }

    #[test]
    fn runs_continue_exactly_where_the_records_stage_stands() {
        let mut waiting = Handoffs::default();
        for (after, upto) in [(0, 10), (10, 20), (20, 30), (40, 50)] {
            waiting.push(handoff(after, upto, 5));
        }
        // Passed hand-offs are dropped; a run is consecutive and bounded in changes.
        assert_eq!(ranges(&waiting.take_run(10, 8)), [(10, 20)]);
        assert_eq!(ranges(&waiting.take_run(20, 100)), [(20, 30)]);
        // A gap (a dropped hand-off, 30..40): nothing to take; the change log fills it.
        assert!(waiting.take_run(30, 100).is_empty());
        assert_eq!(waiting.next_start(), Some(40));
        assert_eq!(ranges(&waiting.take_run(40, 100)), [(40, 50)]);
        assert_eq!((waiting.len(), waiting.next_start()), (0, None));
    }

    #[test]
    fn a_hand_off_straddling_the_records_checkpoint_is_dropped_not_waited_on() {
        let mut waiting = Handoffs::default();
        waiting.push(handoff(0, 10, 5));
        waiting.push(handoff(10, 20, 5));
        // The records stage stands at 5 (it read the change log that far).
        assert!(waiting.take_run(5, 100).is_empty());
        assert_eq!(waiting.next_start(), Some(10), "the change log fills 5..10");
        assert_eq!(ranges(&waiting.take_run(10, 100)), [(10, 20)]);
    }

    #[test]
    fn a_run_always_takes_at_least_one_hand_off() {
        let mut waiting = Handoffs::default();
        waiting.push(handoff(0, 10, 10));
        waiting.push(handoff(10, 20, 10));
        assert_eq!(ranges(&waiting.take_run(0, 3)), [(0, 10)]);
        assert_eq!(ranges(&waiting.take_run(10, 3)), [(10, 20)]);
    }
}
