//! Answers from the generation model, and what their passage attributions need: the prompt for a set of
//! passages ([`prompt_ids`]: the passages, numbered as retrieved, then the question; [`separate_prompt`]: the
//! question first, cut around the passages for encoding each once), and [`EngineScorer`], the
//! running engine as the scorer of TextGenSHAP's game ([`crate::attribution::LogProbGame`]): a coalition is worth
//! the log-probability of the model's answer under the prompt that holds only those passages (teacher-forced,
//! scored by the engine between decode steps).

use std::sync::Arc;

use crate::attribution::{Coalition, Scorer, SeparatePrompt};
use crate::retrieve::ScoredPassage;
use engram_engine::AttentionMode;
use engram_engine::ChatMessage;
use engram_engine::ModelTokenizer;
use engram_engine::SamplingParams;
use engram_engine::Scores;
use engram_engine::SegmentedScoring;
use engram_engine::{EngineError, GenerationEvent, GenerationRequest, Generator};

/// The instruction every answer prompt starts with.
const INSTRUCTION: &str =
    "Answer the question using the passages. Reply with the answer only, in a few words.\n\n";

/// Marks where the passages go while the chat template is rendered (a character no passage holds after
/// [`separate_prompt`] strips it).
const PASSAGES_MARK: &str = "\u{1}";

/// One passage as the prompts show it: numbered as retrieved.
fn passage_text(i: usize, title: &str, text: &str) -> String {
    format!("[{}] {title}: {text}\n\n", i + 1)
}

/// The prompt for attribution with each passage encoded once ([`crate::attribution::Prompts::Separate`]): the
/// instruction and the question come first (so each passage is encoded knowing the question, as Fusion-in-Decoder
/// encodes them), then the passages, then the answer cue; the chat template's text around them is cut at the
/// passages, and each piece is tokenised on its own.
pub fn separate_prompt(
    g: &dyn Generator,
    question: &str,
    passages: &[(String, String)],
) -> Result<SeparatePrompt, String> {
    let clean = |s: &str| s.replace(PASSAGES_MARK, " ");
    let user = format!(
        "{INSTRUCTION}Question: {}\n\n{PASSAGES_MARK}Answer:",
        clean(question)
    );
    let tokenizer = g.tokenizer();
    let messages = [ChatMessage {
        role: "user".into(),
        content: user.clone(),
    }];
    let (text, special) = match tokenizer.apply_chat_template(&messages, true) {
        Ok(text) => (text, false),
        Err(_) => (user, true),
    };
    let (before, after) = text
        .split_once(PASSAGES_MARK)
        .ok_or("the chat template dropped the passages' place")?;
    let encode = |s: &str, special: bool| tokenizer.encode(s, special).map_err(|e| e.to_string());
    Ok(SeparatePrompt {
        prefix: encode(before, special)?,
        passages: passages
            .iter()
            .enumerate()
            .map(|(i, (title, text))| encode(&passage_text(i, &clean(title), &clean(text)), false))
            .collect::<Result<_, _>>()?,
        suffix: encode(after, false)?,
    })
}

/// The prompt tokens for the passages in `coalition` (bit `i`: passage `i`), through the model's chat template
/// when it has one (the template then brings its own special tokens), else as plain text.
pub fn prompt_ids(
    g: &dyn Generator,
    question: &str,
    passages: &[(String, String)],
    coalition: Coalition,
) -> Result<Vec<u32>, String> {
    prompt_ids_with(g.tokenizer(), question, passages, coalition)
}

/// [`prompt_ids`] with the model's tokenizer alone (the benchmarks build `/v1/qa`'s prompts without an engine).
pub fn prompt_ids_with(
    tokenizer: &ModelTokenizer,
    question: &str,
    passages: &[(String, String)],
    coalition: Coalition,
) -> Result<Vec<u32>, String> {
    let mut user = String::from(INSTRUCTION);
    for (i, (title, text)) in passages.iter().enumerate() {
        if coalition & (1 << i) != 0 {
            user.push_str(&passage_text(i, title, text));
        }
    }
    user.push_str(&format!("Question: {question}\nAnswer:"));
    let messages = [ChatMessage {
        role: "user".into(),
        content: user.clone(),
    }];
    let ids = match tokenizer.apply_chat_template(&messages, true) {
        Ok(text) => tokenizer.encode(&text, false),
        Err(_) => tokenizer.encode(&user, true),
    };
    ids.map_err(|e| e.to_string())
}

/// Most tokens of a generated answer.
pub const ANSWER_TOKENS: usize = 32;

/// Why a generated answer failed.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The prompt could not be made (the tokenizer failed).
    #[error("cannot make the prompt: {0}")]
    Prompt(String),
    /// The prompt with every retrieved passage, plus an answer of [`ANSWER_TOKENS`] tokens, does not fit the
    /// engine (its context window or its KV cache): the question is not answered. This is the one rule for a
    /// prompt over the context (see [`crate::qa`]): no passage is dropped to make room.
    #[error("the question and {passages} passages do not fit the model: {source}")]
    OverContext {
        /// The passages the prompt held.
        passages: usize,
        /// The engine's refusal ([`EngineError::TooLong`]).
        #[source]
        source: EngineError,
    },
    /// The engine refused the request for another reason (for example: its queue is full).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Generation failed midway.
    #[error("generation failed: {0}")]
    Failed(String),
}

/// The (title, text) pairs of retrieved passages, in rank order, as the prompts take them.
pub fn titles_and_texts(passages: &[ScoredPassage]) -> Vec<(String, String)> {
    passages
        .iter()
        .map(|p| (p.passage.title.clone(), p.passage.text.clone()))
        .collect()
}

/// The model's greedy answer (at most [`ANSWER_TOKENS`] tokens) to the prompt holding every passage, attending as
/// `attention` says (`None`: the engine's default): the trimmed text and the token ids. `on_token` sees each
/// token's text as it is made. A prompt that does not fit is [`AnswerError::OverContext`].
pub async fn generate_answer(
    g: &dyn Generator,
    question: &str,
    passages: &[(String, String)],
    attention: Option<AttentionMode>,
    mut on_token: impl FnMut(&str),
) -> Result<(String, Vec<u32>), AnswerError> {
    let all = crate::attribution::all_players(passages.len());
    let prompt = prompt_ids(g, question, passages, all).map_err(AnswerError::Prompt)?;
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: ANSWER_TOKENS,
        ..SamplingParams::default()
    };
    let mut rx = g
        .submit(GenerationRequest {
            attention,
            ..GenerationRequest::new(prompt, params)
        })
        .map_err(|e| match e {
            EngineError::TooLong { .. } => AnswerError::OverContext {
                passages: passages.len(),
                source: e,
            },
            other => AnswerError::Engine(other),
        })?;
    let (mut text, mut tokens) = (String::new(), Vec::new());
    while let Some(ev) = rx.recv().await {
        match ev {
            GenerationEvent::Token(t) => {
                on_token(&t.text);
                text.push_str(&t.text);
                tokens.push(t.token);
            }
            GenerationEvent::Done { .. } => return Ok((text.trim().to_string(), tokens)),
            GenerationEvent::Failed(e) => return Err(AnswerError::Failed(e)),
        }
    }
    Err(AnswerError::Failed("the engine dropped the request".into()))
}

/// The running engine as a [`Scorer`]: each call's sequences live in the engine's shared KV cache and are
/// released before the next, `coalitions_per_call` coalition prompts at a time.
pub struct EngineScorer {
    /// The running engine.
    pub generator: Arc<dyn Generator>,
    /// Coalition prompts per engine call in the joint mode (`qa.coalitions_per_call`).
    pub coalitions_per_call: usize,
}

impl Scorer for EngineScorer {
    fn score(&mut self, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Scores, String> {
        let mut all = Scores {
            log_probs: Vec::with_capacity(pairs.len()),
            passes: 0,
            computed_tokens: 0,
            total_tokens: 0,
        };
        for chunk in pairs.chunks(self.coalitions_per_call.max(1)) {
            let s = self
                .generator
                .score(chunk.to_vec())
                .map_err(|e| e.to_string())?;
            all.log_probs.extend(s.log_probs);
            all.passes += s.passes;
            all.computed_tokens += s.computed_tokens;
            all.total_tokens += s.total_tokens;
        }
        Ok(all)
    }

    /// All of a batch's subsets in one engine call, so each passage is encoded once per batch.
    fn score_segmented(&mut self, request: SegmentedScoring) -> Result<Scores, String> {
        self.generator
            .score_segmented(request)
            .map_err(|e| e.to_string())
    }
}
