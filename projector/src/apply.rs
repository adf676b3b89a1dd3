//! Applying a batch of log messages to PostgreSQL in one transaction: change log rows,
//! last-write-wins record state, parked poison, and the checkpoint — all or nothing.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ingest::lww::RecordState;
use schemas::{Envelope, Event, RecordChanged, subject::change_subject, time};
use serde_json::{Map, Value};
use sqlx::{PgPool, Postgres, Row, Transaction};

pub use schemas::projection::CHECKPOINT_CHANNEL;

/// One message of the log as delivered.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
    pub logged_at: DateTime<Utc>,
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The database refused the data itself (SQLSTATE classes 22 and 23): retrying the
    /// same event cannot succeed, so it is a poison candidate.
    #[error("the database refused an event: {0}")]
    Refused(#[source] sqlx::Error),
    /// Anything else (connection lost, timeout, shutdown): retry later.
    #[error("transient database failure: {0}")]
    Transient(#[source] sqlx::Error),
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        let refused = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23"));
        if refused {
            Self::Refused(e)
        } else {
            Self::Transient(e)
        }
    }
}

/// The outcome of a committed batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Checkpoint after the batch.
    pub checkpoint: u64,
    /// Change-log rows written.
    pub events: usize,
    /// Messages parked as poison.
    pub parked: usize,
}

/// Makes sure the checkpoint row exists and returns its position.
pub async fn checkpoint(pool: &PgPool, name: &str) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO projector_checkpoints (name, last_seq) VALUES ($1, 0) ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .execute(pool)
    .await?;
    let seq: i64 = sqlx::query_scalar("SELECT last_seq FROM projector_checkpoints WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await?;
    Ok(seq as u64)
}

/// Applies `batch` (in log order) exactly once in effect: messages at or below the
/// checkpoint are skipped, events already in the change log (same sequence or same
/// event id) are not applied again.
pub async fn apply_batch(
    pool: &PgPool,
    name: &str,
    batch: &[Incoming],
) -> Result<Applied, ApplyError> {
    apply(pool, name, batch, None).await
}

/// Parks one message with `reason` and moves the checkpoint past it.
pub async fn park(
    pool: &PgPool,
    name: &str,
    msg: &Incoming,
    reason: &str,
) -> Result<Applied, ApplyError> {
    apply(pool, name, std::slice::from_ref(msg), Some(reason)).await
}

async fn apply(
    pool: &PgPool,
    name: &str,
    batch: &[Incoming],
    force_park: Option<&str>,
) -> Result<Applied, ApplyError> {
    let mut tx = pool.begin().await?;
    let last: i64 =
        sqlx::query_scalar("SELECT last_seq FROM projector_checkpoints WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
    let fresh: Vec<&Incoming> = batch.iter().filter(|m| m.seq as i64 > last).collect();
    let Some(top) = fresh.last().map(|m| m.seq) else {
        return Ok(Applied {
            checkpoint: last as u64,
            ..Applied::default()
        });
    };

    let mut changes = Vec::with_capacity(fresh.len());
    let mut poison = Vec::new();
    for msg in fresh {
        match force_park
            .map(str::to_owned)
            .map_or_else(|| decode(msg), Err)
        {
            Ok(env) => changes.push((msg, env)),
            Err(reason) => poison.push((msg, reason)),
        }
    }

    let inserted = insert_change_log(&mut tx, &changes).await?;
    let applied: Vec<_> = changes
        .iter()
        .filter(|(m, _)| inserted.contains(&m.seq))
        .collect();
    merge_records(&mut tx, &applied).await?;
    park_all(&mut tx, &poison).await?;

    // Checkpoint and announcement in one round trip; NOTIFY is delivered at commit.
    sqlx::query(
        "WITH cp AS (UPDATE projector_checkpoints SET last_seq = $2, updated_at = now() \
                     WHERE name = $1 RETURNING name, last_seq) \
         SELECT pg_notify($3, cp.name || ':' || cp.last_seq) FROM cp",
    )
    .bind(name)
    .bind(top as i64)
    .bind(CHECKPOINT_CHANNEL)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Applied {
        checkpoint: top,
        events: applied.len(),
        parked: poison.len(),
    })
}

/// A message's event, or why it cannot be one.
fn decode(msg: &Incoming) -> Result<(Envelope, RecordChanged), String> {
    let env: Envelope =
        serde_json::from_slice(&msg.payload).map_err(|e| format!("undecodable event: {e}"))?;
    let Event::RecordChanged(rc) = &env.event;
    let expected = change_subject(&rc.space_id, &rc.app_id, &rc.table);
    if msg.subject != expected {
        // A publisher allowed on one space's subjects must not write into another.
        return Err(format!(
            "event for {expected} was published on {}",
            msg.subject
        ));
    }
    let rc = rc.clone();
    Ok((env, rc))
}

type Decoded<'a> = (&'a Incoming, (Envelope, RecordChanged));

async fn insert_change_log(
    tx: &mut Transaction<'_, Postgres>,
    changes: &[Decoded<'_>],
) -> Result<Vec<u64>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let n = changes.len();
    let mut seq = Vec::with_capacity(n);
    let mut event_id = Vec::with_capacity(n);
    let (mut app, mut space, mut table, mut record, mut op) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut at, mut data, mut fields) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut user, mut client, mut actor, mut origin) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut version, mut received, mut logged) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (msg, (env, rc)) in changes {
        seq.push(msg.seq as i64);
        event_id.push(env.event_id);
        app.push(rc.app_id.as_str());
        space.push(rc.space_id.as_str());
        table.push(rc.table.as_str());
        record.push(rc.record_id.as_str());
        op.push(rc.op.as_str());
        at.push(rc.at);
        data.push(rc.data.as_ref().map(|d| json_text(d)));
        fields.push(rc.fields.as_ref().map(|f| {
            json_text(
                &f.iter()
                    .map(|(k, v)| {
                        (
                            k.as_str(),
                            serde_json::json!({"value": v.value, "at": time::canonical(v.at)}),
                        )
                    })
                    .collect::<BTreeMap<_, _>>(),
            )
        }));
        user.push(env.metadata.user_id.as_str());
        client.push(env.metadata.client_id.as_str());
        actor.push(env.metadata.actor.as_ref().map(json_text));
        origin.push(env.metadata.origin.as_ref().map(json_text));
        version.push(rc.client_schema_version as i32);
        received.push(env.metadata.received_at);
        logged.push(msg.logged_at);
    }
    let rows = sqlx::query(
        "INSERT INTO change_log (seq, event_id, app_id, space_id, table_name, record_id, op, at, data, fields, \
                                 user_id, client_id, actor, origin, schema_version, received_at, logged_at) \
         SELECT * FROM UNNEST($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                              $8::timestamptz[], $9::json[], $10::json[], $11::text[], $12::text[], $13::json[], \
                              $14::json[], $15::int4[], $16::timestamptz[], $17::timestamptz[]) \
         ON CONFLICT DO NOTHING RETURNING seq",
    )
    .bind(&seq)
    .bind(&event_id)
    .bind(&app)
    .bind(&space)
    .bind(&table)
    .bind(&record)
    .bind(&op)
    .bind(&at)
    .bind(&data)
    .bind(&fields)
    .bind(&user)
    .bind(&client)
    .bind(&actor)
    .bind(&origin)
    .bind(&version)
    .bind(&received)
    .bind(&logged)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.iter().map(|r| r.get::<i64, _>(0) as u64).collect())
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
    applied: &[&Decoded<'_>],
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
    for (_, (_, rc)) in applied {
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

    for (msg, (env, rc)) in applied {
        let row = rows
            .get_mut(&key_of(rc))
            .expect("every key was inserted above");
        if row.created_seq == 0 {
            row.created_seq = msg.seq as i64;
            row.author = env.metadata.user_id.clone();
        }
        row.updated_seq = msg.seq as i64;
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
        "SELECT r.space_id, r.app_id, r.table_name, r.record_id, r.data, r.field_at, r.exists_at, r.deleted_at, \
                r.author_id, r.created_seq, r.updated_seq \
         FROM records r \
         JOIN UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS k(space_id, app_id, table_name, record_id) \
           USING (space_id, app_id, table_name, record_id) \
         FOR UPDATE OF r",
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

/// JSON text of a value (`change_log` stores payloads as `json`, passed as text).
fn json_text<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

async fn park_all(
    tx: &mut Transaction<'_, Postgres>,
    poison: &[(&Incoming, String)],
) -> Result<(), sqlx::Error> {
    for (msg, reason) in poison {
        tracing::warn!(seq = msg.seq, subject = %msg.subject, %reason, "parking poison message");
        sqlx::query("INSERT INTO dead_letters (seq, subject, payload, reason) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(msg.seq as i64)
            .bind(&msg.subject)
            .bind(msg.payload.as_ref())
            .bind(reason)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
