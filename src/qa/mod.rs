//! Question answering over retrieved passages, the whole path behind `/v1/qa` ([`service`]): retrieve (with
//! [`iterative`] IRCoT-style rounds, reasoning steps alternating with retrievals), answer, [`attribute`] (passage
//! Shapley values, then [`spans`], runs of words of the most valuable passage) and list the graph
//! neighbourhood ([`relations`]).
//!
//! One [`Answerer`] answers for `/v1/qa`, the iterative mode's reasoning steps and `engram eval --qa`: with a
//! generation model the engine answers ([`generated`]) and the passages' Shapley values are over the answer's
//! log-probability; without one the answer is extractive ([`extractive`]): the retrieved sentence that best matches
//! the question, labelled as such, with passage attributions computed over that reader's own value function.
//!
//! A prompt over the context: the model's prompt holds every retrieved passage, and it must fit the engine together
//! with an answer of [`generated::ANSWER_TOKENS`] tokens; if it does not, no passage is dropped and the question is
//! not answered ([`AnswerError::OverContext`]). `/v1/qa` then answers 400 `context_length_exceeded` naming `top_k`;
//! `engram eval --qa` counts the question as unanswered (exact match and F1 0) and in its report's `over_context`.

pub mod answerer;
pub mod attribute;
pub mod error;
pub mod extractive;
pub mod generated;
pub mod iterative;
pub mod relations;
pub mod sentences;
pub mod service;
pub mod spans;
pub mod types;

pub use answerer::{Answered, Answerer, Basis};
pub use error::QaError;
pub use generated::AnswerError;
pub use service::{QaOutcome, QaQuery, QaService};
pub use types::{
    Answer, AttributionInfo, AttributionLevel, Estimator, PassageAttribution, PassageEncoding,
    QaRelation, QaRequest, QaTimings, SentenceAttribution, SentenceValue, SpanAttribution,
    TokenAttribution, ValueFunction,
};
