//! The whole path of a question: [`QaService::prepare`] checks it, [`QaService::answer`] retrieves (in IRCoT rounds
//! with `iterations` above 1), answers (streaming the text through a callback), attributes (passages, then
//! optionally runs of words) and lists the graph neighbourhood of the retrieved passages.

use crate::config::{QaConfig, RetrievalConfig};
use crate::graph::GraphIndex;
use crate::qa::answerer::Answerer;
use crate::qa::attribute::{attribute, AttributionOptions, Attributions};
use crate::qa::error::QaError;
use crate::qa::iterative::{gather, Round, MAX_ITERATIONS};
use crate::qa::relations::neighbourhood;
use crate::qa::types::{Answer, QaRelation, QaRequest, QaTimings};
use crate::retrieve::{Retriever, Retrievers, ScoredPassage, Seed};
use std::sync::Arc;
use std::time::Instant;

/// Question answering over one deployment's retrievers, answerer and knowledge graph.
pub struct QaService<'a> {
    /// Retrieval methods by name.
    pub retrievers: &'a Retrievers,
    /// Who answers and writes the reasoning steps.
    pub answerer: Answerer,
    /// The knowledge graph, when enabled: its relations inside the retrieved passages are listed.
    pub graph: Option<&'a GraphIndex>,
    /// `[qa]`: coalition prompts per engine call.
    pub qa: &'a QaConfig,
    /// `[retrieval]`: the default and largest `top_k` (also the most passages all rounds together gather).
    pub retrieval: &'a RetrievalConfig,
}

/// A checked question, ready to answer (see [`QaService::prepare`]).
pub struct QaQuery {
    request: QaRequest,
    top_k: usize,
    iterations: usize,
    retriever_name: String,
    retriever: Arc<dyn Retriever>,
}

/// An answer with its evidence: what [`QaService::answer`] returns.
#[derive(Debug)]
pub struct QaOutcome {
    /// The question, as given.
    pub question: String,
    /// The retriever used.
    pub retriever: String,
    /// The answer (`None` when no retrieved sentence shares a term with the question).
    pub answer: Option<Answer>,
    /// The retrieved passages, in the order the rounds found them (each round's best first).
    pub passages: Vec<ScoredPassage>,
    /// The attributions of the answer to those passages.
    pub attributions: Attributions,
    /// Graph retrievers: the phrases that seeded the walks.
    pub seeds: Vec<Seed>,
    /// The knowledge graph's relations inside the retrieved passages (`None` when the graph is disabled).
    pub relations: Option<Vec<QaRelation>>,
    /// The retrieval rounds: the question first, then each reasoning step used as a query.
    pub rounds: Vec<Round>,
    /// Per-stage timings.
    pub timings: QaTimings,
}

impl QaService<'_> {
    /// Checks `request` before anything runs (so that a streamed request is refused before its stream starts):
    /// a question that is not empty, `top_k` (default `retrieval.default_top_k`) from 1 to `retrieval.max_top_k`,
    /// `iterations` (default 1) from 1 to [`MAX_ITERATIONS`], a known retriever (default `bm25`) and HiP
    /// parameters the engine accepts (checked with or without a model).
    pub fn prepare(&self, request: QaRequest) -> Result<QaQuery, QaError> {
        if request.question.trim().is_empty() {
            return Err(QaError::EmptyQuestion);
        }
        if let Some(attention) = &request.attention {
            attention.validate()?;
        }
        let top_k = request.top_k.unwrap_or(self.retrieval.default_top_k);
        if top_k == 0 || top_k > self.retrieval.max_top_k {
            return Err(QaError::InvalidTopK {
                max: self.retrieval.max_top_k,
            });
        }
        let iterations = request.iterations.unwrap_or(1);
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(QaError::InvalidIterations(iterations));
        }
        let retriever_name = request.retriever.clone().unwrap_or_else(|| "bm25".into());
        let retriever = self
            .retrievers
            .get(&retriever_name)
            .map_err(QaError::UnknownRetriever)?;
        Ok(QaQuery {
            request,
            top_k,
            iterations,
            retriever_name,
            retriever,
        })
    }

    /// Retrieves, answers, attributes and lists the relations of the retrieved passages. `on_token` sees the
    /// answer's text as it is made (once per generated token; an extractive answer at once); `started` is when
    /// the question arrived (`timings.total_ms` counts from it). The model writes the answer and the reasoning steps
    /// with the request's `attention` (attribution scores densely). A model's prompt holds every retrieved passage:
    /// when it does not fit, the question is not answered ([`crate::qa::generated::AnswerError::OverContext`]).
    pub async fn answer(
        &self,
        query: QaQuery,
        started: Instant,
        on_token: impl Fn(&str) + Send + Sync,
    ) -> Result<QaOutcome, QaError> {
        let QaQuery {
            request,
            top_k,
            iterations,
            retriever_name,
            retriever,
        } = query;
        let question = request.question.as_str();
        let t = Instant::now();
        let max_passages = self.retrieval.max_top_k;
        let (found, rounds) = gather(
            retriever.as_ref(),
            &self.answerer,
            question,
            top_k,
            iterations,
            max_passages,
            request.attention,
        )
        .await?;
        let retrieve_ms = ms(t);
        let t = Instant::now();
        let answered = self
            .answerer
            .answer(question, &found.passages, request.attention, on_token)
            .await?;
        let read_ms = ms(t);
        let t = Instant::now();
        let options = AttributionOptions {
            level: request.attribution,
            encoding: request.passage_encoding,
            estimator: request.estimator,
            value: request.value,
        };
        let attributions =
            attribute(question, &found.passages, &answered, options, self.qa).await?;
        let attribution_ms = ms(t);
        let relations = self.graph.map(|g| {
            let ids: Vec<i64> = found.passages.iter().map(|p| p.passage.id).collect();
            neighbourhood(&g.read(), &ids, &found.seeds)
        });
        Ok(QaOutcome {
            question: request.question,
            retriever: retriever_name,
            answer: answered.answer,
            passages: found.passages,
            attributions,
            seeds: found.seeds,
            relations,
            rounds,
            timings: QaTimings {
                retrieve_ms,
                read_ms,
                attribution_ms,
                total_ms: ms(started),
            },
        })
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
