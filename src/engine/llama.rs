//! The Llama-family decoder (Llama 2/3/3.1, Qwen2, Mistral), written once over [`Backend`]: one forward pass over
//! a packed batch of sequence chunks, writing their keys and values into the paged cache and returning the logits
//! of the rows asked for.

use super::backend::{AttentionBatch, Backend, BackendError, KvLayout, SeqChunk};
use super::model::{ModelConfig, ModelError, ModelFiles};

/// Errors of the model.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    /// The model files are unusable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The batch is inconsistent (a bug in the caller).
    #[error("invalid batch: {0}")]
    Batch(String),
}

struct Layer<T> {
    input_norm: T,
    q: T,
    k: T,
    v: T,
    q_bias: Option<T>,
    k_bias: Option<T>,
    v_bias: Option<T>,
    o: T,
    post_norm: T,
    gate: T,
    up: T,
    down: T,
}

/// A loaded model on a backend.
pub struct LlamaModel<B: Backend> {
    backend: B,
    config: ModelConfig,
    embed: B::Tensor,
    layers: Vec<Layer<B::Tensor>>,
    norm: B::Tensor,
    /// `None` when the output projection is tied to the embeddings.
    lm_head: Option<B::Tensor>,
    inv_freq: Vec<f32>,
}

impl<B: Backend> std::fmt::Debug for LlamaModel<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel")
            .field("backend", &self.backend.name())
            .field("architecture", &self.config.architecture)
            .field("layers", &self.layers.len())
            .finish()
    }
}

/// One step's packed batch: the chunks of several sequences, concatenated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepBatch {
    /// Token ids, one per row.
    pub tokens: Vec<u32>,
    /// Position of each token in its sequence (restarting at each sequence).
    pub positions: Vec<u32>,
    /// Cache slot each token's key and value go to.
    pub slots: Vec<u32>,
    /// The sequences' chunks, in row order.
    pub seqs: Vec<SeqChunk>,
    /// Rows whose logits are wanted (usually each chunk's last row).
    pub logits_rows: Vec<u32>,
}

impl<B: Backend> LlamaModel<B> {
    /// Moves the model's weights onto `backend`.
    pub fn new(backend: B, files: &ModelFiles) -> Result<Self, LlamaError> {
        let c = &files.config;
        let w = |name: &str| -> Result<B::Tensor, LlamaError> {
            Ok(backend.weight(files.weights.get(name)?)?)
        };
        let opt = |name: &str| -> Result<Option<B::Tensor>, LlamaError> {
            if c.attention_bias {
                Ok(Some(w(name)?))
            } else {
                Ok(None)
            }
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}.");
            layers.push(Layer {
                input_norm: w(&format!("{p}input_layernorm.weight"))?,
                q: w(&format!("{p}self_attn.q_proj.weight"))?,
                k: w(&format!("{p}self_attn.k_proj.weight"))?,
                v: w(&format!("{p}self_attn.v_proj.weight"))?,
                q_bias: opt(&format!("{p}self_attn.q_proj.bias"))?,
                k_bias: opt(&format!("{p}self_attn.k_proj.bias"))?,
                v_bias: opt(&format!("{p}self_attn.v_proj.bias"))?,
                o: w(&format!("{p}self_attn.o_proj.weight"))?,
                post_norm: w(&format!("{p}post_attention_layernorm.weight"))?,
                gate: w(&format!("{p}mlp.gate_proj.weight"))?,
                up: w(&format!("{p}mlp.up_proj.weight"))?,
                down: w(&format!("{p}mlp.down_proj.weight"))?,
            });
        }
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(w("lm_head.weight")?)
        };
        Ok(Self {
            embed: w("model.embed_tokens.weight")?,
            norm: w("model.norm.weight")?,
            layers,
            lm_head,
            inv_freq: c.rope_inv_freq(),
            config: c.clone(),
            backend,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// KV storage geometry for `num_blocks` blocks of `block_size` tokens.
    pub fn kv_layout(&self, num_blocks: usize, block_size: usize) -> KvLayout {
        KvLayout {
            layers: self.config.num_layers,
            num_blocks,
            block_size,
            kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// Allocates KV storage on the backend for a cache of this configuration.
    pub fn backend_kv(&self, cache: &super::kv_cache::KvCacheConfig) -> Result<B::Kv, LlamaError> {
        Ok(self
            .backend
            .alloc_kv(self.kv_layout(cache.num_blocks, cache.block_size))?)
    }

    /// Runs one step: returns the logits (`vocab` floats) of each of `batch.logits_rows`, in that order.
    pub fn forward(
        &self,
        kv: &mut B::Kv,
        batch: &StepBatch,
        block_size: usize,
    ) -> Result<Vec<Vec<f32>>, LlamaError> {
        let n = batch.tokens.len();
        let described: usize = batch.seqs.iter().map(|s| s.q_len).sum();
        if n == 0 || batch.positions.len() != n || batch.slots.len() != n || described != n {
            return Err(LlamaError::Batch(format!(
                "{n} tokens, {} positions, {} slots, {described} rows described by the sequences",
                batch.positions.len(),
                batch.slots.len()
            )));
        }
        let (b, c) = (&self.backend, &self.config);
        let eps = c.rms_norm_eps as f32;
        let attention = AttentionBatch {
            seqs: batch.seqs.clone(),
            block_size,
        };
        let mut residual = b.embed(&self.embed, &batch.tokens)?;
        let mut h = b.rms_norm(&residual, &self.layers[0].input_norm, eps)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let mut q = b.linear(&h, &layer.q, layer.q_bias.as_ref())?;
            let mut k = b.linear(&h, &layer.k, layer.k_bias.as_ref())?;
            let v = b.linear(&h, &layer.v, layer.v_bias.as_ref())?;
            b.rope(&mut q, c.head_dim, &batch.positions, &self.inv_freq)?;
            b.rope(&mut k, c.head_dim, &batch.positions, &self.inv_freq)?;
            b.write_kv(kv, i, &k, &v, &batch.slots)?;
            let attn = b.attention(&q, kv, i, c.num_heads, &attention)?;
            let o = b.linear(&attn, &layer.o, None)?;
            h = b.add_rms_norm(&mut residual, &o, &layer.post_norm, eps)?;
            let gate = b.linear(&h, &layer.gate, None)?;
            let up = b.linear(&h, &layer.up, None)?;
            let mlp = b.linear(&b.swiglu(&gate, &up)?, &layer.down, None)?;
            let next_norm = self.layers.get(i + 1).map_or(&self.norm, |l| &l.input_norm);
            h = b.add_rms_norm(&mut residual, &mlp, next_norm, eps)?;
        }
        if batch.logits_rows.is_empty() {
            return Ok(Vec::new());
        }
        let last = b.gather_rows(&h, &batch.logits_rows)?;
        let logits = b.linear(&last, self.lm_head.as_ref().unwrap_or(&self.embed), None)?;
        let (data, rows, vocab) = b.to_host(&logits)?;
        Ok((0..rows)
            .map(|r| data[r * vocab..(r + 1) * vocab].to_vec())
            .collect())
    }
}
