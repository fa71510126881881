//! `POST /v1/qa`: answer a question from retrieved passages, with passage attributions (Shapley values: exact up
//! to 10 passages, antithetic permutation sampling with standard errors beyond). With a generation model the
//! engine answers greedily (`mode: "generated"`) and a passage set is worth the answer's teacher-forced
//! log-probability under the prompt holding only those passages (TextGenSHAP); without one the answer is
//! extractive (`mode: "extractive"`: the best-matching retrieved sentence) and the values are over that reader.

use super::body::{parse_json, read_limited, require_json};
use super::error::{ApiError, ErrorEnvelope};
use super::retrieve::{checked_top_k, ScoredPassageView};
use crate::app::App;
use crate::attribution::{
    all_players, banzhaf, exact_shapley, permutation_shapley, Game, LogProbGame, Scorer, Value,
    MAX_EXACT_PLAYERS,
};
use crate::graph::KnowledgeGraph;
use crate::qa::extractive::{read, ReaderGame};
use crate::qa::generated::{
    generate_answer, prompt_ids, separate_prompt, AnswerError, EngineScorer,
};
use crate::qa::iterative::{gather, IterativeError, Round, Thinker, MAX_ITERATIONS};
use crate::qa::spans::{keep_runs, top_passage, word_runs, ReaderRunGame, SPAN_PLAYERS};
use crate::retrieve::{Retriever, Seed};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engram_engine::{EngineError, Generator};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// Antithetic permutation pairs sampled past [`MAX_EXACT_PLAYERS`] passages (128 permutations).
const PERMUTATION_PAIRS: usize = 64;

/// Most relations listed per retrieved passage in [`QaResponse::relations`].
pub const RELATIONS_PER_PASSAGE: usize = 3;

/// Random coalitions valued by the `banzhaf` estimator.
const BANZHAF_SAMPLES: usize = 1024;

/// Drop in the answer's log-probability (nats) below which `answer_kept` counts the answer as changed: the answer
/// is at least half as likely as with every passage.
const ANSWER_KEPT_MARGIN: f64 = std::f64::consts::LN_2;

/// How the values are estimated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Estimator {
    /// Exact Shapley values up to 10 players, permutation sampling beyond.
    #[default]
    Auto,
    /// Permutation sampling (128 permutations in antithetic pairs), whatever the number of players.
    Permutation,
    /// Banzhaf values from 1,024 random coalitions (each player in with probability 1/2).
    Banzhaf,
}

/// What a passage subset is worth for a generated answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueFunction {
    /// The answer's teacher-forced log-probability.
    #[default]
    LogProb,
    /// 1 when the answer's log-probability stays within ln 2 of the full prompt's, else 0 (TextGenSHAP's
    /// answer-change indicator, as "is the answer still the likely one").
    AnswerKept,
}

/// Values of `game`'s players by `estimator`.
fn shapley<G: Game>(
    game: &mut G,
    value: &str,
    estimator: Estimator,
) -> Result<(Vec<f64>, Vec<f64>, AttributionInfo), ApiError> {
    let n = game.players();
    let (method, result) = match estimator {
        Estimator::Auto if n <= MAX_EXACT_PLAYERS => ("exact_shapley", exact_shapley(game)),
        Estimator::Auto | Estimator::Permutation => (
            "permutation_shapley",
            permutation_shapley(game, PERMUTATION_PAIRS, 0),
        ),
        Estimator::Banzhaf => ("banzhaf", banzhaf(game, BANZHAF_SAMPLES, 0.5, 0)),
    };
    let a = result.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "attribution_failed",
            e.to_string(),
        )
    })?;
    let info = AttributionInfo {
        method: method.into(),
        value: value.into(),
        evaluations: a.evaluations,
        full: a.full,
        empty: a.empty,
        passage_encoding: None,
        forward_passes: None,
        computed_tokens: None,
        prompt_tokens: None,
    };
    Ok((a.values, a.std_errors, info))
}

/// The game's value function for `value`.
fn game_value(value: ValueFunction) -> Value {
    match value {
        ValueFunction::LogProb => Value::AnswerLogProb,
        ValueFunction::AnswerKept => Value::AnswerKept {
            margin: ANSWER_KEPT_MARGIN,
        },
    }
}

/// Shapley values of a model-backed game, with what the model computed for them.
fn model_shapley<S: Scorer>(
    game: &mut LogProbGame<'_, S>,
    encoding: PassageEncoding,
    value: ValueFunction,
    estimator: Estimator,
) -> Result<(Vec<f64>, Vec<f64>, AttributionInfo), ApiError> {
    let name = match value {
        ValueFunction::LogProb => "answer_log_prob",
        ValueFunction::AnswerKept => "answer_kept",
    };
    let (values, errors, mut info) = shapley(game, name, estimator)?;
    info.passage_encoding = Some(encoding.name().into());
    info.forward_passes = Some(game.passes);
    info.computed_tokens = Some(game.computed_tokens);
    info.prompt_tokens = Some(game.total_tokens);
    Ok((values, errors, info))
}

/// What to attribute the answer to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttributionLevel {
    /// No attributions.
    None,
    /// One value per retrieved passage (the default).
    #[default]
    Passages,
    /// Passage values, then values for runs of words of the passage with the largest value (`token_attribution`).
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
    /// Stream the answer as server-sent events: `token` events carry the answer's text as it is made (one per
    /// generated token; an extractive answer in one), then `attribution` (`{attribution, passages: [value and
    /// standard error per passage]}`), then `done` with the whole response; a failure after the stream started is
    /// an `error` event (`{error: {code, message}}`). Bad requests are still plain 4xx JSON errors.
    #[serde(default)]
    pub stream: bool,
    /// Rounds of retrieval (IRCoT-style, 1 to 4, default 1): after the first, each round retrieves `top_k` more
    /// passages with a reasoning step as the query (the model's, or the reader's best new sentence without one).
    #[serde(default)]
    pub iterations: Option<usize>,
    /// How coalition prompts are computed for generated answers' attributions: `joint` (each coalition's prompt
    /// written out and computed in full: exact, about one prefill per coalition), `separate` (each passage encoded
    /// once after the instruction and question, a coalition's answer attending to its passages only: the
    /// Fusion-in-Decoder approximation, a coalition costs its answer's tokens) or `auto` (the default: `joint` up
    /// to 5 passages, `separate` beyond).
    #[serde(default)]
    pub passage_encoding: PassageEncoding,
    /// The estimator: `auto` (default: exact Shapley up to 10 passages, permutation sampling beyond),
    /// `permutation` or `banzhaf`.
    #[serde(default)]
    pub estimator: Estimator,
    /// For generated answers, what a passage subset is worth: `log_prob` (default, the answer's teacher-forced
    /// log-probability) or `answer_kept` (TextGenSHAP's answer-change indicator: 1 while the answer's
    /// log-probability stays within ln 2 of the full prompt's). The extractive reader has its own value.
    #[serde(default)]
    pub value: ValueFunction,
}

/// How coalition prompts are computed (see [`QaRequest::passage_encoding`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PassageEncoding {
    /// `joint` up to [`JOINT_MAX_PASSAGES`] passages, `separate` beyond.
    #[default]
    Auto,
    /// Each coalition's prompt computed in full.
    Joint,
    /// Each passage encoded once; coalitions attend to their passages' keys.
    Separate,
}

/// Most passages for which `auto` computes every coalition prompt in full (2^5 = 32 prompts).
pub const JOINT_MAX_PASSAGES: usize = 5;

impl PassageEncoding {
    /// `joint` or `separate` for `passages` passages.
    fn resolve(self, passages: usize) -> Self {
        match self {
            Self::Auto if passages <= JOINT_MAX_PASSAGES => Self::Joint,
            Self::Auto => Self::Separate,
            other => other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Joint => "joint",
            Self::Separate => "separate",
        }
    }
}

/// The answer and where it came from.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Answer {
    /// The answer text.
    pub text: String,
    /// `generated` (by the model) or `extractive` (a sentence copied from a passage, when no model is loaded).
    pub mode: String,
    /// Extractive answers: index of the passage (in `passages`) that holds it.
    pub passage: Option<usize>,
    /// Extractive answers: start byte offset of the answer in that passage's text.
    pub start_byte: Option<usize>,
    /// Extractive answers: end byte offset of the answer in that passage's text.
    pub end_byte: Option<usize>,
    /// Generated answers: the answer's tokens.
    pub tokens: Option<usize>,
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
    /// The value function: `answer_log_prob` (the model's answer, teacher-forced under each passage subset) or
    /// `extractive_best_sentence_score`.
    pub value: String,
    /// Coalitions valued.
    pub evaluations: usize,
    /// Value of all passages together (the values sum to this minus `empty`).
    pub full: f64,
    /// Value of no passage.
    pub empty: f64,
    /// Generated answers: how coalition prompts were computed, `joint` or `separate`.
    pub passage_encoding: Option<String>,
    /// Generated answers: forward passes the model ran for the attribution.
    pub forward_passes: Option<usize>,
    /// Generated answers: prompt tokens the model computed for the attribution.
    pub computed_tokens: Option<usize>,
    /// Generated answers: prompt tokens of every valued coalition's prompt written out in full.
    pub prompt_tokens: Option<usize>,
}

/// A relation of the knowledge graph inside a retrieved passage: one edge of the graph neighbourhood that led to
/// the answer (seed phrase -> relation -> passage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QaRelation {
    /// The subject phrase (normalised).
    pub subject: String,
    /// The relation, as extracted.
    pub relation: String,
    /// The object phrase (normalised).
    pub object: String,
    /// Index (in `passages`) of the passage it was extracted from.
    pub passage: usize,
    /// Whether its subject or object is one of the `seeds`.
    pub seed: bool,
}

/// Token-level attribution (TextGenSHAP's second level): runs of consecutive words of one passage as players, the
/// other passages kept whole, exact Shapley values over the same value function as the passages'.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenAttribution {
    /// Index (in `passages`) of the passage whose words are attributed: the one with the largest value.
    pub passage: usize,
    /// The runs (at most 8), in text order.
    pub spans: Vec<SpanAttribution>,
    /// How the values were computed.
    pub attribution: AttributionInfo,
}

/// One run of words of the attributed passage and its Shapley value.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpanAttribution {
    /// First byte of the run in the passage text.
    pub start_byte: usize,
    /// One past its last byte.
    pub end_byte: usize,
    /// Its Shapley value.
    pub value: f64,
    /// Standard error (0 for exact values).
    pub std_error: f64,
}

fn token_attribution(
    passage: usize,
    runs: &[(usize, usize)],
    (values, errors, info): (Vec<f64>, Vec<f64>, AttributionInfo),
) -> TokenAttribution {
    TokenAttribution {
        passage,
        spans: runs
            .iter()
            .zip(values.iter().zip(&errors))
            .map(
                |(&(start_byte, end_byte), (&value, &std_error))| SpanAttribution {
                    start_byte,
                    end_byte,
                    value,
                    std_error,
                },
            )
            .collect(),
        attribution: info,
    }
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
    /// The knowledge graph's relations inside the retrieved passages, at most [`RELATIONS_PER_PASSAGE`] per
    /// passage, those touching a seed phrase first (`null` when the graph is disabled).
    pub relations: Option<Vec<QaRelation>>,
    /// How the attributions were computed (absent with `attribution: "none"`).
    pub attribution: Option<AttributionInfo>,
    /// With `attribution: "tokens"`: the values of runs of words of the passage with the largest value.
    pub token_attribution: Option<TokenAttribution>,
    /// The retrieval rounds: the question first, then each reasoning step used as a query.
    pub rounds: Vec<Round>,
    /// Per-stage timings.
    pub timings: QaTimings,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Answer a question.
#[utoipa::path(post, path = "/v1/qa", tag = "qa", request_body = QaRequest,
    responses(
        (status = 200, body = QaResponse, description = "The answer (JSON), or with `stream` a text/event-stream of token, attribution and done events"),
        (status = 400, description = "Malformed request, bad top_k or unknown retriever", body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope),
        (status = 422, description = "Empty question", body = ErrorEnvelope),
    ))]
pub async fn qa(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
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
    let top_k = checked_top_k(&app, body.top_k)?;
    let iterations = body.iterations.unwrap_or(1);
    if !(1..=MAX_ITERATIONS).contains(&iterations) {
        return Err(ApiError::bad_request(
            "invalid_iterations",
            format!(
                "`iterations` is {iterations}: ask for 1 to {MAX_ITERATIONS} rounds of retrieval"
            ),
        )
        .param("iterations"));
    }
    let method = body.retriever.clone().unwrap_or_else(|| "bm25".into());
    // Looked up here, so that a bad name is a 400 before any stream starts.
    let retriever = app
        .retrievers
        .get(&method)
        .map_err(|e| ApiError::from(e).param("retriever"))?;
    if !body.stream {
        let response = answer(app, body, top_k, method, retriever, started, None).await?;
        return Ok(Json(response).into_response());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        match answer(
            app,
            body,
            top_k,
            method,
            retriever,
            started,
            Some(tx.clone()),
        )
        .await
        {
            Ok(response) => {
                let attribution = serde_json::json!({
                    "attribution": response.attribution,
                    "passages": response.passages.iter().map(|p| &p.attribution).collect::<Vec<_>>(),
                    "tokens": response.token_attribution,
                });
                let _ = tx.send(sse_event("attribution", &attribution));
                let _ = tx.send(sse_event("done", &response));
            }
            Err(e) => {
                tracing::warn!(code = e.code, message = %e.message, "question answering failed mid-stream");
                let error = serde_json::json!({"error": {"code": e.code, "message": e.message}});
                let _ = tx.send(sse_event("error", &error));
            }
        }
    });
    let stream =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One server-sent event: `event: name`, the value as JSON data.
fn sse_event(name: &str, value: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(value).unwrap_or_else(|_| "null".into()))
}

/// Retrieves, answers and attributes. With `events`, the answer's text also goes out as `token` events while it is
/// made (generated: one per token; extractive: the whole span at once).
async fn answer(
    app: Arc<App>,
    body: QaRequest,
    top_k: usize,
    method: String,
    retriever: Arc<dyn Retriever>,
    started: Instant,
    events: Option<UnboundedSender<Event>>,
) -> Result<QaResponse, ApiError> {
    let t = Instant::now();
    let thinker = match &app.generator {
        Some(g) => Thinker::Model(g.clone()),
        None => Thinker::Reader,
    };
    let (found, rounds) = gather(
        retriever.as_ref(),
        &thinker,
        &body.question,
        top_k,
        body.iterations.unwrap_or(1),
        app.config.retrieval.max_top_k,
    )
    .await
    .map_err(|e| match e {
        IterativeError::Retrieve(e) => ApiError::from(e),
        IterativeError::Step(e) => ApiError::internal(&e),
    })?;
    let retrieve_ms = ms(t);

    let n = found.passages.len();
    let want_attribution = body.attribution != AttributionLevel::None && n > 0;
    let want_tokens = body.attribution == AttributionLevel::Tokens;
    let (answer, values, info, read_ms, attribution_ms, token_attribution) =
        match app.generator.clone() {
            Some(g) => {
                let passages: Vec<(String, String)> = found
                    .passages
                    .iter()
                    .map(|p| (p.passage.title.clone(), p.passage.text.clone()))
                    .collect();
                let all_passages = passages.clone();
                let t = Instant::now();
                let (text, tokens) =
                    generate(g.as_ref(), &body.question, &passages, events.as_ref()).await?;
                let read_ms = ms(t);
                let t = Instant::now();
                let scored = if want_attribution && !tokens.is_empty() {
                    let encoding = body.passage_encoding.resolve(n);
                    let mut game = match encoding {
                        PassageEncoding::Separate => LogProbGame::separate(
                            EngineScorer {
                                generator: g.clone(),
                                coalitions_per_call: app.config.qa.coalitions_per_call,
                            },
                            separate_prompt(g.as_ref(), &body.question, &passages)
                                .map_err(|e| ApiError::internal(&e))?,
                            tokens.clone(),
                            game_value(body.value),
                        ),
                        _ => {
                            let (question, prompt_g) = (body.question.clone(), g.clone());
                            LogProbGame::new(
                                EngineScorer {
                                    generator: g.clone(),
                                    coalitions_per_call: app.config.qa.coalitions_per_call,
                                },
                                n,
                                Box::new(move |c| {
                                    prompt_ids(prompt_g.as_ref(), &question, &passages, c)
                                }),
                                tokens.clone(),
                                game_value(body.value),
                            )
                        }
                    };
                    let (value, estimator) = (body.value, body.estimator);
                    let r = tokio::task::spawn_blocking(move || {
                        model_shapley(&mut game, encoding, value, estimator)
                    })
                    .await
                    .map_err(|e| ApiError::internal(&e))??;
                    Some(r)
                } else {
                    None
                };
                let answer = Answer {
                    text,
                    mode: "generated".into(),
                    passage: None,
                    start_byte: None,
                    end_byte: None,
                    tokens: Some(tokens.len()),
                };
                let top = scored.as_ref().and_then(|(v, _, _)| top_passage(v));
                let tokens_level = match top {
                    Some(p) if want_tokens => {
                        let runs = word_runs(&all_passages[p].1, SPAN_PLAYERS);
                        let (question, prompt_g, kept_runs) =
                            (body.question.clone(), g.clone(), runs.clone());
                        let value = body.value;
                        let mut game = LogProbGame::new(
                            EngineScorer {
                                generator: g,
                                coalitions_per_call: app.config.qa.coalitions_per_call,
                            },
                            runs.len(),
                            Box::new(move |c| {
                                let mut ps = all_passages.clone();
                                ps[p].1 = keep_runs(&all_passages[p].1, &kept_runs, c);
                                prompt_ids(prompt_g.as_ref(), &question, &ps, all_players(ps.len()))
                            }),
                            tokens.clone(),
                            game_value(body.value),
                        );
                        let r = tokio::task::spawn_blocking(move || {
                            model_shapley(&mut game, PassageEncoding::Joint, value, Estimator::Auto)
                        })
                        .await
                        .map_err(|e| ApiError::internal(&e))??;
                        Some(token_attribution(p, &runs, r))
                    }
                    _ => None,
                };
                let (values, info) = split(scored);
                (Some(answer), values, info, read_ms, ms(t), tokens_level)
            }
            None => {
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
                    passage: Some(s.passage),
                    start_byte: Some(s.start),
                    end_byte: Some(s.end),
                    tokens: None,
                });
                if let (Some(tx), Some(a)) = (&events, &answer) {
                    let _ = tx.send(sse_event("token", &serde_json::json!({"text": a.text})));
                }
                let read_ms = ms(t);
                let t = Instant::now();
                let scored = if want_attribution {
                    let mut game = ReaderGame {
                        passages: n,
                        reading: &reading,
                    };
                    Some(shapley(
                        &mut game,
                        "extractive_best_sentence_score",
                        body.estimator,
                    )?)
                } else {
                    None
                };
                let top = scored.as_ref().and_then(|(v, _, _)| top_passage(v));
                let tokens_level = match top {
                    Some(p) if want_tokens => {
                        let runs = word_runs(texts[p], SPAN_PLAYERS);
                        let mut game = ReaderRunGame {
                            question: &body.question,
                            texts: texts.clone(),
                            passage: p,
                            runs: runs.clone(),
                        };
                        let r =
                            shapley(&mut game, "extractive_best_sentence_score", body.estimator)?;
                        Some(token_attribution(p, &runs, r))
                    }
                    _ => None,
                };
                let (values, info) = split(scored);
                (answer, values, info, read_ms, ms(t), tokens_level)
            }
        };

    let relations = app.graph.as_ref().map(|g| {
        let ids: Vec<i64> = found.passages.iter().map(|p| p.passage.id).collect();
        neighbourhood(&g.read(), &ids, &found.seeds)
    });
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
    Ok(QaResponse {
        question: body.question,
        retriever: method,
        answer,
        passages,
        seeds: found.seeds,
        relations,
        attribution: info,
        token_attribution,
        rounds,
        timings: QaTimings {
            retrieve_ms,
            read_ms,
            attribution_ms,
            total_ms: ms(started),
        },
    })
}

/// The relations of each passage in `passages` (ids, in rank order), those touching a seed phrase first, at most
/// [`RELATIONS_PER_PASSAGE`] each, without repeats within a passage.
pub fn neighbourhood(graph: &KnowledgeGraph, passages: &[i64], seeds: &[Seed]) -> Vec<QaRelation> {
    let seeds: HashSet<&str> = seeds.iter().map(|s| s.phrase.as_str()).collect();
    let mut out = Vec::new();
    for (index, &id) in passages.iter().enumerate() {
        let mut rows: Vec<QaRelation> = Vec::new();
        for t in graph.triples_of(id) {
            let (Some(subject), Some(object)) = (
                graph.phrase_text(t.subject_id),
                graph.phrase_text(t.object_id),
            ) else {
                continue;
            };
            let r = QaRelation {
                seed: seeds.contains(subject) || seeds.contains(object),
                subject: subject.to_string(),
                relation: t.relation.clone(),
                object: object.to_string(),
                passage: index,
            };
            if !rows.contains(&r) {
                rows.push(r);
            }
        }
        // Stable: extraction order within each group.
        rows.sort_by_key(|r| !r.seed);
        rows.truncate(RELATIONS_PER_PASSAGE);
        out.extend(rows);
    }
    out
}

/// Values and errors apart from the attribution's description.
#[allow(clippy::type_complexity)]
fn split(
    scored: Option<(Vec<f64>, Vec<f64>, AttributionInfo)>,
) -> (Option<(Vec<f64>, Vec<f64>)>, Option<AttributionInfo>) {
    match scored {
        Some((v, e, info)) => (Some((v, e)), Some(info)),
        None => (None, None),
    }
}

/// The model's greedy answer to the prompt with every passage (text and ids), each token's text sent as a `token`
/// event when streaming.
async fn generate(
    g: &dyn Generator,
    question: &str,
    passages: &[(String, String)],
    events: Option<&UnboundedSender<Event>>,
) -> Result<(String, Vec<u32>), ApiError> {
    generate_answer(g, question, passages, |text| {
        if let Some(tx) = events {
            let _ = tx.send(sse_event("token", &serde_json::json!({ "text": text })));
        }
    })
    .await
    .map_err(|e| match e {
        AnswerError::Engine(EngineError::TooLong { .. }) => ApiError::bad_request(
            "context_length_exceeded",
            format!(
                "the question and {} passages do not fit the model: {e}; lower top_k",
                passages.len()
            ),
        )
        .param("top_k"),
        AnswerError::Engine(e) => ApiError::from(e),
        other => ApiError::internal(&other),
    })
}
