//! Validation of a push body, change by change, from raw JSON, so every error names the
//! change index and the field at fault.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemas::{
    Op,
    time::parse_instant,
    wire::{MAX_PUSH_CHANGES, MAX_SCHEMA_VERSION},
};
use serde_json::{Map, Value};

use crate::error::RejectedBatch;

/// Longest table name, record, app, space or client id accepted.
pub const MAX_ID_BYTES: usize = 256;

/// A validated push body.
#[derive(Debug, Clone, PartialEq)]
pub struct PushRequest {
    pub client_id: Option<String>,
    pub since: Option<String>,
    pub changes: Vec<ClientChange>,
}

/// One validated client change, timestamps parsed but not yet clamped.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientChange {
    pub table: String,
    pub id: String,
    pub op: Op,
    pub data: Option<Map<String, Value>>,
    pub fields: Option<BTreeMap<String, (Value, DateTime<Utc>)>>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// As sent (possibly the `_personal:<userId>` sentinel); resolved by `prepare`.
    pub space_id: Option<String>,
    /// Every space the change names (top-level, `data`, `fields`), in that order; they
    /// must all resolve to one space (a change cannot move a record).
    pub space_claims: Vec<String>,
    pub actor: Option<Value>,
    pub origin: Option<Value>,
    pub schema_version: u32,
    /// The change as received, serialized with its keys sorted: what its deterministic
    /// event id is derived from.
    pub raw: Vec<u8>,
}

/// Checks an id that may appear in a subject or a URL: non-empty, at most
/// [`MAX_ID_BYTES`], no subject syntax (`.`, `*`, `>`), whitespace or control characters.
pub fn validate_id(what: &str, raw: &str) -> Result<(), String> {
    if raw.is_empty() {
        return Err(format!("`{what}` must not be empty"));
    }
    if raw.len() > MAX_ID_BYTES {
        return Err(format!("`{what}` is longer than {MAX_ID_BYTES} bytes"));
    }
    if let Some(c) = raw
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("`{what}` contains the forbidden character {c:?}"));
    }
    Ok(())
}

/// Parses and validates a whole push body.
pub fn parse_push_request(body: &[u8]) -> Result<PushRequest, RejectedBatch> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| RejectedBatch::invalid(None, format!("body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(RejectedBatch::invalid(None, "body must be a JSON object"));
    };
    let client_id = optional_string(&obj, "clientId", None)?;
    let since = optional_string(&obj, "since", None)?;
    schema_version(obj.get("schemaVersion"), None)?;
    let changes = match obj.remove("changes") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(RejectedBatch::invalid(None, "`changes` must be an array")),
        None => return Err(RejectedBatch::invalid(None, "`changes` is missing")),
    };
    if changes.len() > MAX_PUSH_CHANGES {
        return Err(RejectedBatch::TooLarge {
            index: None,
            message: format!(
                "a push holds at most {MAX_PUSH_CHANGES} changes, this one {}: send them in \
                 several pushes",
                changes.len()
            ),
        });
    }
    let changes = changes
        .into_iter()
        .enumerate()
        .map(|(i, raw)| parse_change(i, raw))
        .collect::<Result<_, _>>()?;
    Ok(PushRequest {
        client_id,
        since,
        changes,
    })
}

/// Whether any string (key or value) in `v` contains NUL: PostgreSQL cannot store it in
/// JSON it processes, so such changes are refused at the edge.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// [`has_nul`] over everything an event stores.
pub fn event_has_nul(rc: &schemas::RecordChanged, meta: &schemas::Metadata) -> bool {
    let data = rc
        .data
        .iter()
        .flatten()
        .any(|(k, v)| k.contains('\0') || has_nul(v));
    let fields = rc
        .fields
        .iter()
        .flatten()
        .any(|(k, f)| k.contains('\0') || has_nul(&f.value));
    data || fields
        || meta.actor.as_ref().is_some_and(has_nul)
        || meta.origin.as_ref().is_some_and(has_nul)
}

fn parse_change(i: usize, raw: Value) -> Result<ClientChange, RejectedBatch> {
    let bad = |msg: String| RejectedBatch::invalid(i, format!("change {i}: {msg}"));
    let Value::Object(mut obj) = raw else {
        return Err(bad("must be a JSON object".into()));
    };
    if obj.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
        return Err(bad(
            "strings must not contain the NUL character (\\u0000)".into()
        ));
    }
    // `serde_json` keeps object keys sorted, so these bytes do not depend on the key
    // order the client used.
    let raw = serde_json::to_vec(&obj).unwrap_or_default();
    let obj = &mut obj;
    let table = required_id(obj, "table").map_err(bad)?;
    let id = required_id(obj, "id").map_err(bad)?;
    let op = match obj.get("op") {
        Some(Value::String(s)) => Op::parse(s).ok_or_else(|| {
            bad(format!(
                "unknown op {s:?} (expected insert, update or delete)"
            ))
        })?,
        Some(_) => return Err(bad("`op` must be a string".into())),
        None => return Err(bad("`op` is missing".into())),
    };
    let schema_version = schema_version(obj.get("schemaVersion"), Some(i))?;

    let data = match obj.remove("data") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => return Err(bad("`data` must be an object".into())),
    };
    let fields = match obj.remove("fields") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(parse_fields(m).map_err(bad)?),
        Some(_) => return Err(bad("`fields` must be an object".into())),
    };
    let deleted_at = match obj.get("deletedAt") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            parse_instant(s)
                .ok_or_else(|| bad(format!("`deletedAt` {s:?} is not an ISO-8601 timestamp")))?,
        ),
        Some(_) => return Err(bad("`deletedAt` must be a string".into())),
    };
    match op {
        Op::Insert if data.is_none() => return Err(bad("insert needs a `data` object".into())),
        Op::Update if fields.as_ref().is_none_or(BTreeMap::is_empty) => {
            return Err(bad("update needs a non-empty `fields` object".into()));
        }
        _ => {}
    }

    let space_claims = spaces_of(obj, data.as_ref(), fields.as_ref()).map_err(bad)?;
    let space_id = space_claims.first().cloned();
    check_record_fields(data.as_ref(), fields.as_ref()).map_err(bad)?;
    let actor = opaque(obj, "actor");
    let origin = opaque(obj, "origin");
    Ok(ClientChange {
        table,
        id,
        op,
        data,
        fields,
        deleted_at,
        space_id,
        space_claims,
        actor,
        origin,
        schema_version,
        raw,
    })
}

fn parse_fields(m: Map<String, Value>) -> Result<BTreeMap<String, (Value, DateTime<Utc>)>, String> {
    m.into_iter()
        .map(|(name, v)| {
            let Value::Object(mut f) = v else {
                return Err(format!(
                    "field {name:?} must be an object with `value` and `at`"
                ));
            };
            let value = f
                .remove("value")
                .ok_or_else(|| format!("field {name:?} has no `value`"))?;
            let stamp = match f.get("at").or_else(|| f.get("updatedAt")) {
                Some(Value::String(s)) => s,
                Some(_) => return Err(format!("field {name:?}: `at` must be a string")),
                None => {
                    return Err(format!(
                        "field {name:?} has no `at` (or legacy `updatedAt`)"
                    ));
                }
            };
            let at = parse_instant(stamp)
                .ok_or_else(|| format!("field {name:?}: {stamp:?} is not an ISO-8601 timestamp"))?;
            Ok((name, (value, at)))
        })
        .collect()
}

/// Every space a change names: top-level `spaceId`, `data.spaceId` and
/// `fields.spaceId.value`, in that order (the first one is the change's space).
fn spaces_of(
    obj: &Map<String, Value>,
    data: Option<&Map<String, Value>>,
    fields: Option<&BTreeMap<String, (Value, DateTime<Utc>)>>,
) -> Result<Vec<String>, String> {
    [
        obj.get("spaceId"),
        data.and_then(|d| d.get("spaceId")),
        fields.and_then(|f| f.get("spaceId")).map(|(v, _)| v),
    ]
    .into_iter()
    .flatten()
    .filter(|v| !v.is_null())
    .map(|v| match v {
        Value::String(s) => {
            if s.strip_prefix(schemas::space::PERSONAL_SENTINEL_PREFIX)
                .is_none()
            {
                validate_id("spaceId", s)?;
            }
            Ok(s.clone())
        }
        _ => Err("`spaceId` must be a string".into()),
    })
    .collect()
}

/// The record fields the server gives meaning to: `visibility` must be one it knows,
/// `authorId` a string (whose it is, `prepare` checks).
fn check_record_fields(
    data: Option<&Map<String, Value>>,
    fields: Option<&BTreeMap<String, (Value, DateTime<Utc>)>>,
) -> Result<(), String> {
    use schemas::event::{AUTHOR_FIELD, VISIBILITIES, VISIBILITY_FIELD};
    let named = |name: &str| {
        data.and_then(|d| d.get(name))
            .into_iter()
            .chain(fields.and_then(|f| f.get(name)).map(|(v, _)| v))
            .filter(|v| !v.is_null())
            .collect::<Vec<_>>()
    };
    for v in named(VISIBILITY_FIELD) {
        if !v.as_str().is_some_and(|v| VISIBILITIES.contains(&v)) {
            return Err(format!(
                "`visibility` must be one of {} (got {v})",
                VISIBILITIES.join(", ")
            ));
        }
    }
    if named(AUTHOR_FIELD).iter().any(|v| !v.is_string()) {
        return Err("`authorId` must be a string".into());
    }
    Ok(())
}

fn opaque(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    obj.remove(key).filter(|v| !v.is_null())
}

fn required_id(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => validate_id(key, s).map(|()| s.clone()),
        Some(Value::Null) | None => Err(format!("`{key}` is missing")),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

fn optional_string(
    obj: &Map<String, Value>,
    key: &str,
    index: Option<usize>,
) -> Result<Option<String>, RejectedBatch> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(RejectedBatch::invalid(
            index,
            format!("`{key}` must be a string"),
        )),
    }
}

fn schema_version(v: Option<&Value>, index: Option<usize>) -> Result<u32, RejectedBatch> {
    let prefix = index.map(|i| format!("change {i}: ")).unwrap_or_default();
    match v {
        None | Some(Value::Null) => Ok(1),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (1..=u64::from(MAX_SCHEMA_VERSION)).contains(&v) => Ok(v as u32),
            _ => Err(RejectedBatch::invalid(
                index,
                format!(
                    "{prefix}unsupported schemaVersion {n} (this server supports 1 to {MAX_SCHEMA_VERSION})"
                ),
            )),
        },
        Some(_) => Err(RejectedBatch::invalid(
            index,
            format!("{prefix}`schemaVersion` must be an integer"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<PushRequest, RejectedBatch> {
        parse_push_request(&serde_json::to_vec(&v).unwrap())
    }

    fn rejected_index(v: Value) -> Option<usize> {
        parse(v).expect_err("must be rejected").index()
    }

    #[test]
    fn accepts_all_three_ops_and_legacy_updated_at() {
        let req = parse(json!({"clientId": "c", "changes": [
            {"table": "tasks", "id": "t1", "op": "insert", "data": {"title": "a"}},
            {"table": "tasks", "id": "t1", "op": "update", "fields": {"title": {"value": "b", "updatedAt": "2026-05-01T10:00:00Z"}}},
            {"table": "tasks", "id": "t1", "op": "update", "fields": {"title": {"value": "c", "at": "2026-05-01T10:00:01+02:00"}}},
            {"table": "tasks", "id": "t1", "op": "delete", "deletedAt": "2026-05-01T10:06:00Z"},
        ]}))
        .unwrap();
        assert_eq!(req.changes.len(), 4);
        assert_eq!(req.client_id.as_deref(), Some("c"));
        assert_eq!(req.changes[3].op, Op::Delete);
    }

    #[test]
    fn names_the_offending_change() {
        let ok = json!({"table": "t", "id": "a", "op": "insert", "data": {}});
        let cases = [
            json!({"table": "t", "id": "a", "op": "upsert", "data": {}}),
            json!({"table": "", "id": "a", "op": "insert", "data": {}}),
            json!({"id": "a", "op": "insert", "data": {}}),
            json!({"table": "t", "op": "insert", "data": {}}),
            json!({"table": "t", "id": "a.b", "op": "insert", "data": {}}),
            json!({"table": "t", "id": "a*", "op": "insert", "data": {}}),
            json!({"table": "t>", "id": "a", "op": "insert", "data": {}}),
            json!({"table": "t", "id": "a b", "op": "insert", "data": {}}),
            json!({"table": 5, "id": "a", "op": "insert", "data": {}}),
            json!({"table": "t", "id": "a", "op": "insert", "data": "x"}),
            json!({"table": "t", "id": "a", "op": "insert"}),
            json!({"table": "t", "id": "a", "op": "update", "fields": {}}),
            json!({"table": "t", "id": "a", "op": "update", "fields": {"x": {"value": 1}}}),
            json!({"table": "t", "id": "a", "op": "update", "fields": {"x": {"value": 1, "at": "soon"}}}),
            json!({"table": "t", "id": "a", "op": "update", "fields": {"x": 3}}),
            json!({"table": "t", "id": "a", "op": "insert", "data": {}, "schemaVersion": 99}),
            json!({"table": "t", "id": "a", "op": "insert", "data": {}, "schemaVersion": "1"}),
            json!({"table": "t", "id": "a", "op": "insert", "data": {}, "spaceId": "x.y"}),
            json!({"table": "t", "id": "a", "op": "insert", "data": {"spaceId": 7}}),
            json!({"table": "t", "id": "a", "op": "delete", "deletedAt": "nope"}),
            json!({"table": "t", "id": "a", "op": "insert", "data": {"x": "a\u{0}b"}}),
            json!({"table": "t", "id": "a", "op": "insert", "data": {"x\u{0}": 1}}),
            json!("not an object"),
        ];
        for bad in cases {
            assert_eq!(
                rejected_index(json!({"changes": [ok.clone(), bad.clone()]})),
                Some(1),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_malformed_bodies() {
        assert!(parse_push_request(b"{not json").is_err());
        assert!(parse_push_request(b"[]").is_err());
        assert!(parse(json!({})).is_err());
        assert!(parse(json!({"changes": {}})).is_err());
        assert!(parse(json!({"changes": [], "schemaVersion": 2})).is_err());
        assert!(parse(json!({"changes": [], "clientId": 3})).is_err());
    }

    #[test]
    fn a_push_of_more_changes_than_one_atomic_batch_holds_is_too_large() {
        let change = json!({"table": "t", "id": "a", "op": "delete"});
        let at_most = vec![change.clone(); MAX_PUSH_CHANGES];
        assert_eq!(
            parse(json!({ "changes": at_most })).unwrap().changes.len(),
            MAX_PUSH_CHANGES
        );
        let over = vec![change; MAX_PUSH_CHANGES + 1];
        let err = parse(json!({ "changes": over })).unwrap_err();
        assert!(
            matches!(&err, RejectedBatch::TooLarge { index: None, message } if message.contains("at most 100000 changes")),
            "{err:?}"
        );
    }

    #[test]
    fn space_comes_from_top_level_then_data_then_fields() {
        let req = parse(json!({"changes": [
            {"table": "t", "id": "a", "op": "insert", "spaceId": "top", "data": {"spaceId": "inner"}},
            {"table": "t", "id": "a", "op": "insert", "data": {"spaceId": "inner"}},
            {"table": "t", "id": "a", "op": "update", "fields": {"spaceId": {"value": "f", "at": "2026-01-01T00:00:00Z"}}},
            {"table": "t", "id": "a", "op": "insert", "data": {}, "spaceId": "_personal:some.user@x"},
        ]}))
        .unwrap();
        let spaces: Vec<_> = req.changes.iter().map(|c| c.space_id.as_deref()).collect();
        assert_eq!(
            spaces,
            [
                Some("top"),
                Some("inner"),
                Some("f"),
                Some("_personal:some.user@x")
            ]
        );
    }

    #[test]
    fn null_actor_is_absent_not_null() {
        let req = parse(json!({"changes": [
            {"table": "t", "id": "a", "op": "insert", "data": {}, "actor": null, "origin": "user"},
        ]}))
        .unwrap();
        assert_eq!(req.changes[0].actor, None);
        assert_eq!(req.changes[0].origin, Some(json!("user")));
    }
}
