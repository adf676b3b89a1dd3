//! The log stage: a batch of log messages into `change_log` in one transaction, with
//! membership state (`spaces`, `space_members`), record visibility, parked poison and
//! the checkpoint — all or nothing. Record state follows from `change_log` in the
//! records stage (`records.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use schemas::{
    Envelope, Event, RecordChanged, membership::MembershipEvent, space::personal_space_id, time,
};
use sqlx::{PgPool, Postgres, Row as _, Transaction};

use crate::records::{Handoff, Logged};

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
    /// The batch does not continue the log right after the checkpoint: position
    /// `expected` is missing from it, the next one there is `found`. Applying it would
    /// move the checkpoint over positions never applied. Either they were taken by
    /// another reader of the same consumer (two projectors overlapping while a leader
    /// steps down), and the consumer must be read again from the checkpoint, or they
    /// were removed from the log, and the checkpoint may step over them.
    #[error(
        "the batch skips log positions {expected}..{found} (next after the checkpoint: {expected})"
    )]
    Gap { expected: u64, found: u64 },
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
    read_checkpoint(pool, name).await
}

/// The checkpoint of `name` and the position of the last membership event applied up
/// to it (0 and 0 when it has none yet); read-only.
pub async fn read_positions<'e>(
    db: impl sqlx::PgExecutor<'e>,
    name: &str,
) -> Result<Positions, sqlx::Error> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT last_seq, members_seq FROM projector_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(db)
            .await?;
    let (checkpoint, members_seq) = row.unwrap_or((0, 0));
    Ok(Positions {
        checkpoint: checkpoint as u64,
        members_seq: members_seq as u64,
    })
}

/// Where the log stage stands, as one committed row holds it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    /// Every message up to here is applied.
    pub checkpoint: u64,
    /// The last membership event applied (at or before `checkpoint`).
    pub members_seq: u64,
}

/// The checkpoint of `name` (0 when it has none yet); read-only.
pub async fn read_checkpoint<'e>(
    db: impl sqlx::PgExecutor<'e>,
    name: &str,
) -> Result<u64, sqlx::Error> {
    let seq: Option<i64> =
        sqlx::query_scalar("SELECT last_seq FROM projector_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(db)
            .await?;
    Ok(seq.unwrap_or(0) as u64)
}

/// Opens a transaction holding the checkpoint row of `name` locked: a second process
/// with the same name waits here instead of applying the same messages concurrently.
pub(crate) async fn begin_at_checkpoint<'c>(
    pool: &PgPool,
    name: &str,
) -> Result<(Transaction<'c, Postgres>, i64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let last: i64 =
        sqlx::query_scalar("SELECT last_seq FROM projector_checkpoints WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
    Ok((tx, last))
}

/// Applies `batch` (in log order) exactly once in effect: messages at or below the
/// checkpoint are skipped, events already in the change log (same sequence or same
/// event id) are not applied again.
pub async fn apply_batch(
    pool: &PgPool,
    name: &str,
    batch: &[Incoming],
) -> Result<Applied, ApplyError> {
    Ok(apply_batch_handing_off(pool, name, batch).await?.0)
}

/// [`apply_batch`], also returning the record changes it committed, for the records
/// stage to take over in memory.
pub async fn apply_batch_handing_off(
    pool: &PgPool,
    name: &str,
    batch: &[Incoming],
) -> Result<(Applied, Option<Handoff>), ApplyError> {
    match apply(pool, name, batch, None, EventIds::New).await {
        // Rare: an event the log holds twice (a resend JetStream no longer caught).
        Err(ApplyError::Transient(e)) if is_repeated_event_id(&e) => {
            apply(pool, name, batch, None, EventIds::MayRepeat).await
        }
        other => other,
    }
}

/// Whether the change log may already hold some of a batch's event ids.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EventIds {
    /// Assumed new: plain inserts, a repeated id fails the batch (then retried as below).
    New,
    /// Checked per row before inserting; repeated ones are skipped.
    MayRepeat,
}

/// A batch failed because an event id is in the change log already.
fn is_repeated_event_id(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| {
        d.code().as_deref() == Some("23505") && d.constraint() == Some(EVENT_ID_UNIQUE)
    })
}

/// The unique constraint on `change_log.event_id`.
const EVENT_ID_UNIQUE: &str = "change_log_event_id_key";

/// Moves the log stage's checkpoint (and announces it) to `seq`, never back. For
/// positions the log holds no message at (a replay's bound).
pub async fn advance_checkpoint(pool: &PgPool, name: &str, seq: u64) -> Result<u64, sqlx::Error> {
    let (mut tx, last) = begin_at_checkpoint(pool, name).await?;
    if last as u64 >= seq {
        return Ok(last as u64);
    }
    set_checkpoint(&mut tx, name, seq, None).await?;
    tx.commit().await?;
    Ok(seq)
}

/// Sets the checkpoint (and, when the batch applied membership events, the position of
/// the last one) and announces it, in one round trip; NOTIFY is delivered at commit.
async fn set_checkpoint(
    conn: &mut sqlx::PgConnection,
    name: &str,
    seq: u64,
    members_seq: Option<u64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH cp AS (UPDATE projector_checkpoints SET last_seq = $2, updated_at = now(), \
                            members_seq = COALESCE($4, members_seq) \
                     WHERE name = $1 RETURNING name, last_seq) \
         SELECT pg_notify($3, cp.name || ':' || cp.last_seq) FROM cp",
    )
    .bind(name)
    .bind(seq as i64)
    .bind(CHECKPOINT_CHANNEL)
    .bind(members_seq.map(|s| s as i64))
    .execute(conn)
    .await?;
    Ok(())
}

/// Parks one message with `reason` and moves the checkpoint past it.
pub async fn park(
    pool: &PgPool,
    name: &str,
    msg: &Incoming,
    reason: &str,
) -> Result<Applied, ApplyError> {
    Ok(apply(
        pool,
        name,
        std::slice::from_ref(msg),
        Some(reason),
        EventIds::MayRepeat,
    )
    .await?
    .0)
}

async fn apply(
    pool: &PgPool,
    name: &str,
    batch: &[Incoming],
    force_park: Option<&str>,
    event_ids: EventIds,
) -> Result<(Applied, Option<Handoff>), ApplyError> {
    let (mut tx, last) = begin_at_checkpoint(pool, name).await?;
    // Only what continues the log right after the checkpoint, position by position;
    // a position delivered twice (a redelivery behind a slow batch) is taken once.
    let mut fresh: Vec<&Incoming> = Vec::with_capacity(batch.len());
    let mut reached = last as u64;
    for msg in batch {
        if msg.seq <= reached {
            continue;
        }
        if msg.seq != reached + 1 {
            return Err(ApplyError::Gap {
                expected: reached + 1,
                found: msg.seq,
            });
        }
        fresh.push(msg);
        reached = msg.seq;
    }
    let Some(top) = fresh.last().map(|m| m.seq) else {
        let applied = Applied {
            checkpoint: last as u64,
            ..Applied::default()
        };
        return Ok((applied, None));
    };

    let mut changes = Vec::with_capacity(fresh.len());
    let mut poison = Vec::new();
    for msg in fresh {
        match force_park
            .map(str::to_owned)
            .map_or_else(|| decode(&msg.subject, &msg.payload), Err)
        {
            Ok(env) => changes.push((msg, env)),
            Err(reason) => poison.push((msg, reason)),
        }
    }

    let mut refused = refused_writes(&mut tx, &changes).await?;
    let changes: Vec<Decoded<'_>> = if refused.is_empty() {
        changes
    } else {
        changes
            .into_iter()
            .filter_map(|(msg, env)| match refused.remove(&msg.seq) {
                Some(reason) => {
                    poison.push((msg, reason));
                    None
                }
                None => Some((msg, env)),
            })
            .collect()
    };

    let (records, memberships): (Vec<_>, Vec<_>) = changes
        .into_iter()
        .partition(|(_, env)| matches!(env.event, Event::RecordChanged(_)));
    let inserted: HashSet<i64> = insert_change_log(&mut tx, &records, event_ids)
        .await
        .map_err(|e| {
            if is_repeated_event_id(&e) {
                // Not the data's fault: retried with per-row checks (see above).
                ApplyError::Transient(e)
            } else {
                ApplyError::from(e)
            }
        })?
        .into_iter()
        .collect();
    // A change whose event the change log holds already (a late resend) sets nothing.
    apply_visibility(&mut tx, name, &records, &inserted).await?;
    let mut members_seq = None;
    for (msg, env) in &memberships {
        if let Some(event) = env.event.membership() {
            apply_membership(&mut tx, msg.seq, &env.metadata.user_id, event).await?;
            members_seq = Some(msg.seq);
        }
    }
    park_all(&mut tx, &poison).await?;

    set_checkpoint(&mut tx, name, top, members_seq).await?;
    tx.commit().await?;
    let applied = Applied {
        checkpoint: top,
        events: inserted.len() + memberships.len(),
        parked: poison.len(),
    };
    // Exactly the change-log rows this transaction wrote: everything in (last, top].
    let changes = records
        .into_iter()
        .filter(|(msg, _)| inserted.contains(&(msg.seq as i64)))
        .filter_map(|(msg, env)| match env.event {
            Event::RecordChanged(change) => Some(Logged {
                seq: msg.seq,
                user_id: env.metadata.user_id,
                change,
            }),
            _ => None,
        })
        .collect();
    let handoff = Handoff {
        after: last as u64,
        upto: top,
        changes,
    };
    Ok((applied, Some(handoff)))
}

/// A message's event, or why it cannot be one (the message is then parked, never
/// projected). Whoever else follows the log (a gateway's tail) skips the same messages.
pub fn decode(subject: &str, payload: &[u8]) -> Result<Envelope, String> {
    let env = Envelope::from_json(payload).map_err(|e| format!("undecodable event: {e}"))?;
    let expected = env.event.subject();
    if subject != expected {
        // A publisher allowed on one space's subjects must not write into another.
        return Err(format!("event for {expected} was published on {subject}"));
    }
    let nul = match &env.event {
        Event::RecordChanged(rc) => ingest::validate::event_has_nul(rc, &env.metadata),
        other => serde_json::to_value(other).is_ok_and(|v| ingest::validate::has_nul(&v)),
    };
    if nul || env.metadata.user_id.contains('\0') || env.metadata.client_id.contains('\0') {
        return Err("a string contains NUL, which PostgreSQL cannot store".to_owned());
    }
    Ok(env)
}

type Decoded<'a> = (&'a Incoming, Envelope);

/// The record changes of `changes` (in log order) whose author may not write into their
/// space at their position in the log, by position, with the reason each is parked.
///
/// The gateway authorizes a push against its membership view before publishing it; a
/// push authorized just before a `MemberRemoved` (or a demotion to viewer, or the
/// space's deletion) and published after it lands here, and is not projected. The rule
/// is [`ingest::membership::Memberships::may_write`] at the change's position:
/// membership as of the batch's start (read for the spaces and authors concerned
/// only), then the batch's own membership events in order. Every gateway's log tail
/// applies the same rule at the same positions, so push responses leave out what the
/// change log never holds.
async fn refused_writes(
    tx: &mut Transaction<'_, Postgres>,
    changes: &[Decoded<'_>],
) -> Result<HashMap<u64, String>, sqlx::Error> {
    // Writes into the author's personal space need no membership (its id is derived
    // from the user's, once per author and batch).
    let pairs: HashSet<(&str, &str)> = changes
        .iter()
        .filter_map(record_change)
        .map(|(_, rc, env)| (rc.space_id.as_str(), env.metadata.user_id.as_str()))
        .collect();
    let personal: HashMap<&str, String> = pairs
        .iter()
        .map(|&(_, user)| (user, personal_space_id(user)))
        .collect();
    let shared: Vec<(&str, &str)> = pairs
        .into_iter()
        .filter(|&(space, user)| personal.get(user).is_none_or(|p| p != space))
        .collect();
    if shared.is_empty() {
        return Ok(HashMap::new());
    }
    let mut members = crate::memberships::load_pairs(tx, &shared).await?;
    let mut refused = HashMap::new();
    for (msg, env) in changes {
        match &env.event {
            Event::RecordChanged(rc) if !members.may_write(&env.metadata.user_id, &rc.space_id) => {
                let reason = format!(
                    "unauthorized: user {:?} may not write into space {:?} at this position of \
                     the log (not a member with a writing role)",
                    env.metadata.user_id, rc.space_id
                );
                refused.insert(msg.seq, reason);
            }
            other => {
                if let Some(event) = other.membership() {
                    members.apply(event);
                }
            }
        }
    }
    Ok(refused)
}

/// Inserts the record changes; returns the positions written (an event whose id is
/// in the log already is not).
async fn insert_change_log(
    tx: &mut Transaction<'_, Postgres>,
    changes: &[Decoded<'_>],
    event_ids: EventIds,
) -> Result<Vec<i64>, sqlx::Error> {
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
    for (msg, rc, env) in changes.iter().filter_map(record_change) {
        seq.push(msg.seq as i64);
        event_id.push(env.event_id);
        app.push(rc.app_id.as_str());
        space.push(rc.space_id.as_str());
        table.push(rc.table.as_str());
        record.push(rc.record_id.as_str());
        op.push(rc.op.as_str());
        at.push(rc.at);
        data.push(rc.data.as_ref().map(json_text));
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
    // Positions above the locked checkpoint are new by construction; event ids almost
    // always are, and are checked per row only when a batch turned out not to be (the
    // check is a second index probe per row).
    let on_conflict = match event_ids {
        // Every row goes in, or the statement fails: the positions are known already.
        EventIds::New => "",
        EventIds::MayRepeat => "ON CONFLICT (event_id) DO NOTHING RETURNING seq",
    };
    let sql = format!(
        "INSERT INTO change_log (seq, event_id, app_id, space_id, table_name, record_id, op, at, data, fields, \
                                 user_id, client_id, actor, origin, schema_version, received_at, logged_at) \
         SELECT * FROM UNNEST($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                              $8::timestamptz[], $9::json[], $10::json[], $11::text[], $12::text[], $13::json[], \
                              $14::json[], $15::int4[], $16::timestamptz[], $17::timestamptz[]) \
         {on_conflict}"
    );
    let insert = sqlx::query(&sql)
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
        .bind(&logged);
    match event_ids {
        EventIds::New => {
            insert.execute(&mut **tx).await?;
            Ok(seq)
        }
        EventIds::MayRepeat => insert
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|row| row.try_get::<i64, _>(0))
            .collect(),
    }
}

/// The record change of a decoded message, if it is one.
fn record_change<'a>(
    (msg, env): &'a Decoded<'a>,
) -> Option<(&'a Incoming, &'a RecordChanged, &'a Envelope)> {
    match &env.event {
        Event::RecordChanged(rc) => Some((msg, rc, env)),
        _ => None,
    }
}

/// Keeps `record_visibility` in step with changes that set a visibility. Only a
/// record's author changes its visibility; the author is the user of the record's first
/// change in the change log (what `records.author_id` holds once the records stage has
/// merged it). Found in one snapshot from what this stage owns, wherever the records
/// stage stands: `records` for the records it has merged (up to its checkpoint), else
/// the first change after that checkpoint (this batch's rows included). So a rebuild,
/// whose log stage runs far ahead of its records stage, decides as the live projector
/// did. Every visibility the author sets is kept with its instant (last-write-wins),
/// the default included, so an older change that syncs late loses to it; a record
/// whose visibility was never set has no row.
async fn apply_visibility(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    changes: &[Decoded<'_>],
    logged: &HashSet<i64>,
) -> Result<(), sqlx::Error> {
    let setting: Vec<_> = changes
        .iter()
        .filter_map(record_change)
        .filter(|(msg, _, _)| logged.contains(&(msg.seq as i64)))
        .filter_map(|(msg, rc, env)| {
            let (v, at) = rc.visibility_set()?;
            schemas::event::VISIBILITIES.contains(&v).then_some((
                msg.seq,
                rc,
                env.metadata.user_id.as_str(),
                v,
                at,
            ))
        })
        .collect();
    // One statement per change, in log order: visibility changes are rare, and a later
    // change of the same record must see the earlier one.
    let records_checkpoint = crate::records::checkpoint_name(name);
    for (seq, rc, user, visibility, at) in setting {
        sqlx::query(
            "INSERT INTO record_visibility AS v \
                (space_id, app_id, table_name, record_id, author_id, visibility, updated_seq, visibility_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
             WHERE $5 = COALESCE( \
                    (SELECT r.author_id FROM records r \
                        WHERE (r.space_id, r.app_id, r.table_name, r.record_id) = ($1, $2, $3, $4)), \
                    (SELECT c.user_id FROM change_log c \
                        WHERE c.space_id = $1 AND c.app_id = $2 AND c.table_name = $3 AND c.record_id = $4 \
                          AND c.seq > COALESCE((SELECT last_seq FROM projector_checkpoints WHERE name = $9), 0) \
                        ORDER BY c.seq LIMIT 1)) \
             ON CONFLICT (space_id, app_id, table_name, record_id) DO UPDATE \
                SET visibility = EXCLUDED.visibility, updated_seq = EXCLUDED.updated_seq, \
                    visibility_at = EXCLUDED.visibility_at \
                WHERE v.author_id = EXCLUDED.author_id \
                  AND (v.visibility_at IS NULL OR EXCLUDED.visibility_at >= v.visibility_at)",
        )
        .bind(&rc.space_id)
        .bind(&rc.app_id)
        .bind(&rc.table)
        .bind(&rc.record_id)
        .bind(user)
        .bind(visibility)
        .bind(seq as i64)
        .bind(at)
        .bind(&records_checkpoint)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Applies one membership event to `spaces` and `space_members`, by the same rules as
/// every gateway's membership view (`ingest::membership`): a member joins only an
/// existing, undeleted space; a role changes only for a member; deleting a space
/// removes every member.
async fn apply_membership(
    tx: &mut Transaction<'_, Postgres>,
    seq: u64,
    by: &str,
    event: MembershipEvent<'_>,
) -> Result<(), sqlx::Error> {
    let seq = seq as i64;
    match event {
        MembershipEvent::SpaceCreated(e) => {
            sqlx::query(
                "INSERT INTO spaces (space_id, type, name, created_by, created_seq) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&e.space_id)
            .bind(e.space_type.as_str())
            .bind(&e.name)
            .bind(by)
            .bind(seq)
            .execute(&mut **tx)
            .await?;
        }
        MembershipEvent::MemberAdded(e) => {
            sqlx::query(
                "INSERT INTO space_members (space_id, user_id, role, updated_seq) \
                 SELECT $1, $2, $3, $4 WHERE EXISTS \
                    (SELECT 1 FROM spaces WHERE space_id = $1 AND deleted_seq IS NULL) \
                 ON CONFLICT (space_id, user_id) DO UPDATE SET role = EXCLUDED.role, updated_seq = EXCLUDED.updated_seq",
            )
            .bind(&e.space_id)
            .bind(&e.user_id)
            .bind(e.role.as_str())
            .bind(seq)
            .execute(&mut **tx)
            .await?;
        }
        MembershipEvent::MemberRoleChanged(e) => {
            sqlx::query(
                "UPDATE space_members SET role = $3, updated_seq = $4 WHERE space_id = $1 AND user_id = $2",
            )
            .bind(&e.space_id)
            .bind(&e.user_id)
            .bind(e.role.as_str())
            .bind(seq)
            .execute(&mut **tx)
            .await?;
        }
        MembershipEvent::MemberRemoved(e) => {
            sqlx::query("DELETE FROM space_members WHERE space_id = $1 AND user_id = $2")
                .bind(&e.space_id)
                .bind(&e.user_id)
                .execute(&mut **tx)
                .await?;
        }
        MembershipEvent::SpaceDeleted(e) => {
            sqlx::query(
                "WITH gone AS (DELETE FROM space_members WHERE space_id = $1) \
                 UPDATE spaces SET deleted_seq = $2 WHERE space_id = $1 AND deleted_seq IS NULL",
            )
            .bind(&e.space_id)
            .bind(seq)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// JSON text of a value (`change_log` stores payloads as `json`, passed as text).
fn json_text<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
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
