//! The records stage: record state (field-level last-write-wins, `ingest::lww`) follows
//! `change_log` in sequence order, in its own transactions and with its own checkpoint
//! (`<projector>.records`), concurrently with the log stage. Readers wait only for the
//! log stage; the merge work runs beside it on a second database session.
//!
//! `change_log` holds each event once (duplicates by event id never enter it), so
//! following it applies each change exactly once; the checkpoint commits with the state.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use ingest::lww::RecordState;
use schemas::{FieldValue, Op, RecordChanged, time};
use serde_json::{Map, Value};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::apply::{ApplyError, begin_at_checkpoint};

/// Name of the records stage's checkpoint for projector `name`.
pub fn checkpoint_name(name: &str) -> String {
    format!("{name}.records")
}

/// One change read back from `change_log`.
pub(crate) struct Logged {
    seq: u64,
    user_id: String,
    change: RecordChanged,
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
        None => merge_records(&mut tx, &logged).await?,
    }
    sqlx::query(
        "UPDATE projector_checkpoints SET last_seq = $2, updated_at = now() WHERE name = $1",
    )
    .bind(name)
    .bind(checkpoint as i64)
    .execute(&mut *tx)
    .await?;
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
    state: RecordState,
    author: String,
    created_seq: i64,
    updated_seq: i64,
}

async fn merge_records(
    tx: &mut Transaction<'_, Postgres>,
    applied: &[Logged],
) -> Result<(), sqlx::Error> {
    if applied.is_empty() {
        return Ok(());
    }
    let key_of = |rc: &RecordChanged| {
        (
            rc.space_id.clone(),
            rc.app_id.clone(),
            rc.table.clone(),
            rc.record_id.clone(),
        )
    };
    let mut order: Vec<Key> = Vec::new();
    let mut rows: HashMap<Key, Pending> = HashMap::new();
    for Logged { change: rc, .. } in applied {
        let key = key_of(rc);
        if !rows.contains_key(&key) {
            rows.insert(
                key.clone(),
                Pending {
                    state: RecordState::default(),
                    author: String::new(),
                    created_seq: 0,
                    updated_seq: 0,
                },
            );
            order.push(key);
        }
    }
    load_existing(tx, &order, &mut rows).await?;

    for Logged {
        seq,
        user_id,
        change: rc,
    } in applied
    {
        let row = rows
            .get_mut(&key_of(rc))
            .expect("every key was inserted above");
        if row.created_seq == 0 {
            row.created_seq = *seq as i64;
            row.author = user_id.clone();
        }
        row.updated_seq = *seq as i64;
        row.state = std::mem::take(&mut row.state).apply(rc);
    }

    let n = order.len();
    let (mut space, mut app, mut table, mut record) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut data, mut field_at, mut exists_at, mut deleted_at) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut author, mut created, mut updated) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for key in &order {
        let row = &rows[key];
        space.push(key.0.as_str());
        app.push(key.1.as_str());
        table.push(key.2.as_str());
        record.push(key.3.as_str());
        data.push(Value::Object(row.state.data.clone()));
        field_at.push(Value::Object(
            row.state
                .field_at
                .iter()
                .map(|(k, t)| (k.clone(), Value::from(time::canonical(*t))))
                .collect(),
        ));
        exists_at.push(row.state.exists_at);
        deleted_at.push(row.state.deleted_at);
        author.push(row.author.as_str());
        created.push(row.created_seq);
        updated.push(row.updated_seq);
    }
    sqlx::query(
        "INSERT INTO records (space_id, app_id, table_name, record_id, data, field_at, exists_at, deleted_at, \
                              author_id, created_seq, updated_seq) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], \
                              $7::timestamptz[], $8::timestamptz[], $9::text[], $10::int8[], $11::int8[]) \
         ON CONFLICT (space_id, app_id, table_name, record_id) DO UPDATE SET \
            data = EXCLUDED.data, field_at = EXCLUDED.field_at, exists_at = EXCLUDED.exists_at, \
            deleted_at = EXCLUDED.deleted_at, updated_seq = EXCLUDED.updated_seq",
    )
    .bind(&space)
    .bind(&app)
    .bind(&table)
    .bind(&record)
    .bind(&data)
    .bind(&field_at)
    .bind(&exists_at)
    .bind(&deleted_at)
    .bind(&author)
    .bind(&created)
    .bind(&updated)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// No row locks: the records stage is the only writer of `records`, and its locked
/// checkpoint row already keeps a second instance out. One primary-key probe per key
/// (the `LIMIT 1` keeps the lateral subquery from being flattened): while `records` is
/// small the planner would otherwise hash the whole table for every batch.
async fn load_existing(
    tx: &mut Transaction<'_, Postgres>,
    keys: &[Key],
    rows: &mut HashMap<Key, Pending>,
) -> Result<(), sqlx::Error> {
    let cols: [Vec<&str>; 4] = [
        keys.iter().map(|k| k.0.as_str()).collect(),
        keys.iter().map(|k| k.1.as_str()).collect(),
        keys.iter().map(|k| k.2.as_str()).collect(),
        keys.iter().map(|k| k.3.as_str()).collect(),
    ];
    let found = sqlx::query(
        "SELECT r.* FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS k(space_id, app_id, table_name, record_id) \
         CROSS JOIN LATERAL ( \
            SELECT r.space_id, r.app_id, r.table_name, r.record_id, r.data, r.field_at, r.exists_at, r.deleted_at, \
                   r.author_id, r.created_seq, r.updated_seq \
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
        let key: Key = (r.get(0), r.get(1), r.get(2), r.get(3));
        let data: Value = r.get(4);
        let field_at: Value = r.get(5);
        let state = RecordState {
            data: into_map(data),
            field_at: into_map(field_at)
                .into_iter()
                .filter_map(|(k, v)| v.as_str().and_then(time::parse_instant).map(|t| (k, t)))
                .collect::<BTreeMap<_, _>>(),
            exists_at: r.get(6),
            deleted_at: r.get(7),
        };
        rows.insert(
            key,
            Pending {
                state,
                author: r.get(8),
                created_seq: r.get(9),
                updated_seq: r.get(10),
            },
        );
    }
    Ok(())
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
