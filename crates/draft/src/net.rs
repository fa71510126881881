//! The draft as a trainable network: a Llama decoder over candle-core [`Var`]s, named as in a Hugging Face
//! checkpoint, whose loss is differentiated by candle's autograd (`Tensor::backward`).
//!
//! Every operation here is one candle op with a backward rule (matmul, index_select, gather, narrow, cat,
//! exp, sqrt, silu, sums): the network has no hand-written gradient. Rotary embeddings use the Hugging Face
//! (rotate-half) layout, as the engine does for safetensors checkpoints.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};
use engram_engine::internals::model::synthetic::random_host_tensor;
use engram_engine::internals::model::ModelConfig;

use crate::DraftError;

/// A draft's parameters by Hugging Face tensor name.
pub struct DraftNet {
    config: ModelConfig,
    params: BTreeMap<String, Var>,
    /// The tokens the softmax of training runs over, when restricted ([`Self::restrict_output`]).
    output: Option<OutputVocab>,
}

/// A subset of the vocabulary: its ids (a u32 tensor), each token's index in it, and the full embedding as
/// initialised (the rows outside the subset, which training never touches).
struct OutputVocab {
    ids: Tensor,
    index: Vec<u32>,
    full: Tensor,
}

/// The embedding's tensor name.
const EMBED: &str = "model.embed_tokens.weight";

/// In [`OutputVocab::index`]: the token is not in the subset.
const ABSENT: u32 = u32::MAX;

/// The standard deviation of the random initialisation.
const INIT_STD: f32 = 0.02;

impl DraftNet {
    /// A network of `config` drawn from `seed`: uniform noise of standard deviation 0.02 (output projections
    /// scaled down by √(2·layers)), norms at one. With `target_embedding` (`[vocab, target_hidden]`), the tied
    /// embedding starts as its random projection to the draft's width (a Gaussian matrix scaled by 1/√width,
    /// which keeps dot products between tokens in expectation) instead of noise.
    pub fn init(
        config: &ModelConfig,
        seed: u64,
        target_embedding: Option<&Tensor>,
    ) -> Result<Self, DraftError> {
        let mut params = BTreeMap::new();
        let out_std = INIT_STD / ((2 * config.num_layers) as f32).sqrt();
        for (i, (name, shape)) in engram_engine::internals::model::weights::expected_tensors(config)
            .into_iter()
            .enumerate()
        {
            let tensor = if shape.len() == 1 {
                Tensor::ones(shape, DType::F32, &Device::Cpu)?
            } else if let (true, Some(e)) = (name == EMBED, target_embedding) {
                project(e, shape[1], seed)?
            } else {
                let std = if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                    out_std
                } else {
                    INIT_STD
                };
                random_host_tensor(&shape, seed.wrapping_add(1 + i as u64), 0.0, std)?
            };
            params.insert(name, Var::from_tensor(&tensor)?);
        }
        Ok(Self {
            config: config.clone(),
            params,
            output: None,
        })
    }

    /// Restricts training to the vocabulary subset `tokens` (every token of the training text): the embedding
    /// being trained (input and tied softmax) becomes just those rows, inputs and targets are renumbered into
    /// it, and the other rows stay as initialised. The vocabulary-wide head and its gradient are most of a
    /// narrow draft's cost, and most of a 150k-token vocabulary never occurs in a corpus. Tokens outside the
    /// subset are refused in batches. Call before training starts.
    pub fn restrict_output(&mut self, tokens: &[u32]) -> Result<(), DraftError> {
        let mut ids: Vec<u32> = tokens.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let vocab = self.config.vocab_size;
        if ids.last().is_some_and(|&t| t as usize >= vocab) {
            return Err(DraftError::Invalid(format!(
                "a training token is outside the vocabulary of {vocab}"
            )));
        }
        let mut index = vec![ABSENT; vocab];
        for (i, &t) in ids.iter().enumerate() {
            index[t as usize] = i as u32;
        }
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, &Device::Cpu)?;
        let full = self.p(EMBED).clone();
        let rows = Var::from_tensor(&full.index_select(&ids, 0)?)?;
        self.params.insert(EMBED.to_string(), rows);
        self.output = Some(OutputVocab { ids, index, full });
        Ok(())
    }

    /// The tensors to write: every parameter under its name; after [`Self::restrict_output`] the full
    /// embedding (trained rows put back among the initial ones) and an untied `lm_head.weight` whose rows
    /// outside the subset are zero (their logits sit at 0, below what training taught the seen tokens).
    pub fn export_tensors(&self) -> Result<std::collections::HashMap<String, Tensor>, DraftError> {
        let mut out: std::collections::HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        if let Some(o) = &self.output {
            let trained = self.p(EMBED);
            let delta = (trained - o.full.index_select(&o.ids, 0)?)?;
            out.insert(EMBED.into(), o.full.index_add(&o.ids, &delta, 0)?);
            let head = o.full.zeros_like()?.index_add(&o.ids, trained, 0)?;
            out.insert("lm_head.weight".into(), head);
        }
        Ok(out)
    }

    /// Whether training is restricted to a vocabulary subset (the written head is then untied).
    pub fn is_restricted(&self) -> bool {
        self.output.is_some()
    }

    /// `ids` renumbered into the training subset (unchanged when unrestricted).
    fn renumber(&self, ids: &Tensor) -> Result<Tensor, DraftError> {
        let Some(out) = &self.output else {
            return Ok(ids.clone());
        };
        let shape = ids.shape().clone();
        let mapped = ids
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|t| match out.index.get(t as usize) {
                Some(&i) if i != ABSENT => Ok(i),
                _ => Err(DraftError::Invalid(format!(
                    "token {t} is outside the training vocabulary"
                ))),
            })
            .collect::<Result<Vec<u32>, _>>()?;
        Ok(Tensor::from_vec(mapped, shape, &Device::Cpu)?)
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameters, by name (sorted).
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// How many numbers the parameters hold.
    pub fn param_count(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    /// Overwrites each parameter with the tensor of the same name (shapes must match).
    pub fn load(
        &self,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<(), DraftError> {
        for (name, var) in &self.params {
            let t = tensors
                .get(name)
                .ok_or_else(|| DraftError::Invalid(format!("tensor `{name}` is missing")))?;
            if t.dims() != var.dims() {
                return Err(DraftError::Invalid(format!(
                    "tensor `{name}` has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    fn p(&self, name: &str) -> &Tensor {
        self.params[name].as_tensor()
    }

    /// The last hidden states `[batch·len, hidden]` (after the final norm) for `ids` (`[batch, len]`, u32), causal attention within each row.
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor, DraftError> {
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        let (heads, hd) = (c.num_heads, c.head_dim);
        let embed = self.p(EMBED);
        let mut x = embed.index_select(&self.renumber(ids)?.flatten_all()?, 0)?; // [b·t, h]
        let (cos, sin) = rotary(c, t)?;
        let mask = causal_mask(t)?;
        for l in 0..c.num_layers {
            let p = |n: &str| self.p(&format!("model.layers.{l}.{n}"));
            let h = rms_norm(&x, p("input_layernorm.weight"), c.rms_norm_eps)?;
            let split = |w: &Tensor| -> candle_core::Result<Tensor> {
                h.matmul(&w.t()?)?
                    .reshape((b, t, heads, hd))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = rope(&split(p("self_attn.q_proj.weight"))?, &cos, &sin)?;
            let k = rope(&split(p("self_attn.k_proj.weight"))?, &cos, &sin)?;
            let v = split(p("self_attn.v_proj.weight"))?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?;
            let att = softmax_last(&scores.broadcast_add(&mask)?)?;
            let o = att
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b * t, heads * hd))?
                .matmul(&p("self_attn.o_proj.weight").t()?)?;
            x = (x + o)?;
            let h = rms_norm(&x, p("post_attention_layernorm.weight"), c.rms_norm_eps)?;
            let gate = h.matmul(&p("mlp.gate_proj.weight").t()?)?.silu()?;
            let up = h.matmul(&p("mlp.up_proj.weight").t()?)?;
            x = (x + (gate * up)?.matmul(&p("mlp.down_proj.weight").t()?)?)?;
        }
        Ok(rms_norm(&x, self.p("model.norm.weight"), c.rms_norm_eps)?)
    }

    /// The weighted mean cross-entropy of predicting `targets` (`[batch, len]`, u32) from `ids`, each position
    /// counted by its weight in `weights` (`[batch, len]`, f32; zero leaves it out).
    pub fn loss(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        weights: &Tensor,
    ) -> Result<Tensor, DraftError> {
        let x = self.hidden(ids)?;
        let targets = self.renumber(targets)?.flatten_all()?;
        let head = self.p(EMBED).t()?;
        // The logits in slices of rows, each under glibc's largest mmap threshold (32 MiB): the allocator then
        // reuses their memory from step to step instead of mapping (and faulting in) fresh pages each time.
        let rows = x.dim(0)?;
        let chunk = ((8usize << 20) / (4 * head.dim(1)?)).clamp(1, rows.max(1));
        let mut nll = Vec::with_capacity(rows.div_ceil(chunk));
        // Tokens outside the subset have zero head rows when written (logit 0): they stay in the softmax's
        // denominator, so the loss is the written model's full-vocabulary cross-entropy.
        let unseen = match &self.output {
            Some(o) => (o.index.len() - o.ids.dim(0)?) as f64,
            None => 0.0,
        };
        for start in (0..rows).step_by(chunk) {
            let n = chunk.min(rows - start);
            let logits = x.narrow(0, start, n)?.matmul(&head)?;
            nll.push(token_nll(&logits, &targets.narrow(0, start, n)?, unseen)?);
        }
        let nll = Tensor::cat(&nll, 0)?;
        let w = weights.flatten_all()?;
        let total = w.sum_all()?.to_scalar::<f32>()?;
        if total <= 0.0 {
            return Err(DraftError::Invalid(
                "a batch has no weighted position".into(),
            ));
        }
        Ok(((nll * w)?.sum_all()? / total as f64)?)
    }
}

/// `-log softmax(logits ++ [0; unseen])[target]` per row: the softmax also over `unseen` more tokens whose
/// logits are 0 (the written head's zero rows).
fn token_nll(logits: &Tensor, targets: &Tensor, unseen: f64) -> candle_core::Result<Tensor> {
    // The max (at least the unseen tokens' 0) is a constant shift of log-sum-exp: no gradient flows through it.
    let max = logits.max_keepdim(D::Minus1)?.relu()?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let mut sum = shifted.exp()?.sum_keepdim(D::Minus1)?;
    if unseen > 0.0 {
        sum = (sum + (max.neg()?.exp()? * unseen)?)?;
    }
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?;
    (sum.log()? - picked)?.squeeze(1)
}

/// Root-mean-square norm over the last dimension, scaled by `weight`.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&scale)?.broadcast_mul(weight)
}

/// Softmax over the last dimension.
fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `[len, len]`: 0 where a key is visible (not after the query), a large negative number elsewhere.
fn causal_mask(t: usize) -> candle_core::Result<Tensor> {
    let data: Vec<f32> = (0..t * t)
        .map(|i| if i % t > i / t { -1e9 } else { 0.0 })
        .collect();
    Tensor::from_vec(data, (t, t), &Device::Cpu)
}

/// Cosines and sines `[len, head_dim]` of the rotary angles (each frequency twice, rotate-half layout).
fn rotary(c: &ModelConfig, t: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let inv = c.rope_inv_freq();
    let half = inv.len();
    let mut cos = Vec::with_capacity(t * 2 * half);
    let mut sin = Vec::with_capacity(t * 2 * half);
    for pos in 0..t {
        for _ in 0..2 {
            for f in &inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (t, 2 * half), &Device::Cpu)?,
        Tensor::from_vec(sin, (t, 2 * half), &Device::Cpu)?,
    ))
}

/// Rotates `x` (`[batch, heads, len, head_dim]`) by the positions' angles.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// `embedding` (`[vocab, width]`) times a Gaussian `[width, to]` matrix of variance 1/`to`, from `seed`.
fn project(embedding: &Tensor, to: usize, seed: u64) -> Result<Tensor, DraftError> {
    let (_, width) = embedding.dims2()?;
    // A sum of 12 uniforms minus 6 is close to a standard normal; the engine's generator gives the uniforms.
    let mut acc = Tensor::zeros((width, to), DType::F32, &Device::Cpu)?;
    let u_std = 1.0 / 12f32.sqrt();
    for i in 0..12u64 {
        acc = (acc + random_host_tensor(&[width, to], seed ^ (0x9e37 + i), 0.0, u_std)?)?;
    }
    let matrix = (acc / (to as f64).sqrt())?;
    Ok(embedding.to_dtype(DType::F32)?.matmul(&matrix)?)
}
