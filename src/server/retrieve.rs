//! `POST /v1/retrieve`: rank passages for a query.

use super::body::read_json;
use super::error::{ApiError, ErrorEnvelope};
use crate::app::App;
use crate::metrics;
use crate::retrieve::{ScoredPassage, Seed};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// A retrieval request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrieveRequest {
    /// The question or query text.
    #[schema(min_length = 1)]
    pub query: String,
    /// How many passages (default `retrieval.default_top_k`, at most `retrieval.max_top_k`).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub top_k: Option<usize>,
    /// Retrieval method (default `bm25`).
    #[serde(default)]
    pub method: Option<String>,
}

/// Ranked passages.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetrieveResponse {
    /// The method used.
    pub method: String,
    /// The query, as given.
    pub query: String,
    /// Passages, best first, with score, title, document id and byte offsets.
    pub passages: Vec<ScoredPassageView>,
    /// Graph retrievers (`hipporag`, `hipporag2`): the phrases that seeded the walk, heaviest first; empty for
    /// the other methods and when nothing linked.
    pub seeds: Vec<Seed>,
    /// Server-side retrieval time in milliseconds.
    pub took_ms: f64,
}

/// A ranked passage as returned by the API.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScoredPassageView {
    /// Passage id.
    pub id: i64,
    /// Document id.
    pub document_id: String,
    /// Position within the document.
    pub ordinal: i64,
    /// Document title.
    pub title: String,
    /// Passage text.
    pub text: String,
    /// Start byte offset in the document text.
    pub start_byte: i64,
    /// End byte offset in the document text.
    pub end_byte: i64,
    /// Retrieval score.
    pub score: f32,
}

impl From<ScoredPassage> for ScoredPassageView {
    fn from(s: ScoredPassage) -> Self {
        let p = s.passage;
        Self {
            id: p.id,
            document_id: p.document_id,
            ordinal: p.ordinal,
            title: p.title,
            text: p.text,
            start_byte: p.start_byte,
            end_byte: p.end_byte,
            score: s.score,
        }
    }
}

/// `top_k` as asked (default `retrieval.default_top_k`), or an `invalid_field` error when it is 0 or over
/// `retrieval.max_top_k`.
pub(super) fn checked_top_k(app: &App, top_k: Option<usize>) -> Result<usize, ApiError> {
    let cfg = &app.config.retrieval;
    let top_k = top_k.unwrap_or(cfg.default_top_k);
    if top_k == 0 || top_k > cfg.max_top_k {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!(
                "`top_k` must be between 1 and {} (retrieval.max_top_k)",
                cfg.max_top_k
            ),
        )
        .param("top_k"));
    }
    Ok(top_k)
}

/// 400 `query_too_long` or `too_many_terms` when `text` (the request's `param`) is over `limits.max_query_bytes`
/// or `limits.max_query_terms`: a query's cost grows with its terms.
pub(super) fn check_query(app: &App, text: &str, param: &str) -> Result<(), ApiError> {
    let limits = &app.config.limits;
    if text.len() > limits.max_query_bytes {
        return Err(ApiError::bad_request(
            "query_too_long",
            format!(
                "`{param}` has {} bytes; at most {} (limits.max_query_bytes)",
                text.len(),
                limits.max_query_bytes
            ),
        )
        .param(param));
    }
    if text
        .split_whitespace()
        .nth(limits.max_query_terms)
        .is_some()
    {
        return Err(ApiError::bad_request(
            "too_many_terms",
            format!(
                "`{param}` has more than {} terms (limits.max_query_terms)",
                limits.max_query_terms
            ),
        )
        .param(param));
    }
    Ok(())
}

/// Rank passages for a query.
#[utoipa::path(post, path = "/v1/retrieve", tag = "retrieval", request_body = RetrieveRequest,
    responses(
        (status = 200, body = RetrieveResponse),
        (status = 400, description = "Malformed request, unknown method, query over the limits (`query_too_long`, `too_many_terms`) or nested too deep", body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope),
        (status = 422, description = "Empty query", body = ErrorEnvelope),
    ))]
pub async fn retrieve(
    State(app): State<Arc<App>>,
    req: Request,
) -> Result<Json<RetrieveResponse>, ApiError> {
    let body: RetrieveRequest = read_json(&app, req).await?;
    if body.query.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_query",
            "`query` is empty: give some text to search for",
        )
        .param("query"));
    }
    check_query(&app, &body.query, "query")?;
    let top_k = checked_top_k(&app, body.top_k)?;
    let method = body.method.unwrap_or_else(|| "bm25".into());
    let retriever = app.retrievers.get(&method)?;
    let started = Instant::now();
    let found = retriever.retrieve_explained(&body.query, top_k).await?;
    let took = started.elapsed();
    metrics::RETRIEVE_DURATION
        .with_label_values(&[retriever.name()])
        .observe(took.as_secs_f64());
    Ok(Json(RetrieveResponse {
        method,
        query: body.query,
        passages: found.passages.into_iter().map(Into::into).collect(),
        seeds: found.seeds,
        took_ms: took.as_secs_f64() * 1000.0,
    }))
}
