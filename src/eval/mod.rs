//! The retrieval evaluation harness behind `engram eval`: reads MuSiQue-style or HotpotQA-distractor-style
//! questions and corpora, retrieves for every question, and reports recall@2 and recall@5 as the HippoRAG papers
//! define them (per question |top-k ∩ gold| / |gold|, averaged, in percent) with the mean retrieval latency, and
//! with `--qa` the answers' exact match and F1 (SQuAD normalisation, best over the answer's aliases). Without a
//! generation model the answers come from the extractive reader ([`crate::qa::extractive`]) over the top 5.

mod answers;
mod dataset;

pub use answers::{best_scores, exact_match, f1, normalize_answer};

pub use dataset::{load_corpus, load_questions, EvalQuestion, GoldStyle};

use crate::retrieve::{RetrieveError, Retriever};
use crate::store::{Store, StoreError};
use serde::Serialize;
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
    /// With `--qa`: how the answers were made (`extractive`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reader: Option<String>,
    /// With `--qa`: mean exact match, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
    /// With `--qa`: mean F1, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
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
/// With `qa`, also answers each question from those passages with the extractive reader and scores the answer.
pub async fn evaluate(
    store: &Store,
    retriever: &dyn Retriever,
    questions: &[EvalQuestion],
    style: GoldStyle,
    qa: bool,
) -> Result<EvalReport, EvalError> {
    let keys: HashMap<String, String> = store
        .document_keys()
        .await?
        .into_iter()
        .map(|(id, title, text)| (id, style.key(&title, &text)))
        .collect();
    let (mut r2, mut r5, mut latency, mut em, mut f) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for q in questions {
        let started = Instant::now();
        let hits = retriever.retrieve(&q.question, 5).await?;
        latency += started.elapsed().as_secs_f64() * 1000.0;
        let ranked: Vec<String> = hits
            .iter()
            .filter_map(|h| keys.get(&h.passage.document_id).cloned())
            .collect();
        r2 += recall_at(&ranked, &q.gold, 2);
        r5 += recall_at(&ranked, &q.gold, 5);
        if qa {
            let texts: Vec<&str> = hits.iter().map(|h| h.passage.text.as_str()).collect();
            let reading = crate::qa::extractive::read(&q.question, &texts);
            let answer = reading
                .best
                .map_or("", |s| &texts[s.passage][s.start..s.end]);
            let (e, f1) = best_scores(answer, &q.answers);
            em += e;
            f += f1;
        }
    }
    let n = questions.len().max(1) as f64;
    let round = |x: f64| (x * 100.0).round() / 100.0;
    Ok(EvalReport {
        retriever: retriever.name().to_string(),
        questions: questions.len(),
        recall_at_2: round(100.0 * r2 / n),
        recall_at_5: round(100.0 * r5 / n),
        mean_latency_ms: round(latency / n),
        reader: qa.then(|| "extractive".to_string()),
        exact_match: qa.then(|| round(100.0 * em / n)),
        f1: qa.then(|| round(100.0 * f / n)),
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
