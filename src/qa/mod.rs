//! Question answering over retrieved passages. With a generation model the engine answers ([`generated`]) and
//! the passages' Shapley values are over the answer's log-probability; without one the answer is extractive
//! ([`extractive`]): the retrieved sentence that best matches the question, labelled as such, with passage
//! attributions computed over that reader's own value function. [`spans`] is the second, token level: runs of words
//! of the most valuable passage. [`iterative`] is the IRCoT-style mode: reasoning steps alternate with retrievals.

pub mod extractive;
pub mod generated;
pub mod iterative;
pub mod spans;
