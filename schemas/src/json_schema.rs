//! JSON Schemas of what leaves the backend, for consumers outside it: every message of
//! the log (analytics consumers, other services) and the answers of push and pull
//! (clients). Generated from the types that write them; `schemas/json/` holds the
//! published copies, and a test keeps them equal to what is generated here.

use schemars::{
    JsonSchema,
    generate::{Contract, SchemaSettings},
};
use serde_json::Value;

use crate::{Envelope, wire::SyncResponse};

/// Each published schema: its file name under `schemas/json/` and the schema.
pub fn documents() -> Vec<(&'static str, Value)> {
    vec![
        ("event.schema.json", schema_of::<Envelope>()),
        ("sync-response.schema.json", schema_of::<SyncResponse>()),
    ]
}

/// The schema of what `T` serializes to (JSON Schema 2020-12).
fn schema_of<T: JsonSchema>() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.contract = Contract::Serialize;
    let mut schema = settings
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    never_null(&mut schema);
    schema
}

/// An absent optional field is left out, never written as `null`, so optional fields
/// are not required and do not admit `null` either. (Opaque values, such as field
/// values, `actor` and `origin`, admit anything, `null` included.)
fn never_null(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    let only = only.clone();
                    map.insert("type".to_owned(), only);
                }
            }
            if let Some(Value::Array(any_of)) = map.get("anyOf")
                && let [one, other] = any_of.as_slice()
                && other.get("type").is_some_and(|t| t == "null")
            {
                let one = one.clone();
                map.remove("anyOf");
                if let Value::Object(one) = one {
                    map.extend(one);
                }
            }
            map.values_mut().for_each(never_null);
        }
        Value::Array(items) => items.iter_mut().for_each(never_null),
        _ => {}
    }
}

/// The published file's text for a schema: pretty-printed, ending in a newline.
pub fn file_text(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The published files are what the code generates; `UPDATE_JSON_SCHEMAS=1` rewrites
    /// them (then review the diff: a consumer may depend on what changed).
    #[test]
    fn the_published_schemas_are_the_generated_ones() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
        let update = std::env::var_os("UPDATE_JSON_SCHEMAS").is_some_and(|v| v == "1");
        for (name, schema) in documents() {
            let path = dir.join(name);
            let text = file_text(&schema);
            if update {
                std::fs::write(&path, &text).expect("writing the schema");
                continue;
            }
            let published = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                published == text,
                "{} differs from the generated schema; run \
                 `UPDATE_JSON_SCHEMAS=1 cargo test -p schemas json_schema` and review the diff",
                path.display()
            );
        }
    }
}
