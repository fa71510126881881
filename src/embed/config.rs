//! Reading a model directory's JSON files: the BERT `config.json` and the sentence-transformers pooling and
//! `sentence_bert_config.json` settings.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{EmbedError, FETCH_HINT};

/// The subset of a Hugging Face BERT `config.json` the encoder needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_hidden_act() -> String {
    "gelu".to_owned()
}

impl BertConfig {
    /// Checks that the configuration describes an encoder this implementation computes exactly.
    fn validate(&self, file: &Path) -> Result<(), EmbedError> {
        let invalid = |reason: String| Err(invalid(file, reason));
        if let Some(t) = &self.model_type {
            if t != "bert" {
                return invalid(format!("model_type {t:?} is not supported (only \"bert\")"));
            }
        }
        if self.hidden_act != "gelu" {
            return invalid(format!(
                "hidden_act {:?} is not supported (only \"gelu\", the erf form)",
                self.hidden_act
            ));
        }
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                return invalid(format!(
                    "position_embedding_type {p:?} is not supported (only \"absolute\")"
                ));
            }
        }
        let dims = [
            self.vocab_size,
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.intermediate_size,
            self.max_position_embeddings,
            self.type_vocab_size,
        ];
        if dims.contains(&0) {
            return invalid("a dimension is zero".to_owned());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return invalid(format!(
                "layer_norm_eps {} is not a positive number",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }
}

/// sentence-transformers' `1_Pooling/config.json`.
#[derive(Debug, Clone, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    word_embedding_dimension: Option<usize>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

/// sentence-transformers' `sentence_bert_config.json`.
#[derive(Debug, Clone, Default, Deserialize)]
struct SentenceBertConfig {
    #[serde(default)]
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

/// One entry of sentence-transformers' `modules.json`.
#[derive(Debug, Clone, Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type", default)]
    kind: String,
}

/// Everything a model directory's JSON files say.
#[derive(Debug, Clone)]
pub(crate) struct ModelSettings {
    /// The encoder's shape.
    pub bert: BertConfig,
    /// Maximum tokens per input, special tokens included.
    pub max_tokens: usize,
    /// Whether sentence-transformers lower-cases inputs before tokenising.
    pub lowercase: bool,
}

/// The error for a missing model file or directory.
pub(crate) fn missing(dir: &Path, what: &str) -> EmbedError {
    EmbedError::ModelMissing {
        dir: dir.to_path_buf(),
        hint: format!("{what} is missing; {FETCH_HINT}"),
    }
}

/// The error for an unusable model file.
pub(crate) fn invalid(file: &Path, reason: impl Into<String>) -> EmbedError {
    EmbedError::InvalidModel {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// `dir/name`, or [`EmbedError::ModelMissing`] when it is not a file.
pub(crate) fn required_file(dir: &Path, name: &str) -> Result<PathBuf, EmbedError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing(dir, name))
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, EmbedError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| invalid(path, format!("cannot read: {e}")))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| invalid(path, e.to_string()))
}

fn read_optional_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, EmbedError> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Reads `config.json` and the optional sentence-transformers files of `dir`.
///
/// The pooling module is found through `modules.json` (falling back to `1_Pooling/`); when a pooling configuration
/// exists it must ask for mean pooling alone. Without one, mean pooling is assumed (plain Hugging Face BERT
/// directories). `max_tokens` is `sentence_bert_config.json`'s `max_seq_length`, capped at
/// `max_position_embeddings`, which is also the default.
pub(crate) fn read_settings(dir: &Path) -> Result<ModelSettings, EmbedError> {
    let config_path = required_file(dir, "config.json")?;
    let bert: BertConfig = read_json(&config_path)?;
    bert.validate(&config_path)?;

    let modules: Option<Vec<Module>> = read_optional_json(&dir.join("modules.json"))?;
    let pooling_dir = modules
        .iter()
        .flatten()
        .find(|m| m.kind.ends_with(".Pooling") && !m.path.is_empty())
        .map_or_else(|| "1_Pooling".to_owned(), |m| m.path.clone());
    let pooling_path = dir.join(&pooling_dir).join("config.json");
    if let Some(pooling) = read_optional_json::<PoolingConfig>(&pooling_path)? {
        let others = pooling.pooling_mode_cls_token
            || pooling.pooling_mode_max_tokens
            || pooling.pooling_mode_mean_sqrt_len_tokens
            || pooling.pooling_mode_weightedmean_tokens
            || pooling.pooling_mode_lasttoken;
        if !pooling.pooling_mode_mean_tokens || others {
            return Err(invalid(
                &pooling_path,
                "only mean pooling (pooling_mode_mean_tokens alone) is supported",
            ));
        }
        if let Some(dim) = pooling.word_embedding_dimension {
            if dim != bert.hidden_size {
                return Err(invalid(
                    &pooling_path,
                    format!(
                        "word_embedding_dimension {dim} differs from hidden_size {}",
                        bert.hidden_size
                    ),
                ));
            }
        }
    }

    let st_path = dir.join("sentence_bert_config.json");
    let st: SentenceBertConfig = read_optional_json(&st_path)?.unwrap_or_default();
    let max_tokens = st
        .max_seq_length
        .unwrap_or(bert.max_position_embeddings)
        .min(bert.max_position_embeddings);
    if max_tokens < 3 {
        return Err(invalid(
            &st_path,
            format!("max_seq_length {max_tokens} leaves no room for text"),
        ));
    }
    Ok(ModelSettings {
        bert,
        max_tokens,
        lowercase: st.do_lower_case,
    })
}
