//! The event envelope and every event type of the log.
//!
//! Events are past-tense facts. The envelope carries identity (`eventId`), type,
//! version and time; the payload is the fact itself; metadata says who caused it.
//! Record changes and membership events are variants of [`Event`]; visibility events
//! will be too.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    membership::{
        MemberAdded, MemberRemoved, MemberRoleChanged, MembershipEvent, SpaceCreated, SpaceDeleted,
    },
    subject::{change_subject, membership_subject},
};

/// Version of the envelope and payload layout written by this code.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// One message of the log: a fact, who caused it and when. Its position in the log (the
/// JetStream stream sequence) is not part of it; consumers take it from the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Unique per fact, and deterministic for a given client change: a resend of the
    /// same change carries the same id, so it is applied at most once.
    pub event_id: Uuid,
    /// Version of this envelope's layout (`EVENT_SCHEMA_VERSION`).
    pub schema_version: u32,
    /// When it happened: for a client change, when the server received it.
    pub occurred_at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: Event,
    pub metadata: Metadata,
}

/// What happened: `type` names the fact, `payload` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "payload")]
pub enum Event {
    RecordChanged(RecordChanged),
    SpaceCreated(SpaceCreated),
    MemberAdded(MemberAdded),
    MemberRoleChanged(MemberRoleChanged),
    MemberRemoved(MemberRemoved),
    SpaceDeleted(SpaceDeleted),
}

impl Event {
    /// The membership event this is, if it is one.
    pub fn membership(&self) -> Option<MembershipEvent<'_>> {
        Some(match self {
            Event::RecordChanged(_) => return None,
            Event::SpaceCreated(e) => MembershipEvent::SpaceCreated(e),
            Event::MemberAdded(e) => MembershipEvent::MemberAdded(e),
            Event::MemberRoleChanged(e) => MembershipEvent::MemberRoleChanged(e),
            Event::MemberRemoved(e) => MembershipEvent::MemberRemoved(e),
            Event::SpaceDeleted(e) => MembershipEvent::SpaceDeleted(e),
        })
    }

    /// The subject this event belongs on.
    pub fn subject(&self) -> String {
        match self {
            Event::RecordChanged(rc) => change_subject(&rc.space_id, &rc.app_id, &rc.table),
            other => {
                membership_subject(other.membership().map(|m| m.space_id()).unwrap_or_default())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }

    pub fn parse(raw: &str) -> Option<Op> {
        match raw {
            "insert" => Some(Op::Insert),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// A client's change to one record, normalized: timestamps are instants (clamped by the
/// clock-skew rule) and the space is resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordChanged {
    pub app_id: String,
    pub space_id: String,
    pub table: String,
    pub record_id: String,
    pub op: Op,
    /// The effective time of an insert (for every field of `data`) or a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// Insert: the full record as the client sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
    /// Update: the changed fields with their timestamps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, FieldValue>>,
    /// The client's own schema version of the change.
    pub client_schema_version: u32,
}

impl RecordChanged {
    /// The visibility this change gives its record, if it sets one: `data.visibility`
    /// of an insert, `fields.visibility` of an update.
    pub fn visibility(&self) -> Option<&str> {
        match self.op {
            Op::Insert => self.data.as_ref()?.get(VISIBILITY_FIELD)?.as_str(),
            Op::Update => self.fields.as_ref()?.get(VISIBILITY_FIELD)?.value.as_str(),
            Op::Delete => None,
        }
    }

    /// The visibility this change sets and the instant it sets it at (the insert's, or
    /// the field's): what last-write-wins compares. An insert without an instant sets
    /// nothing (the merge ignores it too).
    pub fn visibility_set(&self) -> Option<(&str, DateTime<Utc>)> {
        match self.op {
            Op::Insert => Some((
                self.data.as_ref()?.get(VISIBILITY_FIELD)?.as_str()?,
                self.at?,
            )),
            Op::Update => {
                let field = self.fields.as_ref()?.get(VISIBILITY_FIELD)?;
                Some((field.value.as_str()?, field.at))
            }
            Op::Delete => None,
        }
    }
}

/// The record field holding a record's visibility.
pub const VISIBILITY_FIELD: &str = "visibility";

/// The record field holding a record's author (stamped by the server on insert).
pub const AUTHOR_FIELD: &str = "authorId";

/// Who may read a record, besides its author.
pub const VISIBILITIES: [&str; 4] = ["private", "space", "unlisted", "public"];

/// The visibility of a record that never set one.
pub const DEFAULT_VISIBILITY: &str = "space";

/// A field's new value and the instant of its write (last write wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FieldValue {
    pub value: Value,
    pub at: DateTime<Utc>,
}

/// Who caused the event and when the server received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The authenticated user who pushed the change (`sub` of the token).
    pub user_id: String,
    pub client_id: String,
    /// Opaque, passed on as given; absent rather than `null` when not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Value>,
    pub received_at: DateTime<Utc>,
}

/// An envelope as the log holds it, with the payload left unparsed until its type is
/// known.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEnvelope<'a> {
    event_id: Uuid,
    schema_version: u32,
    occurred_at: DateTime<Utc>,
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
    metadata: Metadata,
}

impl Envelope {
    /// Decodes an envelope from the log's JSON. The same result as deserializing it,
    /// several times cheaper: the derived decoder buffers every field of the flattened,
    /// tagged event before reading it; this one reads the payload once its type is
    /// known. Every follower of the log (projector, gateway) decodes each event with it.
    pub fn from_json(json: &[u8]) -> Result<Self, serde_json::Error> {
        use serde::de::Error as _;
        let wire: WireEnvelope<'_> = serde_json::from_slice(json)?;
        let payload = wire.payload.get();
        let event = match wire.kind.as_ref() {
            "RecordChanged" => Event::RecordChanged(serde_json::from_str(payload)?),
            "SpaceCreated" => Event::SpaceCreated(serde_json::from_str(payload)?),
            "MemberAdded" => Event::MemberAdded(serde_json::from_str(payload)?),
            "MemberRoleChanged" => Event::MemberRoleChanged(serde_json::from_str(payload)?),
            "MemberRemoved" => Event::MemberRemoved(serde_json::from_str(payload)?),
            "SpaceDeleted" => Event::SpaceDeleted(serde_json::from_str(payload)?),
            other => {
                return Err(serde_json::Error::custom(format!(
                    "unknown event type {other:?}"
                )));
            }
        };
        Ok(Self {
            event_id: wire.event_id,
            schema_version: wire.schema_version,
            occurred_at: wire.occurred_at,
            event,
            metadata: wire.metadata,
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Room for a typical event up front: growing from serde_json's default
        // capacity copied the buffer three times.
        let mut out = Vec::with_capacity(1024);
        // Serializing these types cannot fail: every map key is a string.
        match serde_json::to_writer(&mut out, self) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_with_type_tag() {
        let env = Envelope {
            event_id: Uuid::nil(),
            schema_version: EVENT_SCHEMA_VERSION,
            occurred_at: DateTime::UNIX_EPOCH,
            event: Event::RecordChanged(RecordChanged {
                app_id: "todo".into(),
                space_id: "s".into(),
                table: "tasks".into(),
                record_id: "t1".into(),
                op: Op::Update,
                at: None,
                data: None,
                fields: Some(BTreeMap::from([(
                    "title".to_owned(),
                    FieldValue {
                        value: Value::from("x"),
                        at: DateTime::UNIX_EPOCH,
                    },
                )])),
                client_schema_version: 1,
            }),
            metadata: Metadata {
                user_id: "u".into(),
                client_id: "c".into(),
                actor: None,
                origin: None,
                received_at: DateTime::UNIX_EPOCH,
            },
        };
        let json: Value = serde_json::from_slice(&env.to_json()).unwrap();
        assert_eq!(json["type"], "RecordChanged");
        assert_eq!(json["payload"]["op"], "update");
        assert!(json["metadata"].get("actor").is_none());
        let back: Envelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, env);
        assert_eq!(Envelope::from_json(&env.to_json()).unwrap(), env);
    }

    #[test]
    fn the_fast_decoder_reads_every_event_type_like_the_derived_one() {
        let metadata =
            r#""metadata": {"userId": "u", "clientId": "c", "receivedAt": "2026-01-01T00:00:00Z"}"#;
        let events = [
            r#""type": "SpaceCreated", "payload": {"spaceId": "s", "type": "family", "name": "F"}"#,
            r#""type": "MemberAdded", "payload": {"spaceId": "s", "userId": "b", "role": "viewer"}"#,
            r#""type": "MemberRoleChanged", "payload": {"spaceId": "s", "userId": "b", "role": "admin"}"#,
            r#""type": "MemberRemoved", "payload": {"spaceId": "s", "userId": "b"}"#,
            r#""type": "SpaceDeleted", "payload": {"spaceId": "s"}"#,
            r#""payload": {"appId": "a", "spaceId": "s", "table": "t", "recordId": "r", "op": "insert",
                "data": {"x": "\u00e9\"q"}, "clientSchemaVersion": 1}, "type": "RecordChanged""#,
        ];
        for event in events {
            let json = format!(
                r#"{{"eventId": "00000000-0000-0000-0000-000000000001", "schemaVersion": 1,
                    "occurredAt": "2026-01-01T00:00:00Z", {event}, {metadata}, "extra": 1}}"#
            );
            let derived: Envelope = serde_json::from_str(&json).unwrap();
            assert_eq!(
                Envelope::from_json(json.as_bytes()).unwrap(),
                derived,
                "{event}"
            );
        }
        for bad in [
            r#"{"type": "Nope", "payload": {}}"#,
            r#"{"eventId": "00000000-0000-0000-0000-000000000001", "schemaVersion": 1, "occurredAt": "2026-01-01T00:00:00Z", "type": "SpaceDeleted", "payload": {"spaceId": 1}, "metadata": {}}"#,
            "not json",
        ] {
            assert!(Envelope::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
