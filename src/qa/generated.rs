//! Answers from the generation model, and what their passage attributions need: the prompt for a set of
//! passages ([`prompt_ids`]: the passages, numbered as retrieved, then the question), and [`EngineScorer`], the
//! running engine as the scorer of TextGenSHAP's game ([`crate::attribution::LogProbGame`]): a coalition is worth
//! the log-probability of the model's answer under the prompt that holds only those passages (teacher-forced,
//! scored by the engine between decode steps).

use std::sync::Arc;

use crate::attribution::{Coalition, Scorer};
use crate::engine::generator::Generator;
use crate::engine::model::ChatMessage;
use crate::engine::score::Scores;

/// Coalitions scored per engine call (each call's sequences are released before the next), unless
/// `ENGRAM_QA_COALITIONS_PER_CALL` says otherwise: 1 scores every coalition prompt alone and in full (no packing,
/// no shared prefix), the separate-scoring baseline of the benchmarks.
const COALITIONS_PER_CALL: usize = 16;

fn coalitions_per_call() -> usize {
    std::env::var("ENGRAM_QA_COALITIONS_PER_CALL")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(COALITIONS_PER_CALL)
}

/// The prompt tokens for the passages in `coalition` (bit `i`: passage `i`), through the model's chat template
/// when it has one (the template then brings its own special tokens), else as plain text.
pub fn prompt_ids(
    g: &dyn Generator,
    question: &str,
    passages: &[(String, String)],
    coalition: Coalition,
) -> Result<Vec<u32>, String> {
    let mut user = String::from(
        "Answer the question using the passages. Reply with the answer only, in a few words.\n\n",
    );
    for (i, (title, text)) in passages.iter().enumerate() {
        if coalition & (1 << i) != 0 {
            user.push_str(&format!("[{}] {title}: {text}\n\n", i + 1));
        }
    }
    user.push_str(&format!("Question: {question}\nAnswer:"));
    let messages = [ChatMessage {
        role: "user".into(),
        content: user.clone(),
    }];
    let tokenizer = g.tokenizer();
    let ids = match tokenizer.apply_chat_template(&messages, true) {
        Ok(text) => tokenizer.encode(&text, false),
        Err(_) => tokenizer.encode(&user, true),
    };
    ids.map_err(|e| e.to_string())
}

/// The running engine as a [`Scorer`]: each call's sequences live in the engine's shared KV cache and are
/// released before the next, [`COALITIONS_PER_CALL`] coalition prompts at a time.
pub struct EngineScorer(pub Arc<dyn Generator>);

impl Scorer for EngineScorer {
    fn score(&mut self, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Scores, String> {
        let mut all = Scores {
            log_probs: Vec::with_capacity(pairs.len()),
            passes: 0,
            computed_tokens: 0,
            total_tokens: 0,
        };
        for chunk in pairs.chunks(coalitions_per_call()) {
            let s = self.0.score(chunk.to_vec()).map_err(|e| e.to_string())?;
            all.log_probs.extend(s.log_probs);
            all.passes += s.passes;
            all.computed_tokens += s.computed_tokens;
            all.total_tokens += s.total_tokens;
        }
        Ok(all)
    }
}
