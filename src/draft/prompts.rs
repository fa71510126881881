//! Stage 2's prompts and the target's answers to them, the two workloads the drafts serve:
//! - free text: the first tokens of a passage, continued by the target;
//! - QA: a question the target writes about a passage, then `/v1/qa`'s own prompt over that passage and
//!   randomly drawn others (shuffled), answered by the target.
//!
//! Each prompt is answered greedily and by sampling (a fixed seed), batched through the engine. No question of
//! an evaluation set is used: the questions are the target's own.

use std::path::Path;

use engram_draft::data::{permutation, Example};
use engram_draft::generate::{complete, distillation_examples};
use engram_engine::{ChatMessage, Generator, ModelTokenizer, SamplingParams};
use serde::{Deserialize, Serialize};

use super::DraftCommandError;

/// How many prompts of each kind, and how long the answers.
#[derive(Debug, Clone)]
pub struct PromptPlan {
    /// Free-text prompts.
    pub free_text: usize,
    /// Tokens of a passage given as a free-text prompt.
    pub prefix_tokens: usize,
    /// Tokens the target writes after a free-text prompt.
    pub continuation_tokens: usize,
    /// QA prompts.
    pub qa: usize,
    /// Passages besides the question's own in a QA prompt.
    pub distractors: usize,
    /// Most tokens of an answer.
    pub answer_tokens: usize,
    /// Temperature of the sampled answers.
    pub temperature: f32,
    /// Seeds the choice of passages and the sampled answers.
    pub seed: u64,
    /// The weight of prompt tokens in the loss (the completions weigh 1).
    pub prompt_weight: f32,
}

/// Asks the target for one question a passage answers.
const QUESTION_INSTRUCTION: &str = "Write one short question that the passage below answers. \
Reply with the question only.\n\nPassage: ";

/// The prompts answered by `engine`, as training examples (prompt weighted `prompt_weight`, answer 1).
pub fn align_examples<G: Generator>(
    engine: &G,
    tokenizer: &ModelTokenizer,
    passages: &[(String, String)],
    plan: &PromptPlan,
) -> Result<Vec<Example>, DraftCommandError> {
    let order = permutation(passages.len(), plan.seed);
    let text_err = DraftCommandError::Text;
    let sampled = |max_tokens| {
        [
            SamplingParams {
                temperature: 0.0,
                max_tokens,
                ..SamplingParams::default()
            },
            SamplingParams {
                temperature: plan.temperature,
                top_p: Some(0.95),
                seed: Some(plan.seed),
                max_tokens,
                ..SamplingParams::default()
            },
        ]
    };
    // Free text: passage beginnings long enough to continue.
    let mut free = Vec::new();
    for &i in order.iter() {
        if free.len() == plan.free_text {
            break;
        }
        let (title, text) = &passages[i];
        let ids = tokenizer
            .encode(&format!("{title}\n{text}"), false)
            .map_err(|e| text_err(e.to_string()))?;
        if ids.len() > plan.prefix_tokens + 8 {
            free.push(ids[..plan.prefix_tokens].to_vec());
        }
    }
    tracing::info!(
        prompts = free.len(),
        "stage 2 data: the target continues passage beginnings"
    );
    let mut examples = distillation_examples(
        engine,
        &free,
        &sampled(plan.continuation_tokens),
        plan.prompt_weight,
    )?;
    // QA: the target's questions, then its answers over the passage and distractors.
    let sources: Vec<usize> = order.iter().rev().take(plan.qa).copied().collect();
    let question_prompts = sources
        .iter()
        .map(|&i| {
            let (title, text) = &passages[i];
            let content = format!("{QUESTION_INSTRUCTION}{title}: {text}");
            let messages = [ChatMessage {
                role: "user".into(),
                content,
            }];
            let rendered = tokenizer
                .apply_chat_template(&messages, true)
                .map_err(|e| text_err(e.to_string()))?;
            tokenizer
                .encode(&rendered, false)
                .map_err(|e| text_err(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    tracing::info!(
        prompts = question_prompts.len(),
        "stage 2 data: the target writes questions"
    );
    let questions = complete(engine, &question_prompts, &sampled(40)[0])?;
    let mut qa_prompts = Vec::new();
    for (k, ((&source, prompt), question)) in sources
        .iter()
        .zip(&question_prompts)
        .zip(&questions)
        .enumerate()
    {
        let text = tokenizer
            .decode(question, true)
            .map_err(|e| text_err(e.to_string()))?;
        let Some(question_text) = text.lines().map(str::trim).find(|l| l.len() > 8) else {
            continue;
        };
        examples.push(Example::completion(prompt, question, plan.prompt_weight));
        let draw = permutation(passages.len(), plan.seed ^ (k as u64 + 1));
        let mut chosen: Vec<usize> = std::iter::once(source)
            .chain(
                draw.into_iter()
                    .filter(|&j| j != source)
                    .take(plan.distractors),
            )
            .collect();
        let shuffle = permutation(chosen.len(), plan.seed ^ (k as u64 + 7));
        chosen = shuffle.into_iter().map(|j| chosen[j]).collect();
        let picked: Vec<(String, String)> = chosen.iter().map(|&j| passages[j].clone()).collect();
        let all = crate::attribution::all_players(picked.len());
        qa_prompts.push(
            crate::qa::generated::prompt_ids_with(tokenizer, question_text, &picked, all)
                .map_err(text_err)?,
        );
    }
    tracing::info!(
        prompts = qa_prompts.len(),
        "stage 2 data: the target answers QA prompts"
    );
    examples.extend(distillation_examples(
        engine,
        &qa_prompts,
        &sampled(plan.answer_tokens),
        plan.prompt_weight,
    )?);
    Ok(examples)
}

#[derive(Serialize, Deserialize)]
struct ExampleLine {
    tokens: Vec<u32>,
    weights: Vec<f32>,
}

/// Writes the examples as JSON lines.
pub fn write_examples(path: &Path, examples: &[Example]) -> Result<(), DraftCommandError> {
    let mut text = String::new();
    for e in examples {
        let line = ExampleLine {
            tokens: e.tokens.clone(),
            weights: e.weights.clone(),
        };
        text.push_str(
            &serde_json::to_string(&line).map_err(|e| DraftCommandError::Text(e.to_string()))?,
        );
        text.push('\n');
    }
    fs_err::write(path, text).map_err(|e| DraftCommandError::Text(e.to_string()))
}

/// The examples of a file written by [`write_examples`] (`None` when it does not exist).
pub fn read_examples(path: &Path) -> Result<Option<Vec<Example>>, DraftCommandError> {
    if !path.is_file() {
        return Ok(None);
    }
    let bad = |reason: String| DraftCommandError::Text(format!("{}: {reason}", path.display()));
    let text = fs_err::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let e: ExampleLine = serde_json::from_str(l).map_err(|e| bad(e.to_string()))?;
            if e.tokens.len() != e.weights.len() {
                return Err(bad("a line must have as many weights as tokens".into()));
            }
            Ok(Example {
                tokens: e.tokens,
                weights: e.weights,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}
