//! `config.json`: the model's shape, read from both the classic form (`rope_theta`, `rope_scaling`, `torch_dtype`)
//! and the transformers 5 form (`rope_parameters: {rope_theta, rope_type, …}`, `dtype`).

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{invalid, read_text, ModelError};

/// The model families the engine runs (all Llama-shaped decoders).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 2/3/3.1/3.2 and look-alikes).
    Llama,
    /// `Qwen2ForCausalLM` (Qwen2, Qwen2.5): q/k/v biases.
    Qwen2,
    /// `MistralForCausalLM`: optional sliding-window attention.
    Mistral,
}

impl Architecture {
    /// Parses an `architectures[0]` class name or a `model_type`.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" | "llama" => Some(Self::Llama),
            "Qwen2ForCausalLM" | "qwen2" => Some(Self::Qwen2),
            "MistralForCausalLM" | "mistral" => Some(Self::Mistral),
            _ => None,
        }
    }

    /// The Hugging Face class name.
    pub fn hf_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Mistral => "MistralForCausalLM",
        }
    }
}

/// The dtype the checkpoint was saved in (`torch_dtype` / `dtype`); weights are upcast to f32 at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// float32.
    F32,
    /// bfloat16.
    BF16,
    /// float16.
    F16,
}

impl DType {
    /// Parses a torch dtype name (`float32`, `bfloat16`, `float16`, with or without `torch.`).
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name.trim_start_matches("torch.") {
            "float32" | "float" | "fp32" => Some(Self::F32),
            "bfloat16" | "bf16" => Some(Self::BF16),
            "float16" | "half" | "fp16" => Some(Self::F16),
            _ => None,
        }
    }
}

/// Rotary-embedding frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1 scaling (`rope_type: "llama3"`).
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are fully scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are left alone.
        high_freq_factor: f64,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
}

/// A model's shape and hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The model family.
    pub architecture: Architecture,
    /// Rows of the embedding and of the LM head.
    pub vocab_size: usize,
    /// The residual stream width.
    pub hidden_size: usize,
    /// The MLP's inner width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Rotary scaling, `None` for plain rope.
    pub rope_scaling: Option<RopeScaling>,
    /// The longest context the model supports.
    pub max_position_embeddings: usize,
    /// The LM head reuses the embedding matrix (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (Qwen2: true by default).
    pub attention_bias: bool,
    /// The checkpoint's dtype.
    pub dtype: DType,
    /// Sliding-window attention width, for every layer (Mistral), `None` for full attention.
    pub sliding_window: Option<usize>,
    /// `bos_token_id` of `config.json`.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` of `config.json` (an int or a list there).
    pub eos_token_ids: Vec<u32>,
}

/// `eos_token_id`: an int or a list.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    pub(crate) fn into_vec(self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![id],
            Self::Many(ids) => ids,
        }
    }
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Map<String, Value>>,
    rope_parameters: Option<Map<String, Value>>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    quantization_config: Option<Value>,
}

/// Largest vocabulary, hidden size, intermediate size, layer count, head counts and head dimension a config may
/// give (in that order; each far above any real model's), then the largest context (no bound).
const MAX_SIZES: [usize; 8] = [
    1 << 24,
    1 << 20,
    1 << 22,
    1024,
    4096,
    4096,
    4096,
    usize::MAX,
];

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let file = dir.join("config.json");
        let json = read_text(&file, "a Hugging Face model directory needs config.json")?;
        Self::from_json(&json, &file)
    }

    /// Parses a `config.json` text; `file` is named in errors.
    pub fn from_json(json: &str, file: &Path) -> Result<Self, ModelError> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| invalid(file, e))?;
        let architecture = architecture(&raw, file)?;
        if raw.quantization_config.is_some() {
            return Err(ModelError::Unsupported(
                "quantized checkpoints (quantization_config)".into(),
            ));
        }
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(ModelError::Unsupported(format!(
                "hidden_act `{act}` (only silu)"
            )));
        }
        if raw.mlp_bias == Some(true) {
            return Err(ModelError::Unsupported("mlp_bias: true".into()));
        }
        let need = |v: Option<usize>, name: &str| {
            v.ok_or_else(|| invalid(file, format!("missing `{name}`")))
        };
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if num_heads > 0 && hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(invalid(
                    file,
                    format!("hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"),
                ))
            }
        };
        let dtype = match raw.dtype.as_deref().or(raw.torch_dtype.as_deref()) {
            None => DType::F32,
            Some(name) => DType::from_hf_name(name).ok_or_else(|| {
                ModelError::Unsupported(format!("dtype `{name}` (float32, bfloat16, float16)"))
            })?,
        };
        let (rope_theta, rope_scaling) = rope(&raw)?;
        let sliding_window = sliding_window(&raw, architecture)?;
        let config = Self {
            architecture,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads: raw.num_key_value_heads.unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(match architecture {
                Architecture::Llama => 2048,
                Architecture::Qwen2 => 32768,
                Architecture::Mistral => 131072,
            }),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias: match architecture {
                Architecture::Llama => raw.attention_bias.unwrap_or(false),
                Architecture::Qwen2 => raw.attention_bias.unwrap_or(true),
                Architecture::Mistral => false,
            },
            dtype,
            sliding_window,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw
                .eos_token_id
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
        };
        config.check().map_err(|reason| invalid(file, reason))?;
        Ok(config)
    }

    /// Checks the shape is consistent: nonzero sizes, `num_heads % num_kv_heads == 0`, even `head_dim`, positive
    /// epsilon and theta, sane rope scaling.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.check()
            .map_err(|reason| invalid(Path::new("config.json"), reason))
    }

    fn check(&self) -> Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{name}` must be nonzero"));
        }
        // Far above any real model, and low enough that nothing computed from the shape overflows or asks for
        // more memory than a machine has before the weights are even read (found by the `gguf` fuzz target).
        if let Some((name, v, max)) = sizes
            .iter()
            .zip(MAX_SIZES)
            .map(|(&(name, v), max)| (name, v, max))
            .find(|&(_, v, max)| v > max)
        {
            return Err(format!("`{name}` is {v}: at most {max}"));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let scaling_ok = match self.rope_scaling {
            None => true,
            Some(RopeScaling::Llama3 {
                factor: f,
                low_freq_factor: lo,
                high_freq_factor: hi,
                original_max_position_embeddings: original,
            }) => positive(f) && positive(lo) && hi > lo && original > 0,
        };
        let (heads, kv) = (self.num_heads, self.num_kv_heads);
        let rules = [
            (
                heads % kv == 0,
                format!("num_attention_heads {heads} % num_key_value_heads {kv} != 0"),
            ),
            (
                self.head_dim.is_multiple_of(2),
                format!("head_dim {} must be even (rope)", self.head_dim),
            ),
            (
                u32::try_from(self.vocab_size).is_ok(),
                "vocab_size must fit u32 ids".into(),
            ),
            (
                positive(self.rms_norm_eps),
                format!("rms_norm_eps {}", self.rms_norm_eps),
            ),
            (
                positive(self.rope_theta),
                format!("rope_theta {}", self.rope_theta),
            ),
            (self.sliding_window != Some(0), "sliding_window 0".into()),
            (scaling_ok, format!("rope scaling {:?}", self.rope_scaling)),
        ];
        if let Some((_, problem)) = rules.into_iter().find(|(ok, _)| !ok) {
            return Err(format!("inconsistent config: {problem}"));
        }
        Ok(())
    }

    /// Width of the concatenated query heads (`num_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads (`num_kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Rotary inverse frequencies, `head_dim / 2` of them: `theta^(-2i/head_dim)` in f64 with the rope scaling
    /// applied (Llama 3: as transformers' `_compute_llama3_parameters`), then cast to f32.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim as f64;
        (0..self.head_dim / 2)
            .map(|i| {
                let inv = 1.0 / self.rope_theta.powf((2 * i) as f64 / dim);
                let scaled = match self.rope_scaling {
                    None => inv,
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    }) => {
                        let original = original_max_position_embeddings as f64;
                        let wavelen = 2.0 * std::f64::consts::PI / inv;
                        if wavelen > original / low_freq_factor {
                            inv / factor
                        } else if wavelen < original / high_freq_factor {
                            inv
                        } else {
                            let smooth = (original / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * inv / factor + smooth * inv
                        }
                    }
                };
                scaled as f32
            })
            .collect()
    }

    /// Parameter count, embeddings included (and the LM head when untied).
    pub fn param_count(&self) -> u64 {
        let (h, q, kv) = (
            self.hidden_size as u64,
            self.q_dim() as u64,
            self.kv_dim() as u64,
        );
        let attention =
            h * q + 2 * h * kv + q * h + if self.attention_bias { q + 2 * kv } else { 0 };
        let layer = attention + 3 * h * self.intermediate_size as u64 + 2 * h;
        let embedding = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings {
            0
        } else {
            embedding
        };
        embedding + self.num_layers as u64 * layer + h + head
    }
}

fn architecture(raw: &RawConfig, file: &Path) -> Result<Architecture, ModelError> {
    let supported = "LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM";
    let name = match (
        raw.architectures.as_ref().and_then(|a| a.first()),
        &raw.model_type,
    ) {
        (Some(name), _) | (None, Some(name)) => name,
        (None, None) => {
            return Err(invalid(
                file,
                "neither `architectures` nor `model_type` is given",
            ))
        }
    };
    Architecture::from_hf_name(name).ok_or_else(|| {
        ModelError::Unsupported(format!("architecture `{name}` (supported: {supported})"))
    })
}

/// `rope_theta` and the scaling, from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`.
fn rope(raw: &RawConfig) -> Result<(f64, Option<RopeScaling>), ModelError> {
    let params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
    let theta = raw
        .rope_parameters
        .as_ref()
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
        .or(raw.rope_theta)
        .unwrap_or(10000.0);
    let Some(params) = params else {
        return Ok((theta, None));
    };
    let rope_type = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str);
    let number = |key: &str| {
        params.get(key).and_then(Value::as_f64).ok_or_else(|| {
            ModelError::Unsupported(format!("llama3 rope scaling without numeric `{key}`"))
        })
    };
    let scaling = match rope_type {
        Some("default") => None,
        None if raw.rope_parameters.is_some() && params.contains_key("rope_theta") => None,
        Some("llama3") => Some(RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")? as usize,
        }),
        other => {
            return Err(ModelError::Unsupported(format!(
                "rope type {:?} (supported: default, llama3)",
                other.unwrap_or("<none>")
            )))
        }
    };
    Ok((theta, scaling))
}

fn sliding_window(
    raw: &RawConfig,
    architecture: Architecture,
) -> Result<Option<usize>, ModelError> {
    match architecture {
        Architecture::Llama => Ok(None),
        Architecture::Mistral => Ok(raw.sliding_window),
        Architecture::Qwen2 => {
            // Qwen2 slides only when `use_sliding_window`, and then on layers >= `max_window_layers`.
            let layers = raw.num_hidden_layers.unwrap_or(0);
            let from = raw.max_window_layers.unwrap_or(28); // transformers' default
            match raw
                .sliding_window
                .filter(|_| raw.use_sliding_window == Some(true))
            {
                None => Ok(None),
                Some(_) if from >= layers => Ok(None),
                Some(w) if from == 0 => Ok(Some(w)),
                Some(_) => Err(ModelError::Unsupported(format!(
                    "qwen2 sliding window on layers >= {m} only (per-layer windows)",
                    m = from
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA: &str = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 384, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": null, "torch_dtype": "float32",
        "eos_token_id": [2, 8], "bos_token_id": 1}"#;

    fn parse(json: &str) -> Result<ModelConfig, ModelError> {
        ModelConfig::from_json(json, Path::new("x/config.json"))
    }

    #[test]
    fn classic_form_and_defaults() {
        let c = parse(LLAMA).unwrap();
        assert_eq!(
            (c.architecture, c.head_dim, c.num_kv_heads, c.dtype),
            (Architecture::Llama, 16, 2, DType::F32)
        );
        assert_eq!(
            (c.eos_token_ids.clone(), c.bos_token_id, c.rope_scaling),
            (vec![2, 8], Some(1), None)
        );
        assert!(!c.attention_bias && !c.tie_word_embeddings);
        let inv = c.rope_inv_freq();
        assert_eq!(inv.len(), 8);
        assert_eq!(inv[0], 1.0);
        assert!((inv[1] as f64 - 10000f64.powf(-2.0 / 16.0)).abs() < 1e-7);
    }

    #[test]
    fn transformers5_form_and_qwen2_defaults() {
        let json = r#"{"model_type": "qwen2", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "dtype": "bfloat16", "eos_token_id": 5,
            "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}}"#;
        let c = parse(json).unwrap();
        assert_eq!(
            (c.architecture, c.dtype, c.rope_theta),
            (Architecture::Qwen2, DType::BF16, 1e6)
        );
        assert!(c.attention_bias);
        assert_eq!(
            (c.eos_token_ids, c.rope_scaling, c.num_kv_heads),
            (vec![5], None, 2)
        );
    }

    #[test]
    fn llama3_scaling_in_both_forms() {
        let scaling = r#"{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64"#;
        let classic = LLAMA.replace(
            "\"rope_scaling\": null",
            &format!("\"rope_scaling\": {scaling}}}"),
        );
        let t5 = LLAMA.replace(
            "\"rope_theta\": 10000.0, \"rope_scaling\": null",
            &format!("\"rope_parameters\": {scaling}, \"rope_theta\": 5e5}}"),
        );
        let (a, b) = (parse(&classic).unwrap(), parse(&t5).unwrap());
        assert!(
            matches!(a.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
        assert_eq!(
            (a.rope_scaling, a.rope_theta, b.rope_theta),
            (b.rope_scaling, 1e4, 5e5)
        );
    }

    #[test]
    fn unsupported_and_invalid() {
        let linear = LLAMA.replace(
            "\"rope_scaling\": null",
            "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}",
        );
        assert!(matches!(parse(&linear), Err(ModelError::Unsupported(m)) if m.contains("linear")));
        let gpt2 = LLAMA.replace("LlamaForCausalLM", "GPT2LMHeadModel");
        assert!(
            matches!(parse(&gpt2), Err(ModelError::Unsupported(m)) if m.contains("GPT2LMHeadModel"))
        );
        let f8 = LLAMA.replace("float32", "float8_e4m3fn");
        assert!(matches!(parse(&f8), Err(ModelError::Unsupported(_))));
        let gqa = LLAMA.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
        assert!(matches!(parse(&gqa), Err(ModelError::Invalid { .. })));
        let err = parse("{\"vocab_size\": \"many\"").unwrap_err();
        assert!(err.to_string().contains("x/config.json"), "{err}");
        let no_hidden = LLAMA.replace("\"hidden_size\": 64,", "");
        assert!(parse(&no_hidden)
            .unwrap_err()
            .to_string()
            .contains("hidden_size"));
    }

    #[test]
    fn validate_catches_hand_built_mistakes() {
        let mut c = parse(LLAMA).unwrap();
        c.validate().unwrap();
        c.head_dim = 15;
        assert!(c.validate().is_err());
        c.head_dim = 16;
        c.num_kv_heads = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn param_count_counts_every_tensor() {
        let c = parse(LLAMA).unwrap();
        // embed + lm_head + 2 layers * (q 64*64 + k,v 2*32*64 + o 64*64 + mlp 3*64*128 + 2 norms) + norm
        let expected = 2 * 384 * 64 + 2 * (4096 + 4096 + 4096 + 3 * 8192 + 128) + 64;
        assert_eq!(c.param_count(), expected as u64);
    }
}
