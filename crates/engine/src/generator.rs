//! The [`Generator`] trait the server talks to, and its requests, events and errors.

use super::constrain::JsonConstraint;
use super::h2o::KvBudget;
use super::hip::{AttentionMode, HipError};
use super::model::ModelTokenizer;
use super::sampling::{SamplingError, SamplingParams};
use super::score::Scores;
use super::score_segments::SegmentedScoring;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

/// A generation request: prompt tokens and how to sample.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The prompt, tokenised (special tokens included as the template produced them).
    pub prompt: Vec<u32>,
    /// Sampling and stopping.
    pub params: SamplingParams,
    /// Output constrained to a JSON shape: only tokens that keep it valid are sampled, and the request stops
    /// (reason `stop`) when the value is complete.
    pub constraint: Option<Arc<JsonConstraint>>,
    /// An H2O KV budget ([`crate::h2o`]): past it, the sequence keeps only its heavy hitters and recent
    /// tokens (not shared with other sequences, never speculated).
    pub kv_budget: Option<KvBudget>,
    /// How the request attends (`None`: the engine's `attention` default). HiP requests are not speculated,
    /// and HiP cannot be combined with a `kv_budget`.
    pub attention: Option<AttentionMode>,
}

impl GenerationRequest {
    /// An unconstrained request with the full KV cache.
    pub fn new(prompt: Vec<u32>, params: SamplingParams) -> Self {
        Self {
            prompt,
            params,
            constraint: None,
            kv_budget: None,
            attention: None,
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context window is full.
    Length,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Forward passes of the target model that produced tokens for this request (with speculative decoding,
    /// fewer than `completion_tokens`).
    pub target_steps: usize,
    /// Tokens proposed by speculative decoding.
    pub proposed_tokens: usize,
    /// Proposed tokens the target accepted.
    pub accepted_tokens: usize,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenEvent {
    /// The token id.
    pub token: u32,
    /// Text this token completes (may be empty while a multi-byte character or a possible stop string is held
    /// back; never includes a stop string).
    pub text: String,
    /// Log-probability of the token.
    pub logprob: f32,
    /// The most likely alternatives, when asked for.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// What a request's stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// A token.
    Token(TokenEvent),
    /// The end: why, and the counts.
    Done {
        /// Why it stopped.
        reason: FinishReason,
        /// Token counts.
        usage: Usage,
    },
    /// The engine failed while running the request.
    Failed(String),
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Sampling parameters are invalid.
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    /// The prompt (plus `max_tokens`) does not fit the context window or the whole KV cache.
    #[error("the prompt has {prompt} tokens and asks for up to {max_tokens} more, but {limit} ({what}) is the limit: shorten the prompt or lower max_tokens")]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Requested new tokens.
        max_tokens: usize,
        /// The limit.
        limit: usize,
        /// Which limit.
        what: &'static str,
    },
    /// The prompt is empty.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// Too many requests are waiting.
    #[error("the generation queue is full ({0} requests waiting): retry later")]
    QueueFull(usize),
    /// The engine thread has stopped.
    #[error("the engine has stopped: {0}")]
    Stopped(String),
    /// A constrained request cannot complete its JSON value within `max_tokens`.
    #[error(
        "max_tokens is {max_tokens} but the constrained output needs at least {needed} tokens"
    )]
    ConstraintBudget {
        /// Requested new tokens.
        max_tokens: usize,
        /// Fewest tokens of a complete value.
        needed: usize,
    },
    /// The request's attention is refused (bad HiP parameters, or HiP with a KV budget).
    #[error(transparent)]
    Attention(#[from] HipError),
    /// A scoring call failed (for example: its prompts do not fit the KV cache).
    #[error("scoring failed: {0}")]
    Scoring(String),
}

/// Snapshot of the engine's load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Requests waiting for admission.
    pub waiting: usize,
    /// Requests being generated.
    pub running: usize,
    /// KV blocks in use.
    pub kv_blocks_used: usize,
    /// KV blocks in all.
    pub kv_blocks_total: usize,
}

/// Generates text for requests; the server depends on this, not on the engine.
pub trait Generator: Send + Sync + std::fmt::Debug {
    /// The model's name as the API shows it.
    fn model_name(&self) -> &str;
    /// The tokenizer (and chat template).
    fn tokenizer(&self) -> &ModelTokenizer;
    /// The context window in tokens.
    fn max_context(&self) -> usize;
    /// The backend the model runs on (`cpu`, `cuda`).
    fn device(&self) -> &str {
        "cpu"
    }
    /// Queues a request; events arrive on the returned stream. Dropping the stream cancels the request.
    fn submit(
        &self,
        request: GenerationRequest,
    ) -> Result<UnboundedReceiver<GenerationEvent>, EngineError>;
    /// Current load.
    fn stats(&self) -> EngineStats;
    /// Teacher-forced log-probabilities of each (context, continuation) pair ([`crate::score`]), run by
    /// the engine between steps. Blocks until done: call it off the async runtime (`spawn_blocking`).
    fn score(&self, pairs: Vec<(Vec<u32>, Vec<u32>)>) -> Result<Scores, EngineError>;
    /// The continuation's teacher-forced log-probability under each subset of segments, each segment computed
    /// once ([`crate::score_segments`]), run by the engine between steps. Blocks like [`Self::score`].
    fn score_segmented(&self, request: SegmentedScoring) -> Result<Scores, EngineError>;
}
