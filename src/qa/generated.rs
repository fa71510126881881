//! Answers from the generation model, and their passage attributions: the prompt for a set of passages
//! ([`prompt_ids`]: the passages, numbered as retrieved, then the question), and [`EngineGame`], TextGenSHAP's
//! value function over the running engine: a coalition is worth the log-probability of the model's answer under
//! the prompt that holds only those passages (teacher-forced, scored by the engine between decode steps).

use std::sync::Arc;

use crate::attribution::{Coalition, Game};
use crate::engine::generator::Generator;
use crate::engine::model::ChatMessage;

/// Coalitions scored per engine call (each call's sequences are released before the next).
const COALITIONS_PER_CALL: usize = 16;

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

/// The passage game over the engine: `v(S)` = log p(answer | prompt with the passages of S).
pub struct EngineGame {
    /// The engine.
    pub generator: Arc<dyn Generator>,
    /// The question.
    pub question: String,
    /// (title, text) of each retrieved passage.
    pub passages: Vec<(String, String)>,
    /// The answer's tokens.
    pub answer: Vec<u32>,
}

impl Game for EngineGame {
    fn players(&self) -> usize {
        self.passages.len()
    }

    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
        let g = self.generator.as_ref();
        let mut out = Vec::with_capacity(coalitions.len());
        for chunk in coalitions.chunks(COALITIONS_PER_CALL) {
            let mut pairs = Vec::with_capacity(chunk.len());
            for &c in chunk {
                let ids = prompt_ids(g, &self.question, &self.passages, c)?;
                pairs.push((ids, self.answer.clone()));
            }
            out.extend(g.score(pairs).map_err(|e| e.to_string())?.log_probs);
        }
        Ok(out)
    }
}
