//! `/openapi.json` as this server answers it: the generated [`ApiDoc`](super::ApiDoc) with what only the running
//! server knows written in, so that the spec is the truth for it: the `model` each generation and embedding
//! request may name, and the context window that bounds `max_tokens`.

use serde_json::Value;
use utoipa::openapi::schema::{Object, Schema};
use utoipa::openapi::{OpenApi, RefOr};

use crate::app::App;

/// The spec for `app`: the served model names as the only values of `model`, the context window as the
/// maximum of `max_tokens`.
pub fn for_app(mut spec: OpenApi, app: &App) -> OpenApi {
    let Some(components) = spec.components.as_mut() else {
        return spec;
    };
    let schemas = &mut components.schemas;
    match &app.generator {
        Some(g) => {
            let name = Value::from(g.model_name());
            if let Some(model) = property(schemas, "SamplingFields", "model") {
                model.enum_values = Some(vec![name, Value::Null]);
            }
            if let Some(max_tokens) = property(schemas, "SamplingFields", "max_tokens") {
                max_tokens.maximum = Some((g.max_context() as f64).into());
            }
        }
        None => {
            // No model: every generation request is a 503 `model_not_loaded`, whatever it holds.
        }
    }
    if let Some(dense) = app.pipeline.dense_index() {
        let name = Value::from(dense.embedder().model_name());
        if let Some(model) = property(schemas, "EmbeddingsRequest", "model") {
            model.enum_values = Some(vec![name, Value::Null]);
        }
    }
    spec
}

/// The object schema of `field` in the object schema `schema`, when both are inline.
fn property<'a>(
    schemas: &'a mut std::collections::BTreeMap<String, RefOr<Schema>>,
    schema: &str,
    field: &str,
) -> Option<&'a mut Object> {
    let RefOr::T(Schema::Object(object)) = schemas.get_mut(schema)? else {
        return None;
    };
    match object.properties.get_mut(field)? {
        RefOr::T(Schema::Object(property)) => Some(property),
        _ => None,
    }
}
