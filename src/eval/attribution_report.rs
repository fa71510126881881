//! The driver of `engram eval --attribution`: retrieves the top 5 passages of every question, has the model answer
//! from them, runs every attribution method on that answer ([`super::attribution::evaluate_question`]) and averages
//! the scores per method.

use super::attribution::{evaluate_question, MethodOutcome, QuestionAttribution, DROP_KS};
use super::{EvalError, EvalQuestion};
use crate::config::QaConfig;
use crate::qa::attribute::answer_games;
use crate::qa::{AnswerError, Answerer, Basis};
use crate::retrieve::Retriever;
use serde::Serialize;
use std::time::Instant;

/// Passages each question is answered from and attributed over.
const TOP_K: usize = 5;

/// One method's scores averaged over the attributed questions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodSummary {
    /// The method.
    pub method: String,
    /// Mean drop in the answer's log-probability without the top 1, 2 and 3 passages, nats.
    pub drops: Vec<f64>,
    /// Mean linear datamodeling score.
    pub lds: f64,
    /// Mean distinct coalitions scored per question.
    pub coalitions: f64,
    /// Mean seconds of model scoring per question (its coalitions at its game's measured time per coalition).
    pub seconds: f64,
}

/// One attributed question, as `--predictions` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttributedQuestion {
    /// The question.
    pub question: String,
    /// The model's answer.
    pub answer: String,
    /// Every method's outcome.
    pub attribution: QuestionAttribution,
}

/// What `engram eval --attribution` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttributionReport {
    /// The retriever that chose the passages.
    pub retriever: String,
    /// The model that answered (`generated:NAME`).
    pub reader: String,
    /// Questions asked.
    pub questions: usize,
    /// Questions attributed (the rest had an empty answer or a prompt that did not fit).
    pub attributed: usize,
    /// ContextCite's random ablations.
    pub ablations: usize,
    /// Per method, in a fixed order.
    pub methods: Vec<MethodSummary>,
    /// Mean seconds per question spent scoring joint prompts (every method's joint coalitions and the held-out
    /// evaluation together).
    pub joint_seconds: f64,
    /// Mean seconds per question spent scoring with passages encoded once.
    pub separate_seconds: f64,
    /// Mean wall seconds per question: retrieval, answer and every method with its evaluation.
    pub wall_seconds: f64,
    /// Each attributed question.
    #[serde(skip)]
    pub per_question: Vec<AttributedQuestion>,
}

/// Answers and attributes every question from its top 5 passages with the model of `reader`.
pub async fn evaluate_attribution(
    retriever: &dyn Retriever,
    questions: &[EvalQuestion],
    reader: &Answerer,
    config: &QaConfig,
) -> Result<AttributionReport, EvalError> {
    let started = Instant::now();
    let mut per_question = Vec::new();
    for (index, q) in questions.iter().enumerate() {
        let hits = retriever.retrieve(&q.question, TOP_K).await?;
        let answered = match reader.answer(&q.question, &hits, None, |_| {}).await {
            Ok(a) => a,
            Err(AnswerError::OverContext { .. }) => continue,
            Err(e) => return Err(EvalError::Generation(e)),
        };
        let (generator, tokens) = match &answered.basis {
            Basis::Generated { generator, tokens } => (generator, tokens),
            Basis::Extractive(_) => return Err(EvalError::NeedsModel),
        };
        if tokens.is_empty() || hits.is_empty() {
            continue;
        }
        let [joint, separate] = answer_games(generator, &q.question, &hits, tokens, config)
            .map_err(|e| EvalError::Attribution(e.to_string()))?;
        let retrieval: Vec<f64> = hits.iter().map(|h| f64::from(h.score)).collect();
        let ablations = config.contextcite_ablations;
        let attribution = tokio::task::spawn_blocking(move || {
            evaluate_question(joint, separate, &retrieval, ablations, index as u64)
        })
        .await
        .map_err(|e| EvalError::Attribution(e.to_string()))?
        .map_err(|e| EvalError::Attribution(e.to_string()))?;
        per_question.push(AttributedQuestion {
            question: q.question.clone(),
            answer: answered.text().to_string(),
            attribution,
        });
    }
    let n = per_question.len().max(1) as f64;
    let mean = |of: &dyn Fn(&QuestionAttribution) -> f64| {
        per_question.iter().map(|q| of(&q.attribution)).sum::<f64>() / n
    };
    Ok(AttributionReport {
        retriever: retriever.name().to_string(),
        reader: reader.name(),
        questions: questions.len(),
        attributed: per_question.len(),
        ablations: config.contextcite_ablations,
        methods: summarize(&per_question),
        joint_seconds: mean(&|q| q.joint.1),
        separate_seconds: mean(&|q| q.separate.1),
        wall_seconds: started.elapsed().as_secs_f64() / questions.len().max(1) as f64,
        per_question,
    })
}

/// Each method's scores averaged over `questions` (a drop a question has too few passages for counts as 0).
fn summarize(questions: &[AttributedQuestion]) -> Vec<MethodSummary> {
    let Some(first) = questions.first() else {
        return Vec::new();
    };
    let n = questions.len() as f64;
    first
        .attribution
        .methods
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let of = |f: &dyn Fn(&MethodOutcome) -> f64| {
                questions
                    .iter()
                    .map(|q| f(&q.attribution.methods[i]))
                    .sum::<f64>()
                    / n
            };
            MethodSummary {
                method: m.method.clone(),
                drops: (0..DROP_KS.len())
                    .map(|k| of(&|o| o.drops.get(k).copied().unwrap_or(0.0)))
                    .collect(),
                lds: of(&|o| o.lds),
                coalitions: of(&|o| o.coalitions as f64),
                seconds: of(&|o| o.seconds),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(drops: Vec<f64>, lds: f64) -> AttributedQuestion {
        let outcome = MethodOutcome {
            method: "m".into(),
            values: vec![1.0, 0.0],
            drops,
            lds,
            coalitions: 4,
            seconds: 2.0,
        };
        AttributedQuestion {
            question: "q".into(),
            answer: "a".into(),
            attribution: QuestionAttribution {
                methods: vec![outcome],
                full_log_prob: -1.0,
                joint: (4, 2.0),
                separate: (0, 0.0),
            },
        }
    }

    #[test]
    fn summaries_average_per_method_and_missing_drops_count_as_zero() {
        let s = summarize(&[question(vec![2.0, 4.0, 6.0], 0.5), question(vec![1.0], 1.0)]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].drops, vec![1.5, 2.0, 3.0]);
        assert_eq!((s[0].lds, s[0].coalitions, s[0].seconds), (0.75, 4.0, 2.0));
        assert!(summarize(&[]).is_empty());
    }
}
