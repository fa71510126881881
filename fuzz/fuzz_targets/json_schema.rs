//! The JSON-schema reader and the constraint compiler on arbitrary schemas, then a walk of the compiled
//! constraint driven by the fuzzer's choices: whenever the value is incomplete and the budget allows, some token
//! is allowed; and what a completed walk spells is JSON of the schema's shape.
#![no_main]

use engram_engine::{shape_of, JsonConstraint, JsonShape};
use serde_json::Value;

/// A byte-level vocabulary with a few multi-byte tokens, as real BPE vocabularies have.
fn vocabulary() -> Vec<Option<Vec<u8>>> {
    let mut tokens: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
    for t in [
        "\"a", "ab", "\",", "\":", "[\"", "\"]", "{\"", "\"}", "é", " the", "\\n", "00",
    ] {
        tokens.push(Some(t.as_bytes().to_vec()));
    }
    tokens.push(None);
    tokens
}

fn conforms(value: &Value, shape: &JsonShape) -> bool {
    match (value, shape) {
        (Value::String(s), JsonShape::String { max_bytes }) => {
            !s.is_empty() && s.len() <= *max_bytes
        }
        (
            Value::Array(items),
            JsonShape::Array {
                item,
                min_items,
                max_items,
            },
        ) => {
            (*min_items..=*max_items).contains(&items.len())
                && items.iter().all(|v| conforms(v, item))
        }
        (Value::Object(map), JsonShape::Object(fields)) => {
            map.len() == fields.len()
                && fields
                    .iter()
                    .all(|(k, s)| map.get(k).is_some_and(|v| conforms(v, s)))
        }
        _ => false,
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (schema, choices) = data.split_at(split);
    let Ok(schema) = serde_json::from_slice::<Value>(schema) else {
        return;
    };
    let Ok(shape) = shape_of(&schema) else {
        return;
    };
    let Ok(constraint) = JsonConstraint::with_tokens(&shape, vocabulary()) else {
        return;
    };
    let vocab = vocabulary();
    let budget = constraint.min_tokens() + choices.len().min(64);
    let (mut state, mut out) = (constraint.start(), Vec::new());
    for step in 0..budget {
        if constraint.is_complete(&state) {
            break;
        }
        let allowed = constraint.allowed(&state, budget - step);
        let ids = constraint.allowed_ids(&allowed);
        assert!(
            !ids.is_empty(),
            "nothing allowed at step {step} of {budget}: {:?}",
            String::from_utf8_lossy(&out)
        );
        let pick = ids[*choices.get(step).unwrap_or(&0) as usize % ids.len()];
        assert!(constraint.contains(&allowed, pick));
        state = constraint
            .advance(&state, pick)
            .expect("an allowed token advances");
        out.extend_from_slice(
            vocab[pick as usize]
                .as_deref()
                .expect("allowed tokens have bytes"),
        );
    }
    assert!(
        constraint.is_complete(&state),
        "incomplete after the budget: {:?}",
        String::from_utf8_lossy(&out)
    );
    let value: Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&out)));
    assert!(conforms(&value, &shape), "{value} does not match {shape:?}");
});
