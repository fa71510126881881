//! Writes a trained draft as a Hugging Face model directory: `config.json`, `model.safetensors` (f32; with an
//! untied `lm_head.weight` when training was restricted to a vocabulary subset, [`DraftNet::export_tensors`]) and the
//! target's tokenizer files, which the engine loads as `engine.speculative.draft_model` (its dense matrices
//! quantized to Q8_0 at load on the CPU: `engine.speculative.draft_weights`).

use std::path::Path;

use engram_engine::internals::model::ModelConfig;
use engram_engine::ModelTokenizer;

use crate::net::DraftNet;
use crate::{io_error, DraftError};

/// `config.json` for `c` (Llama blocks).
pub fn config_json(c: &ModelConfig) -> serde_json::Value {
    serde_json::json!({
        "architectures": [c.architecture.hf_class()],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": false,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_ids,
    })
}

/// Writes `net` with `tokenizer` to `dir` (created if needed; files of the same names replaced).
pub fn write_model_dir(
    net: &DraftNet,
    tokenizer: &ModelTokenizer,
    dir: &Path,
) -> Result<(), DraftError> {
    fs_err::create_dir_all(dir).map_err(io_error(dir))?;
    let tensors = net.export_tensors()?;
    let mut config = net.config().clone();
    // Trained on a vocabulary subset: an untied head whose unseen rows are zero.
    config.tie_word_embeddings = !net.is_restricted();
    let file = dir.join("config.json");
    let json = serde_json::to_string_pretty(&config_json(&config))
        .map_err(|e| DraftError::Invalid(e.to_string()))?;
    fs_err::write(&file, json).map_err(io_error(&file))?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    tokenizer.save(dir)?;
    Ok(())
}
