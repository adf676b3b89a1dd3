//! The client protocol's response shapes (see PROTOCOL.md). Requests are validated
//! field by field in `ingest`, from raw JSON, so errors can name the offending change.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{Cursor, Envelope, Op, RecordChanged, time};

/// Highest change `schemaVersion` this server understands.
pub const MAX_SCHEMA_VERSION: u32 = 1;

/// Most changes returned in one pull or push response.
pub const PAGE_SIZE: usize = 1000;

/// Largest push body accepted.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Response of push and pull.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResponse {
    pub server_changes: Vec<ServerChange>,
    pub conflicts: Vec<Value>,
    pub synced_until: String,
    pub has_more: bool,
}

/// A change as the server sends it to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerChange {
    pub event_id: Uuid,
    /// Position of this change in the log.
    pub cursor: String,
    pub table: String,
    pub id: String,
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
    /// Update: `{field: {value, at, updatedAt}}` (`updatedAt` repeats `at` for older clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    pub space_id: String,
    pub author_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Value>,
    pub schema_version: u32,
}

impl ServerChange {
    /// The change clients receive for the record change `rc` of `env`, logged at `seq`:
    /// the same as what the projector's change log serves for it.
    pub fn from_event(seq: u64, env: &Envelope, rc: &RecordChanged) -> Self {
        let fields = rc.fields.as_ref().map(|fields| {
            fields
                .iter()
                .map(|(name, f)| {
                    let at = Value::from(time::canonical(f.at));
                    let mut field = Map::new();
                    field.insert("value".to_owned(), f.value.clone());
                    field.insert("at".to_owned(), at);
                    (name.clone(), Value::Object(field))
                })
                .collect()
        });
        Self {
            event_id: env.event_id,
            cursor: Cursor(seq).encode(),
            table: rc.table.clone(),
            id: rc.record_id.clone(),
            op: rc.op.as_str().to_owned(),
            data: rc.data.clone(),
            fields: fields.map(with_legacy_updated_at),
            deleted_at: (rc.op == Op::Delete)
                .then(|| rc.at.map(time::canonical))
                .flatten(),
            space_id: rc.space_id.clone(),
            author_id: env.metadata.user_id.clone(),
            actor: env.metadata.actor.clone(),
            origin: env.metadata.origin.clone(),
            schema_version: rc.client_schema_version,
        }
    }
}

/// Older clients read `updatedAt` where newer ones read `at`: changes carry both.
pub fn with_legacy_updated_at(mut fields: Map<String, Value>) -> Map<String, Value> {
    for field in fields.values_mut() {
        if let Value::Object(f) = field
            && let Some(at) = f.get("at").cloned()
        {
            f.insert("updatedAt".to_owned(), at);
        }
    }
    fields
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
