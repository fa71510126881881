//! `POST /v1/qa`: answer a question from retrieved passages, with passage attributions (Shapley values: exact up
//! to 10 passages, antithetic permutation sampling with standard errors beyond). With a generation model the
//! engine answers greedily (`mode: "generated"`) and a passage set is worth the answer's teacher-forced
//! log-probability under the prompt holding only those passages (TextGenSHAP); without one the answer is
//! extractive (`mode: "extractive"`: the best-matching retrieved sentence) and the values are over that reader.
//! The work is [`crate::qa::QaService`]'s; this handler parses the body, calls it and serialises the outcome, as
//! JSON or as server-sent events.

use super::body::read_json;
use super::error::{ApiError, ErrorEnvelope};
use super::retrieve::ScoredPassageView;
use crate::app::App;
use crate::qa::iterative::Round;
pub use crate::qa::relations::RELATIONS_PER_PASSAGE;
use crate::qa::{
    Answer, Answerer, AttributionInfo, PassageAttribution, QaOutcome, QaRelation, QaRequest,
    QaService, QaTimings, SentenceAttribution, TokenAttribution,
};
use crate::retrieve::Seed;
use axum::extract::{Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// A retrieved passage with its attribution.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QaPassage {
    /// The passage, as `/v1/retrieve` returns it.
    #[serde(flatten)]
    pub passage: ScoredPassageView,
    /// Its attribution (absent with `attribution: "none"`).
    pub attribution: Option<PassageAttribution>,
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
    /// The knowledge graph's relations inside the retrieved passages, at most [`RELATIONS_PER_PASSAGE`] per
    /// passage, those touching a seed phrase first (`null` when the graph is disabled).
    pub relations: Option<Vec<QaRelation>>,
    /// How the attributions were computed (absent with `attribution: "none"`).
    pub attribution: Option<AttributionInfo>,
    /// With `attribution: "tokens"`: the values of runs of words of the passage with the largest value.
    pub token_attribution: Option<TokenAttribution>,
    /// With `attribution: "sentences"`: the values of the passages' sentences.
    pub sentence_attribution: Option<SentenceAttribution>,
    /// The retrieval rounds: the question first, then each reasoning step used as a query.
    pub rounds: Vec<Round>,
    /// Per-stage timings.
    pub timings: QaTimings,
}

impl From<QaOutcome> for QaResponse {
    fn from(o: QaOutcome) -> Self {
        let mut values = o.attributions.passages.map(Vec::into_iter);
        let passages = o
            .passages
            .into_iter()
            .map(|p| QaPassage {
                passage: p.into(),
                attribution: values.as_mut().and_then(Iterator::next),
            })
            .collect();
        Self {
            question: o.question,
            retriever: o.retriever,
            answer: o.answer,
            passages,
            seeds: o.seeds,
            relations: o.relations,
            attribution: o.attributions.info,
            token_attribution: o.attributions.tokens,
            sentence_attribution: o.attributions.sentences,
            rounds: o.rounds,
            timings: o.timings,
        }
    }
}

/// The question-answering service over `app`'s retrievers, model (or extractive reader) and graph.
fn service(app: &App) -> QaService<'_> {
    QaService {
        retrievers: &app.retrievers,
        answerer: Answerer::new(app.generator.clone()),
        graph: app.graph.as_ref(),
        qa: &app.config.qa,
        retrieval: &app.config.retrieval,
    }
}

/// Answer a question.
#[utoipa::path(post, path = "/v1/qa", tag = "qa", request_body = QaRequest,
    responses(
        (status = 200, description = "The answer (JSON), or with `stream` a text/event-stream of token, attribution and done events",
            content((QaResponse = "application/json"), (super::sse::SseEvent = "text/event-stream"))),
        (status = 400, description = "Malformed request, bad top_k, unknown retriever, or over a limit (`query_too_long`, `too_many_terms`, `too_many_passages`)", body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope),
        (status = 422, description = "Empty question", body = ErrorEnvelope),
        (status = 429, description = "The generation queue is full (`queue_full`): retry after the `Retry-After` seconds", body = ErrorEnvelope),
    ))]
pub async fn qa(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    let body: QaRequest = read_json(&app, req).await?;
    super::retrieve::check_query(&app, &body.question, "question")?;
    check_passages(&app, &body)?;
    let stream = body.stream;
    // Checked here, so that a bad request is a 4xx before any stream starts.
    let query = service(&app).prepare(body)?;
    if !stream {
        let outcome = service(&app).answer(query, started, |_| {}).await?;
        return Ok(Json(QaResponse::from(outcome)).into_response());
    }
    let app_streams_cut = app.streams_cut.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let on_token = |text: &str| {
            let _ = tx.send(sse_event("token", &serde_json::json!({ "text": text })));
        };
        match service(&app).answer(query, started, on_token).await {
            Ok(outcome) => {
                let response = QaResponse::from(outcome);
                let attribution = serde_json::json!({
                    "attribution": response.attribution,
                    "passages": response.passages.iter().map(|p| &p.attribution).collect::<Vec<_>>(),
                    "tokens": response.token_attribution,
                    "sentences": response.sentence_attribution,
                });
                let _ = tx.send(sse_event("attribution", &attribution));
                let _ = tx.send(sse_event("done", &response));
            }
            Err(e) => {
                let e = ApiError::from(e);
                tracing::warn!(code = e.code, message = %e.message, "question answering failed mid-stream");
                let error = serde_json::json!({"error": {"code": e.code, "message": e.message}});
                let _ = tx.send(sse_event("error", &error));
            }
        }
    });
    let events = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let cut = sse_event(
        "error",
        &serde_json::json!({"error": {"code": "shutting_down", "message": super::sse::SHUTTING_DOWN}}),
    );
    let stream = super::sse::until_shutdown(events, app_streams_cut, vec![cut])
        .map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// 400 `too_many_passages` when `top_k` times `iterations` is over `limits.max_qa_passages` (attribution's cost
/// grows with the passages).
fn check_passages(app: &App, body: &QaRequest) -> Result<(), ApiError> {
    let top_k = body.top_k.unwrap_or(app.config.retrieval.default_top_k);
    let passages = top_k.saturating_mul(body.iterations.unwrap_or(1));
    let max = app.config.limits.max_qa_passages;
    if passages > max {
        return Err(ApiError::bad_request(
            "too_many_passages",
            format!(
                "`top_k` × `iterations` asks for {passages} passages; at most {max} (limits.max_qa_passages)"
            ),
        )
        .param("top_k"));
    }
    Ok(())
}

/// One server-sent event: `event: name`, the value as JSON data.
fn sse_event(name: &str, value: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(value).unwrap_or_else(|_| "null".into()))
}
