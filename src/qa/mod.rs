//! Question answering over retrieved passages. Without a generation model the answer is extractive
//! ([`extractive`]): the retrieved sentence that best matches the question, labelled as such, with passage
//! attributions computed over that reader's own value function.

pub mod extractive;
