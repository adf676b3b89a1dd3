//! The client protocol's response shapes (see PROTOCOL.md). Requests are validated
//! field by field in `ingest`, from raw JSON, so errors can name the offending change.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use std::collections::BTreeMap;

use crate::{Cursor, Envelope, FieldValue, Op, RecordChanged, time};

/// Highest change `schemaVersion` this server understands.
pub const MAX_SCHEMA_VERSION: u32 = 1;

/// Most changes returned in one pull or push response.
pub const PAGE_SIZE: usize = 1000;

/// Largest push body accepted.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Most changes in one push: what `nats/log-limits.conf` lets one atomic batch hold, so
/// every push a server with those limits takes is all-or-nothing. (Ten MiB of the
/// smallest changes would be about 280,000.)
pub const MAX_PUSH_CHANGES: usize = 100_000;

/// What a cursor looks like: `s` and the log position in 16 lower-case hex digits.
pub const CURSOR_PATTERN: &str = "^s[0-9a-f]{16}$";

/// Response of push and pull.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncResponse {
    /// In log order: for a pull, the collection's changes after `since`; for a push,
    /// the app's changes after `since` from other clients.
    pub server_changes: Vec<ServerChange>,
    /// Always empty: conflicts are resolved on the server, field by field (last write
    /// wins); kept for clients of the server this one replaces.
    #[schemars(length(max = 0))]
    pub conflicts: Vec<Value>,
    /// The cursor to send as `since` next time.
    #[schemars(regex(pattern = CURSOR_PATTERN))]
    pub synced_until: String,
    /// More changes follow `syncedUntil`: ask again with it.
    pub has_more: bool,
}

/// A change as the server sends it to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerChange {
    pub event_id: Uuid,
    /// Position of this change in the log.
    #[schemars(regex(pattern = CURSOR_PATTERN))]
    pub cursor: String,
    pub table: String,
    pub id: String,
    #[schemars(with = "Op")]
    pub op: String,
    /// Insert: the full record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
    /// Update: `{field: {value, at, updatedAt}}` (`updatedAt` repeats `at` for older clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<BTreeMap<String, ServerField>>")]
    pub fields: Option<Map<String, Value>>,
    /// Delete: when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<DateTime<Utc>>")]
    pub deleted_at: Option<String>,
    pub space_id: String,
    pub author_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Value>,
    pub schema_version: u32,
}

/// A field of an update as clients receive it: its new value and the instant of its
/// write.
#[derive(JsonSchema)]
#[allow(dead_code)] // Only its schema is used.
struct ServerField {
    value: Value,
    at: DateTime<Utc>,
    /// The same instant as `at`, for older clients.
    #[schemars(rename = "updatedAt")]
    updated_at: DateTime<Utc>,
}

/// The change clients receive for the record change `rc` of `env`, logged at `seq`,
/// borrowed from the event: it serializes exactly as the [`ServerChange`] the change
/// log serves for it, without copying the event first.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerChangeView<'a> {
    event_id: Uuid,
    cursor: String,
    table: &'a str,
    id: &'a str,
    op: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<FieldsView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<String>,
    space_id: &'a str,
    author_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'a Value>,
    schema_version: u32,
}

impl<'a> ServerChangeView<'a> {
    pub fn new(seq: u64, env: &'a Envelope, rc: &'a RecordChanged) -> Self {
        Self {
            event_id: env.event_id,
            cursor: Cursor(seq).encode(),
            table: &rc.table,
            id: &rc.record_id,
            op: rc.op.as_str(),
            data: rc.data.as_ref(),
            fields: rc.fields.as_ref().map(FieldsView),
            deleted_at: (rc.op == Op::Delete)
                .then(|| rc.at.map(time::canonical))
                .flatten(),
            space_id: &rc.space_id,
            author_id: &env.metadata.user_id,
            actor: env.metadata.actor.as_ref(),
            origin: env.metadata.origin.as_ref(),
            schema_version: rc.client_schema_version,
        }
    }
}

/// `{field: {value, at, updatedAt}}`.
#[derive(Debug)]
struct FieldsView<'a>(&'a BTreeMap<String, FieldValue>);

impl Serialize for FieldsView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        #[derive(Serialize)]
        struct Field<'a> {
            value: &'a Value,
            at: &'a str,
            #[serde(rename = "updatedAt")]
            updated_at: &'a str,
        }
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, f) in self.0 {
            let at = time::canonical(f.at);
            map.serialize_entry(
                name,
                &Field {
                    value: &f.value,
                    at: &at,
                    updated_at: &at,
                },
            )?;
        }
        map.end()
    }
}

/// Every error response: `{"error": code, "message": text}` and, for a rejected change,
/// its index in the batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

#[cfg(test)]
mod view_tests {
    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::*;
    use crate::Metadata;

    fn envelope(op: Op, at: Option<DateTime<Utc>>) -> Envelope {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        Envelope {
            event_id: Uuid::nil(),
            schema_version: 1,
            occurred_at: t("2026-01-01T00:00:00Z"),
            event: crate::Event::RecordChanged(RecordChanged {
                app_id: "app".into(),
                space_id: "s".into(),
                table: "notes".into(),
                record_id: "n1".into(),
                op,
                at,
                data: None,
                fields: (op == Op::Update).then(|| {
                    BTreeMap::from([(
                        "text".to_owned(),
                        FieldValue {
                            value: json!("hi"),
                            at: t("2026-05-01T12:00:00.5+02:00"),
                        },
                    )])
                }),
                client_schema_version: 1,
            }),
            metadata: Metadata {
                user_id: "A".into(),
                client_id: "phone".into(),
                actor: Some(json!({"kind": "ai"})),
                origin: None,
                received_at: t("2026-01-01T00:00:00Z"),
            },
        }
    }

    /// Older clients read `updatedAt` where newer ones read `at`: changes carry both.
    fn with_legacy_updated_at(mut fields: Map<String, Value>) -> Map<String, Value> {
        for field in fields.values_mut() {
            if let Value::Object(f) = field
                && let Some(at) = f.get("at").cloned()
            {
                f.insert("updatedAt".to_owned(), at);
            }
        }
        fields
    }

    fn view(env: &Envelope) -> Value {
        let crate::Event::RecordChanged(rc) = &env.event else {
            unreachable!("a record change")
        };
        serde_json::to_value(ServerChangeView::new(7, env, rc)).unwrap()
    }

    #[test]
    fn a_view_serializes_as_the_change_clients_receive() {
        let update = view(&envelope(Op::Update, None));
        let expected = ServerChange {
            event_id: Uuid::nil(),
            cursor: Cursor(7).encode(),
            table: "notes".into(),
            id: "n1".into(),
            op: "update".into(),
            data: None,
            fields: Some(with_legacy_updated_at(
                json!({"text": {"value": "hi", "at": "2026-05-01T10:00:00.500000Z"}})
                    .as_object()
                    .cloned()
                    .unwrap(),
            )),
            deleted_at: None,
            space_id: "s".into(),
            author_id: "A".into(),
            actor: Some(json!({"kind": "ai"})),
            origin: None,
            schema_version: 1,
        };
        assert_eq!(update, serde_json::to_value(&expected).unwrap());

        let at = "2026-05-02T00:00:00Z".parse().unwrap();
        let delete = view(&envelope(Op::Delete, Some(at)));
        assert_eq!(delete["deletedAt"], time::canonical(at));
        assert!(delete.get("fields").is_none() && delete.get("origin").is_none());
    }
}
