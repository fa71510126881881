//! Why a question was refused or not answered. The server maps these to HTTP in one place.

use crate::attribution::ShapleyError;
use crate::qa::generated::AnswerError;
use crate::qa::iterative::{IterativeError, MAX_ITERATIONS};
use crate::retrieve::RetrieveError;
use engram_engine::HipError;

/// Errors of question answering.
#[derive(Debug, thiserror::Error)]
pub enum QaError {
    /// The question is empty (or only whitespace).
    #[error("`question` is empty: ask something")]
    EmptyQuestion,
    /// `top_k` is 0 or above the most passages a request may ask for.
    #[error("`top_k` must be between 1 and {max} (retrieval.max_top_k)")]
    InvalidTopK {
        /// `retrieval.max_top_k`.
        max: usize,
    },
    /// `attribution: "sentences"` over more passages than sentence players can cover.
    #[error(
        "{passages} passages with text: sentence attribution covers at most {most}; lower top_k"
    )]
    TooManySentencePassages {
        /// Passages with text.
        passages: usize,
        /// The most there can be.
        most: usize,
    },
    /// `iterations` is outside 1 to [`MAX_ITERATIONS`].
    #[error("`iterations` is {0}: ask for 1 to {MAX_ITERATIONS} rounds of retrieval")]
    InvalidIterations(usize),
    /// `attention` asks for HiP with parameters the engine refuses.
    #[error(transparent)]
    InvalidAttention(#[from] HipError),
    /// No retriever has the requested name.
    #[error(transparent)]
    UnknownRetriever(RetrieveError),
    /// Retrieval, or a reasoning step between its rounds, failed.
    #[error(transparent)]
    Rounds(#[from] IterativeError),
    /// Answering failed, or the prompt with every passage does not fit the model
    /// ([`AnswerError::OverContext`]).
    #[error(transparent)]
    Answer(#[from] AnswerError),
    /// An estimator failed (for example: the engine could not score the coalitions).
    #[error(transparent)]
    Attribution(#[from] ShapleyError),
    /// The attribution prompt could not be made (the tokenizer failed).
    #[error("cannot make the attribution prompt: {0}")]
    AttributionPrompt(String),
    /// The blocking task that computes an attribution failed.
    #[error("the attribution task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
