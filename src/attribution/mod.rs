//! Attribution of generated answers to their inputs (TextGenSHAP, arXiv 2312.01279): which passages, and which
//! tokens inside them, drove an answer. [`shapley`] holds the estimators over any cooperative game whose players
//! are the passages: exact Shapley values for small games, permutation sampling with antithetic pairs and Banzhaf
//! values by random coalitions beyond, each with standard errors; [`contextcite`] fits ContextCite's sparse linear
//! surrogate to random ablations instead. The value of a coalition (for example the
//! log-probability of the answer given only those passages) comes from the caller, in batches, so a model can
//! score many coalition prompts in one prepacked pass.

pub mod contextcite;
pub mod logprob;
pub mod shapley;

pub use contextcite::{contextcite, logit_of_log_prob};
pub use logprob::{LogProbGame, PromptBuilder, Prompts, Scorer, SeparatePrompt, Value};
pub use shapley::{
    all_players, banzhaf, exact_shapley, permutation_shapley, Attribution, Coalition, Game,
    ShapleyError, MAX_EXACT_PLAYERS, MAX_PLAYERS,
};
