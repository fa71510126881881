//! The backend trait the model is written over. A backend owns its tensors and the paged KV storage; the model
//! calls a fixed set of fused operations on a packed batch of tokens (many sequences' chunks concatenated, no
//! padding) described by [`AttentionBatch`]. The CPU backend ([`cpu`]) runs on candle-core; the CUDA backend
//! implements the same operations with NVRTC kernels and cuBLASLt.

pub mod amx;
pub mod bf16dot;
pub mod cpu;
mod cpu_attention;
pub mod cpu_tensor;
pub mod cuda;
pub mod kchoice;
pub mod kdequant;
pub mod kdot;
pub mod probe;
pub mod qdot;
pub mod qgemm;

/// Errors of a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A tensor operation failed.
    #[error("{backend} backend: {op} failed: {reason}")]
    Op {
        /// The backend (`cpu`, `cuda`).
        backend: &'static str,
        /// The operation.
        op: &'static str,
        /// Why.
        reason: String,
    },
    /// The CUDA backend failed (driver, NVRTC, cuBLASLt or a kernel, each named).
    #[error(transparent)]
    Cuda(#[from] cuda::CudaError),
    /// Inputs of an operation do not agree (a bug in the caller).
    #[error("{op}: {reason}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What disagrees.
        reason: String,
    },
}

/// One sequence's chunk in a packed batch: `q_len` new tokens (at the end of its context) that attend to the
/// first `context_len` cached tokens of the sequence, causally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqChunk {
    /// New tokens of this sequence in the batch (consecutive rows).
    pub q_len: usize,
    /// Tokens of the sequence in the cache after this step (the new ones included).
    pub context_len: usize,
    /// Physical KV blocks of the sequence, in order.
    pub block_table: Vec<u32>,
    /// HiP sparse attention ([`crate::hip`]) for this chunk when its context exceeds the parameters'
    /// `min_context`; dense attention otherwise.
    pub hip: Option<crate::hip::HipParams>,
}

impl SeqChunk {
    /// A chunk with dense attention.
    pub fn dense(q_len: usize, context_len: usize, block_table: Vec<u32>) -> Self {
        Self {
            q_len,
            context_len,
            block_table,
            hip: None,
        }
    }

    /// The HiP parameters when sparse attention engages for this chunk.
    pub fn sparse(&self) -> Option<&crate::hip::HipParams> {
        self.hip.as_ref().filter(|p| p.engages(self.context_len))
    }
}

/// Shape of attention over a packed batch.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionBatch {
    /// The sequences, in batch order; their `q_len`s sum to the batch's token count.
    pub seqs: Vec<SeqChunk>,
    /// Tokens per KV block: the cache's, or 1, which makes every block table a list of cache slots (the same
    /// storage viewed token by token: a context gathered from several sequences' slots, as
    /// [`crate::score_segments`] builds).
    pub block_size: usize,
}

/// Geometry of the paged KV storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// Transformer layers.
    pub layers: usize,
    /// Physical blocks.
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension of a head.
    pub head_dim: usize,
}

impl KvLayout {
    /// Bytes of K and V for all layers at 4 bytes per value.
    pub fn bytes_f32(&self) -> usize {
        2 * self.layers * self.num_blocks * self.block_size * self.kv_heads * self.head_dim * 4
    }
}

/// The operations the model needs. Activations are 2-D, `[tokens, features]`, row-major.
pub trait Backend: Send + Sync + 'static {
    /// A tensor on this backend.
    type Tensor: Send + Sync;
    /// The paged K and V storage of every layer.
    type Kv: Send;

    /// Short name (`cpu`, `cuda`).
    fn name(&self) -> &'static str;
    /// Moves a weight (host f32, any rank) onto the backend.
    fn weight(&self, host: &candle_core::Tensor) -> Result<Self::Tensor, BackendError>;
    /// Moves a GGUF weight onto the backend. The default dequantizes it (to f32 on the host, then
    /// [`Self::weight`]: bf16 on CUDA); the CPU backend keeps quantized weights quantized.
    fn quantized_weight(
        &self,
        q: &std::sync::Arc<candle_core::quantized::QTensor>,
    ) -> Result<Self::Tensor, BackendError> {
        let host = q
            .dequantize(&candle_core::Device::Cpu)
            .map_err(|e| BackendError::Op {
                backend: self.name(),
                op: "quantized_weight",
                reason: e.to_string(),
            })?;
        self.weight(&host)
    }
    /// Allocates zeroed KV storage.
    fn alloc_kv(&self, layout: KvLayout) -> Result<Self::Kv, BackendError>;
    /// Rows of `table` (`[vocab, hidden]`) for `ids`.
    fn embed(&self, table: &Self::Tensor, ids: &[u32]) -> Result<Self::Tensor, BackendError>;
    /// RMSNorm of each row, scaled by `weight`.
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor, BackendError>;
    /// `residual += delta`, then the RMSNorm of the new residual (fused on GPUs).
    fn add_rms_norm(
        &self,
        residual: &mut Self::Tensor,
        delta: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor, BackendError>;
    /// `residual += delta`.
    fn add(&self, residual: &mut Self::Tensor, delta: &Self::Tensor) -> Result<(), BackendError>;
    /// `x @ w^T (+ bias)` for `w` of shape `[out, in]`.
    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor, BackendError>;
    /// Rotary embedding in place on `x` (`[tokens, heads * head_dim]`, halves rotated as in Llama), token `i`
    /// at `positions[i]`, with inverse frequencies `inv_freq` (`head_dim / 2`).
    fn rope(
        &self,
        x: &mut Self::Tensor,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
    ) -> Result<(), BackendError>;
    /// `silu(gate) * up`, element-wise.
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor, BackendError>;
    /// Writes the rows of `k` and `v` (`[tokens, kv_heads * head_dim]`) of `layer` to the cache slots `slots`
    /// (slot = block * block_size + offset).
    fn write_kv(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        k: &Self::Tensor,
        v: &Self::Tensor,
        slots: &[u32],
    ) -> Result<(), BackendError>;
    /// Causal attention of the packed queries `q` (`[tokens, heads * head_dim]`) to each sequence's cached keys
    /// and values of `layer`, grouped-query (`heads / kv_heads` query heads per KV head), scaled by
    /// `1/sqrt(head_dim)`. Returns `[tokens, heads * head_dim]`.
    fn attention(
        &self,
        q: &Self::Tensor,
        kv: &Self::Kv,
        layer: usize,
        heads: usize,
        batch: &AttentionBatch,
    ) -> Result<Self::Tensor, BackendError>;
    /// The HiP masks ([`crate::hip`]) [`Self::attention`] uses for `batch` on `layer`: the chosen key blocks of
    /// every chunk whose HiP engages, in [`crate::hip::mask_len`]'s layout (for tests and benchmarks).
    fn hip_mask(
        &self,
        _q: &Self::Tensor,
        _kv: &Self::Kv,
        _layer: usize,
        _heads: usize,
        _batch: &AttentionBatch,
    ) -> Result<Vec<u32>, BackendError> {
        Err(unsupported(self.name(), "hip_mask"))
    }
    /// The rows `rows` of `x`, in that order.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[u32]) -> Result<Self::Tensor, BackendError>;
    /// Copies a 2-D tensor to the host, row-major, with its shape.
    fn to_host(&self, x: &Self::Tensor) -> Result<(Vec<f32>, usize, usize), BackendError>;
    /// The rows of `parts` stacked (weights of equal width, or rank-1 biases joined): fused projections.
    fn concat_rows(&self, parts: &[&Self::Tensor]) -> Result<Self::Tensor, BackendError>;
    /// The attention prologue on the fused projection `qkv` (`[tokens, (heads + 2 * kv_heads) * head_dim]`:
    /// q, then k, then v): RoPE on q and k at `positions`, k and v written to `layer`'s cache at `slots`;
    /// returns the rotated q (`[tokens, heads * head_dim]`).
    #[allow(clippy::too_many_arguments)]
    fn rope_qkv_write(
        &self,
        qkv: &Self::Tensor,
        kv: &mut Self::Kv,
        layer: usize,
        heads: usize,
        positions: &[u32],
        slots: &[u32],
        inv_freq: &[f32],
    ) -> Result<Self::Tensor, BackendError>;
    /// `silu(gate) * up` on the fused projection `[tokens, 2 * inter]` (gate columns first).
    fn swiglu_packed(&self, gate_up: &Self::Tensor) -> Result<Self::Tensor, BackendError>;
    /// `swiglu_packed(linear(x, gate_up))`; GPUs fuse the two for decode-sized batches.
    fn linear_swiglu(
        &self,
        x: &Self::Tensor,
        gate_up: &Self::Tensor,
    ) -> Result<Self::Tensor, BackendError> {
        self.swiglu_packed(&self.linear(x, gate_up, None)?)
    }
    /// `rope_qkv_write(linear(x, qkv, bias), ...)`; GPUs fuse the two for decode-sized batches.
    #[allow(clippy::too_many_arguments)]
    fn qkv_rope_write(
        &self,
        x: &Self::Tensor,
        qkv: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        kv: &mut Self::Kv,
        layer: usize,
        heads: usize,
        positions: &[u32],
        slots: &[u32],
        inv_freq: &[f32],
    ) -> Result<Self::Tensor, BackendError> {
        let projected = self.linear(x, qkv, bias)?;
        self.rope_qkv_write(&projected, kv, layer, heads, positions, slots, inv_freq)
    }
    /// A weight of `shape` (rank 1 or 2) filled with `offset + std * uniform noise` from `seed`, made on the
    /// backend itself (random-weight models too large for the host). Backends may use different generators.
    fn random_weight(
        &self,
        shape: &[usize],
        seed: u64,
        offset: f32,
        std: f32,
    ) -> Result<Self::Tensor, BackendError>;
    /// The next token of each row of `logits` (`[rows, vocab]`): the argmax when `temperature` is 0, else a
    /// draw from `softmax(logits / temperature)` by the Gumbel-max trick with noise from `seed` (see
    /// [`gumbel_noise`]). Ties go to the lowest id. GPUs do this on the device so only the ids are copied back.
    fn select_tokens(
        &self,
        logits: &Self::Tensor,
        temperature: f32,
        seed: u64,
    ) -> Result<Vec<u32>, BackendError> {
        let (data, rows, vocab) = self.to_host(logits)?;
        Ok((0..rows)
            .map(|r| select_row(&data[r * vocab..(r + 1) * vocab], r, temperature, seed))
            .collect())
    }
    /// `log softmax(logits[r])[tokens[r]]` for every row `r` of `logits` (`[rows, vocab]`, one token per row):
    /// the teacher-forced log-probabilities of scoring. GPUs compute them on the device, so one number per row
    /// is copied back instead of the row's logits.
    fn token_log_probs(
        &self,
        logits: &Self::Tensor,
        tokens: &[u32],
    ) -> Result<Vec<f64>, BackendError> {
        let (data, rows, vocab) = self.to_host(logits)?;
        check_log_prob_tokens(rows, vocab, tokens)?;
        Ok(rows_log_probs(&data, vocab, tokens))
    }
    /// Waits for the backend's queued work (a no-op on the CPU).
    fn synchronize(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Runs `step` (one forward pass): on the calling thread by default (a CUDA context stays current there).
    /// The CPU backend runs it on a worker of rayon's pool instead, so that each parallel operation of the step
    /// splits from inside the pool: the calling thread then sleeps and wakes once per step rather than once per
    /// operation.
    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        step()
    }
    /// Whether the backend tunes its products per row count at their first call (cuBLASLt autotuning), so that
    /// the engine should run the row counts it will meet once before serving ([`crate::warmup`]).
    fn tunes_per_shape(&self) -> bool {
        false
    }
    /// Whether the backend keeps the attention scores of H2O eviction ([`crate::h2o`]): the four
    /// methods below.
    fn supports_h2o(&self) -> bool {
        false
    }
    /// H2O: zeroes the score of `slots` in every layer (tokens about to be written there).
    fn reset_scores(&self, _kv: &mut Self::Kv, _slots: &[u32]) -> Result<(), BackendError> {
        Err(unsupported(self.name(), "reset_scores"))
    }
    /// H2O: for the chunks `tracked` (indices into `batch.seqs`), adds to the score of every key of `layer` the
    /// attention probability each of the chunk's query rows (`q`, as for [`Self::attention`]) gives it, summed
    /// over the query heads of the key's KV head. A key's score is kept per slot and KV head.
    fn accumulate_attention(
        &self,
        _q: &Self::Tensor,
        _kv: &mut Self::Kv,
        _layer: usize,
        _heads: usize,
        _batch: &AttentionBatch,
        _tracked: &[usize],
    ) -> Result<(), BackendError> {
        Err(unsupported(self.name(), "accumulate_attention"))
    }
    /// [`Self::attention`], and H2O's [`Self::accumulate_attention`] for the chunks `tracked`; backends whose
    /// attention kernels emit the probabilities override it.
    fn attention_tracked(
        &self,
        q: &Self::Tensor,
        kv: &mut Self::Kv,
        layer: usize,
        heads: usize,
        batch: &AttentionBatch,
        tracked: &[usize],
    ) -> Result<Self::Tensor, BackendError> {
        let out = self.attention(q, kv, layer, heads, batch)?;
        if !tracked.is_empty() {
            self.accumulate_attention(q, kv, layer, heads, batch, tracked)?;
        }
        Ok(out)
    }
    /// H2O: the scores of `slots` (one sequence's, in cache order), `[layer][kv_head][slot]` flattened.
    fn read_scores(&self, _kv: &Self::Kv, _slots: &[u32]) -> Result<Vec<f32>, BackendError> {
        Err(unsupported(self.name(), "read_scores"))
    }
    /// H2O eviction: for every layer and KV head `h`, whose kept cache indices (ascending) are
    /// `keep[(layer * kv_heads + h) * n..][..n]`, moves the key, value and score at `slots[keep[j]]` to
    /// `slots[j]`. Afterwards the first `n` slots hold each head's kept tokens.
    fn compact_kv(
        &self,
        _kv: &mut Self::Kv,
        _slots: &[u32],
        _keep: &[u32],
        _n: usize,
    ) -> Result<(), BackendError> {
        Err(unsupported(self.name(), "compact_kv"))
    }
}

fn unsupported(backend: &'static str, op: &'static str) -> BackendError {
    BackendError::Op {
        backend,
        op,
        reason: "not supported by this backend".into(),
    }
}

/// Checks the arguments of [`Backend::compact_kv`] against a layout: every kept list ascending, of `n` indices
/// below `slots.len()`, every slot inside the storage.
pub fn check_compaction(
    layout: &KvLayout,
    slots: &[u32],
    keep: &[u32],
    n: usize,
) -> Result<(), BackendError> {
    let lists = layout.layers * layout.kv_heads;
    let capacity = (layout.num_blocks * layout.block_size) as u32;
    let bad = keep.len() != lists * n
        || n > slots.len()
        || slots.iter().any(|&s| s >= capacity)
        || keep.chunks(n.max(1)).any(|k| {
            k.windows(2).any(|w| w[0] >= w[1]) || k.iter().any(|&i| i as usize >= slots.len())
        });
    if bad {
        return Err(BackendError::Shape {
            op: "compact_kv",
            reason: format!(
                "{} kept indices for {lists} lists of {n} over {} slots",
                keep.len(),
                slots.len()
            ),
        });
    }
    Ok(())
}

/// Checks the arguments of [`Backend::token_log_probs`]: one token per row, each inside the vocabulary.
pub fn check_log_prob_tokens(
    rows: usize,
    vocab: usize,
    tokens: &[u32],
) -> Result<(), BackendError> {
    if tokens.len() != rows {
        return Err(BackendError::Shape {
            op: "token_log_probs",
            reason: format!("{} tokens for {rows} rows of logits", tokens.len()),
        });
    }
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(BackendError::Shape {
            op: "token_log_probs",
            reason: format!("token {t} outside a vocabulary of {vocab}"),
        });
    }
    Ok(())
}

/// `log softmax(logits)[token]` (exponentials in f32, their sum in f64).
pub fn token_log_prob(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    f64::from(logits[token as usize] - max) - sum.ln()
}

/// [`token_log_prob`] of each (row, token) of a flat `[rows, vocab]` logits buffer, over the host's cores (a
/// large vocabulary makes this the host's share of scoring).
pub fn rows_log_probs(data: &[f32], vocab: usize, wanted: &[u32]) -> Vec<f64> {
    use rayon::prelude::*;
    wanted
        .par_iter()
        .enumerate()
        .map(|(row, &token)| token_log_prob(&data[row * vocab..(row + 1) * vocab], token))
        .collect()
}

/// splitmix64's increment, the golden ratio in 64 bits.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser, as in `kernels/prelude.cuh`: [`mix`] of `z` plus [`GOLDEN`].
pub fn mix64(z: u64) -> u64 {
    mix(z.wrapping_add(GOLDEN))
}

/// splitmix64's bijective 64-bit mix.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The Gumbel noise `-ln(-ln u)` added to token `id` of row `row` under `seed`, the same on every backend.
pub fn gumbel_noise(seed: u64, row: usize, id: usize) -> f32 {
    let bits = mix64(seed ^ mix64(((row as u64) << 32) | id as u64));
    let u = ((bits >> 40) as f32 + 0.5) * (1.0 / 16_777_216.0);
    -(-u.ln()).ln()
}

/// Host version of [`Backend::select_tokens`] for one row.
pub fn select_row(logits: &[f32], row: usize, temperature: f32, seed: u64) -> u32 {
    let mut best = (f32::NEG_INFINITY, 0u32);
    let mut found = false;
    for (i, &l) in logits.iter().enumerate() {
        let v = if temperature > 0.0 {
            l / temperature + gumbel_noise(seed, row, i)
        } else {
            l
        };
        if v > best.0 || !found && v == best.0 {
            best = (v, i as u32);
            found = true;
        }
    }
    best.1
}
