//! Validated client changes to canonical events, ready to publish: space resolved and
//! authorized, timestamps clamped, deterministic event ids, subjects escaped.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use schemas::{
    Envelope, Event, FieldValue, Metadata, Op, RecordChanged,
    event::{AUTHOR_FIELD, EVENT_SCHEMA_VERSION},
    stream::MAX_EVENT_BYTES,
    time::{clamp_to_receipt, parse_instant, truncate_micros},
};
use serde_json::Value;
use uuid::Uuid;

use crate::{Access, ClientChange, RejectedBatch};

/// Namespace of the deterministic event ids.
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x0c6b_54f2_35a4_4c91_a0e8_77d2_3be1_9f40);

/// Who pushes, where, when.
#[derive(Debug, Clone, Copy)]
pub struct PushContext<'a> {
    pub access: &'a Access,
    pub app_id: &'a str,
    pub client_id: &'a str,
    pub received_at: DateTime<Utc>,
}

/// One event ready to publish.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub subject: String,
    /// `Nats-Msg-Id`: the event id, so a resent change is dropped by JetStream.
    pub msg_id: String,
    pub payload: Bytes,
    pub envelope: Envelope,
}

/// Turns a validated batch into events. Fails whole: one refused change refuses all.
///
/// A change sent twice in one push (the same bytes, so the same event id) becomes one
/// event, at its last place: an atomic batch must not repeat a message id (nats-server
/// refuses it whole, as it refuses a resend), and the last place keeps what the push
/// ends with (`[insert r, delete r, insert r]` without times of their own get the same
/// instant, so log order decides, and `r` must exist).
pub fn prepare_batch(
    ctx: PushContext<'_>,
    changes: Vec<ClientChange>,
) -> Result<Vec<PreparedEvent>, RejectedBatch> {
    let received_at = truncate_micros(ctx.received_at);
    let events = changes
        .into_iter()
        .enumerate()
        .map(|(i, change)| prepare_one(&ctx, received_at, i, change))
        .collect::<Result<Vec<_>, _>>()?;
    let mut later = HashSet::with_capacity(events.len());
    let mut kept: Vec<PreparedEvent> = events
        .into_iter()
        .rev()
        .filter(|e| later.insert(e.envelope.event_id))
        .collect();
    kept.reverse();
    Ok(kept)
}

fn prepare_one(
    ctx: &PushContext<'_>,
    received_at: DateTime<Utc>,
    i: usize,
    change: ClientChange,
) -> Result<PreparedEvent, RejectedBatch> {
    let forbidden = |why: String| RejectedBatch::forbidden(i, format!("change {i}: {why}"));
    let space_id = ctx
        .access
        .resolve_space(change.space_id.as_deref())
        .map_err(forbidden)?;
    for claim in change.space_claims.iter().skip(1) {
        if ctx.access.resolve_space(Some(claim)).map_err(forbidden)? != space_id {
            return Err(forbidden(format!(
                "a change may not move a record into another space ({:?} and {claim:?})",
                change.space_claims[0]
            )));
        }
    }
    match ctx.access.role(&space_id) {
        None => {
            return Err(forbidden(format!(
                "you are not a member of space {space_id:?}"
            )));
        }
        Some(role) if !role.can_write() => {
            return Err(forbidden(format!(
                "your role in space {space_id:?} ({}) may not write",
                role.as_str()
            )));
        }
        Some(_) => {}
    }
    let user = ctx.access.user_id();
    let claimed_author = change
        .data
        .as_ref()
        .and_then(|d| d.get(AUTHOR_FIELD))
        .into_iter()
        .chain(
            change
                .fields
                .as_ref()
                .and_then(|f| f.get(AUTHOR_FIELD))
                .map(|(v, _)| v),
        )
        .filter_map(Value::as_str)
        .find(|author| *author != user);
    if let Some(author) = claimed_author {
        return Err(forbidden(format!(
            "`authorId` {author:?} is not you; the server sets it"
        )));
    }
    let mut data = change.data;
    if change.op == Op::Insert
        && let Some(data) = data.as_mut()
    {
        data.insert(AUTHOR_FIELD.to_owned(), Value::from(user));
    }
    let clamp = |t: DateTime<Utc>| clamp_to_receipt(truncate_micros(t), received_at);
    let at = match change.op {
        Op::Insert => Some(clamp(insert_time(data.as_ref()).unwrap_or(received_at))),
        Op::Delete => Some(clamp(change.deleted_at.unwrap_or(received_at))),
        Op::Update => None,
    };
    let fields = change.fields.map(|fields| {
        fields
            .into_iter()
            .map(|(name, (value, t))| {
                (
                    name,
                    FieldValue {
                        value,
                        at: clamp(t),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>()
    });
    let event_id = event_id(ctx, &change.raw);
    let envelope = Envelope {
        event_id,
        schema_version: EVENT_SCHEMA_VERSION,
        occurred_at: received_at,
        event: Event::RecordChanged(RecordChanged {
            app_id: ctx.app_id.to_owned(),
            space_id,
            table: change.table,
            record_id: change.id,
            op: change.op,
            at,
            data,
            fields,
            client_schema_version: change.schema_version,
        }),
        metadata: Metadata {
            user_id: ctx.access.user_id().to_owned(),
            client_id: ctx.client_id.to_owned(),
            actor: change.actor,
            origin: change.origin,
            received_at,
        },
    };
    let event = PreparedEvent::new(envelope);
    if event.payload.len() > MAX_EVENT_BYTES as usize {
        return Err(RejectedBatch::TooLarge {
            index: Some(i),
            message: format!("change {i} is larger than {MAX_EVENT_BYTES} bytes"),
        });
    }
    Ok(event)
}

impl PreparedEvent {
    /// Any event, on its subject, de-duplicated by its id.
    pub fn new(envelope: Envelope) -> Self {
        Self {
            subject: envelope.event.subject(),
            msg_id: envelope.event_id.to_string(),
            payload: envelope.to_json().into(),
            envelope,
        }
    }
}

/// The time of an insert: the record's own `updatedAt`, else `createdAt`, else receipt.
fn insert_time(data: Option<&serde_json::Map<String, Value>>) -> Option<DateTime<Utc>> {
    let data = data?;
    ["updatedAt", "createdAt"]
        .iter()
        .find_map(|k| data.get(*k).and_then(Value::as_str).and_then(parse_instant))
}

/// Same user, app, client and change bytes → same id. The change's bytes are its
/// canonical serialization (keys sorted), so they do not depend on the key order the
/// client used.
fn event_id(ctx: &PushContext<'_>, raw: &[u8]) -> Uuid {
    let parts = [ctx.access.user_id(), ctx.app_id, ctx.client_id];
    let mut name = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + raw.len());
    for part in parts {
        name.extend_from_slice(part.as_bytes());
        name.push(0);
    }
    name.extend_from_slice(raw);
    Uuid::new_v5(&EVENT_NAMESPACE, &name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_push_request;
    use chrono::TimeDelta;
    use serde_json::json;

    fn ctx<'a>(access: &'a Access, received_at: DateTime<Utc>) -> PushContext<'a> {
        PushContext {
            access,
            app_id: "todo",
            client_id: "c1",
            received_at,
        }
    }

    fn changes(v: Value) -> Vec<ClientChange> {
        parse_push_request(&serde_json::to_vec(&json!({ "changes": v })).unwrap())
            .unwrap()
            .changes
    }

    fn record(e: &PreparedEvent) -> &RecordChanged {
        match &e.envelope.event {
            Event::RecordChanged(rc) => rc,
            other => panic!("not a record change: {other:?}"),
        }
    }

    #[test]
    fn resent_change_gets_the_same_event_id_regardless_of_key_order() {
        let alice = Access::personal_only("alice");
        let now = Utc::now();
        let a = prepare_batch(
            ctx(&alice, now),
            changes(json!([{"table": "t", "id": "1", "op": "insert", "data": {"a": 1, "b": 2}}])),
        )
        .unwrap();
        let b = prepare_batch(
            ctx(&alice, now + TimeDelta::seconds(3)),
            changes(json!([{"op": "insert", "data": {"b": 2, "a": 1}, "id": "1", "table": "t"}])),
        )
        .unwrap();
        assert_eq!(a[0].msg_id, b[0].msg_id);
        let c = prepare_batch(
            ctx(&alice, now),
            changes(json!([{"table": "t", "id": "1", "op": "insert", "data": {"a": 2}}])),
        )
        .unwrap();
        assert_ne!(a[0].msg_id, c[0].msg_id);
    }

    #[test]
    fn a_change_repeated_within_a_push_becomes_one_event() {
        let alice = Access::personal_only("alice");
        let events = prepare_batch(
            ctx(&alice, Utc::now()),
            changes(json!([
                {"table": "t", "id": "1", "op": "delete"},
                {"table": "t", "id": "2", "op": "insert", "data": {"a": 1}},
                {"id": "1", "op": "delete", "table": "t"},
                {"table": "t", "id": "2", "op": "insert", "data": {"a": 2}},
            ])),
        )
        .unwrap();
        let ids: Vec<(&str, Op)> = events
            .iter()
            .map(|e| (record(e).record_id.as_str(), record(e).op))
            .collect();
        assert_eq!(
            ids,
            [("2", Op::Insert), ("1", Op::Delete), ("2", Op::Insert)]
        );
        let unique: HashSet<Uuid> = events.iter().map(|e| e.envelope.event_id).collect();
        assert_eq!(unique.len(), 3);
    }

    #[test]
    fn event_ids_are_stable_across_releases() {
        // The derivation deployed clients' resends rely on: v5 of user, app and client
        // (NUL-terminated) and the change's sorted-key JSON. Changing it would make a
        // resend spanning an upgrade land twice.
        let alice = Access::personal_only("alice");
        let change = json!({"table": "t", "id": "1", "op": "insert", "data": {"b": 2, "a": 1}});
        let event =
            &prepare_batch(ctx(&alice, Utc::now()), changes(json!([change.clone()]))).unwrap()[0];
        let mut name = b"alice\0todo\0c1\0".to_vec();
        name.extend_from_slice(&serde_json::to_vec(&change).unwrap());
        assert_eq!(
            event.envelope.event_id,
            Uuid::new_v5(&EVENT_NAMESPACE, &name)
        );
        assert_eq!(
            event.msg_id, "ec07edba-bd77-5282-aeb7-8106b89c9b48",
            "the id this change has always had"
        );
    }

    #[test]
    fn future_field_timestamps_are_clamped_to_receipt() {
        let alice = Access::personal_only("alice");
        let now = parse_instant("2026-05-01T12:00:00Z").unwrap();
        let events = prepare_batch(
            ctx(&alice, now),
            changes(json!([{"table": "t", "id": "1", "op": "update", "fields": {
                "far": {"value": 1, "at": "2030-01-01T00:00:00Z"},
                "near": {"value": 2, "at": "2026-05-01T12:04:00Z"},
            }}])),
        )
        .unwrap();
        let fields = record(&events[0]).fields.as_ref().unwrap();
        assert_eq!(fields["far"].at, now);
        assert_eq!(
            fields["near"].at,
            parse_instant("2026-05-01T12:04:00Z").unwrap()
        );
    }

    #[test]
    fn spaces_resolve_and_foreign_spaces_are_refused() {
        let alice = Access::personal_only("alice");
        let now = Utc::now();
        let ok = prepare_batch(
            ctx(&alice, now),
            changes(json!([
                {"table": "t", "id": "1", "op": "insert", "data": {}},
                {"table": "t", "id": "2", "op": "insert", "data": {}, "spaceId": "_personal:alice"},
            ])),
        )
        .unwrap();
        assert!(
            ok.iter()
                .all(|e| record(e).space_id == alice.personal_space())
        );
        assert!(ok[0].subject.starts_with("sync."));

        for space in ["_personal:bob", "some-shared-space"] {
            let err = prepare_batch(
                ctx(&alice, now),
                changes(json!([
                    {"table": "t", "id": "1", "op": "insert", "data": {}},
                    {"table": "t", "id": "2", "op": "insert", "data": {}, "spaceId": space},
                ])),
            )
            .unwrap_err();
            assert!(
                matches!(err, RejectedBatch::Forbidden { index: Some(1), .. }),
                "{space}"
            );
        }
    }

    #[test]
    fn insert_time_comes_from_the_record() {
        let alice = Access::personal_only("alice");
        let now = parse_instant("2026-05-01T12:00:00Z").unwrap();
        let events = prepare_batch(
            ctx(&alice, now),
            changes(json!([
                {"table": "t", "id": "1", "op": "insert", "data": {"updatedAt": "2026-04-01T00:00:00Z"}},
                {"table": "t", "id": "2", "op": "insert", "data": {"createdAt": "2026-03-01T00:00:00Z"}},
                {"table": "t", "id": "3", "op": "insert", "data": {}},
                {"table": "t", "id": "4", "op": "delete"},
            ])),
        )
        .unwrap();
        let ats: Vec<_> = events.iter().map(|e| record(e).at.unwrap()).collect();
        assert_eq!(ats[0], parse_instant("2026-04-01T00:00:00Z").unwrap());
        assert_eq!(ats[1], parse_instant("2026-03-01T00:00:00Z").unwrap());
        assert_eq!(ats[2], now);
        assert_eq!(ats[3], now);
    }

    #[test]
    fn the_server_stamps_the_author_and_refuses_forged_ones() {
        let alice = Access::personal_only("alice");
        let now = Utc::now();
        let events = prepare_batch(
            ctx(&alice, now),
            changes(json!([
                {"table": "t", "id": "1", "op": "insert", "data": {"x": 1}},
                {"table": "t", "id": "2", "op": "insert", "data": {"authorId": "alice"}},
            ])),
        )
        .unwrap();
        for e in &events {
            assert_eq!(record(e).data.as_ref().unwrap()["authorId"], "alice");
        }
        for forged in [
            json!({"table": "t", "id": "1", "op": "insert", "data": {"authorId": "bob"}}),
            json!({"table": "t", "id": "1", "op": "update", "fields": {"authorId": {"value": "bob", "at": "2026-01-01T00:00:00Z"}}}),
        ] {
            let err = prepare_batch(ctx(&alice, now), changes(json!([forged]))).unwrap_err();
            assert!(matches!(
                err,
                RejectedBatch::Forbidden { index: Some(0), .. }
            ));
        }
    }

    #[test]
    fn a_change_cannot_move_a_record_between_spaces() {
        let alice = Access::with_roles(
            "alice",
            std::collections::HashMap::from([("fam".to_owned(), schemas::Role::Member)]),
        );
        let now = Utc::now();
        // Naming the same space twice (sentinel and id) is fine.
        prepare_batch(
            ctx(&alice, now),
            changes(
                json!([{"table": "t", "id": "1", "op": "insert", "spaceId": "_personal:alice",
                            "data": {"spaceId": alice.personal_space()}}]),
            ),
        )
        .unwrap();
        for moving in [
            json!({"table": "t", "id": "1", "op": "insert", "spaceId": "fam", "data": {"spaceId": "_personal:alice"}}),
            json!({"table": "t", "id": "1", "op": "update", "spaceId": "fam", "fields": {"spaceId": {"value": "other", "at": "2026-01-01T00:00:00Z"}}}),
        ] {
            let err = prepare_batch(ctx(&alice, now), changes(json!([moving]))).unwrap_err();
            assert!(
                matches!(&err, RejectedBatch::Forbidden { message, .. } if message.contains("another space")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn viewers_and_strangers_may_not_write() {
        let vera = Access::with_roles(
            "vera",
            std::collections::HashMap::from([("fam".to_owned(), schemas::Role::Viewer)]),
        );
        let now = Utc::now();
        for (space, why) in [("fam", "viewer"), ("club", "not a member")] {
            let err = prepare_batch(
                ctx(&vera, now),
                changes(json!([{"table": "t", "id": "1", "op": "insert", "spaceId": space, "data": {}}])),
            )
            .unwrap_err();
            assert!(
                matches!(&err, RejectedBatch::Forbidden { message, .. } if message.contains(why)),
                "{err:?}"
            );
        }
    }
}
