//! `POST /v1/embeddings`, OpenAI-compatible.

use super::body::read_json;
use super::error::{ApiError, ErrorEnvelope};
use crate::app::App;
use crate::config::LimitsConfig;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// An embeddings request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsRequest {
    /// A string or a list of strings, each with some non-whitespace text.
    #[schema(schema_with = input_schema)]
    pub input: Value,
    /// Model name; must be the served model when given.
    #[serde(default)]
    pub model: Option<String>,
    /// Only `float` is supported.
    #[serde(default)]
    #[schema(pattern = "^float$")]
    pub encoding_format: Option<String>,
    /// Accepted for compatibility; ignored.
    #[serde(default)]
    pub user: Option<String>,
}

/// The schema of `input`: one string with some non-whitespace text, or a non-empty list of them.
fn input_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
    let text = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"\S"))
    };
    Schema::OneOf(
        OneOfBuilder::new()
            .item(text())
            .item(ArrayBuilder::new().items(text()).min_items(Some(1)))
            .build(),
    )
}

/// One vector.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingData {
    /// Always `embedding`.
    pub object: String,
    /// Position of the input.
    pub index: usize,
    /// The L2-normalised vector.
    pub embedding: Vec<f32>,
}

/// Token counts; `truncated` lists inputs cut at the model's maximum length.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsUsage {
    /// Tokens the model read (after truncation, special tokens included).
    pub prompt_tokens: usize,
    /// Same as `prompt_tokens`.
    pub total_tokens: usize,
    /// Indexes of inputs truncated at `max_tokens`.
    pub truncated: Vec<usize>,
    /// The model's maximum input length in tokens.
    pub max_tokens: usize,
}

/// The response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: String,
    /// One entry per input, in order.
    pub data: Vec<EmbeddingData>,
    /// The model used.
    pub model: String,
    /// Token usage.
    pub usage: EmbeddingsUsage,
}

/// The request's inputs, within `limits.max_embedding_inputs` and `limits.max_embedding_bytes`.
fn inputs(value: Value, limits: &LimitsConfig) -> Result<Vec<String>, ApiError> {
    let max_inputs = limits.max_embedding_inputs;
    let items = match value {
        Value::String(s) => vec![Value::String(s)],
        Value::Array(items) => items,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "`input` must be a string or a list of strings",
            )
            .param("input"))
        }
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "empty_input",
            "`input` is an empty list: give at least one string",
        )
        .param("input"));
    }
    if items.len() > max_inputs {
        return Err(ApiError::bad_request(
            "too_many_inputs",
            format!(
                "`input` has {} items; at most {max_inputs} per request (limits.max_embedding_inputs)",
                items.len()
            ),
        )
        .param("input"));
    }
    let bytes: usize = items.iter().filter_map(Value::as_str).map(str::len).sum();
    if bytes > limits.max_embedding_bytes {
        return Err(ApiError::bad_request(
            "input_too_long",
            format!(
                "`input` has {bytes} bytes of text; at most {} per request (limits.max_embedding_bytes)",
                limits.max_embedding_bytes
            ),
        )
        .param("input"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) if s.trim().is_empty() => Err(ApiError::bad_request(
                "empty_input",
                format!("`input[{i}]` is empty: every input needs some text"),
            )
            .param(format!("input[{i}]"))),
            Value::String(s) => Ok(s),
            other => Err(ApiError::bad_request(
                "invalid_field",
                format!(
                    "`input[{i}]` must be a string, got {} (token arrays are not supported)",
                    kind(&other)
                ),
            )
            .param(format!("input[{i}]"))),
        })
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Embed text with the served sentence-embedding model.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", request_body = EmbeddingsRequest,
    responses(
        (status = 200, body = EmbeddingsResponse),
        (status = 400, description = "Empty or non-string input, unknown model, too many inputs (`too_many_inputs`) or too much text (`input_too_long`)", body = ErrorEnvelope),
        (status = 503, description = "Embeddings are disabled", body = ErrorEnvelope),
    ))]
pub async fn create(
    State(app): State<Arc<App>>,
    req: Request,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let body: EmbeddingsRequest = read_json(&app, req).await?;
    let texts = inputs(body.input, &app.config.limits)?;
    let Some(dense) = app.pipeline.dense_index() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "embeddings_disabled",
            "embeddings are disabled on this server (embedding.enabled = false)",
        ));
    };
    let model = dense.embedder().model_name().to_string();
    if let Some(asked) = body.model.as_deref() {
        if asked != model
            && !model.ends_with(&format!("/{asked}"))
            && !asked.ends_with(&format!("/{model}"))
        {
            return Err(ApiError::bad_request(
                "model_not_found",
                format!("model '{asked}' is not served here; use '{model}'"),
            )
            .param("model"));
        }
    }
    if let Some(f) = body.encoding_format.as_deref() {
        if f != "float" {
            return Err(ApiError::bad_request(
                "invalid_field",
                "only `encoding_format: \"float\"` is supported",
            )
            .param("encoding_format"));
        }
    }
    let embeddings = dense
        .embed(texts)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let tokens: usize = embeddings.iter().map(|e| e.tokens).sum();
    let truncated = embeddings
        .iter()
        .enumerate()
        .filter(|(_, e)| e.truncated)
        .map(|(i, _)| i)
        .collect();
    Ok(Json(EmbeddingsResponse {
        object: "list".into(),
        data: embeddings
            .into_iter()
            .enumerate()
            .map(|(index, e)| EmbeddingData {
                object: "embedding".into(),
                index,
                embedding: e.vector,
            })
            .collect(),
        model,
        usage: EmbeddingsUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
            truncated,
            max_tokens: dense.embedder().max_tokens(),
        },
    }))
}
