//! `POST /v1/qa`: answer a question from retrieved passages, with passage attributions. Without a generation
//! model the answer is extractive (`mode: "extractive"`: the best-matching retrieved sentence) and the
//! attributions are Shapley values of the passages under that reader's value function (exact up to 10
//! passages, antithetic permutation sampling with standard errors beyond).

use super::body::{parse_json, read_limited, require_json};
use super::error::{ApiError, ErrorEnvelope};
use super::retrieve::{checked_top_k, ScoredPassageView};
use crate::app::App;
use crate::attribution::{exact_shapley, permutation_shapley, MAX_EXACT_PLAYERS};
use crate::qa::extractive::{read, ReaderGame};
use crate::retrieve::Seed;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// Antithetic permutation pairs sampled past [`MAX_EXACT_PLAYERS`] passages (128 permutations).
const PERMUTATION_PAIRS: usize = 64;

/// What to attribute the answer to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttributionLevel {
    /// No attributions.
    None,
    /// One value per retrieved passage (the default).
    #[default]
    Passages,
    /// Values for tokens inside the top passages (needs a generation model).
    Tokens,
}

/// A question.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QaRequest {
    /// The question.
    pub question: String,
    /// How many passages to retrieve (default `retrieval.default_top_k`, at most `retrieval.max_top_k`).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Retrieval method (default `bm25`).
    #[serde(default)]
    pub retriever: Option<String>,
    /// `none`, `passages` (default) or `tokens`.
    #[serde(default)]
    pub attribution: AttributionLevel,
    /// Stream the answer as server-sent events (needs a generation model).
    #[serde(default)]
    pub stream: bool,
}

/// Where the answer came from.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Answer {
    /// The answer text.
    pub text: String,
    /// `extractive`: a sentence copied from a passage.
    pub mode: String,
    /// Index of the passage (in `passages`) that holds it.
    pub passage: usize,
    /// Start byte offset of the answer in that passage's text.
    pub start_byte: usize,
    /// End byte offset of the answer in that passage's text.
    pub end_byte: usize,
}

/// A passage's share of the answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PassageAttribution {
    /// The Shapley value.
    pub value: f64,
    /// Its standard error (0 when exact).
    pub std_error: f64,
}

/// A retrieved passage with its attribution.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QaPassage {
    /// The passage, as `/v1/retrieve` returns it.
    #[serde(flatten)]
    pub passage: ScoredPassageView,
    /// Its attribution (absent with `attribution: "none"`).
    pub attribution: Option<PassageAttribution>,
}

/// How the attributions were computed.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttributionInfo {
    /// `exact_shapley` or `permutation_shapley`.
    pub method: String,
    /// The value function: `extractive_best_sentence_score`.
    pub value: String,
    /// Coalitions valued.
    pub evaluations: usize,
    /// Value of all passages together (the values sum to this minus `empty`).
    pub full: f64,
    /// Value of no passage.
    pub empty: f64,
}

/// Server-side time per stage, in milliseconds.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QaTimings {
    /// Retrieval.
    pub retrieve_ms: f64,
    /// Reading (answer extraction).
    pub read_ms: f64,
    /// Attribution.
    pub attribution_ms: f64,
    /// The whole request.
    pub total_ms: f64,
}

/// An answer with its evidence.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QaResponse {
    /// The question, as given.
    pub question: String,
    /// The retriever used.
    pub retriever: String,
    /// The answer (`null` when no retrieved sentence shares a term with the question).
    pub answer: Option<Answer>,
    /// The retrieved passages, best first, with attributions.
    pub passages: Vec<QaPassage>,
    /// Graph retrievers: the phrases that seeded the walk.
    pub seeds: Vec<Seed>,
    /// How the attributions were computed (absent with `attribution: "none"`).
    pub attribution: Option<AttributionInfo>,
    /// Per-stage timings.
    pub timings: QaTimings,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Answer a question.
#[utoipa::path(post, path = "/v1/qa", tag = "qa", request_body = QaRequest,
    responses(
        (status = 200, body = QaResponse),
        (status = 400, description = "Malformed request, bad top_k or unknown retriever", body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope),
        (status = 422, description = "Empty question, or a feature that needs a generation model", body = ErrorEnvelope),
    ))]
pub async fn qa(State(app): State<Arc<App>>, req: Request) -> Result<Json<QaResponse>, ApiError> {
    let started = Instant::now();
    require_json(req.headers())?;
    let bytes = read_limited(req.into_body(), app.config.server.max_body_bytes).await?;
    let body: QaRequest = parse_json(&bytes)?;
    if body.question.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_question",
            "`question` is empty: ask something",
        )
        .param("question"));
    }
    let needs_model = |what: &str, param: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "needs_model",
            format!(
                "{what} needs a generation model; answers are extractive here (leave `{param}` at its default)"
            ),
        )
        .param(param.to_string())
    };
    if body.stream {
        return Err(needs_model("streaming the answer", "stream"));
    }
    if body.attribution == AttributionLevel::Tokens {
        return Err(needs_model("token attribution", "attribution"));
    }
    let top_k = checked_top_k(&app, body.top_k)?;
    let method = body.retriever.unwrap_or_else(|| "bm25".into());
    let retriever = app
        .retrievers
        .get(&method)
        .map_err(|e| ApiError::from(e).param("retriever"))?;
    let t = Instant::now();
    let found = retriever.retrieve_explained(&body.question, top_k).await?;
    let retrieve_ms = ms(t);

    let t = Instant::now();
    let texts: Vec<&str> = found
        .passages
        .iter()
        .map(|p| p.passage.text.as_str())
        .collect();
    let reading = read(&body.question, &texts);
    let answer = reading.best.as_ref().map(|s| Answer {
        text: texts[s.passage][s.start..s.end].to_string(),
        mode: "extractive".into(),
        passage: s.passage,
        start_byte: s.start,
        end_byte: s.end,
    });
    let read_ms = ms(t);

    let t = Instant::now();
    let n = texts.len();
    let (values, info) = if body.attribution == AttributionLevel::None || n == 0 {
        (None, None)
    } else {
        let mut game = ReaderGame {
            passages: n,
            reading: &reading,
        };
        let (method, result) = if n <= MAX_EXACT_PLAYERS {
            ("exact_shapley", exact_shapley(&mut game))
        } else {
            (
                "permutation_shapley",
                permutation_shapley(&mut game, PERMUTATION_PAIRS, 0),
            )
        };
        let a = result.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "attribution_failed",
                e.to_string(),
            )
        })?;
        let info = AttributionInfo {
            method: method.into(),
            value: "extractive_best_sentence_score".into(),
            evaluations: a.evaluations,
            full: a.full,
            empty: a.empty,
        };
        (Some((a.values, a.std_errors)), Some(info))
    };
    let attribution_ms = ms(t);

    let passages = found
        .passages
        .into_iter()
        .enumerate()
        .map(|(i, p)| QaPassage {
            passage: p.into(),
            attribution: values.as_ref().map(|(v, e)| PassageAttribution {
                value: v[i],
                std_error: e[i],
            }),
        })
        .collect();
    Ok(Json(QaResponse {
        question: body.question,
        retriever: method,
        answer,
        passages,
        seeds: found.seeds,
        attribution: info,
        timings: QaTimings {
            retrieve_ms,
            read_ms,
            attribution_ms,
            total_ms: ms(started),
        },
    }))
}
