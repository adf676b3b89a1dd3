//! The client protocol's response shapes (see PROTOCOL.md). Requests are validated
//! field by field in `ingest`, from raw JSON, so errors can name the offending change.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

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

/// Every error response: `{"error": code, "message": text}` and, for a rejected change,
/// its index in the batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}
