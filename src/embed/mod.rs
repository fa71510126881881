//! Sentence embeddings: BERT-family encoders on candle-core (all-MiniLM-L6-v2 by default), mean pooling and L2
//! normalisation as sentence-transformers does.

use std::path::PathBuf;

pub mod bert;
mod config;
mod model;
mod ops;
mod pooling;
#[cfg(test)]
mod testutil;

pub use bert::BertEmbedder;

/// Where `make setup` (`scripts/fetch-model.sh`) puts the default model, relative to the repository root.
pub const DEFAULT_MODEL_DIR: &str = "models/all-MiniLM-L6-v2";

/// How to obtain the default model; the hint of [`EmbedError::ModelMissing`].
pub const FETCH_HINT: &str =
    "run `make setup` (scripts/fetch-model.sh) to fetch all-MiniLM-L6-v2 into models/";

/// One embedded input.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The L2-normalised sentence vector.
    pub vector: Vec<f32>,
    /// Tokens the model saw for this input (special tokens included), after truncation.
    pub tokens: usize,
    /// Whether the input was cut at the model's maximum length.
    pub truncated: bool,
}

/// Errors of the embedding layer.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model directory or one of its files is missing.
    #[error("embedding model not found at {dir}: {hint}")]
    ModelMissing {
        /// The directory looked in.
        dir: PathBuf,
        /// How to get the model.
        hint: String,
    },
    /// A model file exists but cannot be used.
    #[error("invalid embedding model file {file}: {reason}")]
    InvalidModel {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Tokenisation failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A tensor operation failed.
    #[error("embedding computation failed: {0}")]
    Compute(String),
}

/// Turns texts into sentence vectors. Implementations are CPU-bound and synchronous; call them from a blocking task.
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// Model name, e.g. `all-MiniLM-L6-v2`.
    fn model_name(&self) -> &str;
    /// Vector dimension.
    fn dimension(&self) -> usize;
    /// Maximum input length in tokens (special tokens included); longer inputs are truncated.
    fn max_tokens(&self) -> usize;
    /// Embeds `texts`, one [`Embedding`] per input, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>, EmbedError>;
}
