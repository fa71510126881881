//! The subset of JSON Schema that constrained decoding ([`super::constrain`]) can enforce, read into a
//! [`JsonShape`]: `string` (`maxLength`, counted in bytes, default [`DEFAULT_MAX_LENGTH`]), `array` (`items`,
//! `minItems`, `maxItems`, default [`DEFAULT_MAX_ITEMS`]) and `object` (`properties`; every property is generated,
//! in the order of `properties`). Anything else is refused with the path and the keyword, so a client
//! learns what to change instead of getting output that ignores part of its schema.

use super::constrain::JsonShape;
use serde_json::Value;

/// Bytes of a string without `maxLength`.
pub const DEFAULT_MAX_LENGTH: usize = 256;
/// Items of an array without `maxItems`.
pub const DEFAULT_MAX_ITEMS: usize = 16;
/// Largest `maxLength` accepted.
pub const MAX_LENGTH: usize = 4096;
/// Largest `maxItems` accepted.
pub const MAX_ITEMS: usize = 256;

/// Keywords that only describe (they change nothing the decoder must enforce).
const DESCRIPTIVE: &[&str] = &[
    "title",
    "description",
    "$schema",
    "$id",
    "examples",
    "additionalProperties",
    "required",
    "minLength",
];

/// A schema the decoder cannot enforce: where, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}: {reason} (supported: string with maxLength, array with items/minItems/maxItems, object with properties)")]
pub struct SchemaError {
    /// JSON path of the offending part (`$` is the root).
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// The shape of `schema`.
pub fn shape_of(schema: &Value) -> Result<JsonShape, SchemaError> {
    read(schema, "$", 1)
}

fn read(schema: &Value, path: &str, depth: usize) -> Result<JsonShape, SchemaError> {
    let err = |reason: String| SchemaError {
        path: path.to_string(),
        reason,
    };
    let obj = schema
        .as_object()
        .ok_or_else(|| err("a schema must be an object".into()))?;
    if depth > super::constrain::MAX_DEPTH {
        return Err(err(format!(
            "nested deeper than {}",
            super::constrain::MAX_DEPTH
        )));
    }
    let ty = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| err("`type` must be \"string\", \"array\" or \"object\"".into()))?;
    let allowed: &[&str] = match ty {
        "string" => &["type", "maxLength"],
        "array" => &["type", "items", "minItems", "maxItems"],
        "object" => &["type", "properties"],
        other => return Err(err(format!("type {other:?} cannot be enforced"))),
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !allowed.contains(&k.as_str()) && !DESCRIPTIVE.contains(&k.as_str()))
    {
        return Err(err(format!("keyword {k:?} cannot be enforced on a {ty}")));
    }
    let count = |key: &str, default: usize, most: usize| -> Result<usize, SchemaError> {
        match obj.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .filter(|&n| n <= most)
                .ok_or_else(|| err(format!("`{key}` must be an integer from 0 to {most}"))),
        }
    };
    Ok(match ty {
        "string" => {
            let max_bytes = count("maxLength", DEFAULT_MAX_LENGTH, MAX_LENGTH)?;
            if max_bytes == 0 {
                return Err(err("`maxLength` must be at least 1".into()));
            }
            JsonShape::String { max_bytes }
        }
        "array" => {
            let items = obj
                .get("items")
                .ok_or_else(|| err("an array needs `items`".into()))?;
            let min_items = count("minItems", 0, MAX_ITEMS)?;
            let max_items = count("maxItems", DEFAULT_MAX_ITEMS.max(min_items), MAX_ITEMS)?;
            if max_items == 0 || min_items > max_items {
                return Err(err(format!(
                    "{min_items} to {max_items} items cannot be generated"
                )));
            }
            JsonShape::Array {
                item: Box::new(read(items, &format!("{path}.items"), depth + 1)?),
                min_items,
                max_items,
            }
        }
        _ => {
            let props = obj
                .get("properties")
                .and_then(Value::as_object)
                .ok_or_else(|| err("an object needs `properties`".into()))?;
            let mut fields = Vec::with_capacity(props.len());
            for (key, sub) in props {
                if key.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
                    return Err(err(format!("property name {key:?} needs escaping")));
                }
                fields.push((
                    key.clone(),
                    read(sub, &format!("{path}.properties.{key}"), depth + 1)?,
                ));
            }
            JsonShape::Object(fields)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_supported_subset() {
        let s = json!({
            "type": "object",
            "title": "people",
            "required": ["names"],
            "properties": {
                "names": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
                "city": {"type": "string"}
            }
        });
        let JsonShape::Object(fields) = shape_of(&s).unwrap() else {
            panic!("an object")
        };
        assert_eq!(fields.len(), 2);
        let names = fields.iter().find(|f| f.0 == "names").unwrap();
        assert_eq!(
            names.1,
            JsonShape::Array {
                item: Box::new(JsonShape::String { max_bytes: 20 }),
                min_items: 0,
                max_items: 3
            }
        );
        let city = fields.iter().find(|f| f.0 == "city").unwrap();
        assert_eq!(
            city.1,
            JsonShape::String {
                max_bytes: DEFAULT_MAX_LENGTH
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_enforce_and_says_where() {
        let e = shape_of(&json!({"type": "object", "properties": {"age": {"type": "integer"}}}))
            .unwrap_err();
        assert_eq!(e.path, "$.properties.age");
        assert!(e.reason.contains("integer"), "{e}");
        let e = shape_of(&json!({"type": "string", "pattern": "^a"})).unwrap_err();
        assert!(e.reason.contains("pattern"), "{e}");
        let e = shape_of(
            &json!({"type": "array", "items": {"type": "string"}, "minItems": 5, "maxItems": 2}),
        )
        .unwrap_err();
        assert_eq!(e.path, "$");
        assert!(shape_of(&json!({"type": "array"})).is_err());
        assert!(shape_of(&json!({"anyOf": []})).is_err());
        assert!(shape_of(&json!({"type": "string", "maxLength": 0})).is_err());
        assert!(shape_of(&json!("string")).is_err());
    }
}
