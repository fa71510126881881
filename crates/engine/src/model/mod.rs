//! Model files: configuration ([`config`]), weights ([`weights`]), tokenizer and chat template ([`tokenizer`]),
//! and tiny-to-real-shaped random models built in code ([`synthetic`]).
//!
//! [`ModelFiles::load`] takes either a Hugging Face model directory (`config.json`, `model.safetensors` or
//! `model.safetensors.index.json` + shards, `tokenizer.json`, optional `tokenizer_config.json` and
//! `generation_config.json`), a GGUF file (or a directory holding one; [`gguf`]) or `synthetic:NAME`.

pub mod config;
pub mod gguf;
pub mod gguf_header;
pub mod gguf_tokenizer;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

pub use config::{Architecture, DType, ModelConfig, RopeScaling};
pub use tokenizer::{ChatMessage, GenerationConfig, ModelTokenizer};
pub use weights::Weights;

/// Why model files could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model directory or a file it needs does not exist.
    #[error("model directory/file not found: {}: {hint}", path.display())]
    Missing {
        /// The path that was looked for.
        path: PathBuf,
        /// What was expected there.
        hint: String,
    },
    /// A configuration, safetensors or tokenizer file is malformed.
    #[error("invalid model file {}: {reason}", file.display())]
    Invalid {
        /// The offending file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("tensor `{name}` not found (looked in {files})")]
    MissingTensor {
        /// The Hugging Face tensor name.
        name: String,
        /// Where it was looked for.
        files: String,
    },
    /// The architecture, dtype or rope type is not supported.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The chat template is absent or failed to render.
    #[error("chat template: {0}")]
    Template(String),
    /// `synthetic:NAME` with an unknown name.
    #[error("unknown synthetic model `{name}` (known: {known})")]
    UnknownSynthetic {
        /// The name asked for.
        name: String,
        /// The names that exist, comma-separated.
        known: String,
    },
}

/// The prefix of a model spec that selects a synthetic model.
pub const SYNTHETIC_PREFIX: &str = "synthetic:";

/// Everything needed to run a model.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The model's configuration.
    pub config: ModelConfig,
    /// Its weights (f32 on candle's CPU device).
    pub weights: Weights,
    /// Its tokenizer, chat template and generation defaults.
    pub tokenizer: ModelTokenizer,
    /// A display name: the directory's last component, or the `synthetic:NAME` spec itself.
    pub name: String,
}

impl ModelFiles {
    /// `spec` is a directory (Hugging Face layout), a `.gguf` file or a directory holding one (quantized weights
    /// kept quantized, [`gguf`]), or `synthetic:NAME[@SEED]` (tiny, qwen2.5-0.5b, llama-3.2-1b, llama-3-8b) —
    /// synthetic weights from a fixed seed ([`synthetic::parse_synthetic`]).
    pub fn load(spec: &str) -> Result<Self, ModelError> {
        if let Some(name) = spec.strip_prefix(SYNTHETIC_PREFIX) {
            let (name, seed) = synthetic::parse_synthetic(name)?;
            let config = synthetic::synthetic_config(name)?;
            let weights = synthetic::synthetic_weights(&config, seed)?;
            let tokenizer = synthetic::synthetic_tokenizer(config.vocab_size);
            return Ok(Self {
                config,
                weights,
                tokenizer,
                name: spec.to_string(),
            });
        }
        if let Some(file) = gguf::gguf_path(Path::new(spec)) {
            return gguf::load(&file);
        }
        Self::load_dir(Path::new(spec))
    }

    /// Loads a Hugging Face model directory.
    pub fn load_dir(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::Missing {
                path: dir.to_path_buf(),
                hint: format!(
                    "expected a Hugging Face model directory (config.json, model.safetensors, tokenizer.json), \
                     a .gguf file (scripts/fetch-model.sh NAME fetches one) or {SYNTHETIC_PREFIX}NAME with NAME \
                     one of {}",
                    synthetic::SYNTHETIC_MODELS.join(", ")
                ),
            });
        }
        let config = ModelConfig::load(dir)?;
        let weights = Weights::load(dir, &config)?;
        let tokenizer = ModelTokenizer::load(dir)?;
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        Ok(Self {
            config,
            weights,
            tokenizer,
            name,
        })
    }
}

/// Reads a file to a string, mapping a missing file to [`ModelError::Missing`] and other failures to
/// [`ModelError::Invalid`].
pub(crate) fn read_text(path: &Path, hint: &str) -> Result<String, ModelError> {
    if !path.is_file() {
        return Err(ModelError::Missing {
            path: path.to_path_buf(),
            hint: hint.to_string(),
        });
    }
    fs_err::read_to_string(path).map_err(|e| invalid(path, e))
}

/// Shorthand for [`ModelError::Invalid`].
pub(crate) fn invalid(file: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Invalid {
        file: file.to_path_buf(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directory_names_path_and_hints_synthetic() {
        let err = ModelFiles::load("/definitely/not/here").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Missing { .. }), "{msg}");
        assert!(
            msg.contains("/definitely/not/here") && msg.contains("synthetic:"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_synthetic_lists_known_names() {
        let err = ModelFiles::load("synthetic:nope").unwrap_err();
        match err {
            ModelError::UnknownSynthetic { name, known } => {
                assert_eq!(name, "nope");
                assert!(
                    known.contains("tiny") && known.contains("qwen2.5-0.5b"),
                    "{known}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
