//! The retrieval evaluation harness behind `engram eval`: reads MuSiQue-style or HotpotQA-distractor-style
//! questions and corpora, retrieves for every question, and reports recall@2 and recall@5 as the HippoRAG papers
//! define them (per question |top-k ∩ gold| / |gold|, averaged, in percent) with the mean retrieval latency, and
//! with `--qa` the answers' exact match and F1 (SQuAD normalisation, best over the answer's aliases). The answers
//! come from `/v1/qa`'s [`Answerer`] over the top 5 passages: the generation model (greedy, the `/v1/qa` prompt)
//! or, without one, the extractive reader. A model prompt that does not fit with all 5 passages is not answered,
//! as `/v1/qa` refuses it ([`crate::qa::AnswerError::OverContext`]): the question scores 0 and is counted in
//! [`EvalReport::over_context`]. With `--attribution`, [`evaluate_attribution`] scores the passage-attribution
//! methods on the model's answers instead ([`attribution`]).

mod answers;
pub mod attribution;
pub mod attribution_report;
mod dataset;

pub use answers::{best_scores, exact_match, f1, normalize_answer};

pub use attribution_report::{evaluate_attribution, AttributionReport};
pub use dataset::{load_corpus, load_questions, EvalQuestion, GoldStyle};

use crate::qa::{AnswerError, Answerer};
use crate::retrieve::{RetrieveError, Retriever};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Errors of the evaluation harness.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A data file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A data file is not in a supported format.
    #[error("{path} is not a supported {what} file: {reason}")]
    Format {
        /// The file.
        path: String,
        /// `questions` or `corpus`.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Retrieval failed.
    #[error(transparent)]
    Retrieve(#[from] RetrieveError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The generation model failed to answer.
    #[error("the model failed to answer: {0}")]
    Generation(#[source] AnswerError),
    /// `--attribution` without a generation model.
    #[error("--attribution needs a generation model (--model FILE.gguf or a model directory)")]
    NeedsModel,
    /// An attribution method failed.
    #[error("attribution failed: {0}")]
    Attribution(String),
}

/// The summary `engram eval --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Retriever name.
    pub retriever: String,
    /// Number of questions evaluated.
    pub questions: usize,
    /// Mean recall@2, percent.
    #[serde(rename = "recall@2")]
    pub recall_at_2: f64,
    /// Mean recall@5, percent.
    #[serde(rename = "recall@5")]
    pub recall_at_5: f64,
    /// Mean retrieval latency per question, milliseconds.
    pub mean_latency_ms: f64,
    /// With `--qa`: how the answers were made (`extractive`, or `generated:MODEL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reader: Option<String>,
    /// With `--qa`: mean exact match, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
    /// With `--qa`: mean F1, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    /// With `--qa`: questions left unanswered because the model's prompt with their passages does not fit its
    /// context (they score 0 in `exact_match` and `f1`); 0 for the extractive reader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub over_context: Option<usize>,
    /// Each question's outcome, in the questions' order (`engram eval --predictions FILE` writes them).
    #[serde(skip)]
    pub per_question: Vec<QuestionOutcome>,
}

/// One question's outcome: what was retrieved and, with a reader, what it answered and how that scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuestionOutcome {
    /// The question.
    pub question: String,
    /// The accepted answers (the answer and its aliases).
    pub answers: Vec<String>,
    /// Recall@5 of this question, 0 to 1.
    #[serde(rename = "recall@5")]
    pub recall_at_5: f64,
    /// The reader's answer; `None` without a reader, or when the prompt did not fit.
    pub prediction: Option<String>,
    /// Exact match of the prediction, 0 or 1 (0 without one).
    pub exact_match: f64,
    /// F1 of the prediction, 0 to 1 (0 without one).
    pub f1: f64,
    /// The top 5 passages the reader was given, in rank order (so the run's prompts can be replayed, e.g. by
    /// `engram bench speculative --qa-prompts`).
    pub passages: Vec<EvalPassage>,
}

/// A retrieved passage as `--predictions` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPassage {
    /// Its document's title.
    pub title: String,
    /// Its text.
    pub text: String,
}

/// |top-k ∩ gold| / |gold| for one ranked list of keys (duplicates in the ranking count once).
pub fn recall_at(ranked: &[String], gold: &HashSet<String>, k: usize) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    let top: HashSet<&String> = ranked.iter().take(k).collect();
    gold.iter().filter(|g| top.contains(g)).count() as f64 / gold.len() as f64
}

/// Retrieves the top 5 passages for every question and scores them against the gold passages. Passages are mapped
/// to their documents, and documents to gold keys in `style` (title and text for MuSiQue, title for HotpotQA).
/// With a `reader`, also answers each question from those passages and scores the answer; a question whose model
/// prompt does not fit scores 0 and counts in `over_context`.
pub async fn evaluate(
    store: &Store,
    retriever: &dyn Retriever,
    questions: &[EvalQuestion],
    style: GoldStyle,
    reader: Option<Answerer>,
) -> Result<EvalReport, EvalError> {
    let keys: HashMap<String, String> = store
        .document_keys()
        .await?
        .into_iter()
        .map(|(id, title, text)| (id, style.key(&title, &text)))
        .collect();
    let (mut r2, mut latency) = (0.0, 0.0);
    let mut over_context = 0;
    let mut per_question = Vec::with_capacity(questions.len());
    for q in questions {
        let started = Instant::now();
        let hits = retriever.retrieve(&q.question, 5).await?;
        latency += started.elapsed().as_secs_f64() * 1000.0;
        let ranked: Vec<String> = hits
            .iter()
            .filter_map(|h| keys.get(&h.passage.document_id).cloned())
            .collect();
        r2 += recall_at(&ranked, &q.gold, 2);
        let mut outcome = QuestionOutcome {
            question: q.question.clone(),
            answers: q.answers.clone(),
            recall_at_5: recall_at(&ranked, &q.gold, 5),
            prediction: None,
            exact_match: 0.0,
            f1: 0.0,
            passages: hits
                .iter()
                .map(|h| EvalPassage {
                    title: h.passage.title.clone(),
                    text: h.passage.text.clone(),
                })
                .collect(),
        };
        if let Some(reader) = &reader {
            match reader.answer(&q.question, &hits, None, |_| {}).await {
                Ok(answered) => {
                    (outcome.exact_match, outcome.f1) = best_scores(answered.text(), &q.answers);
                    outcome.prediction = Some(answered.text().to_string());
                }
                Err(AnswerError::OverContext { .. }) => over_context += 1,
                Err(e) => return Err(EvalError::Generation(e)),
            }
        }
        per_question.push(outcome);
    }
    let n = questions.len().max(1) as f64;
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let mean_percent = |of: fn(&QuestionOutcome) -> f64| {
        round(100.0 * per_question.iter().map(of).sum::<f64>() / n)
    };
    Ok(EvalReport {
        retriever: retriever.name().to_string(),
        questions: questions.len(),
        recall_at_2: round(100.0 * r2 / n),
        recall_at_5: mean_percent(|o| o.recall_at_5),
        mean_latency_ms: round(latency / n),
        reader: reader.as_ref().map(Answerer::name),
        exact_match: reader.is_some().then(|| mean_percent(|o| o.exact_match)),
        f1: reader.is_some().then(|| mean_percent(|o| o.f1)),
        over_context: reader.is_some().then_some(over_context),
        per_question,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_gold_in_top_k() {
        let gold: HashSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let ranked: Vec<String> = ["x", "a", "a", "y", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(recall_at(&ranked, &gold, 2), 0.5);
        assert_eq!(recall_at(&ranked, &gold, 5), 1.0);
        assert_eq!(recall_at(&ranked, &gold, 1), 0.0);
        assert_eq!(recall_at(&ranked, &HashSet::new(), 5), 0.0);
    }
}
