//! FastDraft (arXiv 2411.11055): a small draft model for a target model, sharing its tokenizer, pre-trained on
//! plain text (stage 1) and then aligned on text the target itself generates (stage 2), for speculative decoding.
//!
//! - [`shape`]: the draft's shape, chosen from the target's configuration.
//! - [`net`]: the draft as a trainable Llama network (candle-core `Var`s; gradients from candle's autograd).
//! - [`optim`]: AdamW with decoupled weight decay, linear warm-up then cosine decay, global-norm clipping.
//! - [`data`]: token sequences with loss masks, cut into fixed-length windows and batched by a seeded order.
//! - [`train`]: the training loop: checkpoints and resume, a progress bar, `loss.csv` and `loss.svg`.
//! - [`export`]: the Hugging Face directory the engine loads as `engine.speculative.draft_model`.
//!
//! What builds the training text (the store's documents, target generations through the engine) lives with the
//! server (`engram draft train`); this crate only trains on token sequences.

pub mod data;
pub mod export;
pub mod generate;
pub mod net;
pub mod optim;
pub mod pipeline;
pub mod plot;
pub mod shape;
pub mod train;

use std::path::PathBuf;

/// Why a draft could not be built, trained or written.
#[derive(Debug, thiserror::Error)]
pub enum DraftError {
    /// A tensor operation failed (shapes, dtypes, autograd).
    #[error("tensor operation: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The target model or a written draft could not be loaded.
    #[error("model: {0}")]
    Model(#[from] engram_engine::ModelError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A checkpoint does not belong to this run or is damaged.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A setting is out of range, or the data cannot fill one batch.
    #[error("{0}")]
    Invalid(String),
}

/// Shorthand for [`DraftError::Io`].
pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DraftError + '_ {
    move |source| DraftError::Io {
        path: path.to_path_buf(),
        source,
    }
}
