//! Field-level last-write-wins, the merge every projection and every replay applies.
//!
//! Each field is a register stamped with the instant it was written; an incoming write
//! replaces it when its instant is greater **or equal**. Events are applied in log
//! order, so equal instants are won by the later event in the log: the outcome depends
//! only on the log, and every replica and replay converges to the same state.
//! Existence is one more register: an insert sets it, a delete clears it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemas::{Op, RecordChanged};
use serde_json::{Map, Value};

/// Current state of one record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordState {
    pub data: Map<String, Value>,
    pub field_at: BTreeMap<String, DateTime<Utc>>,
    /// When the record was last inserted or deleted; `None` if neither happened yet.
    pub exists_at: Option<DateTime<Utc>>,
    /// Set while the record is deleted: the winning delete's instant.
    pub deleted_at: Option<DateTime<Utc>>,
}

impl RecordState {
    /// Applies one event to the state (start from `default()` for a record not seen
    /// before). Takes the change by value: the values it writes move into the state.
    pub fn apply(mut self, change: RecordChanged) -> RecordState {
        match change.op {
            Op::Insert => {
                if let (Some(at), Some(data)) = (change.at, change.data) {
                    for (name, value) in data {
                        self.write(name, value, at);
                    }
                    if self.exists_at.is_none_or(|t| at >= t) {
                        self.exists_at = Some(at);
                        self.deleted_at = None;
                    }
                }
            }
            Op::Update => {
                for (name, field) in change.fields.into_iter().flatten() {
                    self.write(name, field.value, field.at);
                }
            }
            Op::Delete => {
                if let Some(at) = change.at
                    && self.exists_at.is_none_or(|t| at >= t)
                {
                    self.exists_at = Some(at);
                    self.deleted_at = Some(at);
                }
            }
        }
        self
    }

    fn write(&mut self, name: String, value: Value, at: DateTime<Utc>) {
        if self
            .field_at
            .get(&name)
            .is_none_or(|current| at >= *current)
        {
            self.field_at.insert(name.clone(), at);
            self.data.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{FieldValue, time::parse_instant};
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        parse_instant(s).unwrap()
    }

    fn change(op: Op) -> RecordChanged {
        RecordChanged {
            app_id: "a".into(),
            space_id: "s".into(),
            table: "t".into(),
            record_id: "r".into(),
            op,
            at: None,
            data: None,
            fields: None,
            client_schema_version: 1,
        }
    }

    fn update(fields: &[(&str, Value, &str)]) -> RecordChanged {
        RecordChanged {
            fields: Some(
                fields
                    .iter()
                    .map(|(n, v, at)| {
                        (
                            (*n).to_owned(),
                            FieldValue {
                                value: v.clone(),
                                at: t(at),
                            },
                        )
                    })
                    .collect(),
            ),
            ..change(Op::Update)
        }
    }

    fn insert(data: Value, at: &str) -> RecordChanged {
        RecordChanged {
            data: data.as_object().cloned(),
            at: Some(t(at)),
            ..change(Op::Insert)
        }
    }

    fn delete(at: &str) -> RecordChanged {
        RecordChanged {
            at: Some(t(at)),
            ..change(Op::Delete)
        }
    }

    fn fold(events: &[RecordChanged]) -> RecordState {
        events
            .iter()
            .cloned()
            .fold(RecordState::default(), RecordState::apply)
    }

    #[test]
    fn different_fields_both_survive() {
        let s = fold(&[
            insert(json!({"title": "a", "done": false}), "2026-01-01T00:00:00Z"),
            update(&[("title", json!("b"), "2026-01-01T00:00:02Z")]),
            update(&[("done", json!(true), "2026-01-01T00:00:01Z")]),
        ]);
        assert_eq!(s.data["title"], "b");
        assert_eq!(s.data["done"], true);
    }

    #[test]
    fn greater_instant_wins_whatever_the_arrival_order() {
        let newer = update(&[("title", json!("new"), "2026-01-01T10:00:00+02:00")]);
        let older = update(&[("title", json!("old"), "2026-01-01T07:59:59Z")]);
        assert_eq!(fold(&[newer.clone(), older.clone()]).data["title"], "new");
        assert_eq!(fold(&[older, newer]).data["title"], "new");
    }

    #[test]
    fn equal_instants_are_won_by_log_order() {
        let x = update(&[("title", json!("x"), "2026-01-01T00:00:00Z")]);
        let y = update(&[("title", json!("y"), "2026-01-01T00:00:00.000+00:00")]);
        assert_eq!(fold(&[x.clone(), y.clone()]).data["title"], "y");
        assert_eq!(fold(&[y, x]).data["title"], "x");
    }

    #[test]
    fn delete_and_reinsert_follow_their_instants() {
        let s = fold(&[
            insert(json!({"a": 1}), "2026-01-01T00:00:00Z"),
            delete("2026-01-01T00:00:05Z"),
        ]);
        assert_eq!(s.deleted_at, Some(t("2026-01-01T00:00:05Z")));
        // A late-arriving insert older than the delete does not resurrect the record.
        let s = s.apply(insert(json!({"a": 2}), "2026-01-01T00:00:03Z"));
        assert!(s.deleted_at.is_some());
        let s = s.apply(insert(json!({"a": 3}), "2026-01-01T00:00:09Z"));
        assert_eq!(s.deleted_at, None);
        assert_eq!(s.data["a"], 3);
    }

    #[test]
    fn replay_is_deterministic() {
        let events = [
            insert(json!({"a": 1, "b": 1}), "2026-01-01T00:00:00Z"),
            update(&[
                ("a", json!(2), "2026-01-01T00:00:01Z"),
                ("b", json!(0), "2025-01-01T00:00:00Z"),
            ]),
            delete("2026-01-01T00:00:02Z"),
            update(&[("c", json!("z"), "2026-01-01T00:00:03Z")]),
        ];
        assert_eq!(fold(&events), fold(&events));
        let s = fold(&events);
        assert_eq!(
            s.data,
            json!({"a": 2, "b": 1, "c": "z"})
                .as_object()
                .cloned()
                .unwrap()
        );
    }
}
