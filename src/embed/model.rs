//! The BERT encoder on candle-core alone: embeddings + LayerNorm, then N post-LayerNorm transformer layers, computed
//! as Hugging Face's `BertModel` does in evaluation mode (no dropout). Matrix products are candle's; the element-wise
//! steps are the fused kernels of [`super::ops`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

use super::config::{invalid, BertConfig};
use super::ops::{AddBias, AddLayerNorm, MaskedSoftmax};
use super::EmbedError;

/// A dense layer `y = x Wᵀ + b`, with `Wᵀ` stored pre-transposed (`[in, out]`, contiguous); the bias is added by
/// the fused kernel that follows the product.
#[derive(Debug)]
struct Linear {
    weight_t: Tensor,
    bias: Vec<f32>,
}

/// LayerNorm parameters (applied by [`AddLayerNorm`]).
#[derive(Debug)]
struct LayerNorm {
    weight: Vec<f32>,
    shift: Vec<f32>,
    eps: f64,
}

impl LayerNorm {
    /// The fused kernel `LayerNorm(x + bias [+ residual])`.
    fn after<'a>(&'a self, bias: &'a [f32]) -> AddLayerNorm<'a> {
        AddLayerNorm {
            bias,
            weight: &self.weight,
            shift: &self.shift,
            eps: self.eps,
        }
    }
}

/// One encoder layer. The query, key and value projections are fused into one `[hidden, 3·hidden]` matrix, and the
/// query part is pre-multiplied by `1/sqrt(head_dim)` (the attention scale).
#[derive(Debug)]
struct Layer {
    qkv: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The loaded encoder.
#[derive(Debug)]
pub(crate) struct BertModel {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    /// Row 0 of the token-type embeddings (every token is of type 0), `[1, hidden]`.
    token_type_embedding: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
}

type LoadResult<T> = std::result::Result<T, EmbedError>;

/// The tensors of a safetensors file, looked up with or without the `bert.` prefix and converted to f32.
struct Weights<'a> {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
    file: &'a Path,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> LoadResult<Tensor> {
        let key = format!("{}{name}", self.prefix);
        let tensor = self
            .tensors
            .get(&key)
            .ok_or_else(|| invalid(self.file, format!("tensor {key} is missing")))?;
        if tensor.dims() != shape {
            let reason = format!(
                "tensor {key} has shape {:?}, expected {shape:?}",
                tensor.dims()
            );
            return Err(invalid(self.file, reason));
        }
        match tensor.dtype() {
            DType::F32 => Ok(tensor.clone()),
            DType::F16 | DType::BF16 | DType::F64 => self.compute(tensor.to_dtype(DType::F32)),
            other => Err(invalid(
                self.file,
                format!("tensor {key} has unsupported dtype {other:?}"),
            )),
        }
    }

    /// A 1-D tensor's values.
    fn vector(&self, name: &str, len: usize) -> LoadResult<Vec<f32>> {
        self.compute(self.get(name, &[len])?.to_vec1())
    }

    /// LayerNorm parameters, named `weight`/`bias` or (older checkpoints) `gamma`/`beta`.
    fn layer_norm(&self, name: &str, dim: usize, eps: f64) -> LoadResult<LayerNorm> {
        let modern = self
            .tensors
            .contains_key(&format!("{}{name}.weight", self.prefix));
        let (w, b) = if modern {
            ("weight", "bias")
        } else {
            ("gamma", "beta")
        };
        let weight = self.vector(&format!("{name}.{w}"), dim)?;
        let shift = self.vector(&format!("{name}.{b}"), dim)?;
        Ok(LayerNorm { weight, shift, eps })
    }

    fn linear(&self, name: &str, input: usize, output: usize) -> LoadResult<Linear> {
        let weight = self.get(&format!("{name}.weight"), &[output, input])?;
        let bias = self.vector(&format!("{name}.bias"), output)?;
        Ok(Linear {
            weight_t: self.compute(weight.t().and_then(|w| w.contiguous()))?,
            bias,
        })
    }

    fn compute<T>(&self, r: Result<T>) -> LoadResult<T> {
        r.map_err(|e| invalid(self.file, e.to_string()))
    }
}

impl BertModel {
    /// Loads the encoder weights from a safetensors file (tensor names with or without the `bert.` prefix; f32, f16,
    /// bf16 or f64, computed in f32), checking every shape against `config`.
    pub(crate) fn load(file: &Path, config: &BertConfig) -> LoadResult<Self> {
        let tensors = candle_core::safetensors::load(file, &Device::Cpu)
            .map_err(|e| invalid(file, e.to_string()))?;
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let w = Weights {
            tensors,
            prefix,
            file,
        };
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let scale = 1.0 / ((h / config.num_attention_heads) as f64).sqrt();

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let q = w.linear(&format!("{p}.attention.self.query"), h, h)?;
            let k = w.linear(&format!("{p}.attention.self.key"), h, h)?;
            let v = w.linear(&format!("{p}.attention.self.value"), h, h)?;
            let q_scaled = w.compute(q.weight_t.affine(scale, 0.0))?;
            let qkv = Linear {
                weight_t: w.compute(Tensor::cat(&[&q_scaled, &k.weight_t, &v.weight_t], 1))?,
                bias: q
                    .bias
                    .iter()
                    .map(|b| (f64::from(*b) * scale) as f32)
                    .chain(k.bias)
                    .chain(v.bias)
                    .collect(),
            };
            let inter = config.intermediate_size;
            layers.push(Layer {
                qkv,
                attention_output: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: w.linear(&format!("{p}.intermediate.dense"), h, inter)?,
                output: w.linear(&format!("{p}.output.dense"), inter, h)?,
                output_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        let token_types = w.get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        Ok(Self {
            word_embeddings: w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position_embeddings: w.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type_embedding: w.compute(token_types.narrow(0, 0, 1))?,
            embeddings_norm: w.layer_norm("embeddings.LayerNorm", h, eps)?,
            layers,
            hidden: h,
            heads: config.num_attention_heads,
        })
    }

    /// The hidden size (the sentence-vector dimension).
    pub(crate) fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Runs the encoder. `ids` is `[batch, seq]` (u32), `mask` `[batch, seq]` (f32: 1 for tokens, 0 for padding);
    /// returns the last hidden states, `[batch, seq, hidden]`. Padded keys get exactly zero attention weight, as with
    /// Hugging Face's additive `f32::MIN` mask (see [`MaskedSoftmax`]); padded positions are computed but meaningless.
    pub(crate) fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        let (h, heads) = (self.hidden, self.heads);
        let head_dim = h / heads;
        let mask = mask.contiguous()?;

        let words = self
            .word_embeddings
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, seq, h))?;
        let positions = self.position_embeddings.narrow(0, 0, seq)?;
        let x = words
            .broadcast_add(&positions)?
            .broadcast_add(&self.token_type_embedding)?;
        let mut x = x.reshape((batch * seq, h))?;
        x.inplace_op1(&self.embeddings_norm.after(&[]))?;

        for layer in &self.layers {
            // Every tensor modified in place below is the fresh result of a matrix product, shared with nothing.
            let qkv = x.matmul(&layer.qkv.weight_t)?;
            qkv.inplace_op1(&AddBias {
                bias: &layer.qkv.bias,
                gelu: false,
            })?;
            let qkv = qkv
                .reshape((batch, seq, 3, heads, head_dim))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?;
            let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
            let probs = q.matmul(&k.t()?)?;
            probs.inplace_op2(&mask, &MaskedSoftmax)?;
            let context = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((batch * seq, h))?;

            let attended = context.matmul(&layer.attention_output.weight_t)?;
            attended.inplace_op2(
                &x,
                &layer.attention_norm.after(&layer.attention_output.bias),
            )?;
            x = attended;
            let inner = x.matmul(&layer.intermediate.weight_t)?;
            inner.inplace_op1(&AddBias {
                bias: &layer.intermediate.bias,
                gelu: true,
            })?;
            let out = inner.matmul(&layer.output.weight_t)?;
            out.inplace_op2(&x, &layer.output_norm.after(&layer.output.bias))?;
            x = out;
        }
        x.reshape((batch, seq, h))
    }
}
