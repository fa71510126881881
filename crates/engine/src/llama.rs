//! The Llama-family decoder (Llama 2/3/3.1, Qwen2, Mistral), written once over [`Backend`]: one forward pass over
//! a packed batch of sequence chunks, writing their keys and values into the paged cache and returning the logits
//! of the rows asked for.

use super::backend::{AttentionBatch, Backend, BackendError, KvLayout, SeqChunk};
use super::model::synthetic::{synthetic_plan, SyntheticTensor};
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

/// One decoder layer; q/k/v and gate/up are fused into one projection each at load (rows stacked).
struct Layer<T> {
    input_norm: T,
    qkv: T,
    qkv_bias: Option<T>,
    o: T,
    post_norm: T,
    gate_up: T,
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
    /// Chunks (indices into `seqs`) of sequences under H2O eviction: their keys' attention scores are kept
    /// ([`crate::h2o`]).
    pub tracked: Vec<usize>,
}

impl<B: Backend> LlamaModel<B> {
    /// Moves the model's weights onto `backend`.
    pub fn new(backend: B, files: &ModelFiles) -> Result<Self, LlamaError> {
        let weights = &files.weights;
        Self::build(backend, &files.config, |b, name, _shape| {
            Ok(match weights.quantized(name) {
                Some(q) => b.quantized_weight(q)?,
                None => b.weight(weights.get(name)?)?,
            })
        })
    }

    /// A random-weight model of `config` made on the backend itself ([`Backend::random_weight`]), following
    /// [`synthetic_plan`]: for real shapes (Llama-3-8B) whose weights are too large to build on the host.
    pub fn synthetic(backend: B, config: &ModelConfig, seed: u64) -> Result<Self, LlamaError> {
        config.validate()?;
        let plan: std::collections::HashMap<String, SyntheticTensor> = synthetic_plan(config, seed)
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        Self::build(backend, config, |b, name, _shape| {
            let t = plan.get(name).ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                files: "synthetic plan".into(),
            })?;
            Ok(b.random_weight(&t.shape, t.seed, t.offset, t.std)?)
        })
    }

    fn build(
        backend: B,
        c: &ModelConfig,
        source: impl Fn(&B, &str, &[usize]) -> Result<B::Tensor, LlamaError>,
    ) -> Result<Self, LlamaError> {
        let w = |name: &str| source(&backend, name, &[]);
        // Stacks the named tensors' rows (each loaded, joined, then dropped).
        let fused = |names: [String; 3], n: usize| -> Result<B::Tensor, LlamaError> {
            let parts = names[..n]
                .iter()
                .map(|name| w(name))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(backend.concat_rows(&parts.iter().collect::<Vec<_>>())?)
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}.");
            let attn =
                |kind: &str| ["q", "k", "v"].map(|x| format!("{p}self_attn.{x}_proj.{kind}"));
            let mlp = ["gate", "up", ""].map(|x| format!("{p}mlp.{x}_proj.weight"));
            layers.push(Layer {
                input_norm: w(&format!("{p}input_layernorm.weight"))?,
                qkv: fused(attn("weight"), 3)?,
                qkv_bias: if c.attention_bias {
                    Some(fused(attn("bias"), 3)?)
                } else {
                    None
                },
                o: w(&format!("{p}self_attn.o_proj.weight"))?,
                post_norm: w(&format!("{p}post_attention_layernorm.weight"))?,
                gate_up: fused(mlp, 2)?,
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
        let Some(logits) = self.forward_logits(kv, batch, block_size)? else {
            return Ok(Vec::new());
        };
        let (data, rows, vocab) = self.backend.to_host(&logits)?;
        Ok((0..rows)
            .map(|r| data[r * vocab..(r + 1) * vocab].to_vec())
            .collect())
    }

    /// Runs one step and picks the next token of each of `batch.logits_rows` on the backend
    /// ([`Backend::select_tokens`]: greedy at temperature 0), so only token ids leave the device.
    pub fn forward_select(
        &self,
        kv: &mut B::Kv,
        batch: &StepBatch,
        block_size: usize,
        temperature: f32,
        seed: u64,
    ) -> Result<Vec<u32>, LlamaError> {
        match self.forward_logits(kv, batch, block_size)? {
            Some(logits) => Ok(self.backend.select_tokens(&logits, temperature, seed)?),
            None => Ok(Vec::new()),
        }
    }

    /// Runs one step, leaving the logits of `batch.logits_rows` on the backend (`None` when no row is asked for).
    pub fn forward_logits(
        &self,
        kv: &mut B::Kv,
        batch: &StepBatch,
        block_size: usize,
    ) -> Result<Option<B::Tensor>, LlamaError> {
        self.backend
            .run_step(|| self.forward_logits_here(kv, batch, block_size))
    }

    /// [`Self::forward_logits`] on the calling thread.
    fn forward_logits_here(
        &self,
        kv: &mut B::Kv,
        batch: &StepBatch,
        block_size: usize,
    ) -> Result<Option<B::Tensor>, LlamaError> {
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
        if !batch.tracked.is_empty() {
            // New tokens of tracked sequences start with no attention received.
            let mut row = 0;
            let mut fresh = Vec::new();
            for (s, chunk) in batch.seqs.iter().enumerate() {
                if batch.tracked.contains(&s) {
                    fresh.extend_from_slice(&batch.slots[row..row + chunk.q_len]);
                }
                row += chunk.q_len;
            }
            b.reset_scores(kv, &fresh)?;
        }
        let mut residual = b.embed(&self.embed, &batch.tokens)?;
        let mut h = b.rms_norm(&residual, &self.layers[0].input_norm, eps)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let q = b.qkv_rope_write(
                &h,
                &layer.qkv,
                layer.qkv_bias.as_ref(),
                kv,
                i,
                c.num_heads,
                &batch.positions,
                &batch.slots,
                &self.inv_freq,
            )?;
            let attn = if batch.tracked.is_empty() {
                b.attention(&q, kv, i, c.num_heads, &attention)?
            } else {
                b.attention_tracked(&q, kv, i, c.num_heads, &attention, &batch.tracked)?
            };
            let o = b.linear(&attn, &layer.o, None)?;
            h = b.add_rms_norm(&mut residual, &o, &layer.post_norm, eps)?;
            let mlp = b.linear(&b.linear_swiglu(&h, &layer.gate_up)?, &layer.down, None)?;
            let next_norm = self.layers.get(i + 1).map_or(&self.norm, |l| &l.input_norm);
            h = b.add_rms_norm(&mut residual, &mlp, next_norm, eps)?;
        }
        if batch.logits_rows.is_empty() {
            return Ok(None);
        }
        let last = b.gather_rows(&h, &batch.logits_rows)?;
        let logits = b.linear(&last, self.lm_head.as_ref().unwrap_or(&self.embed), None)?;
        Ok(Some(logits))
    }
}
