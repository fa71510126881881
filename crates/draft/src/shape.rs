//! The draft's shape, chosen from the target's: the same vocabulary, tokenizer, rotary base and context window;
//! few layers; narrow. A Llama block without biases (whatever the target's family), tied embeddings, SiLU MLP.

use engram_engine::internals::model::{Architecture, DType, ModelConfig};

use crate::DraftError;

/// Width and depth of a draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DraftShape {
    /// Decoder blocks.
    pub layers: usize,
    /// Model width (the embedding's columns).
    pub hidden: usize,
    /// Attention heads (every head its own key and value: no grouping at this size).
    pub heads: usize,
    /// The MLP's inner width.
    pub intermediate: usize,
}

/// Head width of every draft.
pub const HEAD_DIM: usize = 64;

impl DraftShape {
    /// The default draft for `target`: 2 blocks (the fewest that can learn to copy from the context), a width of
    /// an eighth of the target's rounded to whole heads (at least 128, at most 512), an MLP three times as wide.
    /// Its vocabulary-wide embedding dominates its size, as in FastDraft's drafts.
    pub fn for_target(target: &ModelConfig) -> Self {
        let hidden = (target.hidden_size / 8).clamp(128, 512) / HEAD_DIM * HEAD_DIM;
        Self::new(2, hidden)
    }

    /// `layers` blocks of width `hidden` (a multiple of [`HEAD_DIM`]).
    pub fn new(layers: usize, hidden: usize) -> Self {
        Self {
            layers,
            hidden,
            heads: (hidden / HEAD_DIM).max(1),
            intermediate: hidden * 3,
        }
    }

    /// Checks the shape fits a draft of `target`.
    pub fn validate(&self, target: &ModelConfig) -> Result<(), DraftError> {
        if self.layers == 0 || self.layers > 32 {
            return Err(DraftError::Invalid(format!(
                "draft layers must be between 1 and 32, got {}",
                self.layers
            )));
        }
        if self.hidden == 0 || !self.hidden.is_multiple_of(HEAD_DIM) || self.hidden > 4096 {
            return Err(DraftError::Invalid(format!(
                "draft width must be a multiple of {HEAD_DIM} up to 4096, got {}",
                self.hidden
            )));
        }
        if self.hidden > target.hidden_size {
            return Err(DraftError::Invalid(format!(
                "draft width {} is wider than the target's {}",
                self.hidden, target.hidden_size
            )));
        }
        Ok(())
    }

    /// The draft's configuration for `target`.
    pub fn config(&self, target: &ModelConfig) -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: target.vocab_size,
            hidden_size: self.hidden,
            intermediate_size: self.intermediate,
            num_layers: self.layers,
            num_heads: self.heads,
            num_kv_heads: self.heads,
            head_dim: HEAD_DIM,
            rms_norm_eps: 1e-6,
            rope_theta: target.rope_theta,
            rope_scaling: None,
            max_position_embeddings: target.max_position_embeddings,
            tie_word_embeddings: true,
            attention_bias: false,
            dtype: DType::F32,
            sliding_window: None,
            bos_token_id: target.bos_token_id,
            eos_token_ids: target.eos_token_ids.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_engine::internals::model::synthetic::synthetic_config;

    #[test]
    fn default_shape_is_narrow_and_shallow_and_keeps_the_vocabulary() {
        let target = synthetic_config("qwen2.5-0.5b").unwrap();
        let shape = DraftShape::for_target(&target);
        assert_eq!((shape.layers, shape.hidden, shape.heads), (2, 128, 2));
        shape.validate(&target).unwrap();
        let c = shape.config(&target);
        c.validate().unwrap();
        assert_eq!(c.vocab_size, target.vocab_size);
        assert_eq!(c.rope_theta, target.rope_theta);
        assert!(c.tie_word_embeddings && !c.attention_bias);
        let big = synthetic_config("llama-3-8b").unwrap();
        assert_eq!(DraftShape::for_target(&big).hidden, 512);
    }

    #[test]
    fn bad_shapes_are_refused_with_the_reason() {
        let target = synthetic_config("qwen2.5-0.5b").unwrap();
        let msg = DraftShape::new(2, 100)
            .validate(&target)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("multiple of 64"), "{msg}");
        let msg = DraftShape::new(0, 128)
            .validate(&target)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("layers"), "{msg}");
        let msg = DraftShape::new(2, 1024)
            .validate(&target)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("wider"), "{msg}");
    }
}
