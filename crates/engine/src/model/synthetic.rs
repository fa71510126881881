//! Synthetic models: real (or tiny) shapes with deterministic random weights and a byte-level tokenizer built in
//! code, for tests and benchmarks without checkpoints (`synthetic:NAME` in [`super::ModelFiles::load`]).
//!
//! Weights come from an own PRNG (splitmix64, uniform scaled to the wanted standard deviation): matrices and
//! biases have std 0.02, norm weights are 1 + noise of std 0.02. Each tensor's stream is seeded by the seed and
//! the tensor's name, and split into fixed chunks with their own streams, so the result does not depend on the
//! number of threads filling it.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use super::config::{Architecture, DType, ModelConfig};
use super::tokenizer::{GenerationConfig, ModelTokenizer, SpecialTokens};
use super::weights::{expected_tensors, Weights};
use super::ModelError;
use crate::backend::{mix, GOLDEN};

/// The names `synthetic:NAME` accepts.
pub const SYNTHETIC_MODELS: &[&str] = &["tiny", "qwen2.5-0.5b", "llama-3.2-1b", "llama-3-8b"];

/// The seed [`super::ModelFiles::load`] uses for synthetic weights.
pub const SYNTHETIC_SEED: u64 = 0x5EED_2024;

/// Splits a synthetic model's `NAME` or `NAME@SEED` (other weights of the same shape, e.g. a draft model that
/// disagrees with its target) into the name and the weights' seed ([`SYNTHETIC_SEED`] when none is given).
pub fn parse_synthetic(spec: &str) -> Result<(&str, u64), ModelError> {
    match spec.split_once('@') {
        None => Ok((spec, SYNTHETIC_SEED)),
        Some((name, seed)) => seed
            .parse::<u64>()
            .map(|s| (name, SYNTHETIC_SEED ^ s))
            .map_err(|_| ModelError::UnknownSynthetic {
                name: spec.to_string(),
                known: format!(
                    "{} (each optionally with @SEED, a number)",
                    SYNTHETIC_MODELS.join(", ")
                ),
            }),
    }
}

/// Above this many parameters, synthetic weights are not generated on the CPU (f32: 4 bytes each).
pub const MAX_CPU_SYNTHETIC_PARAMS: u64 = 4_000_000_000;

/// Special tokens of [`synthetic_tokenizer`], with their ids (after the 256 byte tokens).
pub const SYNTHETIC_SPECIAL_TOKENS: [(&str, u32); 4] = [
    ("<s>", 256),
    ("</s>", 257),
    ("<|im_start|>", 258),
    ("<|im_end|>", 259),
];

const BOS: u32 = 256;
const EOS_IDS: [u32; 2] = [259, 257];

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
    message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}\
    {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The configuration of a synthetic model: `tiny` (Llama-shaped, vocab 512, hidden 64, 2 layers), `qwen2.5-0.5b`,
/// `llama-3.2-1b` (a draft model's shape for Llama 3 8B: same vocabulary) and `llama-3-8b` (the real shapes). Token ids follow [`synthetic_tokenizer`] (bos 256, eos 259 and 257).
pub fn synthetic_config(name: &str) -> Result<ModelConfig, ModelError> {
    let base = ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 512,
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 2048,
        tie_word_embeddings: false,
        attention_bias: false,
        dtype: DType::F32,
        sliding_window: None,
        bos_token_id: Some(BOS),
        eos_token_ids: EOS_IDS.to_vec(),
    };
    match name {
        "tiny" => Ok(base),
        "qwen2.5-0.5b" => Ok(ModelConfig {
            architecture: Architecture::Qwen2,
            vocab_size: 151936,
            hidden_size: 896,
            intermediate_size: 4864,
            num_layers: 24,
            num_heads: 14,
            num_kv_heads: 2,
            head_dim: 64,
            rms_norm_eps: 1e-6,
            rope_theta: 1e6,
            max_position_embeddings: 32768,
            tie_word_embeddings: true,
            attention_bias: true,
            dtype: DType::BF16,
            ..base
        }),
        "llama-3.2-1b" => Ok(ModelConfig {
            vocab_size: 128256,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_layers: 16,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 64,
            rope_theta: 5e5,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            dtype: DType::BF16,
            ..base
        }),
        "llama-3-8b" => Ok(ModelConfig {
            vocab_size: 128256,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            rope_theta: 5e5,
            max_position_embeddings: 8192,
            dtype: DType::BF16,
            ..base
        }),
        _ => Err(ModelError::UnknownSynthetic {
            name: name.to_string(),
            known: SYNTHETIC_MODELS.join(", "),
        }),
    }
}

/// Deterministic random weights for `config` (same seed, same weights), f32 on the CPU. Refuses models above
/// [`MAX_CPU_SYNTHETIC_PARAMS`] (llama-3-8b would be 32 GB of f32): those are for the CUDA backend.
pub fn synthetic_weights(config: &ModelConfig, seed: u64) -> Result<Weights, ModelError> {
    config.validate()?;
    let params = config.param_count();
    if params > MAX_CPU_SYNTHETIC_PARAMS {
        return Err(ModelError::Unsupported(format!(
            "synthetic weights for {params} parameters ({:.1} GB of f32) are not generated on the CPU \
             (limit {MAX_CPU_SYNTHETIC_PARAMS}); this model is for the CUDA backend",
            params as f64 * 4e-9
        )));
    }
    let mut map = HashMap::new();
    for t in synthetic_plan(config, seed) {
        let tensor = random_host_tensor(&t.shape, t.seed, t.offset, t.std).map_err(|e| {
            ModelError::Unsupported(format!("building synthetic tensor {}: {e}", t.name))
        })?;
        map.insert(t.name, tensor);
    }
    Ok(Weights::from_tensors(map))
}

/// One tensor of a synthetic model: its name, shape, stream seed and distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticTensor {
    /// Hugging Face tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Seed of its random stream (the model seed mixed with the name).
    pub seed: u64,
    /// Mean: 1 for norm weights, else 0.
    pub offset: f32,
    /// Standard deviation (0.02).
    pub std: f32,
}

/// Every tensor of a synthetic model with how it is drawn; backends that build weights on the device
/// ([`crate::llama::LlamaModel::synthetic`]) follow this plan with their own generator.
pub fn synthetic_plan(config: &ModelConfig, seed: u64) -> Vec<SyntheticTensor> {
    expected_tensors(config)
        .into_iter()
        .map(|(name, shape)| {
            let offset = if name.ends_with("norm.weight") {
                1.0
            } else {
                0.0
            };
            SyntheticTensor {
                seed: mix(seed ^ fnv1a(&name)),
                name,
                shape,
                offset,
                std: 0.02,
            }
        })
        .collect()
}

/// A host f32 tensor of `offset + uniform noise of standard deviation std` from `seed` (the CPU generator).
pub fn random_host_tensor(
    shape: &[usize],
    seed: u64,
    offset: f32,
    std: f32,
) -> candle_core::Result<Tensor> {
    let mut data = vec![0f32; shape.iter().product()];
    fill(&mut data, seed, offset, std);
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// A byte-level BPE tokenizer built in code: the 256 byte tokens (ids = byte values, GPT-2 byte-to-char
/// mapping), no merges, then the specials of [`SYNTHETIC_SPECIAL_TOKENS`]; a ChatML chat template. Its
/// vocabulary is 260 tokens whatever `vocab_size` (the model's) is: ids from 260 up to `vocab_size` decode to
/// nothing.
pub fn synthetic_tokenizer(vocab_size: usize) -> ModelTokenizer {
    let chars = super::tokenizer::gpt2_byte_chars();
    let vocab: [(String, u32); 256] = std::array::from_fn(|b| (chars[b].to_string(), b as u32));
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .expect("a BPE over the 256 byte tokens without merges is valid");
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    inner.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> = SYNTHETIC_SPECIAL_TOKENS
        .iter()
        .map(|(t, _)| AddedToken::from(*t, true))
        .collect();
    inner.add_special_tokens(&specials);
    let special = SpecialTokens {
        bos: Some("<s>".into()),
        eos: Some("<|im_end|>".into()),
        pad: None,
        unk: None,
    };
    let generation = GenerationConfig {
        bos_token_id: Some(BOS),
        eos_token_ids: EOS_IDS.to_vec(),
        ..GenerationConfig::default()
    };
    let source = PathBuf::from(format!(
        "<synthetic byte-level tokenizer for vocab {vocab_size}>"
    ));
    ModelTokenizer::from_parts(inner, Some(CHATML.to_string()), special, generation, source)
}

/// Elements per independently seeded chunk.
const CHUNK: usize = 1 << 16;

/// Fills `data` with `offset + uniform noise of standard deviation std`, chunks spread over threads.
fn fill(data: &mut [f32], seed: u64, offset: f32, std: f32) {
    let half_width = std * 3f32.sqrt();
    let chunks: Vec<(usize, &mut [f32])> = data.chunks_mut(CHUNK).enumerate().collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16);
    let run = |group: Vec<(usize, &mut [f32])>| {
        for (index, chunk) in group {
            fill_chunk(
                chunk,
                mix(seed ^ (index as u64 + 1).wrapping_mul(GOLDEN)),
                offset,
                half_width,
            );
        }
    };
    if threads == 1 || chunks.len() < 2 {
        return run(chunks);
    }
    let per_thread = chunks.len().div_ceil(threads);
    let run = &run;
    std::thread::scope(|scope| {
        let mut rest = chunks;
        while !rest.is_empty() {
            let tail = rest.split_off(per_thread.min(rest.len()));
            let group = std::mem::replace(&mut rest, tail);
            scope.spawn(move || run(group));
        }
    });
}

fn fill_chunk(chunk: &mut [f32], mut state: u64, offset: f32, half_width: f32) {
    const UNIT: f32 = 1.0 / (1u32 << 24) as f32;
    let to_value = |bits: u64| offset + half_width * (2.0 * (bits & 0xFF_FFFF) as f32 * UNIT - 1.0);
    for pair in chunk.chunks_mut(2) {
        let r = splitmix64(&mut state);
        pair[0] = to_value(r >> 40);
        if let Some(second) = pair.get_mut(1) {
            *second = to_value(r >> 8);
        }
    }
}

/// splitmix64: the next value of the stream at `state`.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN);
    mix(*state)
}

/// FNV-1a of a tensor name, to seed its stream.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChatMessage;

    #[test]
    fn noise_has_the_wanted_moments_and_is_deterministic() {
        let mut a = vec![0f32; 3 * CHUNK + 5];
        let mut b = a.clone();
        fill(&mut a, 7, 1.0, 0.02);
        fill(&mut b, 7, 1.0, 0.02);
        assert_eq!(a, b);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(
            (mean - 1.0).abs() < 1e-3 && (var.sqrt() - 0.02).abs() < 1e-3,
            "{mean} {var}"
        );
        fill(&mut b, 8, 1.0, 0.02);
        assert_ne!(a, b);
    }

    #[test]
    fn configs_and_size_limit() {
        let qwen = synthetic_config("qwen2.5-0.5b").unwrap();
        assert_eq!(qwen.param_count(), 494_032_768);
        let llama = synthetic_config("llama-3-8b").unwrap();
        assert_eq!(llama.param_count(), 8_030_261_248);
        let err = synthetic_weights(&llama, 1).unwrap_err().to_string();
        assert!(err.contains("CUDA"), "{err}");
        assert!(matches!(
            synthetic_config("big"),
            Err(ModelError::UnknownSynthetic { .. })
        ));
    }

    #[test]
    fn byte_tokenizer_round_trips_and_chats() {
        let tok = synthetic_tokenizer(512);
        assert_eq!(tok.vocab_size(), 260);
        for (t, id) in SYNTHETIC_SPECIAL_TOKENS {
            assert_eq!(tok.token_to_id(t), Some(id));
        }
        let text = "héllo <|im_start|> wörld\n\t!";
        let ids = tok.encode(text, true).unwrap();
        assert!(ids.contains(&258) && ids.iter().all(|&i| i < 260));
        assert_eq!(ids.len(), text.len() - "<|im_start|>".len() + 1);
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!(tok.decode(&[104, 300, 105, 511], false).unwrap(), "hi");
        let chat = tok
            .apply_chat_template(&[ChatMessage::new("user", "Hi")], true)
            .unwrap();
        assert_eq!(
            chat,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(tok.eos_token_ids(), vec![259, 257]);
    }
}
