//! IRCoT-style iterative retrieval for `/v1/qa` (`iterations` above 1): after the first retrieval, each round
//! writes one reasoning step from the question, the passages so far and the earlier steps, and retrieves again
//! with that step as the query; passages not seen yet join the evidence. With a model the step is the model's
//! next sentence of reasoning (greedy, one line); without one it is the reader's best sentence that is not a step
//! yet (it names the bridge entity a second hop needs). A step that gives the answer ("the answer is") or adds
//! nothing ends the rounds early, and so does a model whose step prompt no longer fits its context window. Who
//! writes the steps is the question's [`Answerer`].

use crate::qa::answerer::Answerer;
use crate::qa::extractive::read;
use crate::qa::generated::AnswerError;
use crate::retrieve::{Retrieval, RetrieveError, Retriever};
use engram_engine::ChatMessage;
use engram_engine::SamplingParams;
use engram_engine::{AttentionMode, GenerationEvent, GenerationRequest, Generator};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Most rounds a request may ask for.
pub const MAX_ITERATIONS: usize = 4;
/// Most new tokens of a model's reasoning step.
const STEP_TOKENS: usize = 48;

/// One round of retrieval: its query and how many passages it added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Round {
    /// The query: the question in the first round, a reasoning step after.
    pub query: String,
    /// Passages this round added to the evidence (not retrieved by an earlier round).
    pub added: usize,
}

/// Errors of iterative retrieval.
#[derive(Debug, thiserror::Error)]
pub enum IterativeError {
    /// A retrieval failed.
    #[error(transparent)]
    Retrieve(#[from] RetrieveError),
    /// The model failed while writing a step.
    #[error("writing a reasoning step failed: {0}")]
    Step(#[source] AnswerError),
}

/// Retrieves for `question` in up to `iterations` rounds of `top_k` passages each (at most `max_passages` in
/// all); returns the evidence in the order found, with every round's seeds, and the rounds. A model writes the
/// steps with `attention` (`None`: the engine's default).
pub async fn gather(
    retriever: &dyn Retriever,
    answerer: &Answerer,
    question: &str,
    top_k: usize,
    iterations: usize,
    max_passages: usize,
    attention: Option<AttentionMode>,
) -> Result<(Retrieval, Vec<Round>), IterativeError> {
    let mut evidence = Retrieval::default();
    let mut seen = HashSet::new();
    let mut rounds: Vec<Round> = Vec::new();
    let mut query = question.to_string();
    for round in 0..iterations.max(1) {
        let found = retriever.retrieve_explained(&query, top_k).await?;
        let mut added = 0;
        for p in found.passages {
            if evidence.passages.len() >= max_passages {
                break;
            }
            if seen.insert(p.passage.id) {
                evidence.passages.push(p);
                added += 1;
            }
        }
        for s in found.seeds {
            if !evidence.seeds.contains(&s) {
                evidence.seeds.push(s);
            }
        }
        rounds.push(Round {
            query: query.clone(),
            added,
        });
        let last = round + 1 == iterations.max(1);
        if last || (round > 0 && added == 0) || evidence.passages.len() >= max_passages {
            break;
        }
        let steps: Vec<&str> = rounds[1..].iter().map(|r| r.query.as_str()).collect();
        let step = answerer
            .next_step(question, &evidence, &steps, attention)
            .await
            .map_err(IterativeError::Step)?;
        match step {
            Some(step) if !step.to_lowercase().contains("answer is") => query = step,
            _ => break,
        }
    }
    Ok((evidence, rounds))
}

/// The extractive reader's next reasoning step: its best-scoring sentence of the evidence that is not a step yet,
/// or `None` when no sentence is left that shares a term with the question.
pub fn reader_step(question: &str, evidence: &Retrieval, steps: &[&str]) -> Option<String> {
    let texts: Vec<&str> = evidence
        .passages
        .iter()
        .map(|p| p.passage.text.as_str())
        .collect();
    let mut sentences = read(question, &texts).sentences;
    sentences.sort_by(|a, b| b.score.total_cmp(&a.score));
    sentences
        .into_iter()
        .filter(|s| s.score > 0.0)
        .map(|s| texts[s.passage][s.start..s.end].to_string())
        .find(|s| !steps.contains(&s.as_str()))
}

/// The model's next reasoning step: greedy, one line, at most [`STEP_TOKENS`] tokens, attending as `attention`
/// says (`None`: the engine's default); `None` when it writes nothing or its prompt leaves no room in the context
/// window.
pub async fn model_step(
    g: &dyn Generator,
    question: &str,
    evidence: &Retrieval,
    steps: &[&str],
    attention: Option<AttentionMode>,
) -> Result<Option<String>, AnswerError> {
    let mut user = String::from(
        "Reason towards the answer of the question one step at a time, using the passages.\n\n",
    );
    for (i, p) in evidence.passages.iter().enumerate() {
        user.push_str(&format!(
            "[{}] {}: {}\n\n",
            i + 1,
            p.passage.title,
            p.passage.text
        ));
    }
    user.push_str(&format!("Question: {question}\n"));
    for s in steps {
        user.push_str(&format!("Step: {s}\n"));
    }
    user.push_str("Write the next step only, as one sentence. If you know the answer, write \"So the answer is ...\".");
    let tokenizer = g.tokenizer();
    let messages = [ChatMessage::new("user", user.clone())];
    let prompt = match tokenizer.apply_chat_template(&messages, true) {
        Ok(text) => tokenizer.encode(&text, false),
        Err(_) => tokenizer.encode(&user, true),
    }
    .map_err(|e| AnswerError::Prompt(e.to_string()))?;
    let room = g.max_context().saturating_sub(prompt.len());
    if room == 0 {
        return Ok(None);
    }
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: STEP_TOKENS.min(room),
        stop_strings: vec!["\n".into()],
        ..SamplingParams::default()
    };
    let mut rx = g.submit(GenerationRequest {
        attention,
        ..GenerationRequest::new(prompt, params)
    })?;
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            GenerationEvent::Token(t) => text.push_str(&t.text),
            GenerationEvent::Done { .. } => {
                let step = text.trim();
                return Ok((!step.is_empty()).then(|| step.to_string()));
            }
            GenerationEvent::Failed(e) => return Err(AnswerError::Failed(e)),
        }
    }
    Err(AnswerError::Failed("the engine dropped the request".into()))
}
