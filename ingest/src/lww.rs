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

    /// The field times worth storing: those that differ from `exists_at`. Every field of
    /// `data` has a time (a write sets both), and a record's fields mostly carry the
    /// time of the insert that created it, so most records store none; this is the
    /// part of a row that grew with every field (~40 bytes each) for no information.
    /// [`RecordState::restore_field_times`] puts the others back.
    pub fn stored_field_times(&self) -> impl Iterator<Item = (&String, &DateTime<Utc>)> {
        self.field_at
            .iter()
            .filter(|(_, at)| Some(**at) != self.exists_at)
    }

    /// Completes `field_at` as read back from storage: a field of `data` without a
    /// stored time was left out because its time is `exists_at`. (States stored whole,
    /// before this form, have every time and are left as they are.)
    pub fn restore_field_times(&mut self) {
        let Some(exists_at) = self.exists_at else {
            return;
        };
        for name in self.data.keys() {
            if !self.field_at.contains_key(name) {
                self.field_at.insert(name.clone(), exists_at);
            }
        }
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

    /// What storing keeps of a state, read back and completed.
    fn stored_and_restored(s: &RecordState) -> RecordState {
        let mut back = RecordState {
            field_at: s
                .stored_field_times()
                .map(|(k, t)| (k.clone(), *t))
                .collect(),
            ..s.clone()
        };
        back.restore_field_times();
        back
    }

    #[test]
    fn field_times_stored_without_the_insert_time_come_back_whole() {
        let created = insert(json!({"a": 1, "b": 1, "c": 1}), "2026-01-01T00:00:00Z");
        let states = [
            fold(std::slice::from_ref(&created)),
            fold(&[
                created.clone(),
                update(&[("b", json!(2), "2026-01-01T00:00:01Z")]),
            ]),
            // Deleted: `exists_at` moves to the delete, every field keeps its time.
            fold(&[created.clone(), delete("2026-01-01T00:00:05Z")]),
            // A re-insert that wins existence but loses a field to a newer update.
            fold(&[
                created.clone(),
                update(&[("a", json!(9), "2026-01-01T00:00:09Z")]),
                insert(json!({"a": 3, "d": 3}), "2026-01-01T00:00:07Z"),
            ]),
            // An insert older than the record's existence still writes new fields.
            fold(&[
                delete("2026-01-01T00:00:05Z"),
                insert(json!({"e": 1}), "2026-01-01T00:00:01Z"),
            ]),
            // Only ever updated: no existence time, every time stored.
            fold(&[update(&[("x", json!(1), "2026-01-01T00:00:00Z")])]),
        ];
        for s in &states {
            assert_eq!(&stored_and_restored(s), s);
        }
        // A record as created stores no field time at all.
        assert_eq!(states[0].stored_field_times().count(), 0);
        assert_eq!(
            states[1]
                .stored_field_times()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        // A state stored whole (before this form) reads back unchanged.
        let mut whole = states[1].clone();
        whole.restore_field_times();
        assert_eq!(whole, states[1]);
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
