//! OpenAI-compatible generation: `POST /v1/chat/completions`, `POST /v1/completions` (JSON or SSE streaming ending
//! in `data: [DONE]`) and `GET /v1/models`.

use super::body::read_json;
use super::error::{ApiError, ErrorEnvelope};
use crate::app::App;
use crate::qa::types::attention_schema;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engram_engine::shape_of;
use engram_engine::AttentionMode;
use engram_engine::ChatMessage;
use engram_engine::JsonConstraint;
use engram_engine::{BudgetPart, KvBudget};
use engram_engine::{
    EngineError, FinishReason, GenerationEvent, GenerationRequest, Generator, Usage,
};
use engram_engine::{SamplingError, SamplingParams};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Most alternatives per token `top_logprobs` may ask for (OpenAI's limit, and the engine's).
const MAX_TOP_LOGPROBS: usize = 20;

/// The roles a chat message may have.
const CHAT_ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// Default `max_tokens` when a request gives none.
const DEFAULT_MAX_TOKENS: usize = 256;

/// Fields shared by both generation requests.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SamplingFields {
    /// Model name; must be the served model when given.
    #[serde(default)]
    pub model: Option<String>,
    /// Most tokens to generate (default 256), at most the context window.
    #[serde(default, alias = "max_completion_tokens")]
    #[schema(minimum = 1)]
    pub max_tokens: Option<usize>,
    /// 0 is greedy; up to 2.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass, (0, 1].
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens (extension).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub top_k: Option<usize>,
    /// Seed for reproducible sampling.
    #[serde(default)]
    pub seed: Option<u64>,
    /// HF-style repetition penalty, (0, 2] (extension).
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 2)]
    pub repetition_penalty: Option<f32>,
    /// A stop string or up to 4 of them (none empty).
    #[serde(default)]
    #[schema(schema_with = stop_schema)]
    pub stop: Option<Value>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Only 1 is supported.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<usize>,
    /// `{"type": "text"}` (the default), or `{"type": "json_schema", "json_schema": {"schema": ...}}`: the output
    /// is constrained to JSON of that schema (strings with maxLength, arrays with items/minItems/maxItems,
    /// objects with properties; anything else is a 400 `unsupported_schema` naming the path).
    #[serde(default)]
    #[schema(schema_with = response_format_schema)]
    pub response_format: Option<Value>,
    /// H2O KV eviction (extension): `{"heavy_ratio" | "heavy_tokens": ..., "recent_ratio" | "recent_tokens":
    /// ...}`, each part a share (0, 1] of the prompt or a number of tokens. Past `heavy + recent` (plus a slack of
    /// a few blocks), the sequence keeps per layer and KV head the tokens that received the most attention and the
    /// most recent ones. Omitted: the full cache.
    #[serde(default)]
    pub kv_budget: Option<KvBudgetRequest>,
    /// How the request attends (extension): `{"kind": "dense"}` or `{"kind": "hip", "block_q": 64, "block_k": 64,
    /// "top_k": 32, "sink_tokens": 64, "recent_tokens": 512, "min_context": 4096}`, HiP sparse attention: once a
    /// chunk's context exceeds `min_context` tokens, each block of `block_q` query rows attends to the `top_k` key
    /// blocks (of `block_k` keys) a tree search over its attention logits picks, plus the first `sink_tokens` and
    /// the latest `recent_tokens`; nothing is evicted from the cache. Every HiP parameter is optional, with those
    /// defaults (`top_k` 1 to 256, block sizes 1 to 4096). Omitted: the server's `[engine.attention]` (dense by
    /// default). HiP requests are not speculated, and HiP cannot be combined with `kv_budget`. A malformed object
    /// is a 400 `invalid_field`, refused parameters a 400 `invalid_parameter`, both naming `attention`.
    #[serde(default)]
    #[schema(schema_with = attention_schema)]
    pub attention: Option<Value>,
}

impl SamplingFields {
    /// The request's attention (`None`: the engine's default), or a 400 `invalid_field` naming `attention` when
    /// the object is malformed (an unknown `kind` or field, a wrong type). The parameters themselves are the
    /// engine's to check.
    fn attention(&self) -> Result<Option<AttentionMode>, ApiError> {
        match &self.attention {
            None | Some(Value::Null) => Ok(None),
            Some(v) => AttentionMode::deserialize(v).map(Some).map_err(|e| {
                ApiError::bad_request(
                    "invalid_field",
                    format!("invalid value at `attention`: {e}"),
                )
                .param("attention")
            }),
        }
    }
}

/// The `kv_budget` of a request: each part a ratio or a token count.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KvBudgetRequest {
    /// Heavy hitters, as a share of the prompt.
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub heavy_ratio: Option<f64>,
    /// Heavy hitters, in tokens.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub heavy_tokens: Option<usize>,
    /// Recent window, as a share of the prompt.
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub recent_ratio: Option<f64>,
    /// Recent window, in tokens.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub recent_tokens: Option<usize>,
}

impl KvBudgetRequest {
    /// The budget, or a 400 naming what to fix.
    fn budget(&self) -> Result<KvBudget, ApiError> {
        let part = |ratio: Option<f64>, tokens: Option<usize>, what: &str| match (ratio, tokens) {
            (Some(r), None) => Ok(BudgetPart::Ratio(r)),
            (None, Some(n)) => Ok(BudgetPart::Tokens(n)),
            _ => Err(ApiError::bad_request(
                "invalid_parameter",
                format!("kv_budget needs exactly one of {what}_ratio and {what}_tokens"),
            )
            .param("kv_budget")),
        };
        let budget = KvBudget {
            heavy: part(self.heavy_ratio, self.heavy_tokens, "heavy")?,
            recent: part(self.recent_ratio, self.recent_tokens, "recent")?,
        };
        budget.validate().map_err(|e| {
            ApiError::bad_request("invalid_parameter", format!("kv_budget: {e}")).param("kv_budget")
        })?;
        Ok(budget)
    }
}

/// Submits `prompt` with the constraint the request's `response_format` asks for, its `kv_budget` and its
/// `attention`.
fn submit(
    g: &dyn Generator,
    prompt: Vec<u32>,
    params: SamplingParams,
    fields: &SamplingFields,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<GenerationEvent>, ApiError> {
    let constraint = response_constraint(g, fields.response_format.as_ref())?;
    let kv_budget = fields
        .kv_budget
        .as_ref()
        .map(KvBudgetRequest::budget)
        .transpose()?;
    let attention = fields.attention()?;
    Ok(g.submit(GenerationRequest {
        prompt,
        params,
        constraint,
        kv_budget,
        attention,
    })?)
}

/// The constraint a `response_format` asks for (`None`: free text).
fn response_constraint(
    g: &dyn Generator,
    format: Option<&Value>,
) -> Result<Option<Arc<JsonConstraint>>, ApiError> {
    let Some(format) = format else {
        return Ok(None);
    };
    let bad =
        |msg: String| ApiError::bad_request("unsupported_schema", msg).param("response_format");
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| bad("`response_format.json_schema.schema` is missing".into()))?;
            let shape = shape_of(schema).map_err(|e| bad(format!("the schema at {e}")))?;
            let constraint = JsonConstraint::new(&shape, g.tokenizer()).map_err(|e| bad(e.to_string()))?;
            Ok(Some(Arc::new(constraint)))
        }
        _ => Err(bad(
            "`response_format.type` must be \"text\" or \"json_schema\" (json_object needs a schema here)".into(),
        )),
    }
}

/// One chat turn, as the spec describes it (the handler reads it as the engine's `ChatMessage`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only
pub struct ChatTurn {
    /// `system`, `user`, `assistant` or `tool`.
    #[schema(pattern = "^(system|user|assistant|tool)$")]
    role: String,
    /// The text of the turn.
    content: String,
}

/// The schema of `response_format`: `{"type": "text"}` or `{"type": "json_schema", "json_schema": {"schema":
/// {...}}}` (the schema itself is checked when the request comes: a 400 `unsupported_schema` names what to change).
fn response_format_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let kind = |name: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some([name]))
    };
    let text = ObjectBuilder::new()
        .property("type", kind("text"))
        .required("type");
    let schema = ObjectBuilder::new()
        .property("schema", ObjectBuilder::new().schema_type(Type::Object))
        .required("schema");
    let json = ObjectBuilder::new()
        .property("type", kind("json_schema"))
        .property("json_schema", schema)
        .required("type")
        .required("json_schema");
    Schema::OneOf(
        OneOfBuilder::new()
            .item(text)
            .item(json)
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

/// The schema of `stop`: one non-empty string, or up to 4 of them.
fn stop_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
    let one = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
    };
    Schema::OneOf(
        OneOfBuilder::new()
            .item(one())
            .item(ArrayBuilder::new().items(one()).max_items(Some(4)))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    /// The conversation (at least one turn).
    #[schema(value_type = Vec<ChatTurn>, min_items = 1)]
    pub messages: Vec<ChatMessage>,
    /// Return log-probabilities of the chosen tokens.
    #[serde(default)]
    pub logprobs: bool,
    /// Alternatives per token with `logprobs` (0 to 20).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<usize>,
    /// Sampling fields.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    /// The prompt text (not empty).
    #[schema(min_length = 1)]
    pub prompt: String,
    /// Alternatives per token (0 to 20); when given, log-probabilities are returned.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 20)]
    pub logprobs: Option<usize>,
    /// Sampling fields.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

fn generator(app: &App) -> Result<&Arc<dyn Generator>, ApiError> {
    app.generator.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_model",
            "no generation model is loaded: start engram with --model DIR or --model synthetic:NAME",
        )
    })
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::Sampling(SamplingError::Invalid { param, .. }) => {
                ApiError::bad_request("invalid_parameter", e.to_string()).param(*param)
            }
            EngineError::TooLong { .. } => {
                ApiError::bad_request("context_length_exceeded", e.to_string()).param("messages")
            }
            EngineError::EmptyPrompt => ApiError::bad_request("empty_prompt", e.to_string()),
            EngineError::Attention(_) => {
                ApiError::bad_request("invalid_parameter", e.to_string()).param("attention")
            }
            EngineError::ConstraintBudget { .. } => {
                ApiError::bad_request("max_tokens_too_small", e.to_string()).param("max_tokens")
            }
            EngineError::QueueFull(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.to_string())
                    .retry_after(1)
            }
            EngineError::Scoring(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "scoring_failed",
                e.to_string(),
            ),
            _ => ApiError::internal(&e),
        }
    }
}

/// Validates the shared fields into sampling parameters.
fn sampling(
    g: &dyn Generator,
    f: &SamplingFields,
    logprobs: Option<usize>,
) -> Result<SamplingParams, ApiError> {
    if let Some(model) = &f.model {
        if model != g.model_name() {
            return Err(ApiError::bad_request(
                "model_not_found",
                format!(
                    "model '{model}' is not served; this server serves '{}'",
                    g.model_name()
                ),
            )
            .param("model"));
        }
    }
    if f.n.is_some_and(|n| n != 1) {
        return Err(
            ApiError::bad_request("invalid_parameter", "only n = 1 is supported").param("n"),
        );
    }
    let stop_strings = match &f.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    "`stop` must be a string or a list of strings",
                )
                .param("stop")
            })?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "`stop` must be a string or a list of strings",
            )
            .param("stop"))
        }
    };
    Ok(SamplingParams {
        temperature: f.temperature.unwrap_or(1.0),
        top_k: f.top_k,
        top_p: f.top_p,
        seed: f.seed,
        repetition_penalty: f.repetition_penalty,
        max_tokens: f.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        stop_token_ids: Vec::new(),
        stop_strings,
        logprobs,
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn usage_json(u: Usage) -> Value {
    let mut usage = json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
           "total_tokens": u.prompt_tokens + u.completion_tokens});
    if u.proposed_tokens > 0 {
        usage["speculative"] = json!({
            "proposed_tokens": u.proposed_tokens,
            "accepted_tokens": u.accepted_tokens,
            "acceptance_rate": u.accepted_tokens as f64 / u.proposed_tokens as f64,
            "target_steps": u.target_steps,
            "tokens_per_target_step": u.completion_tokens as f64 / u.target_steps.max(1) as f64,
        });
    }
    usage
}

/// A whole (not streamed) chat or text completion, as OpenAI's API returns it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompletionResponse {
    /// `chatcmpl-...` or `cmpl-...`.
    pub id: String,
    /// `chat.completion` or `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// Exactly one choice.
    pub choices: Vec<CompletionChoice>,
    /// `prompt_tokens`, `completion_tokens`, `total_tokens`, and `speculative` counts when speculation ran.
    #[schema(value_type = Object)]
    pub usage: Value,
}

/// The one choice of a [`CompletionResponse`]: `message` for chat, `text` for completions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    /// Always 0.
    pub index: u32,
    /// The assistant's message (chat completions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<AssistantMessage>,
    /// The generated text (text completions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `stop` (an end token or a stop sequence) or `length` (`max_tokens` reached).
    pub finish_reason: &'static str,
    /// `{"content": [...]}` per generated token when `logprobs` was asked for, else null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

/// The generated message of a chat completion.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The generated text.
    pub content: String,
}

/// Which OpenAI object family a response belongs to.
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

/// Runs a request to the end, collecting text and log-probabilities.
async fn collect(
    g: &dyn Generator,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<GenerationEvent>,
) -> Result<(String, Vec<Value>, FinishReason, Usage), ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            GenerationEvent::Token(t) => {
                text.push_str(&t.text);
                logprobs.push(token_logprob(g, t.token, t.logprob, &t.top_logprobs));
            }
            GenerationEvent::Done { reason, usage } => return Ok((text, logprobs, reason, usage)),
            GenerationEvent::Failed(e) => return Err(ApiError::internal(&e)),
        }
    }
    Err(ApiError::internal(&"the engine dropped the request"))
}

fn token_logprob(g: &dyn Generator, token: u32, logprob: f32, top: &[(u32, f32)]) -> Value {
    let name = |id: u32| g.tokenizer().id_to_token(id).unwrap_or_default();
    json!({
        "token": name(token), "token_id": token, "logprob": logprob,
        "top_logprobs": top.iter().map(|(id, lp)| json!({"token": name(*id), "token_id": id, "logprob": lp})).collect::<Vec<_>>(),
    })
}

/// Answers a submitted request as JSON or as an SSE stream.
async fn respond(
    g: Arc<dyn Generator>,
    rx: tokio::sync::mpsc::UnboundedReceiver<GenerationEvent>,
    kind: Kind,
    stream: bool,
    want_logprobs: bool,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<Response, ApiError> {
    let id = format!(
        "{}-{}",
        match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        },
        uuid::Uuid::new_v4().simple()
    );
    let created = now_secs();
    let model = g.model_name().to_string();
    if !stream {
        let (text, logprobs, reason, usage) = collect(g.as_ref(), rx).await?;
        let (message, text, object) = match kind {
            Kind::Chat => {
                let message = AssistantMessage {
                    role: "assistant",
                    content: text,
                };
                (Some(message), None, "chat.completion")
            }
            Kind::Completion => (None, Some(text), "text_completion"),
        };
        let choice = CompletionChoice {
            index: 0,
            message,
            text,
            finish_reason: finish_name(reason),
            logprobs: want_logprobs.then(|| json!({ "content": logprobs })),
        };
        let body = CompletionResponse {
            id,
            object,
            created,
            model,
            choices: vec![choice],
            usage: usage_json(usage),
        };
        return Ok(Json(body).into_response());
    }
    let object = match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    };
    let chunk = move |choice: Value, usage: Option<Value>| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        Event::default().data(v.to_string())
    };
    let first = matches!(kind, Kind::Chat)
        .then(|| chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}), None));
    let events = tokio_stream_from(rx).map(move |ev| {
        let g = g.clone();
        match ev {
            GenerationEvent::Token(t) => {
                let lp = want_logprobs
                    .then(|| json!({"content": [token_logprob(g.as_ref(), t.token, t.logprob, &t.top_logprobs)]}));
                let choice = match kind {
                    Kind::Chat => json!({"index": 0, "delta": {"content": t.text}, "finish_reason": null, "logprobs": lp}),
                    Kind::Completion => json!({"index": 0, "text": t.text, "finish_reason": null, "logprobs": lp}),
                };
                vec![chunk(choice, None)]
            }
            GenerationEvent::Done { reason, usage } => {
                let choice = match kind {
                    Kind::Chat => json!({"index": 0, "delta": {}, "finish_reason": finish_name(reason)}),
                    Kind::Completion => json!({"index": 0, "text": "", "finish_reason": finish_name(reason)}),
                };
                vec![chunk(choice, Some(usage_json(usage))), Event::default().data("[DONE]")]
            }
            GenerationEvent::Failed(e) => {
                tracing::error!(error = %e, "generation failed mid-stream");
                vec![
                    Event::default().data(json!({"error": {"message": "generation failed; see the server log", "type": "server_error", "code": "internal_error", "param": null}}).to_string()),
                    Event::default().data("[DONE]"),
                ]
            }
        }
    });
    let events = futures::stream::iter(first).chain(events.flat_map(futures::stream::iter));
    let cut = vec![
        Event::default().data(json!({"error": {"message": super::sse::SHUTTING_DOWN, "type": "server_error", "code": "shutting_down", "param": null}}).to_string()),
        Event::default().data("[DONE]"),
    ];
    let stream =
        super::sse::until_shutdown(events, shutdown, cut).map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The receiver as a stream (dropping the stream drops the receiver, which cancels the request).
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<GenerationEvent>,
) -> impl futures::Stream<Item = GenerationEvent> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// 400 `prompt_too_long` when a prompt of `bytes` is over `limits.max_prompt_bytes`.
fn check_prompt(app: &App, bytes: usize, param: &str) -> Result<(), ApiError> {
    let max = app.config.limits.max_prompt_bytes;
    if bytes > max {
        return Err(ApiError::bad_request(
            "prompt_too_long",
            format!("the prompt has {bytes} bytes; at most {max} (limits.max_prompt_bytes)"),
        )
        .param(param));
    }
    Ok(())
}

/// Tokenises on a blocking thread, one per core at a time ([`crate::cpu::run`]): a long prompt takes a while,
/// and a burst of requests, each on its own thread, would starve the async threads that answer `/healthz`.
async fn tokenize(
    g: Arc<dyn Generator>,
    work: impl FnOnce(&dyn Generator) -> Result<Vec<u32>, ApiError> + Send + 'static,
) -> Result<Vec<u32>, ApiError> {
    crate::cpu::run(move || work(g.as_ref()))
        .await
        .map_err(|e| ApiError::internal(&e))?
}

/// Chat completion (OpenAI-compatible).
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatRequest,
    responses(
        (status = 200, description = "A chat.completion object, or with `stream` SSE chat.completion.chunk events ending in [DONE]",
            content((CompletionResponse = "application/json"), (super::sse::SseEvent = "text/event-stream"))),
        (status = 400, description = "Invalid parameters or a prompt longer than the context window", body = ErrorEnvelope),
        (status = 429, description = "The generation queue is full (`queue_full`): retry after the `Retry-After` seconds", body = ErrorEnvelope),
        (status = 503, description = "No model loaded", body = ErrorEnvelope),
    ))]
pub async fn chat(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let mut body: ChatRequest = read_json(&app, req).await?;
    let g = generator(&app)?.clone();
    if body.messages.is_empty() {
        return Err(
            ApiError::bad_request("invalid_parameter", "`messages` is empty").param("messages"),
        );
    }
    if let Some((i, m)) = body
        .messages
        .iter()
        .enumerate()
        .find(|(_, m)| !CHAT_ROLES.contains(&m.role.as_str()))
    {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!(
                "`messages[{i}].role` is '{}': use {}",
                m.role,
                CHAT_ROLES.join(", ")
            ),
        )
        .param(format!("messages[{i}].role")));
    }
    if let Some(n) = body.top_logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!("`top_logprobs` is {n}: at most {MAX_TOP_LOGPROBS}"),
        )
        .param("top_logprobs"));
    }
    let top = body.logprobs.then(|| body.top_logprobs.unwrap_or(0));
    let params = sampling(g.as_ref(), &body.sampling, top)?;
    let bytes: usize = body
        .messages
        .iter()
        .map(|m| m.content.len() + m.role.len())
        .sum();
    check_prompt(&app, bytes, "messages")?;
    let messages = std::mem::take(&mut body.messages);
    let prompt = tokenize(g.clone(), move |g| {
        let text = g
            .tokenizer()
            .apply_chat_template(&messages, true)
            .map_err(|e| {
                ApiError::bad_request("invalid_messages", e.to_string()).param("messages")
            })?;
        g.tokenizer()
            .encode(&text, false)
            .map_err(|e| ApiError::internal(&e))
    })
    .await?;
    let rx = submit(g.as_ref(), prompt, params, &body.sampling)?;
    let cut = app.streams_cut.clone();
    respond(g, rx, Kind::Chat, body.sampling.stream, body.logprobs, cut).await
}

/// Text completion (OpenAI-compatible).
#[utoipa::path(post, path = "/v1/completions", tag = "openai", request_body = CompletionRequest,
    responses(
        (status = 200, description = "A text_completion object, or with `stream` SSE text_completion events ending in [DONE]",
            content((CompletionResponse = "application/json"), (super::sse::SseEvent = "text/event-stream"))),
        (status = 400, description = "Invalid parameters or a prompt longer than the context window", body = ErrorEnvelope),
        (status = 429, description = "The generation queue is full (`queue_full`): retry after the `Retry-After` seconds", body = ErrorEnvelope),
        (status = 503, description = "No model loaded", body = ErrorEnvelope),
    ))]
pub async fn completions(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let mut body: CompletionRequest = read_json(&app, req).await?;
    let g = generator(&app)?.clone();
    let params = sampling(g.as_ref(), &body.sampling, body.logprobs)?;
    check_prompt(&app, body.prompt.len(), "prompt")?;
    let text = std::mem::take(&mut body.prompt);
    let prompt = tokenize(g.clone(), move |g| {
        g.tokenizer()
            .encode(&text, true)
            .map_err(|e| ApiError::internal(&e))
    })
    .await?;
    let rx = submit(g.as_ref(), prompt, params, &body.sampling)?;
    respond(
        g,
        rx,
        Kind::Completion,
        body.sampling.stream,
        body.logprobs.is_some(),
        app.streams_cut.clone(),
    )
    .await
}

/// The served models.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// The generation model (when loaded) and the embedding model (when enabled).
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Value>,
}

/// List the models this server serves.
#[utoipa::path(get, path = "/v1/models", tag = "openai", responses((status = 200, body = ModelList)))]
pub async fn models(State(app): State<Arc<App>>) -> Json<ModelList> {
    let mut data = Vec::new();
    if let Some(g) = &app.generator {
        data.push(
            json!({"id": g.model_name(), "object": "model", "created": 0, "owned_by": "engram",
                         "context_length": g.max_context()}),
        );
    }
    if let Some(d) = app.pipeline.dense_index() {
        data.push(json!({"id": d.embedder().model_name(), "object": "model", "created": 0, "owned_by": "engram"}));
    }
    Json(ModelList {
        object: "list",
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    #[test]
    fn a_full_queue_is_429_with_retry_after() {
        let res = ApiError::from(EngineError::QueueFull(260)).into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[axum::http::header::RETRY_AFTER], "1");
    }

    #[test]
    fn refused_attention_is_a_400_naming_it() {
        let e = ApiError::from(EngineError::Attention(engram_engine::HipError(
            "top_k must be between 1 and 256, got 0".into(),
        )));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "invalid_parameter");
        assert_eq!(e.param.as_deref(), Some("attention"));
    }

    #[test]
    fn malformed_attention_is_an_invalid_field_naming_it() {
        let fields = |attention: Value| -> SamplingFields {
            serde_json::from_value(json!({ "attention": attention })).unwrap()
        };
        assert_eq!(fields(Value::Null).attention().unwrap(), None);
        let hip = fields(json!({"kind": "hip", "top_k": 8}))
            .attention()
            .unwrap();
        assert_eq!(hip.and_then(|m| m.hip()).map(|p| p.top_k), Some(8));
        for bad in [
            json!({"kind": "sparse"}),
            json!({"kind": "hip", "topk": 8}),
            json!({"kind": "hip", "top_k": "eight"}),
            json!("hip"),
        ] {
            let e = fields(bad.clone()).attention().unwrap_err();
            assert_eq!(
                (e.code, e.param.as_deref()),
                ("invalid_field", Some("attention")),
                "{bad}"
            );
        }
    }
}
